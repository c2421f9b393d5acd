"""The offline LLM: `LLM(model).generate(prompts, params)`, like vLLM's.

It drives an `LLMEngine` to completion in-process and accumulates the
engine's deltas into whole results; useful for scripts, tests and the
engine benchmark.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

from engine.config import EngineConfig
from engine.llm_engine import LLMEngine
from engine.outputs import RequestOutput
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
        if isinstance(prompts, str) or (
            isinstance(prompts, list) and prompts and isinstance(prompts[0], int)
        ):
            prompts = [prompts]  # type: ignore[list-item]
        token_lists = [
            self.tokenizer.encode(p) if isinstance(p, str) else list(p)
            for p in prompts  # type: ignore[union-attr]
        ]
        if params is None:
            params = SamplingParams()
        param_list = (
            [params] * len(token_lists) if isinstance(params, SamplingParams) else list(params)
        )
        if len(param_list) != len(token_lists):
            raise ValueError("params: need one SamplingParams per prompt, or a single one")
        loras = [lora] * len(token_lists) if lora is None or isinstance(lora, str) else list(lora)
        if len(loras) != len(token_lists):
            raise ValueError("lora: need one adapter name (or None) per prompt, or a single one")
        results: dict[str, GenerationResult] = {}
        order: list[str] = []
        try:
            for i, (tokens, p) in enumerate(zip(token_lists, param_list, strict=True)):
                request_id = f"llm-{next(self._ids)}"
                priority = priorities[i] if priorities is not None else 0
                self.engine.add_request(request_id, tokens, p, priority=priority, lora=loras[i])
                results[request_id] = GenerationResult(
                    request_id, tokens, [Choice(index=k) for k in range(p.n)]
                )
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


def greedy(max_tokens: int, **kwargs: object) -> SamplingParams:
    """Shorthand used by tests and benchmarks: temperature 0, at most `max_tokens`."""
    return replace(SamplingParams(temperature=0.0, max_tokens=max_tokens), **kwargs)
