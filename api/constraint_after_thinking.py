"""A reasoning model's structured-output constraint binds its answer, not its thinking.

As in vLLM, the model thinks freely up to `</think>` and the grammar applies after it.
Where the output starts (inside a think block, free to open one, or harmony's channels)
is read from the prompt's end; a parser whose thinking tags a grammar cannot wrap is a
400 rather than a constraint that would cut its thinking short. Chat completions and
tokens-in generation share this rule.
"""

from __future__ import annotations

from dataclasses import replace

from api.errors import ApiError
from api.reasoning_parser import UNCONSTRAINED, ThinkStart
from engine.sampling_params import SamplingParams


def bind_after_thinking(
    sampling: SamplingParams, reasoning_parser: str | None, start: ThinkStart, param: str
) -> SamplingParams:
    """`sampling` with its constraint (if any) applied from the answer on; `param` names
    the field that asked for it, for the 400."""
    constraint = sampling.structured_output
    if constraint is None or reasoning_parser is None or start is ThinkStart.ANSWER:
        return sampling
    if reasoning_parser in UNCONSTRAINED:
        raise ApiError(
            400,
            f"{param} cannot constrain the answer of a model read with --reasoning-parser "
            f"{reasoning_parser} (its thinking tags are not grammar-wrapped); turn thinking "
            "off in the prompt (chat_template_kwargs) or leave the constraint out",
            param=param,
        )
    return replace(sampling, structured_output=replace(constraint, after_thinking=start.value))
