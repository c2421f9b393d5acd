"""One chat generation, from a validated request to OpenAI's chat answer or chunks.

Shared by `/v1/chat/completions` and `/v1/responses`: the Responses API is
the same generation spelled differently, so it builds a chat request and
reshapes what comes back. Everything between (chat template, sampling, the
structured-output check, admission, the queue, tool-call parsing) is here,
once, and behaves the same on both paths.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterable, AsyncIterator, Iterable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

from fastapi import Request

from api.admission import admit
from api.cache_salt import cache_salt
from api.catalog import LiveModel, ModelCatalog, ModelTokenizer
from api.chat_tokens import rendered_chat
from api.collect import Output, collect, collect_all, finish
from api.constraint_after_thinking import bind_after_thinking
from api.errors import ApiError
from api.harmony_parser import BODY_ENDS
from api.logprobs import chat_logprobs
from api.mistral_tool_parser import mistral_call_id, with_mistral_ids
from api.prompt_logprobs import prompt_logprobs_answer
from api.prompt_truncation import tokens_to_keep, truncated_text_ids
from api.reasoning_parser import (
    HARMONY,
    OTHER_TAGS,
    PROMPT_TAIL_TOKENS,
    HarmonyThinkStream,
    ThinkStart,
    ThinkStream,
    reasoning_token_count,
    split_reasoning,
    think_start,
    think_stream,
    think_tags,
)
from api.reply_router import ReplyReader, ReplyRouter, Restart
from api.request_record import RequestRecord
from api.request_submitter import (
    RequestSubmitter,
    Submission,
    build_sampling,
    check_length,
    check_structured_output,
)
from api.required_calls_reader import RequiredCallsReader
from api.schemas.chat import (
    ChatChoice,
    ChatChunkChoice,
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChatCompletionResponse,
    ChatLogprobs,
    ChatResponseMessage,
    DeltaMessage,
)
from api.schemas.common import UsageInfo, check_tenant_priority
from api.served_model import served_model
from api.tool_call_json import AFTER_CALLS
from api.tool_call_stream import ToolCallStream
from api.tool_choice import ForcedToolCall, refuse_auto, tool_call
from api.tool_parsers import (
    ToolParserStream,
    keeps_special_tokens,
    new_tool_parser,
    parse_tool_calls,
    short_call_ids,
)
from conveyor.protocol import ChoiceDelta, ReplyMessage
from conveyor.settings import Settings
from engine.sampling_params import SamplingParams
from engine.tokenizer import Tokenizer, flatten_content


@dataclass(frozen=True)
class ChatServices:
    """What a chat generation needs from the app, gathered once by the route."""

    request: Request
    catalog: ModelCatalog
    submitter: RequestSubmitter
    replies: ReplyRouter
    record: RequestRecord
    settings: Settings


@dataclass(frozen=True)
class PreparedChat:
    """A chat request checked, rendered and turned into engine sampling: what is queued."""

    live: LiveModel
    model_tokenizer: ModelTokenizer
    body: ChatCompletionRequest  # as the model's template took it
    prompt_ids: list[int]
    sampling: SamplingParams
    reasoning_parser: str | None
    think_start: ThinkStart
    tool_parser: str | None


async def start_chat(
    services: ChatServices,
    body: ChatCompletionRequest,
    request_id: str,
    *,
    truncate: bool = False,
    public_id: str | None = None,
) -> ChatGeneration:
    """Validate, render, admit and queue `body`; the generation is running when this returns.

    `truncate` drops the oldest turns that do not fit the context (the Responses API's
    `truncation: "auto"`) where a prompt too long is otherwise a 400. `public_id` is the
    id the client sees where it is not `request_id` (api/response_ids.py)."""
    record, submitter = services.record, services.submitter
    chat = await prepare_chat(services, body, truncate=truncate)
    live, body, prompt_ids, sampling = chat.live, chat.body, chat.prompt_ids, chat.sampling
    record.request_id = request_id
    record.response_id = public_id or request_id
    record.prompt_tokens = len(prompt_ids)
    if services.settings.log_prompts:
        record.prompt_text = body.model_dump_json(include={"messages"})
    requested = body.requested_max_tokens[0]
    most = None if sampling.max_tokens is None else len(prompt_ids) + body.n * sampling.max_tokens
    check_tenant_priority(body.priority, record.principal)
    await admit(
        services.request, record, tokens=len(prompt_ids) + body.n * (requested or 0), most=most
    )
    reader = await submitter.submit(
        Submission(
            request_id=request_id,
            model=live.queue_model,
            prompt_token_ids=prompt_ids,
            sampling=sampling,
            priority=body.priority,
            stream=body.stream,
            lane=record.lane,
            lora=live.lora,
            cache_salt=cache_salt(
                record.principal, body.cache_salt, services.settings.prefix_cache_scope
            ),
            public_id=public_id,
        )
    )
    record.readers.append(reader)
    return ChatGeneration(
        services,
        public_id or request_id,
        body,
        chat.model_tokenizer.tokenizer,
        prompt_ids,
        reader,
        chat.reasoning_parser,
        think_start=chat.think_start,
        tool_parser=chat.tool_parser,
    )


async def prepare_chat(
    services: ChatServices,
    body: ChatCompletionRequest,
    *,
    truncate: bool = False,
    to_serve: bool = True,
) -> PreparedChat:
    """Check and render `body` and build its sampling, as it would be queued. `to_serve`:
    the model must take it now (awake, its queue not full); rendering alone needs only
    its tokenizer."""
    catalog = services.catalog
    body.check_supported()
    body.model = body.model or await catalog.default_model()
    body.apply_server_defaults(services.settings)
    live, model_tokenizer = await served_model(
        services.request,
        catalog,
        services.submitter,
        services.record,
        body.model,
        "generate",
        services.record.endpoint,
        to_serve=to_serve,
    )
    harmony = model_tokenizer.harmony
    body, tool_parser = for_model(body, services.settings, model_tokenizer)
    if body.auto_tool_choice and tool_parser is None:
        raise refuse_auto(body.named_tool_choice)
    body, prompt_ids, max_model_len = await chat_prompt(
        catalog, live, model_tokenizer, body, truncate
    )
    tokenizer = model_tokenizer.tokenizer
    requested, max_tokens_param = body.requested_max_tokens
    check_length(len(prompt_ids), requested, max_model_len, chat=True, where=body.prompt_param)
    max_tokens = requested
    if max_tokens is None and max_model_len is not None:
        max_tokens = max_model_len - len(prompt_ids)  # the rest of the context, as vLLM does
    top_n = body.top_logprobs or 0
    reasoning_parser = HARMONY if harmony else services.settings.reasoning_parser
    if (
        reasoning_parser == HARMONY
        or reasoning_parser in OTHER_TAGS
        or (body.auto_tool_choice and keeps_special_tokens(tool_parser))
    ):
        # The parser reads special tokens ([TOOL_CALLS], harmony's) the detokenizer drops.
        body = body.model_copy(update={"skip_special_tokens": False})
    sampling = build_sampling(
        body,
        max_tokens=max_tokens,
        logprobs=top_n if body.logprobs else None,
        prompt_logprobs=body.answered_prompt_logprobs,
        defaults=model_tokenizer.generation_defaults,
        vocab_size=tokenizer.vocab_size,
        max_logprobs=model_tokenizer.max_logprobs,
        param_names={
            "max_tokens": max_tokens_param,
            "logprobs": "top_logprobs" if body.top_logprobs else "logprobs",
        },
    )
    start = ThinkStart.ANSWER
    if reasoning_parser is not None:
        # The model's own turn alone: a conversation's earlier think blocks (kept in a
        # tool loop) or a message quoting the tags must not decide it.
        turn = await services.catalog.in_thread(generation_prompt, tokenizer, body)
        if turn is None:
            turn = tokenizer.decode(prompt_ids[-PROMPT_TAIL_TOKENS:], skip_special_tokens=False)
        start = think_start(reasoning_parser, turn)
    # A constraint (a response format, a forced call) binds the answer only.
    sampling = bind_after_thinking(sampling, reasoning_parser, start, body.structured_output()[1])
    await check_structured_output(body, sampling, model_tokenizer)
    return PreparedChat(
        live, model_tokenizer, body, prompt_ids, sampling, reasoning_parser, start, tool_parser
    )


def for_model(
    body: ChatCompletionRequest, settings: Settings, model_tokenizer: ModelTokenizer
) -> tuple[ChatCompletionRequest, str | None]:
    """`body` as the model's chat template takes it, and the tool-call parser that reads
    the model's answer (None: none)."""
    # gpt-oss writes harmony messages: their parsers, whatever the flags say (vLLM's way).
    tool_parser = "openai" if model_tokenizer.harmony else settings.tool_call_parser
    if short_call_ids(tool_parser):
        # Mistral's templates refuse any other call id (vLLM trims them the same way).
        body = body.model_copy(update={"messages": with_mistral_ids(body.messages)})
    return body, tool_parser


