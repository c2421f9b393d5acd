"""The offline LLM: `LLM(model).generate(prompts, params)`, like vLLM's.

It drives an `LLMEngine` to completion in-process and accumulates the
engine's deltas into whole results; useful for scripts, tests and the
engine benchmark.
"""

from __future__ import annotations

import itertools
import numbers
import operator
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

# A string, token ids, or vLLM's TextPrompt / TokensPrompt dicts ({"prompt": ...},
# {"prompt_token_ids": [...]}).
Prompt = str | list[int] | dict[str, Any]


@dataclass
class Choice:
    index: int
    text: str = ""
    token_ids: list[int] = field(default_factory=list)
    logprobs: list[TokenLogprobs] | None = None
    finish_reason: str | None = None
    stop_reason: str | int | None = None

    @property
    def cumulative_logprob(self) -> float | None:
        """vLLM's: the sampled tokens' summed logprob, when logprobs were asked for."""
        if self.logprobs is None:
            return None
        return sum(entry.logprob for entry in self.logprobs)


@dataclass
class GenerationResult:
    """Everything one request produced, accumulated over all its steps. vLLM's
    `RequestOutput` names read too: `outputs` (the choices), `prompt`, `finished`."""

    request_id: str
    prompt_token_ids: list[int]
    choices: list[Choice]
    num_cached_tokens: int = 0
    prompt_logprobs: list[TokenLogprobs | None] | None = None
    # The prompt's text where it was given as text (vLLM's `prompt`), else None.
    prompt: str | None = None

    @property
    def outputs(self) -> list[Choice]:
        return self.choices

    @property
    def finished(self) -> bool:
        return all(choice.finish_reason is not None for choice in self.choices)

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
    for item in listed:
        if not isinstance(item, kind):
            raise TypeError(
                f"params: a {kind.__name__} (or one per prompt), not {type(item).__name__}"
            )
    return listed


def _prompt_text(prompt: Prompt) -> str | None:
    if isinstance(prompt, str):
        return prompt
    if isinstance(prompt, dict) and isinstance(prompt.get("prompt"), str):
        return prompt["prompt"]
    return None


