"""What a file uploaded for the Batch API must be: a `.jsonl` file of UTF-8 text.

OpenAI refuses anything else at upload with a 400, so a wrong file is told at
once rather than found when the batch made from it fails validation. The
lines themselves (JSON, `custom_id`, `url`, `body`) are checked when a batch
is created from the file (workers/batch/validation.py), as on OpenAI.
"""

from __future__ import annotations

import codecs
from collections.abc import AsyncIterable, AsyncIterator

from api.errors import bad_request

BATCH_PURPOSE = "batch"
BATCH_SUFFIX = ".jsonl"


def check_batch_filename(filename: str) -> None:
    """A 400 unless the name says JSON Lines (any case, as `.JSONL` is still the format)."""
    if not filename.lower().endswith(BATCH_SUFFIX):
        raise bad_request(
            f"a file for the Batch API must be a {BATCH_SUFFIX} file (JSON Lines, one request "
            f"per line); this one is named '{filename}'",
            param="file",
            code="invalid_file_format",
        )


class Utf8Watch:
    """Decodes a file's bytes as they stream past, so whether they are UTF-8 text is known
    when the upload ends without reading the stored file again."""

    def __init__(self) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")()
        self._valid = True

    async def passing(self, chunks: AsyncIterable[bytes]) -> AsyncIterator[bytes]:
        """`chunks`, unchanged, each decoded on its way (until one is not UTF-8)."""
        async for chunk in chunks:
            if self._valid:
                self._feed(chunk, final=False)
            yield chunk

    def check(self) -> None:
        """A 400 unless every byte streamed past was UTF-8 text (a character cut off by the
        file's end included)."""
        if self._valid:
            self._feed(b"", final=True)
        if not self._valid:
            raise bad_request(
                "a file for the Batch API must be UTF-8 text; this one is not (save it as "
                "UTF-8 and upload it again)",
                param="file",
                code="invalid_file_format",
            )

    def _feed(self, data: bytes, *, final: bool) -> None:
        try:
            self._decoder.decode(data, final=final)
        except UnicodeDecodeError:
            self._valid = False
