"""Tenancy through the real API (uvicorn, real Redis, SQLite and PostgreSQL), called with the
official `openai` SDK: project keys, usage from the request logs, revocation, rate limits."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import openai
import pytest
from sqlalchemy import select

from conveyor.db.database import Database
from conveyor.db.request_log import RequestLog
from conveyor.db.stored_response import StoredResponse

from .conftest import MODEL, Stack, log_row
from .fakes import CACHED_TOKENS, LiveServer, wait_for

ADMIN_KEY = "admin-test-key"
MESSAGES = [{"role": "user", "content": "Count."}]


@pytest.fixture()
def tenancy(make_stack: Callable[..., Stack], migrated_database_url: str) -> Stack:
    return make_stack(
        database_url=migrated_database_url, admin_key=ADMIN_KEY, log_flush_interval=0.05
    )


@pytest.fixture()
def admin(tenancy: Stack) -> Iterator[httpx.Client]:
    with tenancy.client(headers={"Authorization": f"Bearer {ADMIN_KEY}"}) as http:
        yield http


def new_project(admin: httpx.Client, name: str) -> dict[str, Any]:
    response = admin.post("/v1/organization/projects", json={"name": name})
    assert response.status_code == 200, response.text
    return response.json()


def new_key(admin: httpx.Client, project_id: str, **limits: Any) -> dict[str, Any]:
    response = admin.post(
        f"/v1/organization/projects/{project_id}/api_keys", json={"name": "k", **limits}
    )
    assert response.status_code == 200, response.text
    return response.json()


def sdk(stack: Stack, secret: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{stack.url}/v1", api_key=secret, max_retries=0, timeout=10)


def logs(stack: Stack, expected: int) -> list[RequestLog]:
    """The request-log rows once `expected` of them are flushed."""
    database = Database(stack.server.settings.resolved_database_url)
    try:

        def rows() -> list[RequestLog]:
            with database.session() as session:
                found = list(session.scalars(select(RequestLog).order_by(RequestLog.id)))
            return found if len(found) >= expected else []

        return wait_for(rows, timeout=5)
    finally:
        database.close()


def usage(admin: httpx.Client, **params: Any) -> dict[str, Any]:
    response = admin.get(
        "/v1/organization/usage/completions",
        params={"start_time": int(time.time()) - 3600, "bucket_width": "1h", **params},
    )
    assert response.status_code == 200, response.text
    return response.json()


def test_usage_bucket_counts_exactly_the_keys_tokens(tenancy: Stack, admin: httpx.Client) -> None:
    project = new_project(admin, "acme")
    key = new_key(admin, project["id"])
    other = new_key(admin, new_project(admin, "globex")["id"])
    with sdk(tenancy, key["value"]) as client:
        plain = client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=3)
        chunks = list(
            client.chat.completions.create(
                model=MODEL,
                messages=MESSAGES,
                max_tokens=4,
                stream=True,
                stream_options={"include_usage": True},
            )
        )
    with sdk(tenancy, other["value"]) as client:
        client.completions.create(model=MODEL, prompt="hello", max_tokens=2)
    streamed = chunks[-1].usage
    assert plain.usage is not None and streamed is not None
    logs(tenancy, 3)

    page = usage(admin, group_by="project_id,api_key_id,model", project_ids=project["id"])
    results = [r for bucket in page["data"] for r in bucket["results"]]
    # The requests may straddle a bucket edge: add the group up over the buckets.
    assert {(r["project_id"], r["api_key_id"], r["model"], r["batch"]) for r in results} == {
        (project["id"], key["id"], MODEL, None)
    }
    assert results[0]["object"] == "organization.usage.completions.result"
    assert sum(r["input_tokens"] for r in results) == (
        plain.usage.prompt_tokens + streamed.prompt_tokens
    )
    assert sum(r["output_tokens"] for r in results) == (
        plain.usage.completion_tokens + streamed.completion_tokens
    )
    assert sum(r["num_model_requests"] for r in results) == 2
    everyone = [r for b in usage(admin, group_by="project_id")["data"] for r in b["results"]]
    per_project: dict[str, int] = {}
    for r in everyone:
        per_project[r["project_id"]] = per_project.get(r["project_id"], 0) + r["num_model_requests"]
    assert sorted(per_project.values()) == [1, 2]


def test_request_log_row_describes_the_request(tenancy: Stack, admin: httpx.Client) -> None:
    key = new_key(admin, new_project(admin, "acme")["id"])
    with sdk(tenancy, key["value"]) as client:
        out = client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=3)
        with pytest.raises(openai.BadRequestError):
            client.chat.completions.create(model=MODEL, messages=MESSAGES, temperature=-1)
    ok, bad = logs(tenancy, 2)
    assert (ok.request_id, ok.status_code, ok.endpoint) == (out.id, 200, "/v1/chat/completions")
    assert (ok.api_key_id, ok.model, ok.finish_reason) == (key["id"], MODEL, "length")
    assert ok.completion_tokens == 3 and ok.prompt_tokens == out.usage.prompt_tokens  # type: ignore[union-attr]
    assert ok.latency is not None and ok.ttft is not None and 0 < ok.ttft <= ok.latency
    assert ok.queue_time is not None and ok.queue_time >= 0
    assert ok.prompt is None  # no --log-prompts
    assert (bad.status_code, bad.completion_tokens) == (400, 0)


def test_responses_belong_to_their_project_and_are_billed(
    tenancy: Stack, admin: httpx.Client
) -> None:
    project = new_project(admin, "acme")
    key, colleague = new_key(admin, project["id"]), new_key(admin, project["id"])
    outsider = new_key(admin, new_project(admin, "globex")["id"])
    with sdk(tenancy, key["value"]) as client:
        created = client.responses.create(model=MODEL, input="Count.", max_output_tokens=3)
    with sdk(tenancy, colleague["value"]) as client:  # same project: found and continued
        assert client.responses.retrieve(created.id).id == created.id
        client.responses.create(
            model=MODEL, input="More.", previous_response_id=created.id, max_output_tokens=2
        )
    with sdk(tenancy, outsider["value"]) as client:  # another project: as if it did not exist
        with pytest.raises(openai.NotFoundError):
            client.responses.retrieve(created.id)
        with pytest.raises(openai.NotFoundError):
            client.responses.input_items.list(created.id)
        with pytest.raises(openai.NotFoundError):
            client.responses.create(model=MODEL, input="x", previous_response_id=created.id)
        with pytest.raises(openai.NotFoundError):
            client.responses.delete(created.id)
    first, second = logs(tenancy, 3)[:2]
    assert (first.request_id, first.endpoint, first.status_code) == (
        created.id,
        "/v1/responses",
        200,
    )
    assert created.usage is not None
    assert (first.prompt_tokens, first.completion_tokens) == (created.usage.input_tokens, 3)
    assert second.completion_tokens == 2
    results = [
        r
        for bucket in usage(admin, group_by="project_id", project_ids=project["id"])["data"]
        for r in bucket["results"]
    ]
    assert sum(r["num_model_requests"] for r in results) == 2
    assert sum(r["output_tokens"] for r in results) == 5


@pytest.mark.parametrize("endpoint", ["chat", "completions"])
def test_aborted_stream_bills_the_tokens_it_received(
    tenancy: Stack, admin: httpx.Client, endpoint: str
) -> None:
    key = new_key(admin, new_project(admin, "acme")["id"])
    tenancy.worker.behaviour = "slow"
    received = 0
    with sdk(tenancy, key["value"]) as client:
        if endpoint == "chat":
            stream = client.chat.completions.create(
                model=MODEL, messages=MESSAGES, max_tokens=200, stream=True
            )
        else:
            stream = client.completions.create(
                model=MODEL, prompt="Once upon", max_tokens=200, stream=True
            )
        for chunk in stream:
            if not chunk.choices:
                continue
            choice = chunk.choices[0]
            text = choice.delta.content if endpoint == "chat" else choice.text  # type: ignore[union-attr]
            if text:
                received += 1
            if received == 5:
                break
        stream.close()
    (row,) = logs(tenancy, 1)
    # The API may have forwarded a token or two the client had not read yet.
    assert 5 <= row.completion_tokens < 200
    assert row.status_code == 200
    # The prefix cache's share was known from the first token on, so it is billed too.
    assert row.cached_tokens == CACHED_TOKENS
    wait_for(lambda: tenancy.worker.aborted)


def test_each_project_has_its_own_prefix_cache(tenancy: Stack, admin: httpx.Client) -> None:
    """Salted by project, so no tenant reads or detects another's cached prompts; a
    request's own cache_salt narrows sharing within its project."""
    acme, globex = new_project(admin, "acme"), new_project(admin, "globex")
    keys = [new_key(admin, acme["id"]), new_key(admin, acme["id"]), new_key(admin, globex["id"])]
    for key in keys:
        with sdk(tenancy, key["value"]) as client:
            client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=1)
            client.completions.create(model=MODEL, prompt="Hi", max_tokens=1)
            client.responses.create(model=MODEL, input="Hi", max_output_tokens=1)
    with sdk(tenancy, keys[0]["value"]) as client:
        client.chat.completions.create(
            model=MODEL, messages=MESSAGES, max_tokens=1, extra_body={"cache_salt": "s1"}
        )
    salts = [r.cache_salt for r in tenancy.worker.received]
    assert len(salts) == 10 and None not in salts
    # Both acme keys share one salt across endpoints; globex has another; `s1` a third.
    assert len(set(salts[:6])) == 1
    assert len({salts[0], salts[6], salts[9]}) == 3
    assert set(salts[6:9]) == {salts[6]}