async def count_prompt_tokens(
    catalog: ModelCatalog, settings: Settings, body: ChatCompletionRequest, truncate: bool
) -> int:
    """How many tokens `start_chat` would give the model for `body` (after `truncate`'s
    dropped turns), counted with its chat template and tokenizer; nothing is queued."""
    body.check_supported()
    body.model = body.model or await catalog.default_model()
    body.apply_server_defaults(settings)
    live = await catalog.resolve(body.model)
    model_tokenizer = await catalog.tokenizer(live.queue_model)
    body, _ = for_model(body, settings, model_tokenizer)
    _, prompt_ids, _ = await chat_prompt(catalog, live, model_tokenizer, body, truncate)
    return len(prompt_ids)


async def chat_prompt(
    catalog: ModelCatalog,
    live: LiveModel,
    model_tokenizer: ModelTokenizer,
    body: ChatCompletionRequest,
    truncate: bool,
) -> tuple[ChatCompletionRequest, list[int], int | None]:
    """The prompt's token ids (the request without the turns `truncate` dropped) and the
    model's context length, for the model `live` (resolved by the caller: unknown models
    are its 404) with its tokenizer."""
    tokenizer = model_tokenizer.tokenizer
    max_model_len = live.max_model_len or model_tokenizer.max_model_len
    requested, _ = body.requested_max_tokens
    if truncate and max_model_len is not None:
        body, prompt_ids = await catalog.in_thread(
            fit_context, tokenizer, body, max_model_len - (requested or 1)
        )
    elif body.truncate_prompt_tokens is not None:
        keep = tokens_to_keep(body.truncate_prompt_tokens, max_model_len)
        prompt_ids = await catalog.in_thread(_truncated_chat, tokenizer, body, keep)
    else:
        prompt_ids = await catalog.in_thread(render_chat, tokenizer, body)
    return body, prompt_ids, max_model_len


