"""POST /inference/v1/generate: vLLM's tokens-in, tokens-out generation.

The prompt is token ids (rendered by the caller: no chat template here), the sampling is
vLLM's `SamplingParams` (api/tokens_sampling.py), and each choice answers with the token
ids it generated, its finish reason and, when asked, logprobs named `token_id:N`. A
stream sends `data: {request_id, choices: [{index, token_ids, ...}]}` events, a usage
event with `stream_options.include_usage`, then `[DONE]`. The id is
`generate-tokens-<X-Request-Id or request_id>`, as vLLM names it, and POST
/abort_requests may name it. It runs through the same queue, limits and usage log as
/v1/completions.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import JSONResponse

from api.admission import admit
from api.cache_salt import cache_salt
from api.catalog import ModelTokenizer
from api.collect import ClientGone, Output, collect_all, finish
from api.constraint_after_thinking import bind_after_thinking
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
from api.logprobs import clamp
from api.prompt_logprobs import prompt_logprobs_answer
from api.reasoning_parser import HARMONY, PROMPT_TAIL_TOKENS, ThinkStart, think_start
from api.reply_router import ReplyReader, ReplyRouter, Restart
from api.request_record import RequestRecord
from api.request_submitter import Submission, check_constraint, check_length, check_prompt_ids
from api.response_ids import response_ids
from api.schemas.chat import ChatLogprobs, ChatTokenLogprob, TopLogprob
from api.schemas.common import UsageInfo, check_priority, check_tenant_priority
from api.schemas.generate_tokens import (
    GenerateTokensChoice,
    GenerateTokensChunk,
    GenerateTokensRequest,
    GenerateTokensResponse,
    GenerateTokensStreamChoice,
)
from api.served_model import served_model
from api.streaming import sse_response
from api.tokens_sampling import PARAM as PARAM_PREFIX
from api.tokens_sampling import stated_think_start, tokens_sampling
from conveyor.protocol import TokenLogprob
from conveyor.settings import Settings
from engine.sampling_params import SamplingParams
from engine.tokenizer import Tokenizer

PATH = "/inference/v1/generate"
ID_PREFIX = "generate-tokens"

router = APIRouter(dependencies=[Authenticated])

GenerateTokensBody = Annotated[GenerateTokensRequest, Depends(json_body(GenerateTokensRequest))]


@router.post(PATH, response_model=None)
async def generate_tokens(
    request: Request,
    body: GenerateTokensBody,
    catalog: CatalogDep,
    submitter: SubmitterDep,
    replies: RouterDep,
    record: RecordDep,
    settings: SettingsDep,
) -> Response:
    for name in ("kv_transfer_params", "features"):
        if getattr(body, name) is not None:
            raise ApiError(
                400,
                f"{name} is not supported: this server runs no disaggregated prefill and "
                "takes no media inputs",
                param=name,
                code="unsupported_parameter",
            )
    check_priority(body.priority, settings)
    model = body.model or await catalog.default_model()
    live, model_tokenizer = await served_model(
        request, catalog, submitter, record, model, "generate", PATH
    )
    tokenizer = model_tokenizer.tokenizer
    check_prompt_ids(body.token_ids, tokenizer.vocab_size, param="token_ids")
    max_model_len = live.max_model_len or model_tokenizer.max_model_len
    sampling = await _constrained(
        settings,
        model_tokenizer,
        body.token_ids,
        tokens_sampling(
            body.sampling_params,
            tokenizer.vocab_size,
            model_tokenizer.max_logprobs,
            default_max_tokens=_left_out_max_tokens(
                model_tokenizer.generation_defaults.get("max_tokens"),
                max_model_len,
                len(body.token_ids),
            ),
        ),
        stated_think_start(body.sampling_params),
    )
    check_length(
        len(body.token_ids), sampling.max_tokens, max_model_len, chat=False, where="token_ids"
    )
    ids = response_ids(request, ID_PREFIX, body.request_id)
    record.request_id = ids.internal
    record.response_id = ids.shown
    record.prompt_tokens = len(body.token_ids)
    if settings.log_prompts:
        record.prompt_text = json.dumps(body.token_ids)
    # The checked value where one was sent ("4" reads as 4); none: the prompt alone.
    stated = sampling.max_tokens if body.sampling_params.get("max_tokens") is not None else None
    most = sampling.max_tokens or (max_model_len or 0) - len(body.token_ids)
    check_tenant_priority(body.priority, record.principal)
    await admit(
        request,
        record,
        tokens=len(body.token_ids) + sampling.n * (stated or 0),
        most=len(body.token_ids) + sampling.n * max(most, 0),
    )
    reader = await submitter.submit(
        Submission(
            request_id=ids.internal,
            model=live.queue_model,
            prompt_token_ids=body.token_ids,
            sampling=sampling,
            priority=body.priority,
            stream=bool(body.stream),
            lane=record.lane,
            lora=live.lora,
            cache_salt=cache_salt(record.principal, body.cache_salt, settings.prefix_cache_scope),
            public_id=ids.public,
        )
    )
    record.readers.append(reader)  # its timings (queue time, TTFT) go to the request log
    view = _TokensView(ids.shown, live.name, body, sampling, tokenizer, record)
    if body.stream:
        return sse_response(
            view.chunks(reader, replies), on_close=lambda: finish(replies, [reader])
        )
    try:
        (output,) = await collect_all(request, replies, [reader])
    except ClientGone:
        return Response(status_code=499)
    return JSONResponse(view.response(output).model_dump(mode="json"))


async def _constrained(
    settings: Settings,
    model_tokenizer: ModelTokenizer,
    token_ids: list[int],
    sampling: SamplingParams,
    stated: ThinkStart | None,
) -> SamplingParams:
    """A structured-output constraint compile-checked for the model (a 400, not a worker
    failure) and, for a reasoning model, bound to the answer after its thinking: where a
    render stated the binding (from the model's own turn), that; else where the prompt's
    end leaves the output (as chat decides when it has no turn to read)."""
    constraint = sampling.structured_output
    if constraint is None:
        return sampling
    param = f"{PARAM_PREFIX}.structured_outputs"
    parser = HARMONY if model_tokenizer.harmony else settings.reasoning_parser
    if parser is not None:
        start = stated
        if start is None:
            tail = model_tokenizer.tokenizer.decode(
                token_ids[-PROMPT_TAIL_TOKENS:], skip_special_tokens=False
            )
            start = think_start(parser, tail)
        sampling = bind_after_thinking(sampling, parser, start, param)
    await check_constraint(sampling.structured_output, model_tokenizer, param)
    return sampling


def _left_out_max_tokens(
    served_cap: int | None, max_model_len: int | None, prompt_tokens: int
) -> int | None:
    """vLLM's max_tokens for a request that names none: what the context leaves, or the
    served max_new_tokens where that is less (None: until the context is full)."""
    if served_cap is None:
        return None
    if max_model_len is None or max_model_len - prompt_tokens < 1:
        return int(served_cap)  # no room left is check_length's 400 either way
    return min(int(served_cap), max_model_len - prompt_tokens)


class _TokensView:
    """One request's replies in vLLM's tokens shapes."""

    def __init__(
        self,
        request_id: str,
        model: str,
        body: GenerateTokensRequest,
        sampling: SamplingParams,
        tokenizer: Tokenizer,
        record: RequestRecord,
    ) -> None:
        self.request_id = request_id
        self.model = model
        self.body = body
        self.sampling = sampling
        self.tokenizer = tokenizer
        self.record = record
        self.created = int(time.time())

    def _logprobs(self, logprobs: list[TokenLogprob] | None) -> ChatLogprobs | None:
        """vLLM's: each token named `token_id:N`; its `top_logprobs` the token itself
        first, then the likeliest others, `max(logprobs, 1)` in all."""
        if self.sampling.logprobs is None:
            return None
        listed = max(self.sampling.logprobs, 1)
        content = []
        for lp in logprobs or []:
            entries = {lp.token_id: lp.logprob}
            for token_id, value in lp.top:
                entries.setdefault(int(token_id), value)
            content.append(
                ChatTokenLogprob(
                    token=f"token_id:{lp.token_id}",
                    logprob=clamp(lp.logprob),
                    top_logprobs=[
                        TopLogprob(token=f"token_id:{token_id}", logprob=clamp(value))
                        for token_id, value in list(entries.items())[:listed]
                    ],
                )
            )
        return ChatLogprobs(content=content)

    def response(self, output: Output) -> GenerateTokensResponse:
        choices = []
        for index in range(self.sampling.n):
            choice = output.choice(index)
            choices.append(
                GenerateTokensChoice(
                    index=index,
                    logprobs=self._logprobs(choice.logprobs),
                    finish_reason=choice.finish_reason or "stop",
                    token_ids=list(choice.token_ids),
                )
            )
        prompt_logprobs = None
        if self.sampling.prompt_logprobs is not None:
            prompt_logprobs = prompt_logprobs_answer(
                self.tokenizer,
                output.prompt_logprobs,
                len(self.body.token_ids),
                self.sampling.prompt_logprobs,
            )
        completion_tokens = output.completion_tokens()
        self.record.completion_tokens = completion_tokens
        self.record.cached_tokens = output.cached_tokens()
        self.record.finish_reason = choices[0].finish_reason if choices else None
        return GenerateTokensResponse(
            request_id=self.request_id,
            id=self.request_id,
            created=self.created,
            model=self.model,
            choices=choices,
            usage=UsageInfo.of(len(self.body.token_ids), completion_tokens, output.cached_tokens()),
            prompt_logprobs=prompt_logprobs,
        )

    async def chunks(
        self, reader: ReplyReader, replies: ReplyRouter
    ) -> AsyncIterator[GenerateTokensChunk]:
        prompt_tokens = len(self.body.token_ids)
        generated = [0] * self.sampling.n
        cached = 0
        final: int | None = None
        try:
            async for item in reader:
                if isinstance(item, Restart):
                    generated = [0] * self.sampling.n
                    final = None
                    continue
                if item.cached_tokens is not None:
                    cached = item.cached_tokens
                if item.usage is not None:
                    cached = item.usage.cached_tokens
                    if item.finished:
                        final = item.usage.completion_tokens
                # Logged as received, so a stream that ends early bills what it got.
                self.record.cached_tokens = cached
                for delta in item.choices:
                    generated[delta.index] += len(delta.token_ids)
                    # Logged as forwarded, so an aborted stream bills what it received.
                    self.record.completion_tokens = sum(generated)
                    if delta.finish_reason is not None and delta.index == 0:
                        self.record.finish_reason = delta.finish_reason
                    if not delta.token_ids and delta.finish_reason is None:
                        continue
                    usage = None
                    if self.body.continuous_usage:
                        done = generated[delta.index]
                        usage = UsageInfo.of(prompt_tokens, done, cached)
                    yield GenerateTokensChunk(
                        request_id=self.request_id,
                        choices=[
                            GenerateTokensStreamChoice(
                                index=delta.index,
                                logprobs=self._logprobs(delta.logprobs),
                                finish_reason=delta.finish_reason,
                                token_ids=list(delta.token_ids),
                            )
                        ],
                        usage=usage,
                    )
            total = final if final is not None else sum(generated)
            self.record.completion_tokens = total
            self.record.cached_tokens = cached
            if self.body.include_usage:
                yield GenerateTokensChunk(
                    request_id=self.request_id,
                    choices=[],
                    usage=UsageInfo.of(prompt_tokens, total, cached),
                )
        finally:
            finish(replies, [reader])