def test_keys_are_listed_without_secrets(tenancy: Stack, admin: httpx.Client) -> None:
    project = new_project(admin, "acme")
    secrets_ = [new_key(admin, project["id"])["value"] for _ in range(3)]
    first = admin.get(f"/v1/organization/projects/{project['id']}/api_keys", params={"limit": 2})
    body = first.json()
    assert body["has_more"] is True and len(body["data"]) == 2
    rest = admin.get(
        f"/v1/organization/projects/{project['id']}/api_keys",
        params={"after": body["last_id"]},
    ).json()
    assert rest["has_more"] is False and len(rest["data"]) == 1
    for response in (first.text, str(rest)):
        assert all(secret not in response for secret in secrets_)
    assert all("value" not in key for key in body["data"] + rest["data"])
    assert body["data"][0]["redacted_value"].startswith("sk-proj-")


def test_any_use_of_a_key_stamps_its_last_used_at(tenancy: Stack, admin: httpx.Client) -> None:
    """A key used only for files (no inference, so no log row) was used all the same."""
    project = new_project(admin, "acme")
    key = new_key(admin, project["id"])
    path = f"/v1/organization/projects/{project['id']}/api_keys/{key['id']}"
    assert admin.get(path).json()["last_used_at"] is None
    before = int(time.time())
    with sdk(tenancy, key["value"]) as client:
        client.files.list()
    used = wait_for(lambda: admin.get(path).json()["last_used_at"], timeout=5)
    assert before <= used <= time.time()


