"""vLLM's `truncate_prompt_tokens`: keep only a prompt's last k tokens (-1: the model's
length), for chat, completions, embeddings and scores alike, so a client that sends
long inputs on purpose gets them cut where vLLM cuts them instead of a 400."""

from __future__ import annotations

from api.errors import ApiError
from engine.tokenizer import Tokenizer


def check_truncate_prompt_tokens(value: int | None) -> None:
    """-1 or at least 1, as vLLM's field allows (0 would keep nothing)."""
    if value is not None and value < -1:
        raise ApiError(
            400,
            "truncate_prompt_tokens must be -1 (the model's maximum) or at least 1",
            param="truncate_prompt_tokens",
        )
    if value == 0:
        raise ApiError(
            400, "truncate_prompt_tokens must be at least 1", param="truncate_prompt_tokens"
        )


def tokens_to_keep(truncate_prompt_tokens: int | None, max_model_len: int | None) -> int | None:
    """vLLM's `truncate_prompt_tokens`: keep the last k tokens (-1: the model's length)."""
    keep = truncate_prompt_tokens
    if keep == -1:
        if max_model_len is None:
            raise ApiError(
                400,
                "truncate_prompt_tokens -1 needs the model's maximum length, not known yet",
                param="truncate_prompt_tokens",
            )
        keep = max_model_len
    if keep is not None and max_model_len is not None and keep > max_model_len:
        raise ApiError(
            400,
            f"truncate_prompt_tokens ({keep}) is greater than this model's maximum context "
            f"length ({max_model_len})",
            param="truncate_prompt_tokens",
        )
    return keep


def truncated_text_ids(
    tokenizer: Tokenizer, text: str, special: bool, keep: int | None
) -> list[int]:
    """The text's token ids cut to its last `keep`, keeping the special tokens the tokenizer
    adds around it (BOS, EOS), as HF's left-side truncation and so vLLM cut them."""
    ids = tokenizer.encode(text, add_special_tokens=special)
    if keep is None or len(ids) <= keep:
        return ids
    plain = tokenizer.encode(text, add_special_tokens=False) if special else ids
    start = next(
        (i for i in range(len(ids) - len(plain) + 1) if ids[i : i + len(plain)] == plain), None
    )
    if start is None:  # the specials are interleaved: no text span to cut
        return ids[-keep:]
    prefix, suffix = ids[:start], ids[start + len(plain) :]
    room = keep - len(prefix) - len(suffix)
    if room < 1:
        raise ApiError(
            400,
            f"truncate_prompt_tokens ({keep}) leaves no room for text next to the "
            f"{len(prefix) + len(suffix)} special tokens this model's tokenizer adds",
            param="truncate_prompt_tokens",
        )
    return prefix + plain[-room:] + suffix
