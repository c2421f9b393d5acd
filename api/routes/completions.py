"""POST /v1/completions: one or several prompts, text or token ids, with echo for scoring."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Annotated

from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import JSONResponse

from api.admission import admit
from api.cache_salt import cache_salt
from api.catalog import LiveModel, ModelCatalog
from api.collect import ClientGone, Output, collect_all, finish
from api.deps import (
    Authenticated,
    CatalogDep,
    RecordDep,
    RouterDep,
    SettingsDep,
    SubmitterDep,
    json_body,
)
from api.errors import ApiError
from api.logprobs import CompletionLogprobBuilder
from api.prompt_logprobs import prompt_logprobs_answer
from api.prompt_truncation import tokens_to_keep, truncated_text_ids
from api.reply_router import ReplyReader, ReplyRouter, Restart
from api.request_record import RequestRecord
from api.request_submitter import (
    RequestSubmitter,
    Submission,
    build_sampling,
    check_length,
    check_prompt_ids,
    check_structured_output,
)
from api.response_ids import response_ids
from api.schemas.common import PromptLogprob, UsageInfo, check_tenant_priority
from api.schemas.completions import (
    DEFAULT_MAX_TOKENS,
    CompletionChoice,
    CompletionChunk,
    CompletionLogprobs,
    CompletionRequest,
    CompletionResponse,
)
from api.served_model import served_model
from api.streaming import merge, sse_response
from conveyor.protocol import ReplyMessage, TokenLogprob
from conveyor.settings import Settings
from engine.sampling_params import SamplingParams
from engine.tokenizer import Tokenizer

router = APIRouter(dependencies=[Authenticated])

CompletionBody = Annotated[CompletionRequest, Depends(json_body(CompletionRequest))]


@dataclass
class _Prompt:
    token_ids: list[int]
    text: str  # what echo returns: the client's text, or the decoded token ids


@router.post("/v1/completions", response_model=None)
async def create_completion(
    request: Request,
    body: CompletionBody,
    catalog: CatalogDep,
    submitter: SubmitterDep,
    replies: RouterDep,
    record: RecordDep,
    settings: SettingsDep,
) -> Response:
    prepared = await prepare_completion(request, body, catalog, submitter, record, settings)
    live, prompts, sampling = prepared.live, prepared.prompts, prepared.sampling
    scoring, max_tokens, tokenizer = prepared.scoring, prepared.max_tokens, prepared.tokenizer
    response_id = response_ids(request, "cmpl", body.request_id)
    base_id = response_id.internal
    ids = [base_id] if len(prompts) == 1 else [f"{base_id}-{i}" for i in range(len(prompts))]
    record.request_id = base_id
    record.response_id = response_id.shown
    record.prompt_tokens = sum(len(p.token_ids) for p in prompts)
    if settings.log_prompts:
        record.prompt_text = json.dumps([p.text for p in prompts], ensure_ascii=False)
    check_tenant_priority(body.priority, record.principal)
    tokens, most = record.prompt_tokens, None
    if max_tokens is None:  # the prompts reserved; each may use the rest of its context
        room = sum((prepared.max_model_len or 0) - len(p.token_ids) for p in prompts)
        most = tokens + body.n * room
    elif not scoring:
        tokens += len(prompts) * body.n * max_tokens
    await admit(request, record, tokens=tokens, most=most)
    readers: list[ReplyReader] = []
    salt = cache_salt(record.principal, body.cache_salt, settings.prefix_cache_scope)
    try:
        await submitter.submit_all(
            [
                Submission(
                    request_id=request_id,
                    model=live.queue_model,
                    prompt_token_ids=prompt.token_ids,
                    sampling=sampling,
                    priority=body.priority,
                    stream=body.stream,
                    lane=record.lane,
                    lora=live.lora,
                    cache_salt=salt,
                    public_id=response_id.public or (base_id if len(prompts) > 1 else None),
                )
                for request_id, prompt in zip(ids, prompts, strict=True)
            ],
            readers,
        )
    finally:
        record.readers.extend(readers)
    view = _CompletionView(response_id.shown, body, tokenizer, prompts, scoring, record)
    if body.stream:
        return sse_response(
            view.chunks(readers, replies), on_close=lambda: finish(replies, readers)
        )
    try:
        outputs = await collect_all(request, replies, readers)
    except ClientGone:
        return Response(status_code=499)
    response = view.response(outputs)
    if response.usage is not None:
        record.completion_tokens = response.usage.completion_tokens
        record.cached_tokens = sum(output.cached_tokens() for output in outputs)
    record.finish_reason = response.choices[0].finish_reason if response.choices else None
    return JSONResponse(response.model_dump(mode="json"))


@dataclass(frozen=True)
class PreparedCompletion:
    """A completions request checked, tokenized and turned into engine sampling."""

    live: LiveModel
    tokenizer: Tokenizer
    prompts: list[_Prompt]
    sampling: SamplingParams
    scoring: bool  # max_tokens 0 with echo: the prompt scored, nothing generated
    max_tokens: int | None  # None (sent as null, as vLLM reads it): up to the context
    max_model_len: int | None


async def prepare_completion(
    request: Request,
    body: CompletionRequest,
    catalog: ModelCatalog,
    submitter: RequestSubmitter,
    record: RequestRecord,
    settings: Settings,
    *,
    to_serve: bool = True,
) -> PreparedCompletion:
    """Check and tokenize `body` and build its sampling, as it would be queued. `to_serve`:
    the model must take it now (awake, its queue not full, the key's rate limits);
    rendering alone needs only its tokenizer."""
    body.check_supported()
    body.model = body.model or await catalog.default_model()
    body.apply_server_defaults(settings)
    raw_prompts = body.prompts()
    live, model_tokenizer = await served_model(
        request,
        catalog,
        submitter,
        record,
        body.model,
        "generate",
        record.endpoint,
        to_serve=to_serve,
    )
    tokenizer = model_tokenizer.tokenizer
    max_model_len = live.max_model_len or model_tokenizer.max_model_len
    keep = tokens_to_keep(body.truncate_prompt_tokens, max_model_len)
    prompts = await catalog.in_thread(_tokenize, tokenizer, raw_prompts, body, keep)

    # max_tokens 0 with echo scores the prompt: generate one token and discard it.
    scoring = body.max_tokens == 0
    max_tokens: int | None = body.max_tokens
    if scoring:
        max_tokens = 1
    elif max_tokens is None and "max_tokens" not in body.model_fields_set:
        max_tokens = DEFAULT_MAX_TOKENS  # left out; sent as null, each prompt's context fills
    for prompt in prompts:
        check_length(len(prompt.token_ids), max_tokens, max_model_len, chat=False)
    sampling = build_sampling(
        body,
        max_tokens=max_tokens,
        logprobs=body.logprobs,
        prompt_logprobs=_engine_prompt_logprobs(body, tokenizer.vocab_size),
        defaults=model_tokenizer.generation_defaults,
        vocab_size=tokenizer.vocab_size,
        max_logprobs=model_tokenizer.max_logprobs,
    )
    await check_structured_output(body, sampling, model_tokenizer)
    return PreparedCompletion(
        live, tokenizer, prompts, sampling, scoring, max_tokens, max_model_len
    )


def _engine_prompt_logprobs(body: CompletionRequest, vocab_size: int) -> int | None:
    """How many alternatives the engine reports per prompt token: what `echo` with
    `logprobs` shows, or vLLM's `prompt_logprobs` (-1: the vocabulary), the larger."""
    wanted = [body.logprobs] if body.echo and body.logprobs is not None else []
    asked = body.answered_prompt_logprobs
    if asked is not None:
        wanted.append(vocab_size if asked == -1 else asked)
    return max(wanted, default=None)


def _tokenize(
    tokenizer: Tokenizer,
    raw_prompts: Sequence[str | list[int]],
    body: CompletionRequest,
    keep: int | None,
) -> list[_Prompt]:
    """Each prompt's ids, cut to its last `keep` (`truncate_prompt_tokens`); an echo
    repeats what the model read, so a cut prompt echoes its kept tokens' text."""
    prompts = []
    for raw in raw_prompts:
        if isinstance(raw, str):
            ids = truncated_text_ids(tokenizer, raw, body.add_special_tokens, keep)
            if not ids:  # "" without a BOS: refused here, before a stream opens with a 200
                raise ApiError(400, "prompt must contain at least one token", param="prompt")
            text = raw
            if body.echo and keep is not None:
                whole = tokenizer.encode(raw, add_special_tokens=body.add_special_tokens)
                if len(ids) < len(whole):
                    text = tokenizer.decode(ids, skip_special_tokens=False)
            prompts.append(_Prompt(ids, text))
        else:
            check_prompt_ids(raw, tokenizer.vocab_size)
            ids = list(raw) if keep is None else list(raw)[-keep:]
            text = tokenizer.decode(ids, skip_special_tokens=False) if body.echo else ""
            prompts.append(_Prompt(ids, text))
    return prompts


@dataclass
class _StreamState:
    """Per prompt: the echo not yet sent (it may wait for prompt logprobs) and held messages."""

    echo_pending: bool
    prompt_logprobs: list[TokenLogprob | None] | None = None
    held: list[ReplyMessage] = field(default_factory=list)


class _CompletionView:
    """Turns one completions request's replies (one reader per prompt) into OpenAI shapes."""

    def __init__(
        self,
        request_id: str,
        body: CompletionRequest,
        tokenizer: Tokenizer,
        prompts: list[_Prompt],
        scoring: bool,
        record: RequestRecord,
    ) -> None:
        self.record = record
        self.request_id = request_id
        self.body = body
        self.tokenizer = tokenizer
        self.prompts = prompts
        self.scoring = scoring
        self.created = int(time.time())
        self.prompt_tokens = sum(len(p.token_ids) for p in prompts)

    def _builder(self) -> CompletionLogprobBuilder | None:
        if self.body.logprobs is None:
            return None
        return CompletionLogprobBuilder(
            self.tokenizer, self.body.logprobs, bool(self.body.return_tokens_as_token_ids)
        )

    def _echo_logprobs(
        self,
        builder: CompletionLogprobBuilder | None,
        prompt: _Prompt,
        prompt_logprobs: list[TokenLogprob | None] | None,
    ) -> CompletionLogprobs | None:
        if builder is None:
            return None
        lps = prompt_logprobs or [None] * len(prompt.token_ids)
        return builder.build(prompt.token_ids, lps)

    def _prompt_logprobs(
        self, prompt: _Prompt, logprobs: list[TokenLogprob | None] | None
    ) -> list[dict[str, PromptLogprob] | None] | None:
        """vLLM's prompt_logprobs of one prompt, when the request asked for them."""
        wanted = self.body.answered_prompt_logprobs
        if wanted is None:
            return None
        return prompt_logprobs_answer(
            self.tokenizer,
            logprobs,
            len(prompt.token_ids),
            self.tokenizer.vocab_size if wanted == -1 else wanted,
        )

    def response(self, outputs: list[Output]) -> CompletionResponse:
        body = self.body
        choices = []
        completion_tokens = cached_tokens = 0
        for p, (prompt, output) in enumerate(zip(self.prompts, outputs, strict=True)):
            if not self.scoring:
                completion_tokens += output.completion_tokens()
            cached_tokens += output.cached_tokens()
            # One answer per prompt, shared by its n choices (it may be vocabulary-wide).
            prompt_logprobs = self._prompt_logprobs(prompt, output.prompt_logprobs)
            for c in range(body.n):
                choice = output.choice(c)
                builder = self._builder()
                logprobs = (
                    self._echo_logprobs(builder, prompt, output.prompt_logprobs)
                    if body.echo
                    else None
                )
                text = prompt.text if body.echo else ""
                if not self.scoring:
                    text += choice.full_text
                    if builder is not None:
                        logprobs = builder.build(choice.token_ids, choice.logprobs, into=logprobs)
                generated = [] if self.scoring else list(choice.token_ids)
                choices.append(
                    CompletionChoice(
                        index=p * body.n + c,
                        text=text,
                        logprobs=logprobs,
                        finish_reason="length" if self.scoring else choice.finish_reason,
                        stop_reason=None if self.scoring else choice.stop_reason,
                        prompt_token_ids=prompt.token_ids if body.return_token_ids else None,
                        token_ids=generated if body.return_token_ids else None,
                        prompt_logprobs=prompt_logprobs,
                    )
                )
        return CompletionResponse(
            id=self.request_id,
            created=self.created,
            model=body.model,
            choices=choices,
            usage=UsageInfo.of(self.prompt_tokens, completion_tokens, cached_tokens),
        )

    def _chunk(
        self, choices: list[CompletionChoice], usage: UsageInfo | None = None
    ) -> CompletionChunk:
        return CompletionChunk(
            id=self.request_id,
            created=self.created,
            model=self.body.model,
            choices=choices,
            usage=usage,
        )

    async def chunks(
        self, readers: list[ReplyReader], replies: ReplyRouter
    ) -> AsyncIterator[CompletionChunk]:
        body = self.body
        n = body.n
        wants_prompt_logprobs = body.echo and body.logprobs is not None
        states = [_StreamState(echo_pending=body.echo) for _ in self.prompts]
        builders: dict[int, CompletionLogprobBuilder | None] = {}
        final_tokens: list[int | None] = [None] * len(self.prompts)
        cached_tokens = [0] * len(self.prompts)

        choice_tokens = [0] * (len(self.prompts) * n)  # each choice's so far

        def completion_tokens(p: int) -> int:
            """Prompt `p`'s choices' tokens so far."""
            return sum(choice_tokens[p * n : (p + 1) * n])

        def usage_now(index: int) -> UsageInfo | None:
            """vLLM's continuous usage: a chunk counts its own prompt's tokens and its own
            choice's so far."""
            if not body.continuous_usage:
                return None
            p = index // n
            prompt_tokens = len(self.prompts[p].token_ids)
            return UsageInfo.of(prompt_tokens, choice_tokens[index], cached_tokens[p])

        def builder(index: int) -> CompletionLogprobBuilder | None:
            if index not in builders:
                builders[index] = self._builder()
            return builders[index]

        prompt_ids_sent: set[int] = set()

        def prompt_ids(index: int) -> list[int] | None:
            """vLLM's return_token_ids: the prompt's ids in each choice's first chunk."""
            if not body.return_token_ids or index in prompt_ids_sent:
                return None
            prompt_ids_sent.add(index)
            return self.prompts[index // n].token_ids

        try:
            async for p, item in merge([r.__aiter__() for r in readers]):
                state = states[p]
                if isinstance(item, Restart):
                    choice_tokens[p * n : (p + 1) * n] = [0] * n
                    self.record.completion_tokens = sum(choice_tokens)
                    state.held.clear()
                    continue
                if item.prompt_logprobs is not None:
                    state.prompt_logprobs = item.prompt_logprobs
                if item.cached_tokens is not None:
                    cached_tokens[p] = item.cached_tokens
                if item.usage is not None:
                    cached_tokens[p] = item.usage.cached_tokens
                    if item.finished:
                        final_tokens[p] = item.usage.completion_tokens
                self.record.cached_tokens = sum(cached_tokens)
                messages = [item]
                if state.echo_pending:
                    waiting = wants_prompt_logprobs and state.prompt_logprobs is None
                    if waiting and not item.finished:
                        state.held.append(item)
                        continue
                    state.echo_pending = False
                    prompt = self.prompts[p]
                    for c in range(n):
                        index = p * n + c
                        logprobs = self._echo_logprobs(
                            builder(index), prompt, state.prompt_logprobs
                        )
                        yield self._chunk(
                            [
                                CompletionChoice(
                                    index=index,
                                    text=prompt.text,
                                    logprobs=logprobs,
                                    prompt_token_ids=prompt_ids(index),
                                    token_ids=[] if body.return_token_ids else None,
                                )
                            ],
                            usage_now(index),
                        )
                    messages = [*state.held, item]
                    state.held.clear()
                for message in messages:
                    for delta in message.choices:
                        index = p * n + delta.index
                        if self.scoring:
                            if delta.finish_reason is None:
                                continue
                            choice = CompletionChoice(index=index, text="", finish_reason="length")
                        else:
                            choice_tokens[index] += len(delta.token_ids)
                            # Logged as forwarded, so an aborted stream bills what it received.
                            self.record.completion_tokens = sum(choice_tokens)
                            if delta.finish_reason is not None and index == 0:
                                self.record.finish_reason = delta.finish_reason
                            b = builder(index)
                            # Tokens to report make a chunk even without text (half a
                            # character, say).
                            reported = b is not None or bool(body.return_token_ids)
                            has_tokens = reported and bool(delta.token_ids)
                            if not delta.text and delta.finish_reason is None and not has_tokens:
                                continue
                            choice = CompletionChoice(
                                index=index,
                                text=delta.text,
                                logprobs=(
                                    b.build(delta.token_ids, delta.logprobs or [])
                                    if b is not None
                                    else None
                                ),
                                finish_reason=delta.finish_reason,
                                stop_reason=delta.stop_reason,
                                prompt_token_ids=prompt_ids(index),
                                token_ids=list(delta.token_ids) if body.return_token_ids else None,
                            )
                        yield self._chunk([choice], usage_now(index))
            total = 0
            if not self.scoring:
                total = sum(
                    f if f is not None else completion_tokens(p) for p, f in enumerate(final_tokens)
                )
            self.record.completion_tokens = total
            self.record.cached_tokens = sum(cached_tokens)
            if body.include_usage:
                yield self._chunk([], UsageInfo.of(self.prompt_tokens, total, sum(cached_tokens)))
        finally:
            finish(replies, readers)
