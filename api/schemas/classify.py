"""vLLM's `/classify`: a sequence classifier's label probabilities per input."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel

from api.errors import ApiError
from api.schemas.embeddings import EmbeddingRequest
from api.schemas.null_means_default import NullMeansDefault


class ActivationFields(NullMeansDefault):
    """vLLM's switch between a classifier's probabilities (softmax over the labels; a
    sigmoid for one) and its raw logits; None: the server's --pooler-config.
    `use_activation` is its newest name; as in vLLM, `softmax` wins over `activation`,
    which wins over it."""

    softmax: bool | None = None
    activation: bool | None = None
    use_activation: bool | None = None

    @property
    def wants_activation(self) -> bool | None:
        for chosen in (self.softmax, self.activation, self.use_activation):
            if chosen is not None:
                return chosen
        return None


class ClassificationRequest(ActivationFields, EmbeddingRequest):
    """Inputs as /v1/embeddings takes them (texts, token ids, or a conversation)."""

    def check_supported(self) -> None:
        super().check_supported()
        refuse_embedding_fields(self)


def refuse_embedding_fields(body: EmbeddingRequest) -> None:
    """A 400 for the fields only embeddings take, in a request a classifier answers."""
    for name in ("dimensions", "normalize"):
        if getattr(body, name) is not None:
            raise ApiError(400, f"{name} applies to embeddings, not to classification", param=name)


class ClassificationData(BaseModel):
    index: int
    # The most likely label's name (the model's id2label).
    label: str
    probs: list[float]
    num_classes: int


class ClassificationUsage(BaseModel):
    prompt_tokens: int
    total_tokens: int
    completion_tokens: int = 0
    prompt_tokens_details: None = None


class ClassificationResponse(BaseModel):
    id: str
    object: Literal["list"] = "list"
    created: int
    model: str
    data: list[ClassificationData]
    usage: ClassificationUsage
