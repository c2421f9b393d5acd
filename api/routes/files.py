"""`/v1/files`: upload, list, read, download and delete files (OpenAI's Files API).

Files belong to the caller's project: another project's file is a 404, as
if it did not exist. An upload is parsed as it arrives and its `file` part
written straight to storage (a temporary name, renamed when complete), so a
200 MB upload holds a megabyte of memory, not 200; the body limit lets this
one path through unbuffered and counts its bytes instead. The row is written
only after the bytes are in place, so a listed file can always be read.
An upload's `expires_after` gives the file a lifetime: once past it, the file
is gone to every call, and the API's purge (api/retention.py) deletes its row
and then its bytes.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterable, AsyncIterator, Callable, Sequence
from typing import Annotated, Any, Literal
from urllib.parse import quote

import anyio
import anyio.to_thread
from fastapi import APIRouter, Query, Request
from fastapi.responses import StreamingResponse
from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, parse_options_header
from sqlalchemy.orm import Session
from starlette.requests import ClientDisconnect

from api.batch_input_upload import BATCH_PURPOSE, Utf8Watch, check_batch_filename
from api.deps import Authenticated, DatabaseDep, FileStorageDep, PrincipalDep, SettingsDep
from api.errors import ApiError, bad_request
from api.schemas.files import (
    LIST_LIMIT_DEFAULT,
    LIST_LIMIT_MAX,
    check_expires_after_field,
    check_upload_purpose,
    expires_after_of,
    file_deleted_object,
    file_object,
)
from api.schemas.organization import list_object
from api.sql import in_session
from conveyor.db.file_store import (
    FILENAME_MAX_CHARS,
    create_file,
    delete_file,
    get_file,
    list_files,
    new_storage_key,
    stored_bytes,
)
from conveyor.db.pagination import UnknownCursor
from conveyor.db.project_lock import lock_project_files
from conveyor.db.stored_file import StoredFile
from conveyor.file_storage import (
    FileTooLarge,
    delete_unlisted_async,
    open_async,
    read_async,
    save_async,
)

logger = logging.getLogger(__name__)

router = APIRouter(prefix="/v1/files", dependencies=[Authenticated])

MAX_FIELD_BYTES = 4096
MAX_FIELDS = 16


def file_or_404(session: Session, file_id: str, project_id: str | None) -> StoredFile:
    stored = get_file(session, file_id, project_id)
    if stored is None:
        raise ApiError(404, f"No such File object: {file_id}", param="file_id")
    return stored


def clean_filename(raw: str) -> str:
    """A display name only (never a path): the last path segment, printable, column-sized."""
    name = raw.replace("\\", "/").rsplit("/", 1)[-1]
    return "".join(ch for ch in name if ch.isprintable()).strip()[:FILENAME_MAX_CHARS]


class UploadForm:
    """A multipart/form-data body read as it arrives: small fields kept, `file` streamed.

    `on_field` sees each field as soon as it is complete, and `on_file` the
    file's name as its part begins, so a bad `purpose` or a name the purpose
    refuses (sent before the file, as the SDKs send `purpose`) stops the
    upload before the file is stored. `file_chunks()` drives the whole body and ends only if it was
    well formed and carried the file and every `required` field.
    """

    def __init__(
        self,
        content_type: str | None,
        body: AsyncIterable[bytes],
        *,
        required: Sequence[str] = (),
        on_field: Callable[[str, str], None] = lambda name, value: None,
        on_file: Callable[[str, dict[str, str]], None] = lambda filename, fields: None,
    ) -> None:
        kind, params = parse_options_header(content_type or "")
        boundary = params.get(b"boundary")
        if kind != b"multipart/form-data" or not boundary:
            raise bad_request(
                "upload files as multipart/form-data with the fields `file` and `purpose`"
            )
        self.fields: dict[str, str] = {}
        self.filename: str | None = None
        self._body = body
        self._required = required
        self._on_field = on_field
        self._on_file = on_file
        self._name = ""
        self._is_file = False
        self._value = bytearray()
        self._header_name = bytearray()
        self._header_value = bytearray()
        self._disposition = b""
        self._file_data: list[bytes] = []
        self._file_done = False
        self._ended = False
        try:
            self._parser = MultipartParser(
                boundary,
                {
                    "on_part_begin": self._part_begin,
                    "on_header_field": self._header_field,
                    "on_header_value": self._header_value_data,
                    "on_header_end": self._header_end,
                    "on_headers_finished": self._headers_finished,
                    "on_part_data": self._part_data,
                    "on_part_end": self._part_end,
                    "on_end": self._end,
                },
            )
        except FormParserError as exc:
            raise bad_request(f"invalid multipart boundary: {exc}") from None

    async def file_chunks(self) -> AsyncIterator[bytes]:
        async for chunk in self._body:
            try:
                self._parser.write(chunk)
            except FormParserError as exc:
                raise bad_request(f"the multipart body is malformed: {exc}") from None
            if self._file_data:
                data, self._file_data = b"".join(self._file_data), []
                yield data
        if not self._ended:
            raise bad_request("the multipart body ended before its closing boundary")
        if not self._file_done:
            raise bad_request("missing the `file` part (the file to upload)", param="file")
        for name in self._required:
            if name not in self.fields:
                raise bad_request(f"missing the `{name}` field", param=name)

    # python-multipart callbacks: they run inside `write`, so a raised ApiError stops the upload.

    def _part_begin(self) -> None:
        self._name, self._is_file, self._value, self._disposition = "", False, bytearray(), b""

    def _header_field(self, data: bytes, start: int, end: int) -> None:
        self._header_name += data[start:end]

    def _header_value_data(self, data: bytes, start: int, end: int) -> None:
        self._header_value += data[start:end]

    def _header_end(self) -> None:
        if bytes(self._header_name).lower() == b"content-disposition":
            self._disposition = bytes(self._header_value)
        self._header_name, self._header_value = bytearray(), bytearray()

    def _headers_finished(self) -> None:
        _, options = parse_options_header(self._disposition)
        if b"name" not in options:
            raise bad_request("a multipart part has no name in its Content-Disposition")
        self._name = options[b"name"].decode("utf-8", "replace")
        if b"filename" not in options:
            if self._name == "file":
                raise bad_request("`file` must be sent as a file (with a filename)", param="file")
            if len(self.fields) >= MAX_FIELDS:
                raise bad_request("too many form fields")
            return
        if self._name != "file":
            raise bad_request(f"unexpected file in `{self._name}`; send it as `file`")
        if self.filename is not None:
            raise bad_request("upload one file per request", param="file")
        filename = clean_filename(options[b"filename"].decode("utf-8", "replace"))
        if not filename:
            raise bad_request("the uploaded file has no filename", param="file")
        self._on_file(filename, self.fields)
        self.filename = filename
        self._is_file = True

    def _part_data(self, data: bytes, start: int, end: int) -> None:
        if self._is_file:
            self._file_data.append(data[start:end])
            return
        self._value += data[start:end]
        if len(self._value) > MAX_FIELD_BYTES:
            raise bad_request(f"the `{self._name}` field is too long", param=self._name)

    def _part_end(self) -> None:
        if self._is_file:
            self._file_done = True
            return
        try:
            value = self._value.decode("utf-8")
        except UnicodeDecodeError:
            raise bad_request(f"`{self._name}` is not UTF-8 text", param=self._name) from None
        self.fields[self._name] = value
        self._on_field(self._name, value)

    def _end(self) -> None:
        self._ended = True


def check_upload_field(name: str, value: str) -> None:
    if name == "purpose":
        check_upload_purpose(value)
    elif name.startswith("expires_after"):
        check_expires_after_field(name, value)


def check_upload_filename(filename: str, fields: dict[str, str]) -> None:
    """The file's name, once `purpose` came before it: a batch input must be `.jsonl`."""
    if fields.get("purpose") == BATCH_PURPOSE:
        check_batch_filename(filename)