def test_revoked_key_gets_401_on_every_replica(tenancy: Stack, admin: httpx.Client) -> None:
    project = new_project(admin, "acme")
    key = new_key(admin, project["id"])
    settings = tenancy.server.settings.model_copy(update={"instance_id": "api-replica-2"})
    replica = LiveServer(settings).start()
    try:
        replica_stack = Stack(replica, tenancy.worker, tenancy.names, tenancy.redis_url)
        with sdk(tenancy, key["value"]) as one, sdk(replica_stack, key["value"]) as two:
            one.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=1)
            two.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=1)
            deleted = admin.delete(
                f"/v1/organization/projects/{project['id']}/api_keys/{key['id']}"
            )
            assert deleted.json() == {
                "object": "organization.project.api_key.deleted",
                "id": key["id"],
                "deleted": True,
            }
            revoked_at = time.monotonic()
            # Gone for the admin API too, as OpenAI answers, but for its history.
            path = f"/v1/organization/projects/{project['id']}/api_keys/{key['id']}"
            assert admin.get(path).status_code == 404
            assert admin.post(path, json={"rpm": 5}).status_code == 404
            assert admin.delete(path).status_code == 404
            history = admin.get(path, params={"include_revoked": "true"}).json()
            assert history["id"] == key["id"] and history["revoked_at"]
            with pytest.raises(openai.AuthenticationError):
                one.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=1)

            def refused_on_replica() -> bool:
                try:
                    two.models.list()
                except openai.AuthenticationError:
                    return True
                return False

            wait_for(refused_on_replica, timeout=3)
            assert time.monotonic() - revoked_at <= 1.5
    finally:
        replica.stop()