def render_chat(tokenizer: Tokenizer, body: ChatCompletionRequest) -> list[int]:
    """Chat template -> token ids; a template or message problem is the client's 400."""
    return tokenizer.encode(_chat_text(tokenizer, body), add_special_tokens=body.add_special_tokens)


def _truncated_chat(
    tokenizer: Tokenizer, body: ChatCompletionRequest, keep: int | None
) -> list[int]:
    """The rendered conversation's last `keep` tokens (the tokenizer's own specials kept,
    as vLLM's left-side truncation keeps them)."""
    text = _chat_text(tokenizer, body)
    return truncated_text_ids(tokenizer, text, body.add_special_tokens, keep)


def generation_prompt(tokenizer: Tokenizer, body: ChatCompletionRequest) -> str | None:
    """The text the chat template wrote for the model's own turn (the assistant header,
    a thinking switch, the final message continued), apart from the conversation
    before it; None when the template does not render it as a plain suffix."""
    if body.continue_final_message:
        update = {
            "messages": body.messages[:-1],
            "continue_final_message": False,
            "add_generation_prompt": True,
        }
    elif body.add_generation_prompt:
        update = {"add_generation_prompt": False}
    else:
        return None
    try:
        whole = _chat_text(tokenizer, body)
        before = _chat_text(tokenizer, body.model_copy(update=update))
    except ApiError:
        return None
    return whole[len(before) :] if whole.startswith(before) else None


