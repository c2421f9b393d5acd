"""OpenAI embeddings: request and response shapes, with vLLM's extras."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from api.errors import ApiError
from api.prompt_truncation import check_truncate_prompt_tokens
from api.schemas.chat import ChatMessage
from api.schemas.null_means_default import NullMeansDefault

# One text, several texts, one token-id input, or several (OpenAI's four forms).
EmbeddingInput = str | list[str] | list[int] | list[list[int]]

# Inputs in one request, as OpenAI limits them; each becomes its own queued request.
MAX_INPUTS = 2048


class EmbeddingRequest(NullMeansDefault):
    model_config = ConfigDict(extra="ignore")

    # Left out: the one base model served (the route fills it in), as in vLLM.
    model: str | None = None
    # OpenAI's inputs; or vLLM's chat form, `messages` (one conversation, one vector).
    input: EmbeddingInput | None = None
    messages: list[ChatMessage] | None = Field(default=None, min_length=1)
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = None
    user: str | None = None
    # vLLM extras. add_special_tokens: default true for `input`, false for `messages`
    # (the chat template writes its own), as in vLLM.
    add_special_tokens: bool | None = None
    # Keep only the last k tokens of each input (-1: the model's maximum length).
    truncate_prompt_tokens: int | None = None
    normalize: bool | None = None
    priority: int = 0
    # vLLM's encoding of base64 vectors: what we send (float32, little-endian) is
    # accepted by name, anything else refused rather than decoded wrongly.
    embed_dtype: str | None = None
    endianness: str | None = None
    add_generation_prompt: bool = False
    continue_final_message: bool = False
    chat_template_kwargs: dict[str, Any] | None = None

    def check_supported(self) -> None:
        if (self.input is None) == (self.messages is None):
            raise ApiError(
                400,
                "send the text to embed as input, or a conversation as messages (one of them)",
                param="input",
            )
        if self.dimensions is not None and self.dimensions < 1:
            raise ApiError(400, "dimensions must be at least 1", param="dimensions")
        check_truncate_prompt_tokens(self.truncate_prompt_tokens)
        if self.embed_dtype not in (None, "float32"):
            raise ApiError(
                400,
                f"embed_dtype {self.embed_dtype!r}: vectors are sent as float32 only",
                param="embed_dtype",
            )
        if self.endianness not in (None, "native", "little"):
            raise ApiError(
                400,
                f"endianness {self.endianness!r}: base64 vectors are little-endian only",
                param="endianness",
            )
        if self.input is not None:
            self.inputs()  # malformed inputs are refused before any model work

    def inputs(self) -> list[str | list[int]]:
        """The inputs as a list, each text or token ids; `data` is in this order."""
        value = self.input
        if value is None:
            raise ApiError(400, "input is required", param="input")
        if isinstance(value, str):
            items: list[str | list[int]] = [value]
        elif value and isinstance(value[0], int):
            items = [list(value)]  # type: ignore[arg-type]
        else:
            items = list(value)  # type: ignore[arg-type]
        if not items:
            raise ApiError(400, "input must not be empty", param="input")
        if len(items) > MAX_INPUTS:
            raise ApiError(400, f"at most {MAX_INPUTS} inputs per request", param="input")
        for item in items:
            if not item:
                raise ApiError(400, "input must not contain empty strings or lists", param="input")
        return items


class EmbeddingData(BaseModel):
    object: Literal["embedding"] = "embedding"
    index: int
    # A list of floats, or (encoding_format "base64") their little-endian float32 bytes.
    embedding: list[float] | str


class EmbeddingUsage(BaseModel):
    prompt_tokens: int
    total_tokens: int


class EmbeddingResponse(BaseModel):
    id: str
    object: Literal["list"] = "list"
    created: int
    model: str
    data: list[EmbeddingData]
    usage: EmbeddingUsage