def test_rpm_limit_gives_429_with_retry_after_and_spares_other_keys(
    tenancy: Stack, admin: httpx.Client
) -> None:
    project = new_project(admin, "acme")
    limited = new_key(admin, project["id"], rpm=2)
    free = new_key(admin, project["id"])
    with sdk(tenancy, limited["value"]) as client:
        first = client.chat.completions.with_raw_response.create(
            model=MODEL, messages=MESSAGES, max_tokens=1
        )
        assert first.headers["x-ratelimit-limit-requests"] == "2"
        assert first.headers["x-ratelimit-remaining-requests"] == "1"
        assert first.headers["x-ratelimit-reset-requests"]
        client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=1)
        with pytest.raises(openai.RateLimitError) as refused:
            client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=1)
    response = refused.value.response
    assert int(response.headers["retry-after"]) >= 1
    assert response.headers["x-ratelimit-remaining-requests"] == "0"
    assert refused.value.code == "rate_limit_exceeded"
    assert refused.value.type == "requests"  # OpenAI names the budget that ran out
    with sdk(tenancy, free["value"]) as client:
        client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=1)
    statuses = [row.status_code for row in logs(tenancy, 4)]
    assert sorted(statuses) == [200, 200, 200, 429]


def test_a_key_out_of_requests_is_refused_before_its_prompt_is_read(
    tenancy: Stack, admin: httpx.Client
) -> None:
    """Once this replica saw the key's rpm window full, its next requests get the 429 at
    once: an over-long prompt, which would be a 400 once tokenized, is never looked at."""
    key = new_key(admin, new_project(admin, "acme")["id"], rpm=1)
    too_long = "word " * 20_000
    with sdk(tenancy, key["value"]) as client:
        client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=1)
        with pytest.raises(openai.RateLimitError):
            client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=1)
        with pytest.raises(openai.RateLimitError) as chat:
            client.chat.completions.create(
                model=MODEL, messages=[{"role": "user", "content": too_long}], max_tokens=1
            )
        with pytest.raises(openai.RateLimitError) as completion:
            client.completions.create(model=MODEL, prompt=too_long, max_tokens=1)
    for refused in (chat.value, completion.value):
        assert refused.code == "rate_limit_exceeded"
        assert "requests per min (RPM): Limit 1" in refused.message
        headers = refused.response.headers
        assert int(headers["retry-after"]) >= 1 and headers["x-ratelimit-remaining-requests"] == "0"


def test_fifty_concurrent_requests_on_rpm_20_admit_exactly_20(
    tenancy: Stack, admin: httpx.Client
) -> None:
    key = new_key(admin, new_project(admin, "acme")["id"], rpm=20)

    async def burst() -> list[BaseException | object]:
        async with openai.AsyncOpenAI(
            base_url=f"{tenancy.url}/v1", api_key=key["value"], max_retries=0, timeout=20
        ) as client:
            calls = [
                client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=1)
                for _ in range(50)
            ]
            return await asyncio.gather(*calls, return_exceptions=True)

    results = asyncio.run(burst())
    refused = [r for r in results if isinstance(r, openai.RateLimitError)]
    admitted = [r for r in results if not isinstance(r, BaseException)]
    assert (len(admitted), len(refused)) == (20, 30)


def test_tpm_limit_counts_tokens(tenancy: Stack, admin: httpx.Client) -> None:
    key = new_key(admin, new_project(admin, "acme")["id"], tpm=100)
    with sdk(tenancy, key["value"]) as client:
        with pytest.raises(openai.RateLimitError, match="Request too large") as too_large:
            client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=200)
        assert too_large.value.type == "tokens"
        first = client.chat.completions.with_raw_response.create(
            model=MODEL, messages=MESSAGES, max_tokens=3
        )
        assert first.headers["x-ratelimit-limit-tokens"] == "100"
        per_request = first.parse().usage.total_tokens  # type: ignore[union-attr]
        admitted = 1
        with pytest.raises(openai.RateLimitError, match="tokens per min") as out_of_tokens:
            for _ in range(100):
                client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=3)
                admitted += 1
        assert out_of_tokens.value.type == "tokens"
    # Every admitted request fitted in the budget, and one more would not have.
    assert admitted * per_request <= 100 < (admitted + 1) * per_request