def _chat_text(tokenizer: Tokenizer, body: ChatCompletionRequest) -> str:
    kwargs: dict[str, Any] = dict(body.chat_template_kwargs or {})
    if body.reasoning_effort is not None:
        kwargs.setdefault("reasoning_effort", body.reasoning_effort)
    if body.continue_final_message:
        kwargs["continue_final_message"] = True
    return rendered_chat(
        tokenizer,
        body.messages,
        add_generation_prompt=body.add_generation_prompt,
        # The model sees the tools even with tool_choice "none", as with vLLM and OpenAI.
        tools=body.tools or None,
        kwargs=kwargs,
        param=body.prompt_param,
    )


def fit_context(
    tokenizer: Tokenizer, body: ChatCompletionRequest, budget: int
) -> tuple[ChatCompletionRequest, list[int]]:
    """The request without its oldest turns, rendered, once its prompt is at most `budget`
    tokens. A turn is a user message and what follows it up to the next one (the
    assistant's answer, its calls and their results), so no call loses its result
    and the conversation still starts with a user. System messages and the last turn
    stay. What still does not fit is left for the length check to refuse."""
    prompt_ids = render_chat(tokenizer, body)
    turns = _turn_starts(body.messages)
    if len(prompt_ids) <= budget or len(turns) < 2:
        return body, prompt_ids

    def without(dropped: int) -> ChatCompletionRequest:
        end = turns[dropped]
        kept = [m for i, m in enumerate(body.messages) if i >= end or m.role == "system"]
        return body.model_copy(update={"messages": kept})

    # Fewest turns dropped that fit, by bisection: O(log turns) renders, not one per turn.
    low, high = 1, len(turns) - 1
    best = without(high), render_chat(tokenizer, without(high))
    if len(best[1]) > budget:
        return best
    while low < high:
        middle = (low + high) // 2
        candidate = without(middle)
        ids = render_chat(tokenizer, candidate)
        if len(ids) <= budget:
            best, high = (candidate, ids), middle
        else:
            low = middle + 1
    return best


def _turn_starts(messages: list[Any]) -> list[int]:
    """Where each turn begins: the first non-system message, and every later user one."""
    starts: list[int] = []
    for index, message in enumerate(messages):
        if message.role != "system" and (message.role == "user" or not starts):
            starts.append(index)
    return starts


def chat_message(
    text: str,
    finish_reason: str | None,
    forced: ForcedToolCall | None,
    parser: str | None,
    tools: list[dict[str, Any]] | None = None,
    parallel_tool_calls: bool | None = None,
) -> tuple[ChatResponseMessage, str | None]:
    """The assistant message and finish_reason of one choice's text; `parser` names the
    tool-call parser that reads it when the model chooses ("auto"), else None; `tools`
    are the request's (some parsers type arguments by their schemas). With
    `parallel_tool_calls` false a model that wrote several calls keeps its first, as
    vLLM filters them (a forced "required" array is held to one by its grammar)."""
    if parser is not None:
        parsed = parse_tool_calls(parser, text, tools)
        if not parsed.tool_calls:
            return ChatResponseMessage(content=text), finish_reason
        finish = "tool_calls" if finish_reason == "stop" else finish_reason
        calls = parsed.tool_calls[:1] if parallel_tool_calls is False else parsed.tool_calls
        return ChatResponseMessage(content=parsed.content, tool_calls=calls), finish
    if forced is None:
        return ChatResponseMessage(content=text), finish_reason
    if forced.mode == "named":
        calls = [tool_call(forced.function_name or "", text)]
    else:  # a cut array keeps the calls it got to, the last with its partial arguments
        reader = RequiredCallsReader()
        reader.feed(text)
        calls = reader.tool_calls()
    if finish_reason == "stop" and forced.complete(text):
        finish_reason = forced.finish_reason
    return ChatResponseMessage(content=None, tool_calls=calls), finish_reason


