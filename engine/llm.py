"""The offline LLM: `LLM(model).generate(prompts, params)`, like vLLM's.

It drives an `LLMEngine` to completion in-process and accumulates the
engine's deltas into whole results; useful for scripts, tests and the
engine benchmark.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import torch

from engine.config import EngineConfig
from engine.llm_engine import LLMEngine
from engine.outputs import RequestOutput
from engine.pooling_params import PoolingParams
from engine.sampler import TokenLogprobs
from engine.sampling_params import SamplingParams

Prompt = str | list[int]


@dataclass
class Choice:
    index: int
    text: str = ""
    token_ids: list[int] = field(default_factory=list)
    logprobs: list[TokenLogprobs] | None = None
    finish_reason: str | None = None
    stop_reason: str | int | None = None


@dataclass
class GenerationResult:
    """Everything one request produced, accumulated over all its steps."""

    request_id: str
    prompt_token_ids: list[int]
    choices: list[Choice]
    num_cached_tokens: int = 0
    prompt_logprobs: list[TokenLogprobs | None] | None = None

    @property
    def text(self) -> str:
        return self.choices[0].text

    @property
    def token_ids(self) -> list[int]:
        return self.choices[0].token_ids

    def absorb(self, out: RequestOutput) -> None:
        self.num_cached_tokens = out.num_cached_tokens
        if out.prompt_logprobs is not None:
            self.prompt_logprobs = out.prompt_logprobs
        for delta in out.outputs:
            choice = self.choices[delta.index]
            choice.text += delta.text
            choice.token_ids.extend(delta.token_ids)
            if delta.logprobs is not None:
                if choice.logprobs is None:
                    choice.logprobs = []
                choice.logprobs.extend(delta.logprobs)
            if delta.finish_reason is not None:
                choice.finish_reason = delta.finish_reason
                choice.stop_reason = delta.stop_reason


@dataclass
class EmbeddingResult:
    """One prompt's embedding (a 1-D float32 tensor on the CPU)."""

    request_id: str
    prompt_token_ids: list[int]
    embedding: torch.Tensor | None = None

    def absorb(self, out: RequestOutput) -> None:
        if out.embedding is not None:
            self.embedding = out.embedding


@dataclass(frozen=True)
class ClassificationResult:
    """One prompt's label probabilities (logits with `activation=False`), in the order
    of the model's labels, and the most likely label's name (as /classify answers)."""

    request_id: str
    prompt_token_ids: list[int]
    probs: list[float]
    label: str


def _per_prompt(params: Any, kind: type, count: int) -> list[Any]:
    """One parameter object per prompt: the one given for all, or the caller's list."""
    listed = [params] * count if isinstance(params, kind) else list(params)
    if len(listed) != count:
        raise ValueError(f"params: need one {kind.__name__} per prompt, or a single one")
    return listed