def test_a_request_without_max_tokens_holds_what_it_may_use(
    tenancy: Stack, admin: httpx.Client
) -> None:
    """With no max_tokens a chat may run to the end of the context (256 here), so it holds
    that much of the key's budget left (all 200 of it) until it ends: a burst of them cannot
    run the key past its tpm. It is not "too large" for it, and ended, it holds what it
    used."""
    key = new_key(admin, new_project(admin, "acme")["id"], tpm=200)
    tenancy.worker.behaviour = "slow"  # a token every 50 ms, until the client goes
    with sdk(tenancy, key["value"]) as client:
        running = client.chat.completions.create(model=MODEL, messages=MESSAGES, stream=True)
        next(iter(running))
        for max_tokens in (1, None):
            with pytest.raises(openai.RateLimitError, match="Used 200") as refused:
                client.chat.completions.create(
                    model=MODEL, messages=MESSAGES, max_tokens=max_tokens
                )
            assert refused.value.type == "tokens"
        running.close()
        tenancy.worker.behaviour = "normal"
        # Settled to what the closed stream used, the budget has room again.
        wait_for(lambda: admitted(client))
    # So is a tokens-in request without max_tokens (3 + 253 would be "too large").
    tokens = {"model": MODEL, "token_ids": [11, 12, 13], "sampling_params": {}}
    auth = {"Authorization": f"Bearer {key['value']}"}
    with tenancy.client() as http:
        wait_for(lambda: http.post("/inference/v1/generate", json=tokens, headers=auth).is_success)


def admitted(client: openai.OpenAI) -> bool:
    try:
        client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=1)
    except openai.RateLimitError:
        return False
    return True


def test_cross_project_objects_are_404(tenancy: Stack, admin: httpx.Client) -> None:
    acme, globex = new_project(admin, "acme"), new_project(admin, "globex")
    globex_key = new_key(admin, globex["id"])
    response = admin.get(f"/v1/organization/projects/{acme['id']}/api_keys/{globex_key['id']}")
    assert response.status_code == 404
    assert response.json()["error"]["param"] == "key_id"
    gone = admin.delete(f"/v1/organization/projects/{acme['id']}/api_keys/{globex_key['id']}")
    assert gone.status_code == 404
    assert (
        admin.get(f"/v1/organization/projects/{globex['id']}/api_keys/{globex_key['id']}").json()[
            "revoked_at"
        ]
        is None
    )
    assert admin.get("/v1/organization/projects/proj_nope").status_code == 404


def test_keys_are_required_and_the_admin_key_is_not_an_inference_key(
    tenancy: Stack, admin: httpx.Client
) -> None:
    key = new_key(admin, new_project(admin, "acme")["id"])
    with tenancy.client() as anonymous:
        assert anonymous.get("/v1/models").status_code == 401
        assert anonymous.get("/v1/organization/projects").status_code == 401
        wrong = {"Authorization": f"Bearer {key['value']}"}
        assert anonymous.get("/v1/organization/projects", headers=wrong).status_code == 401
    for secret, said in (
        (ADMIN_KEY, "The admin key is for the admin API"),  # it said "Incorrect API key"
        ("sk-proj-made-up", "Incorrect API key provided"),
    ):
        with sdk(tenancy, secret) as client, pytest.raises(openai.AuthenticationError) as refused:
            client.models.list()
        assert said in refused.value.message


def test_archiving_a_project_stops_its_keys(tenancy: Stack, admin: httpx.Client) -> None:
    project = new_project(admin, "acme")
    key = new_key(admin, project["id"])
    with sdk(tenancy, key["value"]) as client:
        client.models.list()
        archived = admin.post(f"/v1/organization/projects/{project['id']}/archive").json()
        assert archived["status"] == "archived" and archived["archived_at"]
        with pytest.raises(openai.AuthenticationError):
            client.models.list()
    listed = admin.get("/v1/organization/projects").json()
    assert project["id"] not in [p["id"] for p in listed["data"]]
    everything = admin.get("/v1/organization/projects", params={"include_archived": "true"})
    assert project["id"] in [p["id"] for p in everything.json()["data"]]
    refused = admin.post(f"/v1/organization/projects/{project['id']}/api_keys", json={})
    assert refused.status_code == 400
    # Its keys read as revoked (at the archive time), so a list of live keys is true.
    keys_path = f"/v1/organization/projects/{project['id']}/api_keys"
    assert admin.get(keys_path).json()["data"] == []
    (listed_key,) = admin.get(keys_path, params={"include_revoked": "true"}).json()["data"]
    assert listed_key["id"] == key["id"]
    assert listed_key["revoked_at"] == archived["archived_at"]