@router.post("")
async def upload(
    request: Request,
    principal: PrincipalDep,
    database: DatabaseDep,
    storage: FileStorageDep,
    settings: SettingsDep,
) -> dict[str, Any]:
    form = UploadForm(
        request.headers.get("content-type"),
        request.stream(),
        required=("purpose",),
        on_field=check_upload_field,
        on_file=check_upload_filename,
    )
    utf8 = Utf8Watch()
    limit, project_id = settings.max_project_storage_bytes, principal.project_id
    if limit:  # a project already full is told before it sends the bytes
        kept = await in_session(database, lambda session: stored_bytes(session, project_id))
        _check_storage(kept, None, limit)
    storage_key = new_storage_key()
    try:
        size = await save_async(
            storage,
            storage_key,
            utf8.passing(form.file_chunks()),
            max_bytes=settings.max_upload_bytes,
        )
    except FileTooLarge:
        raise ApiError(
            413,
            f"the file is larger than the limit of {settings.max_upload_bytes} bytes",
            param="file",
            code="file_too_large",
        ) from None
    except ClientDisconnect:
        raise bad_request("the client went away during the upload") from None
    filename, purpose = form.filename, form.fields["purpose"]
    assert filename is not None  # file_chunks() ends only after a complete file part

    def record(session: Session) -> dict[str, Any]:
        if limit:  # again with its size, under the lock: concurrent uploads count each other
            lock_project_files(session, project_id)
            _check_storage(stored_bytes(session, project_id), size, limit)
        stored = create_file(
            session,
            principal.project_id,
            filename,
            purpose,
            size,
            storage_key=storage_key,
            expires_after=expires_after,
        )
        return file_object(stored)

    try:
        if purpose == BATCH_PURPOSE:  # also when `purpose` came after the file
            check_batch_filename(filename)
            utf8.check()
        expires_after = expires_after_of(form.fields)  # both halves, seen only by now
        return await in_session(database, record)
    except BaseException:
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(storage.delete, storage_key)
        raise


