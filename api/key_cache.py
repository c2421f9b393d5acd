"""Presented secret -> the key's grant, trusted for `ttl` seconds.

The TTL is the revocation delay: a key revoked on any replica (or with
`conveyor keys revoke`) stops working everywhere within `ttl`, with no
message bus between replicas. Unknown secrets are cached too, so a client
hammering with a bad key costs one query per `ttl`, not one per request.
Concurrent misses for one secret share a single query: when a busy key's
entry expires, the requests arriving meanwhile do not each take a worker
thread and a database connection to ask the same thing.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict

import anyio.to_thread

from api.quiet_futures import retrieve_error
from conveyor.db.database import Database
from conveyor.db.key_store import KeyGrant, grant_for_digest


class KeyCache:
    def __init__(self, database: Database, ttl: float, max_entries: int = 10_000) -> None:
        self.database = database
        self.ttl = ttl
        self.max_entries = max_entries
        self._entries: OrderedDict[str, tuple[float, KeyGrant | None]] = OrderedDict()
        # Bumped by every forget: a lookup that started before a revocation must not
        # put its stale answer back afterwards.
        self._generation = 0
        # digest -> the one fetch in flight for it, which concurrent misses await.
        self._loading: dict[str, asyncio.Task[KeyGrant | None]] = {}

    async def lookup(self, digest: str) -> KeyGrant | None:
        entry = self._entries.get(digest)
        if entry is not None and time.monotonic() - entry[0] < self.ttl:
            self._entries.move_to_end(digest)
            return entry[1]
        task = self._loading.get(digest)
        if task is None:
            task = asyncio.create_task(self._load(digest))
            self._loading[digest] = task
            task.add_done_callback(retrieve_error)
        # Shielded: a caller that goes away must not cancel the fetch the others wait for.
        return await asyncio.shield(task)

    async def _load(self, digest: str) -> KeyGrant | None:
        try:
            while True:
                generation = self._generation
                grant = await anyio.to_thread.run_sync(self._fetch, digest)
                if generation == self._generation:
                    break
                # Forgotten while we asked: the answer may predate a revocation, ask again.
        finally:
            # In the same step as the answer is cached: no later lookup joins a finished fetch.
            if self._loading.get(digest) is asyncio.current_task():
                del self._loading[digest]
        self._entries[digest] = (time.monotonic(), grant)
        self._entries.move_to_end(digest)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)
        return grant

    def _fetch(self, digest: str) -> KeyGrant | None:
        with self.database.session() as session:
            return grant_for_digest(session, digest)

    def forget_key(self, key_id: str) -> None:
        """Drop a key at once on this replica (it was just revoked or changed here)."""
        self._generation += 1
        stale = [d for d, (_, grant) in self._entries.items() if grant and grant.key_id == key_id]
        for digest in stale:
            del self._entries[digest]

    def forget_project(self, project_id: str) -> None:
        self._generation += 1
        stale = [
            d for d, (_, grant) in self._entries.items() if grant and grant.project_id == project_id
        ]
        for digest in stale:
            del self._entries[digest]