class ChatGeneration:
    """A queued chat request: its answer whole (`response`) or as chunks (`chunks`)."""

    def __init__(
        self,
        services: ChatServices,
        request_id: str,
        body: ChatCompletionRequest,
        tokenizer: Tokenizer,
        prompt_token_ids: list[int],
        reader: ReplyReader,
        reasoning_parser: str | None = None,
        think_start: ThinkStart = ThinkStart.INSIDE,
        tool_parser: str | None = None,
    ) -> None:
        self.services = services
        # Reads tool calls out of the text when the model chooses ("auto"); None: none.
        self.tool_parser = tool_parser
        # Splits thinking from the answer (api/reasoning_parser.py); None: all is answer.
        self.reasoning_parser = reasoning_parser
        self.think_tags = think_tags(reasoning_parser)
        # Whether the output starts inside a think block (the prompt's end decides).
        self.think_start = think_start
        self.record = services.record
        self.request_id = request_id
        self.body = body
        self.tokenizer = tokenizer
        self.prompt_token_ids = prompt_token_ids
        self.prompt_tokens = len(prompt_token_ids)
        self.reader = reader
        self.top_n = body.top_logprobs or 0
        self.tokens_as_ids = bool(body.return_tokens_as_token_ids)
        self.created = int(time.time())
        # vLLM's: the answer is the model's turn (--response-role) when the request added
        # the generation prompt; otherwise it continues the last message, in its role.
        last = body.messages[-1]
        self.role = services.settings.response_role if body.add_generation_prompt else last.role
        # vLLM's `echo`: the last message's text leads the answer when it is in its role.
        echoed = body.echo and last.role == self.role
        self.echoed = (
            (flatten_content(last.content, len(body.messages) - 1) or "") if echoed else ""
        )

    @property
    def auto_parser(self) -> str | None:
        """The tool-call parser reading this answer, if the model chooses whether to call
        (the route refused "auto" unless one is configured)."""
        if not self.body.auto_tool_choice:
            return None
        return self.tool_parser

    @property
    def _wants_short_ids(self) -> bool:
        """Whether calls need Mistral's 9-character ids (its templates refuse others)."""
        return short_call_ids(self.tool_parser)

    def _with_call_ids(self, message: ChatResponseMessage) -> ChatResponseMessage:
        if not message.tool_calls or not self._wants_short_ids:
            return message
        return message.model_copy(update={"tool_calls": _mistral_ids(message.tool_calls)})

    def _reasoning_tokens(self, outputs: Iterable[list[int]]) -> int | None:
        """Usage's reasoning_tokens over the choices' token ids; None without a parser."""
        if self.reasoning_parser is None:
            return None
        # Harmony's count reads its markers, which are special tokens.
        keep = self.think_start is ThinkStart.HARMONY
        decode = partial(self.tokenizer.decode, skip_special_tokens=not keep)
        return sum(
            reasoning_token_count(decode, ids, self.think_start, self.think_tags) for ids in outputs
        )

    def _harmony_end(
        self, token_ids: Sequence[int], finish_reason: str | None, stop_reason: object
    ) -> str:
        """The marker that ended a harmony output (`<|call|>`, `<|return|>`), which the
        engine leaves out of the text as it does every end-of-sequence token; ""
        otherwise."""
        if self.think_start is not ThinkStart.HARMONY or finish_reason != "stop" or not token_ids:
            return ""
        last = token_ids[-1]
        # Left out only where the token stopped the output: as end of sequence, or as a
        # stop token the client named (a stop string's or a grammar's text is kept).
        if not (
            stop_reason == last or (stop_reason is None and last in self.tokenizer.eos_token_ids)
        ):
            return ""
        text = self.tokenizer.decode([last], skip_special_tokens=False)
        return text if text in BODY_ENDS else ""

    def close(self) -> None:
        """Stop listening; abort the generation on the workers if it did not finish."""
        finish(self.services.replies, [self.reader])

    async def response(self) -> ChatCompletionResponse:
        """The whole answer; raises ClientGone if the client leaves first."""
        body, record = self.body, self.record
        (output,) = await collect_all(self.services.request, self.services.replies, [self.reader])
        record.completion_tokens = output.completion_tokens()
        record.cached_tokens = output.cached_tokens()
        record.finish_reason = output.choice(0).finish_reason
        forced = body.forced_tool_call
        choices = []
        for index in range(body.n):
            choice = output.choice(index)
            reasoning, text = None, choice.full_text
            text += self._harmony_end(choice.token_ids, choice.finish_reason, choice.stop_reason)
            if self.reasoning_parser is not None:
                calls = self.auto_parser is not None
                reasoning, text = split_reasoning(text, self.think_start, calls, self.think_tags)
            message, finish_reason = chat_message(
                text,
                choice.finish_reason,
                forced,
                self.auto_parser,
                body.tools,
                body.parallel_tool_calls,
            )
            message = self._with_call_ids(message).model_copy(update={"role": self.role})
            if self.echoed:
                message.content = self.echoed + (message.content or "")
            if reasoning is not None and body.include_reasoning:
                update: dict[str, Any] = {"reasoning_content": reasoning, "reasoning": reasoning}
                if not message.content:
                    update["content"] = None  # all thinking: no answer, as vLLM says
                message = message.model_copy(update=update)
            choices.append(
                ChatChoice(
                    index=index,
                    message=message,
                    logprobs=(
                        ChatLogprobs(
                            content=chat_logprobs(
                                self.tokenizer, choice.logprobs, self.top_n, self.tokens_as_ids
                            )
                        )
                        if body.logprobs
                        else None
                    ),
                    finish_reason=finish_reason,
                    stop_reason=choice.stop_reason,
                    token_ids=list(choice.token_ids) if body.return_token_ids else None,
                )
            )
        prompt_logprobs = None
        if body.answered_prompt_logprobs is not None:
            prompt_logprobs = prompt_logprobs_answer(
                self.tokenizer,
                output.prompt_logprobs,
                self.prompt_tokens,
                _top_n(body.answered_prompt_logprobs, self.tokenizer),
            )
        return ChatCompletionResponse(
            id=self.request_id,
            created=self.created,
            model=body.model,
            choices=choices,
            usage=UsageInfo.of(
                self.prompt_tokens,
                output.completion_tokens(),
                output.cached_tokens(),
                self._reasoning_tokens(c.token_ids for c in output.choices.values()),
            ),
            prompt_token_ids=self.prompt_token_ids if body.return_token_ids else None,
            prompt_logprobs=prompt_logprobs,
        )

    def _chunk(
        self,
        choices: list[ChatChunkChoice],
        usage: UsageInfo | None = None,
        prompt_token_ids: list[int] | None = None,
    ) -> ChatCompletionChunk:
        return ChatCompletionChunk(
            id=self.request_id,
            created=self.created,
            model=self.body.model,
            choices=choices,
            usage=usage,
            prompt_token_ids=prompt_token_ids,
        )

    async def chunks(self, *, final_usage: bool = False) -> AsyncIterator[ChatCompletionChunk]:
        """OpenAI's chunks as tokens arrive; closing the iterator aborts the generation.
        The usage chunk ends them if the client asked (`include_usage`) or `final_usage`."""
        async for chunk in self._chunks(self.reader, final_usage):
            yield chunk

    async def whole_chunks(
        self, *, final_usage: bool = False, detached: bool = False
    ) -> AsyncIterator[ChatCompletionChunk]:
        """The same chunks, for an answer collected whole first: a restarted generation
        starts over unseen, and a client that leaves first raises ClientGone. A
        `detached` answer (a background response: its client is gone by design)
        ignores the client; cancelling the caller aborts it."""
        if detached:
            try:
                output = await collect(self.reader)
            finally:
                self.close()
        else:
            (output,) = await collect_all(
                self.services.request, self.services.replies, [self.reader]
            )
        async for chunk in self._chunks(_replayed(output, self.request_id), final_usage):
            yield chunk

    async def _chunks(
        self, items: AsyncIterable[ReplyMessage | Restart], final_usage: bool
    ) -> AsyncIterator[ChatCompletionChunk]:
        body = self.body
        cached_tokens = 0
        final_completion_tokens: int | None = None

        forced = body.forced_tool_call
        tool_streams: dict[int, ToolCallStream] = {}
        parsers: dict[int, ToolParserStream] = {}
        thinking: dict[int, ThinkStream | HarmonyThinkStream] = {}

        token_ids: dict[int, list[int]] = {}  # each choice's, for the reasoning count
        choice_tokens: dict[int, int] = {}  # each choice's so far, for continuous usage

        def usage(completion: int, choices: Iterable[list[int]]) -> UsageInfo:
            reasoning_tokens = self._reasoning_tokens(choices)
            return UsageInfo.of(self.prompt_tokens, completion, cached_tokens, reasoning_tokens)

        def running_usage(index: int) -> UsageInfo | None:
            """vLLM's continuous usage: a chunk counts its own choice's tokens so far."""
            if not body.continuous_usage:
                return None
            return usage(choice_tokens.get(index, 0), [token_ids.get(index, [])])

        try:
            for index in range(body.n):
                yield self._chunk(
                    [ChatChunkChoice(index=index, delta=DeltaMessage(role=self.role, content=""))],
                    running_usage(index),
                    # vLLM's return_token_ids: the prompt's ids lead the stream, once.
                    self.prompt_token_ids if body.return_token_ids and index == 0 else None,
                )
                if self.echoed:
                    echo = DeltaMessage(content=self.echoed)
                    yield self._chunk(
                        [ChatChunkChoice(index=index, delta=echo)], running_usage(index)
                    )
            async for item in items:
                if isinstance(item, Restart):
                    self.record.completion_tokens = 0  # nothing but role chunks went out
                    tool_streams.clear()
                    parsers.clear()
                    thinking.clear()
                    token_ids.clear()
                    choice_tokens.clear()
                    continue
                if item.cached_tokens is not None:
                    cached_tokens = item.cached_tokens
                if item.usage is not None:
                    cached_tokens = item.usage.cached_tokens
                    if item.finished:
                        final_completion_tokens = item.usage.completion_tokens
                for delta in item.choices:
                    choice_tokens[delta.index] = choice_tokens.get(delta.index, 0) + len(
                        delta.token_ids
                    )
                    # Logged as forwarded, so an aborted stream bills what it received.
                    self.record.completion_tokens = sum(choice_tokens.values())
                    self.record.cached_tokens = cached_tokens
                    if delta.finish_reason is not None and delta.index == 0:
                        self.record.finish_reason = delta.finish_reason
                    # A delta with logprobs or token ids to report is a chunk even when
                    # its text is held back (a parser's, or half a character).
                    reportable = (body.logprobs and bool(delta.logprobs)) or (
                        bool(body.return_token_ids) and bool(delta.token_ids)
                    )
                    finish_reason = delta.finish_reason
                    text, reasoning = delta.text, ""
                    if finish_reason is not None:
                        text += self._harmony_end(delta.token_ids, finish_reason, delta.stop_reason)
                    if self.reasoning_parser is not None:
                        if delta.index not in thinking:
                            calls = self.auto_parser is not None
                            thinking[delta.index] = think_stream(
                                self.think_start, calls, self.think_tags
                            )
                        split = thinking[delta.index]
                        reasoning, text = split.feed(text, finish_reason is not None)
                        token_ids.setdefault(delta.index, []).extend(delta.token_ids)
                        if not body.include_reasoning:
                            reasoning = ""
                    thought = {"reasoning_content": reasoning, "reasoning": reasoning}
                    if not reasoning:
                        thought = {}
                    if forced is not None or body.auto_tool_choice:
                        if forced is not None:
                            stream = tool_streams.setdefault(delta.index, ToolCallStream(forced))
                            fields, finish_reason = stream.delta(text, delta.finish_reason)
                        else:
                            if delta.index not in parsers:
                                parsers[delta.index] = new_tool_parser(
                                    self.auto_parser or "", body.tools
                                )
                            parser = parsers[delta.index]
                            fields, called = parser.feed(text, finish_reason is not None)
                            if body.parallel_tool_calls is False:
                                _first_call_only(fields)
                            if called and finish_reason == "stop":
                                finish_reason = "tool_calls"
                        fields |= thought
                        if fields.get("tool_calls") and self._wants_short_ids:
                            fields["tool_calls"] = _mistral_ids(fields["tool_calls"])
                        if not fields and finish_reason is None and not reportable:
                            continue
                        after_calls = fields.pop(AFTER_CALLS, None)
                        message = DeltaMessage(**fields)
                        if message.tool_calls and (finish_reason is not None or after_calls):
                            # Calls first, the finish in a chunk of its own, as OpenAI ends:
                            # the SDK's stream state reads a chunk's finish before its calls.
                            # Text the model wrote after them follows them, in its order.
                            yield self._chunk(
                                [ChatChunkChoice(index=delta.index, delta=message)],
                                running_usage(delta.index),
                            )
                            message = DeltaMessage(content=after_calls)
                    else:
                        if (
                            not text
                            and not reasoning
                            and delta.finish_reason is None
                            and not reportable
                        ):
                            continue
                        answer = text if text or finish_reason is None else None
                        if reasoning and not text:
                            answer = None  # a thinking delta carries no empty content
                        message = DeltaMessage(content=answer, **thought)
                    logprobs = (
                        ChatLogprobs(
                            content=chat_logprobs(
                                self.tokenizer, delta.logprobs or [], self.top_n, self.tokens_as_ids
                            )
                        )
                        if body.logprobs
                        else None
                    )
                    yield self._chunk(
                        [
                            ChatChunkChoice(
                                index=delta.index,
                                delta=message,
                                logprobs=logprobs,
                                finish_reason=finish_reason,
                                stop_reason=delta.stop_reason,
                                token_ids=list(delta.token_ids) if body.return_token_ids else None,
                            )
                        ],
                        running_usage(delta.index),
                    )
            total = (
                final_completion_tokens
                if final_completion_tokens is not None
                else sum(choice_tokens.values())
            )
            self.record.completion_tokens = total
            if body.include_usage or final_usage:
                yield self._chunk([], usage(total, token_ids.values()))
        finally:
            self.close()