def _check_storage(stored: int, size: int | None, limit: int) -> None:
    """Refuse an upload past the project's storage limit (`size` None: not yet known, so
    only a project already at its limit is refused)."""
    if (stored >= limit) if size is None else (stored + size > limit):
        raise ApiError(
            400,
            f"this project keeps {stored} bytes of files, and its limit is {limit} bytes"
            + (f"; this file's {size} bytes would pass it" if size is not None else "")
            + ": delete files it no longer needs (DELETE /v1/files/{file_id}), or ask the "
            "operator to raise --max-project-storage-bytes",
            param="file",
            code="storage_limit_exceeded",
        )


@router.get("")
async def list_(
    principal: PrincipalDep,
    database: DatabaseDep,
    purpose: str | None = None,
    after: str | None = None,
    limit: Annotated[int, Query(ge=1, le=LIST_LIMIT_MAX)] = LIST_LIMIT_DEFAULT,
    order: Literal["asc", "desc"] = "desc",
) -> dict[str, Any]:
    def work(session: Session) -> dict[str, Any]:
        try:
            page = list_files(
                session,
                principal.project_id,
                purpose=purpose,
                after=after,
                limit=limit,
                order=order,
            )
        except UnknownCursor:
            raise bad_request(f"`after` names no file: {after}", param="after") from None
        return list_object(page, file_object)

    return await in_session(database, work)


@router.get("/{file_id}")
async def retrieve(file_id: str, principal: PrincipalDep, database: DatabaseDep) -> dict[str, Any]:
    return await in_session(
        database, lambda s: file_object(file_or_404(s, file_id, principal.project_id))
    )


@router.get("/{file_id}/content")
async def content(
    file_id: str, principal: PrincipalDep, database: DatabaseDep, storage: FileStorageDep
) -> StreamingResponse:
    stored = await in_session(database, lambda s: file_or_404(s, file_id, principal.project_id))
    try:
        opened = await open_async(storage, stored.storage_key)
    except FileNotFoundError:
        # Deleted between the lookup and the open, or lost from storage.
        logger.warning("file %s has no bytes in storage (key %s)", file_id, stored.storage_key)
        raise ApiError(404, f"No content for File object: {file_id}", param="file_id") from None
    disposition = f"attachment; filename*=UTF-8''{quote(stored.filename, safe='')}"
    return StreamingResponse(
        read_async(opened),
        media_type="application/octet-stream",
        headers={"Content-Length": str(stored.bytes), "Content-Disposition": disposition},
    )


@router.delete("/{file_id}")
async def delete(
    file_id: str, principal: PrincipalDep, database: DatabaseDep, storage: FileStorageDep
) -> dict[str, Any]:
    key = await in_session(
        database, lambda s: delete_file(s, file_or_404(s, file_id, principal.project_id))
    )
    if key is not None:  # None: a batch under way still reads it; the purge deletes it later
        await delete_unlisted_async(storage, key)
    return file_deleted_object(file_id)