@pytest.mark.parametrize("ending", ["revoke", "archive"])
def test_a_background_response_stops_when_its_key_does(
    tenancy: Stack, admin: httpx.Client, ending: str
) -> None:
    """As the key's batches do: work queued with a key that is then revoked (or whose
    project is archived) is cancelled, and not billed; it used to run to its end."""
    project = new_project(admin, "acme")
    key = new_key(admin, project["id"])
    tenancy.worker.behaviour = "slow"  # a token every 50 ms: 10 s for all 200
    with sdk(tenancy, key["value"]) as client:
        queued = client.responses.create(
            model=MODEL, input="A long story.", background=True, max_output_tokens=200
        )
    wait_for(lambda: any(r.id == queued.id for r in tenancy.worker.received))
    if ending == "revoke":
        path = f"/v1/organization/projects/{project['id']}/api_keys/{key['id']}"
        assert admin.delete(path).status_code == 200
    else:
        archive = admin.post(f"/v1/organization/projects/{project['id']}/archive")
        assert archive.status_code == 200
    wait_for(lambda: queued.id in tenancy.worker.aborted, timeout=6)
    database = Database(tenancy.server.settings.resolved_database_url)
    try:
        with database.session() as session:
            assert session.get(StoredResponse, queued.id).status == "cancelled"
    finally:
        database.close()
    assert log_row(tenancy, queued.id).status_code == 499


@pytest.mark.parametrize("ending", ["revoke", "archive"])
def test_requests_in_flight_stop_when_their_key_does(
    tenancy: Stack, admin: httpx.Client, ending: str
) -> None:
    """A stolen key's long generations stop within seconds of its revocation: a stream
    ends with a 401 error event after what it already sent (billed), a whole answer is
    a 401, and both are aborted on the worker; they used to run to max_tokens."""
    project = new_project(admin, "acme")
    key = new_key(admin, project["id"])
    other = new_key(admin, new_project(admin, "globex")["id"])
    tenancy.worker.behaviour = "slow"  # a token every 50 ms: 10 s for all 200
    errors: dict[str, BaseException] = {}
    received: list[str] = []

    def streamed() -> None:
        with sdk(tenancy, key["value"]) as client:
            stream = client.chat.completions.create(
                model=MODEL, messages=MESSAGES, max_tokens=200, stream=True
            )
            try:
                for chunk in stream:
                    if chunk.choices and chunk.choices[0].delta.content:
                        received.append(chunk.choices[0].delta.content)
            except openai.APIError as exc:
                errors["stream"] = exc

    def whole(secret: str, name: str, max_tokens: int) -> None:
        with sdk(tenancy, secret) as client:
            try:
                client.completions.create(model=MODEL, prompt="Once upon", max_tokens=max_tokens)
            except openai.APIError as exc:
                errors[name] = exc

    threads = [
        threading.Thread(target=streamed),
        threading.Thread(target=whole, args=(key["value"], "whole", 200)),
        threading.Thread(target=whole, args=(other["value"], "other", 100)),
    ]
    for thread in threads:
        thread.start()
    wait_for(lambda: len(tenancy.worker.received) == 3 and received)
    ids = {r.id for r in tenancy.worker.received}
    if ending == "revoke":
        path = f"/v1/organization/projects/{project['id']}/api_keys/{key['id']}"
        assert admin.delete(path).status_code == 200
    else:
        assert admin.post(f"/v1/organization/projects/{project['id']}/archive").status_code == 200
    started = time.monotonic()
    threads[0].join(timeout=8)
    threads[1].join(timeout=8)
    assert time.monotonic() - started < 8, "the revoked key's requests ran on"
    for name in ("stream", "whole"):
        error = errors[name]
        assert isinstance(error, openai.APIError)
        assert error.code == "invalid_api_key", error
        assert "revoked" in error.message
    assert isinstance(errors["whole"], openai.AuthenticationError)  # a 401
    assert 0 < len(received) < 200
    wait_for(lambda: len(set(tenancy.worker.aborted) & ids) == 2, timeout=5)
    # Another project's request runs on untouched.
    threads[2].join(timeout=15)
    assert "other" not in errors
    rows = {(row.endpoint, row.status_code): row for row in logs(tenancy, 3)}
    # The whole answer never went out: not billed. The stream's tokens were received.
    assert rows[("/v1/completions", 401)].completion_tokens == 0
    assert rows[("/v1/completions", 200)].completion_tokens == 100
    assert rows[("/v1/chat/completions", 200)].completion_tokens >= len(received)


