"""vLLM's `/pooling`: a pooling model's output per input, whatever its task."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel

from api.errors import ApiError
from api.schemas.classify import ActivationFields, ClassificationUsage
from api.schemas.embeddings import EmbeddingRequest

# The pooling tasks a model of ours does: one vector per input. vLLM's per-token tasks
# (token_embed, token_classify) and its plugin task have no runner here.
POOLING_TASKS = ("embed", "classify")


class PoolingRequest(ActivationFields, EmbeddingRequest):
    """Inputs as /v1/embeddings takes them (texts, token ids, or a conversation), and
    `task`, which may only name the model's own (None: the model's)."""

    task: str | None = None

    def check_supported(self) -> None:
        super().check_supported()
        if self.task is not None and self.task not in POOLING_TASKS:
            raise ApiError(
                400,
                f"task {self.task!r} is not supported: each input gives one vector "
                f"here, so the tasks are {', '.join(POOLING_TASKS)} (the model's own "
                "by default)",
                param="task",
            )

    def embedding_normalize(self) -> bool | None:
        """For an embedding model: whether to L2-normalize. vLLM's newer `use_activation`
        (and its older names) mean normalization for embeddings; `normalize` wins."""
        return self.normalize if self.normalize is not None else self.wants_activation


class PoolingData(BaseModel):
    index: int
    object: Literal["pooling"] = "pooling"
    # The embedding, or the classifier's label probabilities (logits without activation);
    # with encoding_format "base64", their little-endian float32 bytes.
    data: list[float] | str


class PoolingResponse(BaseModel):
    id: str
    object: Literal["list"] = "list"
    created: int
    model: str
    data: list[PoolingData]
    usage: ClassificationUsage  # prompt tokens only, as /classify reports them
