"""Turn a request's sampled token ids into streamed text, and stop on stop strings.

Decoding is incremental (vLLM / HF TextStreamer style): each step decodes only a
short window of ids, from `prefix_offset` (the tokens released last time, as
context so merges and leading spaces come out right) to the end, and releases
what goes beyond the window's old text. Text that ends in U+FFFD is held back,
since a later token may complete the UTF-8 character; but where decode settles
bytes locally (byte-level BPE) a character is at most 4 bytes, so once many tokens
are held (a model emitting bytes that never form a character) all but the last few
tokens' text is settled and goes out, which keeps both the stream moving and each
step's decode short (sglang#34852 is the bug this avoids: nothing streamed, and
quadratic decode work on the engine's thread).

Stop strings are matched on released text only; a suffix that could still grow
into a stop string is held back so a stop string never reaches a client.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from engine.tokenizer import Tokenizer

# Prompt tokens decoded as context before the first generated one (vLLM uses 5):
# enough for SentencePiece's leading space and byte-level merges to come out right.
_PROMPT_CONTEXT_TOKENS = 5
_REPLACEMENT_CHAR = "\ufffd"
# Held-back tokens beyond which the text before the last few is settled: an incomplete
# character's bytes lie in the last 4 tokens that decode to something. A try that cannot
# settle anything waits for this many more tokens, so it costs little where it fails.
_MAX_HELD_TOKENS = 8
_UTF8_MAX_BYTES = 4
# How far back the settling looks for those 4 tokens (past ids decoding to nothing).
_SETTLE_LOOKBACK = 16


@dataclass(frozen=True)
class DetokenizerStep:
    """What one `add()` released."""

    text_delta: str  # text newly released to the client by this add()
    stop_string: str | None  # the stop string that matched in this step, else None


class IncrementalDetokenizer:
    """Streams one sequence's text; amortised O(1) work per token."""

    def __init__(
        self,
        tokenizer: Tokenizer,
        prompt_token_ids: Sequence[int],
        *,
        skip_special_tokens: bool = True,
        stop: Sequence[str] = (),
        include_stop_str_in_output: bool = False,
    ) -> None:
        if isinstance(stop, str):
            stop = (stop,)
        if any(not isinstance(s, str) or not s for s in stop):
            raise ValueError("stop strings must be non-empty strings")
        self._tokenizer = tokenizer
        self._skip_special_tokens = skip_special_tokens
        # Left out of the window, as decode would: a model repeating one (ignore_eos after
        # its answer) would otherwise grow the window, and each step's decode, without end.
        self._skipped = tokenizer.special_token_ids if skip_special_tokens else frozenset()
        self._stops = tuple(dict.fromkeys(stop))
        self._include_stop = include_stop_str_in_output
        # The decode window: ids[:read_offset] were already released (the prompt tail at first).
        self._ids = list(prompt_token_ids[-_PROMPT_CONTEXT_TOKENS:])
        self._read_offset = len(self._ids)
        self._window_text = self._decode(self._ids)
        # Held tokens at the next settling try; never where decode reads byte runs whole.
        self._settles = tokenizer.decodes_bytes_locally
        self._next_settle = _MAX_HELD_TOKENS + 1
        self._pending = ""  # released by the decoder, held back as a possible stop-string start
        self._released: list[str] = []
        self._output_cache: str | None = ""
        self._stop_string: str | None = None
        self._finished = False

    @property
    def output_text(self) -> str:
        """Everything released so far (the final text once finished)."""
        if self._output_cache is None:
            self._output_cache = "".join(self._released)
        return self._output_cache

    @property
    def stop_string(self) -> str | None:
        """The stop string that ended the text, from `add()` or found at `flush()`."""
        return self._stop_string

    @property
    def finished(self) -> bool:
        return self._finished

    def add(self, token_ids: Sequence[int], check_stop: bool = True) -> DetokenizerStep:
        """Take one engine step's new token ids; return the text they release.

        `check_stop=False` (the request has not reached `min_tokens` yet) releases
        the text without looking for stop strings, as vLLM does.
        """
        if self._finished:
            reason = "a stop string matched" if self._stop_string is not None else "flushed"
            raise RuntimeError(f"detokenizer already finished ({reason}); no more tokens")
        kept = [t for t in token_ids if t not in self._skipped]
        if not kept:
            return self._release("", final=False, check_stop=check_stop)
        self._ids.extend(kept)
        text = self._decode(self._ids)
        if len(text) <= len(self._window_text) or text.endswith(_REPLACEMENT_CHAR):
            # Nothing new yet, or an incomplete character that later bytes may finish.
            settled = self._release_settled_head(text)
            return self._release(settled, final=False, check_stop=check_stop)
        delta = text[len(self._window_text) :]
        # Slide the window: the ids just released become the next step's context.
        del self._ids[: self._read_offset]
        self._read_offset = len(self._ids)
        self._window_text = self._decode(self._ids)
        self._next_settle = _MAX_HELD_TOKENS + 1
        return self._release(delta, final=False, check_stop=check_stop)

    def flush(self) -> str:
        """The request finished for another reason (length / EOS / abort): release held text.

        Held text that still ends in U+FFFD (the first bytes of a character that
        `max_tokens` cut) is dropped, as vLLM drops it: HF's decode would show it as
        U+FFFD, and an answer would end in a replacement character.
        """
        if self._finished:
            return ""
        text = self._decode(self._ids).rstrip(_REPLACEMENT_CHAR)
        delta = text[len(self._window_text) :]
        return self._release(delta, final=True).text_delta

    def _release_settled_head(self, text: str) -> str:
        """Many tokens held and still ending in U+FFFD: the text of all but the last 4
        tokens that decode to something is final (their bytes are past any incomplete
        character), so return it and slide the window past those tokens.

        Only for byte-level decoders (`Tokenizer.decodes_bytes_locally`), and only where
        the window, decoded from its new start, gives the same text."""
        held = len(self._ids) - self._read_offset
        if not self._settles or held < self._next_settle:
            return ""
        self._next_settle = held + _MAX_HELD_TOKENS
        split, bytes_after = len(self._ids), 0
        lowest = max(self._read_offset, len(self._ids) - _SETTLE_LOOKBACK)
        while split > lowest and bytes_after < _UTF8_MAX_BYTES:
            split -= 1
            bytes_after += bool(self._decode(self._ids[split : split + 1]))
        if bytes_after < _UTF8_MAX_BYTES:
            return ""
        # A split inside a character (its lead byte before, the rest after) leaves the
        # head ending in U+FFFD where the text has the character: step back before it.
        latest = split
        for split in range(latest, max(self._read_offset, latest - _UTF8_MAX_BYTES) - 1, -1):
            head = self._decode(self._ids[:split])
            if len(head) <= len(self._window_text):
                return ""
            if text.startswith(head):
                break
        else:
            return ""
        window, settled = self._ids[self._read_offset :], split - self._read_offset
        context = self._decode(window[:settled])
        if self._decode(window) != context + text[len(head) :]:
            return ""
        delta = head[len(self._window_text) :]
        self._ids, self._read_offset, self._window_text = window, settled, context
        self._next_settle = _MAX_HELD_TOKENS + 1
        return delta

    def _decode(self, token_ids: list[int]) -> str:
        return self._tokenizer.decode(token_ids, skip_special_tokens=self._skip_special_tokens)

    def _release(self, delta: str, *, final: bool, check_stop: bool = True) -> DetokenizerStep:
        """Check the new text for stop strings and release what can no longer start one."""
        pending = self._pending + delta
        stop_string: str | None = None
        match = self._find_stop(pending) if check_stop else None
        if not check_stop and not final:
            out, self._pending = pending, ""
        elif match is not None:
            start, stop_string = match
            out = pending[: start + len(stop_string)] if self._include_stop else pending[:start]
            self._pending = ""
            self._stop_string = stop_string
            self._finished = True
        elif final:
            out, self._pending = pending, ""
            self._finished = True
        else:
            hold = self._stop_prefix_start(pending)
            out, self._pending = pending[:hold], pending[hold:]
        if out:
            self._released.append(out)
            self._output_cache = None
        return DetokenizerStep(out, stop_string)

    def _find_stop(self, text: str) -> tuple[int, str] | None:
        """The stop string that completes first in `text` (the longest if several end together).

        Matching by end position is what checking after every character would find,
        so the result does not depend on how tokens were grouped into steps.
        """
        best: tuple[int, int, str] | None = None
        for stop in self._stops:
            start = text.find(stop)
            if start < 0:
                continue
            key = (start + len(stop), start, stop)
            if best is None or key[:2] < best[:2]:
                best = key
        return None if best is None else (best[1], best[2])

    def _stop_prefix_start(self, text: str) -> int:
        """Index of the longest suffix of `text` that is a proper prefix of a stop string."""
        hold = len(text)
        for stop in self._stops:
            i = max(0, len(text) - len(stop) + 1)
            while i < hold:
                i = text.find(stop[0], i, hold)
                if i < 0:
                    break
                if stop.startswith(text[i:]):
                    hold = i
                    break
                i += 1
        return hold
