"""vLLM's `prompt_logprobs` answer: per prompt token, its logprob and rank and the
position's most likely alternatives, keyed by token id (the first token, which nothing
predicts, is null). Evaluation harnesses and RL trainers read prompts' likelihoods
from it without generating."""

from __future__ import annotations

from collections.abc import Sequence

from api.logprobs import clamp, token_label
from api.schemas.common import PromptLogprob
from conveyor.protocol import TokenLogprob
from engine.tokenizer import Tokenizer


def prompt_logprobs_answer(
    tokenizer: Tokenizer,
    logprobs: Sequence[TokenLogprob | None] | None,
    prompt_length: int,
    top_n: int,
) -> list[dict[str, PromptLogprob] | None]:
    """One entry per prompt token: the token itself, then up to `top_n` alternatives
    (rank 1 first); a token among them appears once, under its own rank. Tokens are
    named by their text, whatever return_tokens_as_token_ids says (the keys are ids)."""
    logprobs = logprobs or []
    answer: list[dict[str, PromptLogprob] | None] = []
    for position in range(prompt_length):
        lp = logprobs[position] if position < len(logprobs) else None
        if lp is None:
            answer.append(None)
            continue
        entry = {
            str(lp.token_id): PromptLogprob(
                logprob=clamp(lp.logprob),
                rank=lp.rank,
                decoded_token=token_label(tokenizer, lp.token_id, as_ids=False),
            )
        }
        for rank, (token_id, value) in enumerate(list(lp.top)[:top_n], start=1):
            entry.setdefault(
                str(int(token_id)),
                PromptLogprob(
                    logprob=clamp(value),
                    rank=rank,
                    decoded_token=token_label(tokenizer, int(token_id), as_ids=False),
                ),
            )
        answer.append(entry)
    return answer