def _first_call_only(fields: dict[str, Any]) -> None:
    """A stream's delta fields without calls past the first (`parallel_tool_calls` false),
    as vLLM filters them: their deltas are dropped, the first's kept whole. Text after a
    dropped call stays text, as the whole answer keeps it."""
    calls = [call for call in fields.get("tool_calls") or () if call.get("index", 0) == 0]
    if calls:
        fields["tool_calls"] = calls
        return
    fields.pop("tool_calls", None)
    after = fields.pop(AFTER_CALLS, "")
    if after:
        fields["content"] = fields.get("content", "") + after


def _top_n(prompt_logprobs: int, tokenizer: Tokenizer) -> int:
    """How many alternatives a prompt position lists: vLLM's -1 is every token."""
    return tokenizer.vocab_size if prompt_logprobs == -1 else prompt_logprobs


def _mistral_ids(calls: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Forced calls' ids in Mistral's form (a call's first delta carries its id)."""
    return [{**c, "id": mistral_call_id()} if "id" in c and len(c["id"]) != 9 else c for c in calls]


async def _replayed(output: Output, request_id: str) -> AsyncIterator[ReplyMessage]:
    """A collected answer as the one message a whole answer arrives in."""
    yield ReplyMessage(
        id=request_id,
        seq=0,
        choices=[
            ChoiceDelta(
                index,
                choice.full_text,
                list(choice.token_ids),
                list(choice.logprobs) or None,
                choice.finish_reason,
                choice.stop_reason,
            )
            for index, choice in sorted(output.choices.items())
        ],
        finished=True,
        usage=output.usage,
    )
