"""Who is calling: the static `--api-key`, a project key from SQL, the admin key, a batch
worker (the service key), or nobody.

Keys are compared as SHA-256 digests: the static and admin keys in constant
time, project keys by an indexed lookup of the digest (the secret itself is
never stored). Without `--api-key` or `--admin-key` the inference API is open,
as `vllm serve` is; a project key presented anyway is still recognised, so its
usage is attributed and its limits hold.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass

from fastapi import Request

from api.errors import ApiError
from api.key_cache import KeyCache
from api.rate_limiter import RateLimits
from conveyor.db.key_store import secret_digest
from conveyor.settings import Settings


@dataclass(frozen=True)
class Principal:
    """The caller of one request; project fields are None for the static key or no key."""

    project_id: str | None = None
    api_key_id: str | None = None
    limits: RateLimits | None = None
    # Set when a batch worker runs one of the batch's lines (see `Authenticator`), and
    # which line it is (its number in the input file).
    batch_id: str | None = None
    batch_line: str | None = None

    @property
    def is_project(self) -> bool:
        return self.project_id is not None


ANONYMOUS = Principal()

# Headers a batch worker sends with each line, honoured only with the service key.
BATCH_HEADER = "x-conveyor-batch-id"
PROJECT_HEADER = "x-conveyor-project-id"
API_KEY_HEADER = "x-conveyor-api-key-id"
BATCH_LINE_HEADER = "x-conveyor-batch-line"


def _digest(secret: str) -> bytes:
    return hashlib.sha256(secret.encode("utf-8")).digest()


def _unauthorized(message: str) -> ApiError:
    return ApiError(401, message, code="invalid_api_key", headers={"WWW-Authenticate": "Bearer"})


def presented_key(request: Request) -> str | None:
    """The key the client presented: `Authorization: Bearer <key>`, or else `x-api-key`,
    the header Anthropic's clients send (api/routes/messages.py), as vLLM takes it."""
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    token = token.strip()
    if scheme.lower() == "bearer" and token:
        return token
    return request.headers.get("x-api-key", "").strip() or None


class Authenticator:
    """Resolves a request's bearer token to a Principal; one per API process."""

    def __init__(self, settings: Settings, keys: KeyCache) -> None:
        self.keys = keys
        self.requires_key = settings.requires_key
        self._static = [_digest(key.get_secret_value()) for key in settings.api_key or ()]
        self._admin = _digest(settings.admin_key.get_secret_value()) if settings.admin_key else None
        service = settings.resolved_service_key
        self._service = _digest(service.get_secret_value()) if service else None

    async def principal(self, request: Request) -> Principal:
        token = presented_key(request)
        if token is None:
            if self.requires_key:
                raise _unauthorized(
                    "Missing API key: send `Authorization: Bearer <key>` (or `x-api-key: <key>`)"
                )
            return ANONYMOUS
        digest = _digest(token)
        # Before the static key: an operator may use one secret for --api-key and
        # --admin-key (the default service key), and a batch line must still be billed to
        # its project and queued in the batch lane. A service key shared with the static
        # key alone is refused by Settings: any client could then act for any project.
        if (
            self._service is not None
            and request.headers.get(BATCH_HEADER)
            and hmac.compare_digest(digest, self._service)
        ):
            return self._batch_line(request)
        if any([hmac.compare_digest(digest, key) for key in self._static]):  # each compared
            return ANONYMOUS
        grant = await self.keys.lookup(secret_digest(token))
        if grant is not None:
            if not grant.active:
                raise _unauthorized("This API key has been revoked or its project archived")
            limits = RateLimits(rpm=grant.rpm, tpm=grant.tpm)
            return Principal(grant.project_id, grant.key_id, limits)
        if self.requires_key:
            if self._admin is not None and hmac.compare_digest(digest, self._admin):
                # Usage is billed to a project, and the admin key has none.
                raise _unauthorized(
                    "The admin key is for the admin API (/v1/organization/...) only: "
                    "call this with a project's API key (`conveyor keys create`)"
                )
            raise _unauthorized("Incorrect API key provided")
        return ANONYMOUS

    @staticmethod
    def _batch_line(request: Request) -> Principal:
        """A batch worker acting for the batch's project and key: billed to them, and not
        rate limited (a batch is admitted as a whole; its lines are paced by the worker)."""
        headers = request.headers
        return Principal(
            project_id=headers.get(PROJECT_HEADER) or None,
            api_key_id=headers.get(API_KEY_HEADER) or None,
            batch_id=headers.get(BATCH_HEADER) or None,
            batch_line=headers.get(BATCH_LINE_HEADER) or None,
        )

    def check_admin(self, request: Request) -> None:
        if self._admin is None:
            raise ApiError(
                403,
                "The admin API is disabled: start conveyor with --admin-key (CONVEYOR_ADMIN_KEY)",
                code="admin_api_disabled",
            )
        token = presented_key(request)
        if token is None or not hmac.compare_digest(_digest(token), self._admin):
            raise _unauthorized("The admin API needs the admin key")


async def authorize_operator(request: Request) -> None:
    """For endpoints that change what every tenant is served (LoRA adapters, sleep mode,
    the prefix cache): the admin key when there is one, else the API key if one is set."""
    if request.app.state.settings.admin_key is not None:
        request.app.state.authenticator.check_admin(request)
    else:
        await request.app.state.authenticator.principal(request)
