"""vLLM's `/score` and `/rerank` (Jina's and Cohere's rerank shape) request and response."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

from api.errors import ApiError
from api.schemas.classify import ActivationFields
from api.schemas.embeddings import MAX_INPUTS


class ScoreRequest(ActivationFields):
    """With a cross-encoder the activation fields choose probability or logit; an
    embedding model's cosine takes none."""

    model_config = ConfigDict(extra="ignore")

    # Left out: the one base model served (the route fills it in), as in vLLM.
    model: str | None = None
    # One text against each of text_2, or the two lists pair by pair.
    text_1: str | list[str]
    text_2: str | list[str]
    truncate_prompt_tokens: int | None = None
    priority: int = 0

    def pairs(self) -> list[tuple[str, str]]:
        first = [self.text_1] if isinstance(self.text_1, str) else list(self.text_1)
        second = [self.text_2] if isinstance(self.text_2, str) else list(self.text_2)
        if not first or not second:
            raise ApiError(400, "text_1 and text_2 must not be empty", param="text_1")
        if len(first) == 1:
            first = first * len(second)
        if len(first) != len(second):
            raise ApiError(
                400,
                "text_1 must be one text, or as many texts as text_2 "
                f"(got {len(first)} and {len(second)})",
                param="text_1",
            )
        if len(first) > MAX_INPUTS:
            raise ApiError(400, f"at most {MAX_INPUTS} pairs per request", param="text_2")
        return list(zip(first, second, strict=True))


class ScoreData(BaseModel):
    index: int
    object: Literal["score"] = "score"
    score: float


class ScoreUsage(BaseModel):
    prompt_tokens: int
    total_tokens: int
    completion_tokens: int = 0


class ScoreResponse(BaseModel):
    id: str
    object: Literal["list"] = "list"
    created: int
    model: str
    data: list[ScoreData]
    usage: ScoreUsage


class RerankRequest(ActivationFields):
    model_config = ConfigDict(extra="ignore")

    # Left out: the one base model served (the route fills it in), as in vLLM.
    model: str | None = None
    query: str
    # Texts, or Cohere's {"text": ...} objects.
    documents: list[str | dict[str, Any]]
    top_n: int | None = None
    return_documents: bool = True
    truncate_prompt_tokens: int | None = None
    priority: int = 0

    def texts(self) -> list[str]:
        if not self.documents:
            raise ApiError(400, "documents must not be empty", param="documents")
        if len(self.documents) > MAX_INPUTS:
            raise ApiError(400, f"at most {MAX_INPUTS} documents per request", param="documents")
        texts = []
        for index, document in enumerate(self.documents):
            text = document.get("text") if isinstance(document, dict) else document
            if not isinstance(text, str):
                where = f"documents[{index}]"
                raise ApiError(400, "a document is a text or an object with `text`", param=where)
            texts.append(text)
        if self.top_n is not None and self.top_n < 0:
            raise ApiError(400, "top_n must not be negative", param="top_n")
        return texts


class RerankDocument(BaseModel):
    text: str


class RerankResult(BaseModel):
    index: int
    document: RerankDocument | None = None
    relevance_score: float


class RerankUsage(BaseModel):
    total_tokens: int


class RerankResponse(BaseModel):
    id: str
    model: str
    usage: RerankUsage
    results: list[RerankResult]
