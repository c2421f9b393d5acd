"""The Files API through a real uvicorn, called with the official `openai` SDK (and raw httpx
where the SDK cannot misbehave): uploads, listing, content, deletion, limits, tenancy."""

from __future__ import annotations

import asyncio
import contextlib
import io
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from api.retention import Retention
from conveyor.db.database import Database
from conveyor.db.stored_file import StoredFile
from conveyor.file_storage import LocalFileStorage

from .conftest import Stack, running_stack
from .test_errors import error_of
from .test_tenancy import ADMIN_KEY, new_key, new_project

API_KEY = "sk-static-test"
MAX_UPLOAD = 16 << 10  # a small upload limit, so the 413s are cheap
MAX_BODY = 2000  # JSON bodies; uploads far bigger than this must still pass
JSONL = (
    '{"custom_id": "r1", "method": "POST", "url": "/v1/chat/completions", '
    '"body": {"messages": [{"role": "user", "content": "héllo, 世界 🚀"}]}}\n'
).encode()


@pytest.fixture(scope="module")
def files_stack(
    redis_url: str, bundled_model_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    """No worker: files never reach the queue. Tenancy off, the static key required."""
    with running_stack(
        redis_url,
        bundled_model_dir,
        with_worker=False,
        data_dir=tmp_path_factory.mktemp("data"),
        api_key=API_KEY,
        max_upload_bytes=MAX_UPLOAD,
        max_body_bytes=MAX_BODY,
    ) as started:
        yield started


@pytest.fixture()
def client(files_stack: Stack) -> Iterator[openai.OpenAI]:
    with sdk(files_stack, API_KEY) as sdk_client:
        yield sdk_client


@pytest.fixture()
def http(files_stack: Stack) -> Iterator[httpx.Client]:
    with files_stack.client(headers={"Authorization": f"Bearer {API_KEY}"}) as raw:
        yield raw


def sdk(stack: Stack, secret: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{stack.url}/v1", api_key=secret, max_retries=0, timeout=10)


def stored(stack: Stack) -> list[str]:
    """Every name in file storage, temporaries included."""
    root = stack.server.settings.data_dir / "files"
    return sorted(p.name for p in root.iterdir()) if root.exists() else []


def all_ids(client: openai.OpenAI) -> set[str]:
    return {f.id for f in client.files.list()}


def upload(http: httpx.Client, data: bytes, purpose: str = "batch") -> httpx.Response:
    return http.post("/v1/files", data={"purpose": purpose}, files={"file": ("in.jsonl", data)})


def test_upload_retrieve_download_delete(
    files_stack: Stack, client: openai.OpenAI, tmp_path: Path
) -> None:
    path = tmp_path / "requêtes 世界.jsonl"
    path.write_bytes(JSONL * 3)
    with path.open("rb") as f:
        created = client.files.create(file=f, purpose="batch")
    assert created.id.startswith("file-")
    assert (created.object, created.purpose, created.status) == ("file", "batch", "processed")
    assert (created.filename, created.bytes) == (path.name, len(JSONL) * 3)
    assert created.expires_at is None and created.status_details is None

    assert client.files.retrieve(created.id) == created
    assert created.id in all_ids(client)
    content = client.files.content(created.id)
    assert content.content == JSONL * 3  # byte-exact, non-ASCII included
    assert content.response.headers["content-type"] == "application/octet-stream"
    key = key_of(files_stack, created.id)
    assert key in stored(files_stack)

    deleted = client.files.delete(created.id)
    assert (deleted.id, deleted.object, deleted.deleted) == (created.id, "file", True)
    for call in (client.files.retrieve, client.files.content, client.files.delete):
        with pytest.raises(openai.NotFoundError) as missing:
            call(created.id)
        assert missing.value.body["param"] == "file_id"  # type: ignore[index]
    assert created.id not in all_ids(client)
    assert key not in stored(files_stack)


def test_binary_and_empty_files_round_trip(client: openai.OpenAI) -> None:
    for data in (bytes(range(256)) * 40, b""):
        created = client.files.create(file=("blob.bin", data), purpose="user_data")
        assert created.bytes == len(data)
        assert client.files.content(created.id).content == data


def test_upload_bigger_than_the_json_body_limit_is_streamed(
    files_stack: Stack, http: httpx.Client
) -> None:
    data = b"x" * (MAX_UPLOAD - 1) + b"\n"  # 8x MAX_BODY, exactly the upload limit
    response = upload(http, data)
    assert response.status_code == 200, response.text
    assert response.json()["bytes"] == MAX_UPLOAD
    assert http.get(f"/v1/files/{response.json()['id']}/content").content == data


def test_async_sdk_reads_the_refusal_of_an_upload_it_is_still_sending(files_stack: Stack) -> None:
    """A refused upload is read to its end before the answer: closing on a client still
    writing reset the connection, and AsyncOpenAI raised APIConnectionError instead."""
    big = b"x" * (MAX_UPLOAD * 256)

    async def upload_big() -> int:
        async with openai.AsyncOpenAI(
            base_url=f"{files_stack.url}/v1", api_key=API_KEY, max_retries=0, timeout=10
        ) as client:
            with pytest.raises(openai.APIStatusError) as refused:
                await client.files.create(file=("big.jsonl", big), purpose="batch")
            return refused.value.status_code

    assert asyncio.run(upload_big()) == 413


def test_too_large_upload_is_413_and_leaves_nothing(files_stack: Stack, http: httpx.Client) -> None:
    before_files, before_ids = stored(files_stack), set(_list(http))

    # Over the file limit but within the multipart envelope: cut by the route, mid-file.
    error = error_of(upload(http, b"x" * (MAX_UPLOAD + 1)), 413)
    assert (error["code"], error["param"]) == ("file_too_large", "file")
    # A declared Content-Length far over the limit: refused before a byte is read.
    response = upload(http, b"x" * (MAX_UPLOAD * 8))
    error = error_of(response, 413)
    assert (error["code"], error["param"]) == ("file_too_large", "file")
    assert response.headers["connection"] == "close"

    # No Content-Length (chunked): counted as it streams and cut off.
    def chunked() -> Iterator[bytes]:
        yield (
            b'--b\r\nContent-Disposition: form-data; name="purpose"\r\n\r\nbatch\r\n'
            b'--b\r\nContent-Disposition: form-data; name="file"; filename="a.jsonl"\r\n\r\n'
        )
        for _ in range(40):
            yield b"y" * 4096
        yield b"\r\n--b--\r\n"

    response = http.post(
        "/v1/files",
        content=chunked(),
        headers={"content-type": "multipart/form-data; boundary=b"},
    )
    error = error_of(response, 413)  # however the size was found out: one answer
    assert (error["code"], error["param"]) == ("file_too_large", "file")

    assert stored(files_stack) == before_files
    assert set(_list(http)) == before_ids


def _list(http: httpx.Client, **params: Any) -> list[str]:
    response = http.get("/v1/files", params=params)
    assert response.status_code == 200, response.text
    return [f["id"] for f in response.json()["data"]]


@pytest.mark.parametrize(
    ("purpose", "code"),
    [
        ("batch_output", None),  # made by the server only
        ("fine-tune-results", None),
        ("fine-tune", "not_supported"),  # an OpenAI purpose for a feature conveyor lacks
        ("assistants", "not_supported"),
        ("cats", None),
        ("", None),
    ],
)
def test_bad_purpose_is_400(
    files_stack: Stack, http: httpx.Client, purpose: str, code: str | None
) -> None:
    before = stored(files_stack)
    error = error_of(upload(http, JSONL, purpose=purpose), 400)
    assert (error["param"], error["code"]) == ("purpose", code)
    assert stored(files_stack) == before


def test_malformed_uploads_are_400(files_stack: Stack, http: httpx.Client) -> None:
    before, before_ids = stored(files_stack), set(_list(http))
    no_purpose = http.post("/v1/files", files={"file": ("a.jsonl", JSONL)})
    assert error_of(no_purpose, 400)["param"] == "purpose"
    no_file = http.post("/v1/files", data={"purpose": "batch"}, files={"x": ("", b"")})
    assert error_of(no_file, 400)
    not_a_file = http.post("/v1/files", files={"purpose": (None, "batch"), "file": (None, "hi")})
    assert error_of(not_a_file, 400)["param"] == "file"
    assert error_of(http.post("/v1/files", json={"purpose": "batch"}), 400)
    two_files = http.post(
        "/v1/files",
        data={"purpose": "batch"},
        files=[("file", ("a.jsonl", JSONL)), ("file", ("b.jsonl", JSONL))],
    )
    assert error_of(two_files, 400)["param"] == "file"
    truncated = http.post(
        "/v1/files",
        content=b'--b\r\nContent-Disposition: form-data; name="file"; filename="a"\r\n\r\nabc',
        headers={"content-type": "multipart/form-data; boundary=b"},
    )
    assert error_of(truncated, 400)
    expiring = http.post(
        "/v1/files",
        data={"purpose": "batch", "expires_after[anchor]": "created_at"},
        files={"file": ("a.jsonl", JSONL)},
    )
    error = error_of(expiring, 400)  # read after the file was stored: its bytes go again
    assert (error["param"], error["message"]) == (
        "expires_after",
        "expires_after needs both anchor and seconds",
    )
    assert stored(files_stack) == before
    assert set(_list(http)) == before_ids


def _multipart(parts: list[tuple[str, str | None, bytes]]) -> bytes:
    """A multipart/form-data body (boundary `b`) with these (name, filename, data) parts,
    in this order: the SDKs send `purpose` first, other clients may not."""
    body = b""
    for name, filename, data in parts:
        disposition = f'form-data; name="{name}"' + (
            f'; filename="{filename}"' if filename is not None else ""
        )
        body += f"--b\r\nContent-Disposition: {disposition}\r\n\r\n".encode() + data + b"\r\n"
    return body + b"--b--\r\n"


@pytest.mark.parametrize("purpose_first", [True, False])
@pytest.mark.parametrize(
    ("filename", "data", "problem"),
    [
        ("requests.txt", JSONL, "must be a .jsonl file"),
        ("requests.json", JSONL, "must be a .jsonl file"),
        ("requests", JSONL, "must be a .jsonl file"),
        ("latin-1.jsonl", '{"custom_id": "café"}\n'.encode("latin-1"), "must be UTF-8 text"),
        ("utf-16.jsonl", JSONL.decode().encode("utf-16"), "must be UTF-8 text"),
        # A character cut off by the file's end: every byte before it was UTF-8.
        ("cut.jsonl", JSONL + "🚀".encode()[:3], "must be UTF-8 text"),
    ],
)
def test_a_batch_input_must_be_jsonl_of_utf8_text(
    files_stack: Stack,
    http: httpx.Client,
    filename: str,
    data: bytes,
    problem: str,
    purpose_first: bool,
) -> None:
    """As on OpenAI, a wrong batch file is a 400 at upload, not a failed batch later;
    whichever order the form's fields come in, nothing is kept."""
    before, before_ids = stored(files_stack), set(_list(http))
    parts = [("file", filename, data), ("purpose", None, b"batch")]
    response = http.post(
        "/v1/files",
        content=_multipart(parts[::-1] if purpose_first else parts),
        headers={"content-type": "multipart/form-data; boundary=b"},
    )
    error = error_of(response, 400)
    assert (error["param"], error["code"]) == ("file", "invalid_file_format")
    assert problem in error["message"]
    assert stored(files_stack) == before
    assert set(_list(http)) == before_ids


def test_batch_input_checks_leave_other_files_and_good_batch_files_alone(
    client: openai.OpenAI,
) -> None:
    bom = b"\xef\xbb\xbf" + JSONL  # a UTF-8 byte-order mark is still UTF-8 (Windows editors)
    for filename, data in (("UPPER.JSONL", JSONL), ("bom.jsonl", bom), ("empty.jsonl", b"")):
        created = client.files.create(file=(filename, data), purpose="batch")
        assert (created.filename, created.bytes) == (filename, len(data))
    # The checks are the Batch API's: other purposes keep any name and any bytes.
    latin = '{"custom_id": "café"}\n'.encode("latin-1")
    created = client.files.create(file=("notes.txt", latin), purpose="user_data")
    assert client.files.content(created.id).content == latin


def test_the_sdk_reads_why_a_batch_file_was_refused(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as refused:
        client.files.create(file=("requests.csv", b"a,b\n"), purpose="batch")
    assert refused.value.code == "invalid_file_format"
    assert "'requests.csv'" in refused.value.message
    # `purpose` comes first from the SDK, so the name is refused before the bytes are
    # read: a file over the size limit is told its format, not its size.
    with pytest.raises(openai.BadRequestError) as refused:
        client.files.create(file=("big.txt", b"x" * (MAX_UPLOAD + 1)), purpose="batch")
    assert refused.value.code == "invalid_file_format"


def test_pagination_after_limit_order_and_purpose(client: openai.OpenAI) -> None:
    made = [client.files.create(file=(f"{i}.jsonl", JSONL), purpose="batch").id for i in range(5)]
    extra = client.files.create(file=("x.txt", b"x"), purpose="user_data").id
    newest_first = [f.id for f in client.files.list()]  # default: desc, limit 10000
    assert set(made) | {extra} <= set(newest_first)
    oldest_first = [f.id for f in client.files.list(order="asc")]
    assert oldest_first == newest_first[::-1]

    first = client.files.list(limit=2)
    assert len(first.data) == 2 and first.has_more
    walked = [f.id for f in first]  # the SDK pages on with `after`
    assert walked == newest_first
    page = client.files.list(limit=3, order="asc", after=oldest_first[1])
    assert [f.id for f in page.data] == oldest_first[2:5]

    batch_only = [f.id for f in client.files.list(purpose="batch")]
    assert set(made) <= set(batch_only) and extra not in batch_only
    assert [f.id for f in client.files.list(purpose="user_data")].count(extra) == 1
    # A cursor outside the filter still marks its place: the batch files listed after it.
    after_extra = newest_first[newest_first.index(extra) + 1 :]
    page = client.files.list(purpose="batch", after=extra)
    assert [f.id for f in page.data] == [f for f in after_extra if f in batch_only]


def test_deleting_each_file_while_paging_reaches_them_all(client: openai.OpenAI) -> None:
    """The SDK asks for the next page `after` the last file of the one before, which the
    loop has just deleted: its id still marks the place."""
    made = {client.files.create(file=(f"{i}.txt", b"x"), purpose="user_data").id for i in range(5)}
    deleted = []
    for listed in client.files.list(limit=2):  # newest first: this test's files lead
        if listed.id in made:
            assert client.files.delete(listed.id).deleted
            deleted.append(listed.id)
        if len(deleted) == len(made):
            break
    assert sorted(deleted, reverse=True) == deleted and set(deleted) == made
    gone = next(iter(made))
    assert all(f.id not in made for f in client.files.list(after=gone))


@pytest.mark.parametrize(
    ("params", "param"),
    [
        ({"limit": 0}, "limit"),
        ({"limit": 10_001}, "limit"),
        ({"order": "sideways"}, "order"),
        ({"after": "file-nope"}, "after"),
    ],
)
def test_bad_list_parameters_are_400(
    http: httpx.Client, params: dict[str, Any], param: str
) -> None:
    assert error_of(http.get("/v1/files", params=params), 400)["param"] == param


def test_unauthenticated_is_401(files_stack: Stack) -> None:
    before = stored(files_stack)
    for headers in ({}, {"Authorization": "Bearer wrong"}):
        with files_stack.client(headers=headers) as anonymous:
            error_of(anonymous.get("/v1/files"), 401)
            error_of(anonymous.get("/v1/files/file-x/content"), 401)
            error_of(anonymous.delete("/v1/files/file-x"), 401)
            refused = upload(anonymous, JSONL * 100)
            error_of(refused, 401)
    with sdk(files_stack, "wrong") as client, pytest.raises(openai.AuthenticationError):
        client.files.create(file=("a.jsonl", io.BytesIO(JSONL)), purpose="batch")
    assert stored(files_stack) == before


# --- tenancy: SQLite and PostgreSQL ---------------------------------------------------------


@pytest.fixture()
def tenancy(make_stack: Callable[..., Stack], migrated_database_url: str, tmp_path: Path) -> Stack:
    return make_stack(
        database_url=migrated_database_url,
        admin_key=ADMIN_KEY,
        data_dir=tmp_path,
        with_worker=False,
    )


def test_files_belong_to_their_project(tenancy: Stack) -> None:
    with tenancy.client(headers={"Authorization": f"Bearer {ADMIN_KEY}"}) as admin:
        acme = new_key(admin, new_project(admin, "acme")["id"])
        globex = new_key(admin, new_project(admin, "globex")["id"])
    with sdk(tenancy, acme["value"]) as mine, sdk(tenancy, globex["value"]) as theirs:
        created = mine.files.create(file=("mine.jsonl", JSONL), purpose="batch")
        own = theirs.files.create(file=("theirs.jsonl", JSONL), purpose="batch")
        for call in (theirs.files.retrieve, theirs.files.content, theirs.files.delete):
            with pytest.raises(openai.NotFoundError):
                call(created.id)
        assert [f.id for f in theirs.files.list()] == [own.id]
        assert [f.id for f in mine.files.list()] == [created.id]
        # Another project's id pages like an id never made at that time: a 400 for it
        # alone would tell a tenant that the id exists elsewhere.
        made_up = created.id[: -len("ffffffffffff")] + "ffffffffffff"
        for after in (created.id, made_up):
            assert [f.id for f in theirs.files.list(after=after, order="asc")] == [own.id]
            assert [f.id for f in mine.files.list(after=after, order="asc")] == []
        # Still there for its owner, after the other project's delete attempt.
        assert mine.files.content(created.id).content == JSONL
        assert mine.files.delete(created.id).deleted
    # The admin key is not a project key: it cannot reach /v1/files.
    with tenancy.client(headers={"Authorization": f"Bearer {ADMIN_KEY}"}) as admin:
        error_of(admin.get("/v1/files"), 401)


@contextlib.contextmanager
def file_row(stack: Stack, file_id: str) -> Iterator[StoredFile]:
    """A file's row in the server's database, changes to it committed on the way out."""
    database = Database(stack.server.settings.resolved_database_url)
    try:
        with database.session() as session:
            row = session.get(StoredFile, file_id)
            assert row is not None
            yield row
    finally:
        database.close()


def key_of(stack: Stack, file_id: str) -> str:
    """The name a file's bytes are stored under (made before its id: see file_store)."""
    with file_row(stack, file_id) as row:
        return row.storage_key


def expire_now(stack: Stack, file_id: str) -> None:
    """Move a file's expiry into the past (the shortest real lifetime is an hour)."""
    with file_row(stack, file_id) as row:
        row.expires_at = int(time.time()) - 1


def test_expires_after_gives_a_file_a_lifetime(
    files_stack: Stack, client: openai.OpenAI, http: httpx.Client
) -> None:
    """OpenAI's `expires_after` (an hour to 30 days after it is made): past it the file is
    gone to every call, and the purge deletes its row and bytes."""
    lasting = client.files.create(file=("keep.jsonl", JSONL), purpose="batch")
    assert lasting.expires_at is None  # kept until deleted
    brief = client.files.create(
        file=("brief.jsonl", JSONL),
        purpose="batch",
        expires_after={"anchor": "created_at", "seconds": 3600},
    )
    assert brief.expires_at == brief.created_at + 3600
    assert client.files.retrieve(brief.id).expires_at == brief.expires_at
    expire_now(files_stack, brief.id)
    with pytest.raises(openai.NotFoundError):
        client.files.retrieve(brief.id)
    assert http.get(f"/v1/files/{brief.id}/content").status_code == 404
    assert brief.id not in all_ids(client) and lasting.id in all_ids(client)
    brief_key, lasting_key = key_of(files_stack, brief.id), key_of(files_stack, lasting.id)
    assert brief_key in stored(files_stack)  # until the purge runs
    retention = Retention(
        Database(files_stack.server.settings.resolved_database_url),
        LocalFileStorage(files_stack.server.settings.data_dir / "files"),
        retention_days=0,
        interval=60,
    )
    try:
        assert asyncio.run(retention.purge_files_once()) == 1
    finally:
        retention.database.close()
    assert brief_key not in stored(files_stack) and lasting_key in stored(files_stack)
    client.files.delete(lasting.id)


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"expires_after[anchor]": "created_at", "expires_after[seconds]": "60"}, "seconds"),
        ({"expires_after[anchor]": "created_at", "expires_after[seconds]": "2592001"}, "seconds"),
        ({"expires_after[anchor]": "created_at", "expires_after[seconds]": "1h"}, "seconds"),
        ({"expires_after[anchor]": "last_active_at", "expires_after[seconds]": "3600"}, "anchor"),
    ],
)
def test_a_lifetime_out_of_bounds_is_400(
    files_stack: Stack, http: httpx.Client, fields: dict[str, str], param: str
) -> None:
    before = stored(files_stack)
    response = http.post(
        "/v1/files", data={"purpose": "batch", **fields}, files={"file": ("a.jsonl", JSONL)}
    )
    assert error_of(response, 400)["param"] == f"expires_after.{param}"
    assert stored(files_stack) == before


