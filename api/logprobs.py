"""Worker logprobs (token ids) -> OpenAI's two logprobs shapes (token strings).

Workers send ids only; the strings are made here with the tokenizer the API
already holds, so the engine loop never detokenizes alternatives it does not
need. Token strings use `token_bytes_repr` (vLLM's convention): a token that is
half a UTF-8 character shows as `bytes:\\xe4` instead of U+FFFD.
"""

from __future__ import annotations

import codecs
import math
from collections.abc import Sequence

from api.schemas.chat import ChatTokenLogprob, TopLogprob
from api.schemas.completions import CompletionLogprobs
from conveyor.protocol import TokenLogprob
from engine.tokenizer import Tokenizer

# JSON has no -inf; vLLM clamps the same way.
_FLOOR = -9999.0


def clamp(logprob: float) -> float:
    if math.isnan(logprob):
        return _FLOOR
    return max(float(logprob), _FLOOR)


def token_label(tokenizer: Tokenizer, token_id: int, as_ids: bool) -> str:
    """A token as logprobs name it: its text, or vLLM's `token_id:N` when the request
    (or --return-tokens-as-token-ids) asks for ids, which survive any detokenizing."""
    return f"token_id:{token_id}" if as_ids else tokenizer.token_bytes_repr(token_id)


def chat_logprobs(
    tokenizer: Tokenizer, logprobs: Sequence[TokenLogprob], top_n: int, as_ids: bool = False
) -> list[ChatTokenLogprob]:
    """Chat shape: one entry per generated token, with `top_n` alternatives and raw bytes."""
    out = []
    for lp in logprobs:
        out.append(
            ChatTokenLogprob(
                token=token_label(tokenizer, lp.token_id, as_ids),
                logprob=clamp(lp.logprob),
                bytes=list(tokenizer.token_bytes(lp.token_id)),
                top_logprobs=[
                    TopLogprob(
                        token=token_label(tokenizer, int(token_id), as_ids),
                        logprob=clamp(value),
                        bytes=list(tokenizer.token_bytes(int(token_id))),
                    )
                    for token_id, value in list(lp.top)[:top_n]
                ],
            )
        )
    return out


class CompletionLogprobBuilder:
    """Completions shape, built incrementally so a stream's `text_offset` keeps counting."""

    def __init__(self, tokenizer: Tokenizer, top_n: int, as_ids: bool = False) -> None:
        self.tokenizer = tokenizer
        self.top_n = top_n
        self.as_ids = as_ids
        # `text_offset` counts characters of the text, not of the token labels: a token
        # that is half a character adds nothing until the token that completes it, so
        # both point at where that character starts.
        self._text = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self.offset = 0

    def build(
        self,
        token_ids: Sequence[int],
        logprobs: Sequence[TokenLogprob | None],
        into: CompletionLogprobs | None = None,
    ) -> CompletionLogprobs:
        """`logprobs[i]` None (a prompt's first token) gives null logprob and null alternatives."""
        out = into if into is not None else CompletionLogprobs()
        for index, token_id in enumerate(token_ids):
            token = token_label(self.tokenizer, token_id, self.as_ids)
            lp = logprobs[index] if index < len(logprobs) else None
            out.tokens.append(token)
            out.text_offset.append(self.offset)
            self.offset += len(self._text.decode(self.tokenizer.token_bytes(token_id)))
            if lp is None:
                out.token_logprobs.append(None)
                out.top_logprobs.append(None)
                continue
            out.token_logprobs.append(clamp(lp.logprob))
            # vLLM's dict holds the chosen token plus the top alternatives.
            top = {token: clamp(lp.logprob)}
            for alt_id, value in list(lp.top)[: self.top_n]:
                top.setdefault(token_label(self.tokenizer, int(alt_id), self.as_ids), clamp(value))
            out.top_logprobs.append(top)
        return out
