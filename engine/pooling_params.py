"""Per-request embedding parameters (vLLM's PoolingParams for the embed task).

Checked against the model where a request is taken: the API checks them
against what workers publish (before any work is queued), the engine against
its own config, with the same code and messages. No torch here: API
processes import this module.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from engine.sampling_params import SamplingParamError
from engine.wire_form import wire_form


class EmbeddingShape(Protocol):
    """What decides which `dimensions` a model may be cut to (ModelConfig has these)."""

    @property
    def hidden_size(self) -> int: ...

    @property
    def is_matryoshka(self) -> bool: ...

    @property
    def matryoshka_dimensions(self) -> tuple[int, ...]: ...

    @property
    def labels(self) -> tuple[str, ...]: ...

    @property
    def type_vocab_size(self) -> int: ...


@dataclass(frozen=True)
class PoolingParams:
    # Keep the first `dimensions` values (matryoshka models only); None: the pooler
    # config's default, else all of them.
    dimensions: int | None = None
    # L2-normalise the vector; None: as the model's pooler config says.
    normalize: bool | None = None
    # A classifier's probabilities (softmax; sigmoid for one label) rather than its raw
    # logits (vLLM's `activation`); None: as the model's pooler config says.
    activation: bool | None = None
    # "classify" when the API asks a classifier (its worker refuses anything else: an
    # API of the release before would ask it for embeddings); None otherwise.
    task: str | None = None
    # Where a text pair's second text starts in the prompt (BERT's token type 1 from
    # there on, as its tokenizer marks a cross-encoder's pair); the prompt's length: one
    # text. The API always sends it to a classifier that reads token types (its worker
    # refuses a request without it: an API of the release before would not mark pairs);
    # None elsewhere, and in-process for one text.
    segment_start: int | None = None

    # Newer than the wire protocol's first release: sent only when set (wire_form.py).
    ADDED_FIELDS = ("activation", "task", "segment_start")

    def wire(self) -> dict[str, object]:
        """What the API queues for workers (engine/wire_form.py)."""
        return wire_form(self, self.ADDED_FIELDS)

    def __post_init__(self) -> None:
        dims = self.dimensions
        if dims is not None and (not isinstance(dims, int) or isinstance(dims, bool)):
            raise SamplingParamError("dimensions", "must be an integer")
        if dims is not None and dims < 1:
            raise SamplingParamError("dimensions", "must be at least 1")
        if self.normalize is not None and not isinstance(self.normalize, bool):
            raise SamplingParamError("normalize", "must be true or false")
        if self.activation is not None and not isinstance(self.activation, bool):
            raise SamplingParamError("activation", "must be true or false")
        if self.task not in (None, "classify"):
            raise SamplingParamError("task", f"must be classify, got {self.task!r}")
        start = self.segment_start
        if start is not None and (not isinstance(start, int) or isinstance(start, bool)):
            raise SamplingParamError("segment_start", "must be an integer")
        if start is not None and start < 1:
            raise SamplingParamError("segment_start", "must be at least 1")

    def validate_against(self, model: EmbeddingShape) -> None:
        """Refuse a `dimensions` the model was not trained to cut to (vLLM's rule): the
        first values of another model's vector are not a smaller embedding. A classifier's
        output is a score per label, which no `dimensions` cuts."""
        if model.labels and self.dimensions is not None:
            raise SamplingParamError(
                "dimensions", "this model is a classifier: its output is one score per label"
            )
        check_dimensions(self.dimensions, model)
        if self.segment_start is not None and model.type_vocab_size < 2:
            raise SamplingParamError(
                "segment_start", "this model does not tell a pair's two texts apart"
            )

    def check_prompt(self, prompt_length: int) -> None:
        """A pair's second text starts inside the prompt (or at its end: no second text)."""
        if self.segment_start is not None and self.segment_start > prompt_length:
            raise SamplingParamError(
                "segment_start",
                f"{self.segment_start} is past the prompt's {prompt_length} tokens",
            )


def check_dimensions(dims: int | None, model: EmbeddingShape) -> None:
    if dims is None:
        return
    if not model.is_matryoshka:
        raise SamplingParamError(
            "dimensions",
            "this model does not support matryoshka representation, so its embeddings "
            "cannot be shortened; leave dimensions unset",
        )
    allowed = model.matryoshka_dimensions
    if allowed and dims not in allowed:
        raise SamplingParamError(
            "dimensions", f"this model supports only {list(allowed)} (got {dims})"
        )
    if dims > model.hidden_size:
        raise SamplingParamError(
            "dimensions", f"this model's embeddings have {model.hidden_size} values"
        )