def test_a_project_key_may_only_lower_its_priority(tenancy: Stack, admin: httpx.Client) -> None:
    """Lower numbers run first: a tenant asking for a negative priority would run ahead of
    every other tenant's requests (and preempt them), so it is refused; 0 and above run."""
    key = new_key(admin, new_project(admin, "acme")["id"])
    with sdk(tenancy, key["value"]) as client:
        for call in (
            lambda p: client.chat.completions.create(
                model=MODEL, messages=MESSAGES, max_tokens=1, extra_body={"priority": p}
            ),
            lambda p: client.completions.create(
                model=MODEL, prompt="Count.", max_tokens=1, extra_body={"priority": p}
            ),
            lambda p: client.responses.create(
                model=MODEL, input="Count.", max_output_tokens=1, extra_body={"priority": p}
            ),
        ):
            with pytest.raises(openai.BadRequestError) as refused:
                call(-1)
            assert refused.value.param == "priority"
            assert "may only lower their priority" in refused.value.message
            call(5)
    assert not any(r.priority < 0 for r in tenancy.worker.received)


def test_changing_a_keys_limits_takes_effect_at_once(tenancy: Stack, admin: httpx.Client) -> None:
    project = new_project(admin, "acme")
    key = new_key(admin, project["id"])
    path = f"/v1/organization/projects/{project['id']}/api_keys/{key['id']}"
    with sdk(tenancy, key["value"]) as client:
        client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=1)
        assert admin.post(path, json={"rpm": 1}).json()["rpm"] == 1
        client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=1)
        with pytest.raises(openai.RateLimitError):
            client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=1)
        assert admin.post(path, json={"rpm": None}).json()["rpm"] is None
        client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=1)


def test_admin_api_validation_is_openai_shaped(tenancy: Stack, admin: httpx.Client) -> None:
    assert admin.post("/v1/organization/projects", json={}).json()["error"]["param"] == "name"
    new_project(admin, "acme")
    taken = admin.post("/v1/organization/projects", json={"name": "acme"})
    assert taken.status_code == 400 and taken.json()["error"]["param"] == "name"
    project = new_project(admin, "globex")
    bad_limit = admin.post(f"/v1/organization/projects/{project['id']}/api_keys", json={"rpm": 0})
    assert bad_limit.status_code == 400 and bad_limit.json()["error"]["param"] == "rpm"
    bad_width = admin.get(
        "/v1/organization/usage/completions", params={"start_time": 0, "bucket_width": "2h"}
    )
    assert bad_width.status_code == 400
    assert bad_width.json()["error"]["param"] == "bucket_width"
    missing = admin.get("/v1/organization/usage/completions")
    assert missing.status_code == 400 and missing.json()["error"]["param"] == "start_time"


def test_admin_names_and_limits_are_checked_not_coerced(
    tenancy: Stack, admin: httpx.Client
) -> None:
    projects = "/v1/organization/projects"
    assert new_project(admin, "  acme ")["name"] == "acme"
    assert admin.post(projects, json={"name": "acme"}).status_code == 400  # the same name
    for name in ("   ", "a\nb", "a\u0000b"):
        refused = admin.post(projects, json={"name": name})
        assert refused.status_code == 400, (name, refused.text)
        assert refused.json()["error"]["param"] == "name"
    project = new_project(admin, "globex")
    keys = f"{projects}/{project['id']}/api_keys"
    for limits in ({"rpm": True}, {"rpm": "10"}, {"tpm": 1.5}, {"name": "k\u0000"}):
        refused = admin.post(keys, json=limits)
        assert refused.status_code == 400, (limits, refused.text)
        assert refused.json()["error"]["param"] == next(iter(limits))