def test_a_project_keeps_no_more_than_its_storage_limit(
    make_stack: Callable[..., Stack], migrated_database_url: str, tmp_path: Path
) -> None:
    """Per project, so no tenant fills the disk for the others: an upload past the limit
    is refused and leaves nothing, and deleting a file makes room."""
    stack = make_stack(
        database_url=migrated_database_url,
        admin_key=ADMIN_KEY,
        data_dir=tmp_path,
        with_worker=False,
        max_project_storage_bytes=100,
    )
    with stack.client(headers={"Authorization": f"Bearer {ADMIN_KEY}"}) as admin:
        acme = new_key(admin, new_project(admin, "acme")["id"])
        globex = new_key(admin, new_project(admin, "globex")["id"])
    with sdk(stack, acme["value"]) as mine, sdk(stack, globex["value"]) as theirs:
        first = mine.files.create(file=("a.jsonl", b"x" * 60), purpose="batch")
        before = stored(stack)
        with pytest.raises(openai.BadRequestError) as refused:
            mine.files.create(file=("b.jsonl", b"x" * 41), purpose="batch")
        error = refused.value.body
        assert isinstance(error, dict) and error["code"] == "storage_limit_exceeded"
        assert "keeps 60 bytes" in error["message"] and "limit is 100" in error["message"]
        assert stored(stack) == before  # its bytes were not kept
        assert [f.id for f in mine.files.list()] == [first.id]
        # Exactly up to the limit is allowed; the other project has its own.
        last = mine.files.create(file=("c.jsonl", b"x" * 40), purpose="batch")
        theirs.files.create(file=("d.jsonl", b"x" * 100), purpose="batch")
        # At the limit, refused before the bytes are read.
        with pytest.raises(openai.BadRequestError, match="keeps 100 bytes"):
            mine.files.create(file=("e.jsonl", b"x"), purpose="batch")
        mine.files.delete(last.id)
        mine.files.create(file=("f.jsonl", b"x" * 40), purpose="batch")
