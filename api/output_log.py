"""vLLM's `--enable-log-outputs` line: what a request generated, logged when it ends.

With `--enable-log-requests` (whose line says what was queued), each request's
reader gathers its choices' text and token ids as replies arrive, whatever the
route or whether it streams, and logs them once the request finishes: per
choice the text and token ids (each cut to `--max-log-len`, as vLLM cuts them)
and the finish reason. Output that is started over (a worker restarted the
request, or the answer was recovered from its stored result) is gathered
again from the start; a request that fails logs nothing here (its error is
logged where it is answered).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from conveyor.protocol import ReplyMessage

logger = logging.getLogger(__name__)


@dataclass
class _Choice:
    text: list[str] = field(default_factory=list)
    token_ids: list[int] = field(default_factory=list)
    finish_reason: str | None = None


class OutputLog:
    """One request's output, gathered for its log line."""

    def __init__(self, request_id: str, max_log_len: int | None) -> None:
        self.request_id = request_id
        self.max_log_len = max_log_len
        self._choices: dict[int, _Choice] = {}

    def reset(self) -> None:
        self._choices.clear()

    def add(self, message: ReplyMessage) -> None:
        for delta in message.choices:
            choice = self._choices.setdefault(delta.index, _Choice())
            choice.text.append(delta.text)
            choice.token_ids.extend(delta.token_ids)
            if delta.finish_reason is not None:
                choice.finish_reason = delta.finish_reason

    def finish(self, message: ReplyMessage) -> None:
        """The last message: add it and log the whole output."""
        self.add(message)
        for index in sorted(self._choices):
            choice = self._choices[index]
            text = "".join(choice.text)
            ids = choice.token_ids
            if self.max_log_len is not None:
                text, ids = text[: self.max_log_len], ids[: self.max_log_len]
            more = len(choice.token_ids) - len(ids)
            logger.info(
                "Generated response %s%s: output: %r, output_token_ids (%d): %s%s, "
                "finish_reason: %s",
                self.request_id,
                f" (choice {index})" if len(self._choices) > 1 else "",
                text,
                len(choice.token_ids),
                ids,
                f" ... ({more} more)" if more else "",
                choice.finish_reason,
            )