def test_a_nul_in_an_id_or_filter_is_a_client_error_on_every_backend(
    tenancy: Stack, admin: httpx.Client
) -> None:
    """PostgreSQL cannot hold a NUL in text, not even to compare with: an id or cursor with
    one was a 500 there (and a 404 on SQLite)."""
    key = new_key(admin, new_project(admin, "acme")["id"])
    with tenancy.client(headers={"Authorization": f"Bearer {key['value']}"}) as http:
        answers = [
            http.get("/v1/files/file-%00"),
            http.get("/v1/files", params={"after": "file-\x00"}),
            http.get("/v1/batches/batch_%00"),
            http.get("/v1/responses/resp_%00"),
        ]
    answers.append(admin.get("/v1/organization/projects/proj_%00"))
    for answer in answers:
        assert answer.status_code in (400, 404), (answer.request.url, answer.text)
        assert answer.json()["error"]["type"] == "invalid_request_error"
    params = {"start_time": int(time.time()) - 60, "project_ids": "p\x00"}
    usage = admin.get("/v1/organization/usage/completions", params=params)
    # No project has that id: nothing to report (SQLite), or a 400 (PostgreSQL).
    assert usage.status_code in (200, 400), usage.text
    if usage.status_code == 200:
        assert [r for b in usage.json()["data"] for r in b["results"]] == []


def test_admin_api_is_off_without_an_admin_key(stack: Stack) -> None:
    with stack.client() as http:
        response = http.get("/v1/organization/projects")
    assert response.status_code == 403
    assert "--admin-key" in response.json()["error"]["message"]


def test_static_api_key_still_works_beside_project_keys(
    make_stack: Callable[..., Stack], migrated_database_url: str
) -> None:
    stack = make_stack(
        database_url=migrated_database_url,
        admin_key=ADMIN_KEY,
        api_key="static-key",
        log_prompts=True,
        log_flush_interval=0.05,
    )
    with stack.client(headers={"Authorization": f"Bearer {ADMIN_KEY}"}) as admin:
        key = new_key(admin, new_project(admin, "acme")["id"])
    with sdk(stack, "static-key") as static, sdk(stack, key["value"]) as project:
        static.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=1)
        project.completions.create(model=MODEL, prompt="Once upon", max_tokens=1)
    by_key = {row.api_key_id: row for row in logs(stack, 2)}
    # The static key belongs to no project; with --log-prompts the prompt is kept.
    assert set(by_key) == {None, key["id"]}
    assert by_key[None].project_id is None
    assert by_key[key["id"]].prompt == '["Once upon"]'
    assert "Count." in (by_key[None].prompt or "")


def test_tokens_in_tokens_out_is_keyed_logged_and_billed_as_completions(
    tenancy: Stack, admin: httpx.Client
) -> None:
    project = new_project(admin, "rl-lab")
    key = new_key(admin, project["id"])
    body = {"model": MODEL, "token_ids": [11, 12, 13], "sampling_params": {"max_tokens": 3}}
    with tenancy.client() as http:
        assert http.post("/inference/v1/generate", json=body).status_code == 401
        auth = {"Authorization": f"Bearer {key['value']}"}
        whole = http.post("/inference/v1/generate", json=body, headers=auth).json()
        streamed = http.post("/inference/v1/generate", json={**body, "stream": True}, headers=auth)
        assert streamed.status_code == 200
    # Three rows: the refused call is logged too (401, no tokens), and under load the
    # stream's row may be flushed last: wait for all three.
    (refused, row, stream_row) = logs(tenancy, 3)[-3:]
    assert refused.status_code == 401
    assert (row.endpoint, row.prompt_tokens, row.completion_tokens) == (
        "/inference/v1/generate",
        3,
        whole["usage"]["completion_tokens"],
    )
    assert (stream_row.prompt_tokens, stream_row.completion_tokens) == (3, 3)
    page = usage(admin, project_ids=project["id"])
    results = [r for bucket in page["data"] for r in bucket["results"]]
    assert sum(r["input_tokens"] for r in results) == 6
    assert sum(r["output_tokens"] for r in results) == 6