def _listed(prompts: Prompt | Sequence[Prompt]) -> list[Prompt]:
    """One prompt (text, token ids, a prompt dict) as a list of one; a list as it is."""
    single = (
        isinstance(prompts, str | dict)
        or getattr(prompts, "ndim", None) == 1  # a numpy array or tensor of ids
        or (
            isinstance(prompts, list | tuple)
            and bool(prompts)
            and isinstance(prompts[0], numbers.Integral)
        )
    )
    return [prompts] if single else list(prompts)  # type: ignore[list-item, arg-type]


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
        *,
        sampling_params: SamplingParams | Sequence[SamplingParams] | None = None,
        priority: Sequence[int] | None = None,
        use_tqdm: bool = False,
    ) -> list[GenerationResult]:
        """Run every prompt to completion, batched by the engine; results in input order.

        `lora` names the LoRA adapter (from `lora_config`) for every prompt, or one per
        prompt (None: the base model). vLLM's keywords `sampling_params` and `priority`
        name `params` and `priorities`; `use_tqdm` is taken and draws no bar."""
        listed = _listed(prompts)
        token_lists = self._token_lists(listed)
        chosen = sampling_params if sampling_params is not None else params
        param_list = _per_prompt(chosen or SamplingParams(), SamplingParams, len(token_lists))
        texts = [_prompt_text(p) for p in listed]
        results = self._run(
            token_lists,
            param_list,
            lora,
            priority if priority is not None else priorities,
            lambda i, rid, tokens, p: GenerationResult(
                rid, tokens, [Choice(index=k) for k in range(p.n)], prompt=texts[i]
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
        token_lists = self._token_lists(_listed(prompts))
        param_list = _per_prompt(params or PoolingParams(), PoolingParams, len(token_lists))
        results = self._run(
            token_lists,
            param_list,
            lora,
            None,
            lambda i, rid, tokens, p: EmbeddingResult(rid, tokens),
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
                '(*ForSequenceClassification): embed with LLM(model, runner="pooling")'
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

    def _token_lists(self, prompts: list[Prompt]) -> list[list[int]]:
        return [self._token_ids(p, i) for i, p in enumerate(prompts)]

    def _token_ids(self, prompt: Prompt, index: int) -> list[int]:
        if isinstance(prompt, dict):  # vLLM's TokensPrompt / TextPrompt
            if "prompt_token_ids" in prompt:
                prompt = prompt["prompt_token_ids"]
            elif "prompt" in prompt:
                prompt = prompt["prompt"]
            else:
                raise TypeError(
                    f"prompts[{index}]: a prompt dict needs 'prompt' or 'prompt_token_ids'"
                )
        if isinstance(prompt, str):
            return self.tokenizer.encode(prompt)
        try:  # ints, numpy's or a tensor's too, as plain ints
            ids = [operator.index(t) for t in prompt if not isinstance(t, bool)]
        except TypeError:
            ids = None
        if ids is None or len(ids) != len(prompt):
            raise TypeError(f"prompts[{index}]: a string, token ids or a prompt dict")
        return ids

    def _run(
        self,
        token_lists: list[list[int]],
        param_list: list[Any],
        lora: str | Sequence[str | None] | None,
        priorities: Sequence[int] | None,
        new_result: Callable[[int, str, list[int], Any], GenerationResult | EmbeddingResult],
    ) -> list[GenerationResult | EmbeddingResult]:
        """Queue every prompt, step the engine until all finish, results in input order.
        A call that fails or is interrupted (Ctrl-C) takes its requests back out of the
        engine, so the next call does not run them first."""
        loras = [lora] * len(token_lists) if lora is None or isinstance(lora, str) else list(lora)
        if len(loras) != len(token_lists):
            raise ValueError("lora: need one adapter name (or None) per prompt, or a single one")
        if priorities is not None and len(priorities) != len(token_lists):
            raise ValueError("priority: need one per prompt")
        results: dict[str, GenerationResult | EmbeddingResult] = {}
        order: list[str] = []
        try:
            for i, (tokens, p) in enumerate(zip(token_lists, param_list, strict=True)):
                request_id = f"llm-{next(self._ids)}"
                priority = priorities[i] if priorities is not None else 0
                self.engine.add_request(request_id, tokens, p, priority=priority, lora=loras[i])
                results[request_id] = new_result(i, request_id, tokens, p)
                order.append(request_id)
            while self.engine.has_unfinished():
                for out in self.engine.step():
                    if out.request_id in results:
                        results[out.request_id].absorb(out)
        except BaseException:
            # One bad prompt rejects the call; drop the ones already queued with it.
            for request_id in order:
                self.engine.abort(request_id)
            raise
        return [results[r] for r in order]

    def chat(
        self,
        conversations: list[dict] | list[list[dict]],
        params: SamplingParams | Sequence[SamplingParams] | None = None,
        *,
        sampling_params: SamplingParams | Sequence[SamplingParams] | None = None,
        add_generation_prompt: bool = True,
        continue_final_message: bool = False,
        chat_template_kwargs: dict[str, Any] | None = None,
        tools: Sequence[dict[str, Any]] | None = None,
        lora: str | Sequence[str | None] | None = None,
        use_tqdm: bool = False,
    ) -> list[GenerationResult]:
        """Apply the chat template to each conversation, then generate; vLLM's keywords.
        `continue_final_message` continues the last (assistant) message instead of
        starting a new turn."""
        if continue_final_message and add_generation_prompt:
            raise ValueError("continue_final_message needs add_generation_prompt=False")
        if conversations and isinstance(conversations[0], dict):
            conversations = [conversations]  # type: ignore[list-item]
        kwargs = dict(chat_template_kwargs or {})
        if continue_final_message:
            kwargs["continue_final_message"] = True
        prompts: list[Prompt] = []
        for conversation in conversations:
            text = self.tokenizer.render_chat(
                conversation,  # type: ignore[arg-type]
                add_generation_prompt=add_generation_prompt,
                tools=tools,
                **kwargs,
            )
            ids = self.tokenizer.encode(text, add_special_tokens=False)
            prompts.append({"prompt_token_ids": ids, "prompt": text})
        return self.generate(prompts, params, lora=lora, sampling_params=sampling_params)

    def get_tokenizer(self) -> Any:
        """vLLM's: the Hugging Face tokenizer the model loaded with."""
        return self.tokenizer.hf_tokenizer

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