class LLM:
    def __init__(self, model: str | None = None, **engine_args: object) -> None:
        config = EngineConfig(model=model, **engine_args)  # type: ignore[arg-type]
        self.engine = LLMEngine(config)
        self.tokenizer = self.engine.tokenizer
        self._ids = itertools.count()

    def generate(
        self,
        prompts: Prompt | Sequence[Prompt],
        params: SamplingParams | Sequence[SamplingParams] | None = None,
        priorities: Sequence[int] | None = None,
        lora: str | Sequence[str | None] | None = None,
    ) -> list[GenerationResult]:
        """Run every prompt to completion, batched by the engine; results in input order.

        `lora` names the LoRA adapter (from `lora_config`) for every prompt, or one per
        prompt (None: the base model)."""
        token_lists = self._token_lists(prompts)
        param_list = _per_prompt(params or SamplingParams(), SamplingParams, len(token_lists))
        results = self._run(
            token_lists,
            param_list,
            lora,
            priorities,
            lambda rid, tokens, p: GenerationResult(
                rid, tokens, [Choice(index=k) for k in range(p.n)]
            ),
        )
        return results  # type: ignore[return-value]

    def embed(
        self,
        prompts: Prompt | Sequence[Prompt],
        params: PoolingParams | Sequence[PoolingParams] | None = None,
        lora: str | Sequence[str | None] | None = None,
    ) -> list[EmbeddingResult]:
        """Embed every prompt (the pooling runner: `LLM(model, runner="pooling")`), batched
        by the engine; results in input order. A sequence classifier's `embedding` is
        its labels' probabilities (`PoolingParams(activation=False)`: its logits), in
        the order of `engine.model_config.labels`."""
        token_lists = self._token_lists(prompts)
        param_list = _per_prompt(params or PoolingParams(), PoolingParams, len(token_lists))
        results = self._run(
            token_lists,
            param_list,
            lora,
            None,
            lambda rid, tokens, p: EmbeddingResult(rid, tokens),
        )
        return results  # type: ignore[return-value]

    def classify(
        self,
        prompts: Prompt | Sequence[Prompt],
        params: PoolingParams | Sequence[PoolingParams] | None = None,
        lora: str | Sequence[str | None] | None = None,
    ) -> list[ClassificationResult]:
        """Classify every prompt with a sequence classifier (vLLM's `LLM.classify`);
        results in input order."""
        labels = self.engine.model_config.labels
        if not labels:
            raise ValueError(
                f"{self.engine.model_name} is not a sequence classifier "
                "(*ForSequenceClassification): use embed"
            )
        out = []
        for result in self.embed(prompts, params, lora):
            assert result.embedding is not None
            probs = result.embedding.tolist()
            best = max(range(len(probs)), key=probs.__getitem__)
            out.append(
                ClassificationResult(
                    result.request_id, result.prompt_token_ids, probs, labels[best]
                )
            )
        return out

    def _token_lists(self, prompts: Prompt | Sequence[Prompt]) -> list[list[int]]:
        if isinstance(prompts, str) or (
            isinstance(prompts, list) and prompts and isinstance(prompts[0], int)
        ):
            prompts = [prompts]  # type: ignore[list-item]
        return [
            self.tokenizer.encode(p) if isinstance(p, str) else list(p)
            for p in prompts  # type: ignore[union-attr]
        ]

    def _run(
        self,
        token_lists: list[list[int]],
        param_list: list[Any],
        lora: str | Sequence[str | None] | None,
        priorities: Sequence[int] | None,
        new_result: Callable[[str, list[int], Any], GenerationResult | EmbeddingResult],
    ) -> list[GenerationResult | EmbeddingResult]:
        """Queue every prompt, step the engine until all finish, results in input order."""
        loras = [lora] * len(token_lists) if lora is None or isinstance(lora, str) else list(lora)
        if len(loras) != len(token_lists):
            raise ValueError("lora: need one adapter name (or None) per prompt, or a single one")
        results: dict[str, GenerationResult | EmbeddingResult] = {}
        order: list[str] = []
        try:
            for i, (tokens, p) in enumerate(zip(token_lists, param_list, strict=True)):
                request_id = f"llm-{next(self._ids)}"
                priority = priorities[i] if priorities is not None else 0
                self.engine.add_request(request_id, tokens, p, priority=priority, lora=loras[i])
                results[request_id] = new_result(request_id, tokens, p)
                order.append(request_id)
        except ValueError:
            # One bad prompt rejects the call; drop the ones already queued with it.
            for request_id in order:
                self.engine.abort(request_id)
            raise
        while self.engine.has_unfinished():
            for out in self.engine.step():
                if out.request_id in results:
                    results[out.request_id].absorb(out)
        return [results[r] for r in order]

    def chat(
        self,
        conversations: list[dict] | list[list[dict]],
        params: SamplingParams | Sequence[SamplingParams] | None = None,
    ) -> list[GenerationResult]:
        """Apply the chat template to each conversation, then generate."""
        if conversations and isinstance(conversations[0], dict):
            conversations = [conversations]  # type: ignore[list-item]
        prompts = [self.tokenizer.apply_chat_template(c) for c in conversations]  # type: ignore[arg-type]
        return self.generate(prompts, params)

    def sleep(self, level: int = 1) -> None:
        """vLLM's `LLM.sleep`: free the KV cache and put the weights away (level 1: to
        host memory; level 2: dropped, read from the checkpoint again on waking)."""
        self.engine.sleep(level)

    def wake_up(self, tags: Sequence[str] | None = None) -> None:
        """vLLM's `LLM.wake_up`: bring back "weights" and/or "kv_cache" (all when None)."""
        self.engine.wake_up(tags)

    def reset_prefix_cache(self) -> None:
        """vLLM's `LLM.reset_prefix_cache`: later prompts compute their KV afresh."""
        self.engine.reset_prefix_cache()


def greedy(max_tokens: int, **kwargs: object) -> SamplingParams:
    """Shorthand used by tests and benchmarks: temperature 0, at most `max_tokens`."""
    return replace(SamplingParams(temperature=0.0, max_tokens=max_tokens), **kwargs)
