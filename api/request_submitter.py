"""From a validated HTTP request to a GenerateRequest on the model's stream.

Everything a worker would otherwise reject late is checked here, where the
client still gets a precise 400: sampling ranges (through the engine's own
SamplingParams, so every entry point rejects the same things), token ids
against the vocabulary, and prompt + completion length against the model's
context. Overload is refused before any tokenizing work (503 + Retry-After),
per lane: batch lines queue on their own stream, so however many of them
wait, interactive requests are neither refused nor queued behind them.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

from redis.asyncio import Redis

from api.catalog import ModelTokenizer
from api.collect import finish
from api.errors import ApiError
from api.queue_admission import QueueAdmission, is_full, overloaded
from api.queue_stats import queue_stats
from api.reply_router import ReplyReader, ReplyRouter
from api.request_id_header import current_request_id
from api.schemas.common import SamplingRequest
from api.schemas.structured_output import refused_as
from conveyor.bus import INTERACTIVE_LANE, REQUEST_FIELD, BusNames
from conveyor.protocol import GenerateRequest
from conveyor.settings import Settings
from engine.sampling_params import DEFAULT_MAX_LOGPROBS, SamplingParamError, SamplingParams
from engine.structured_output import StructuredOutput

logger = logging.getLogger(__name__)

# The `sampling` of an embedding request: a worker of an older release, which knows no
# `pooling` field, refuses this name (400) instead of generating text for it.
EMBEDDING_MARKER: dict[str, Any] = {"pooling": True}


@dataclass(frozen=True)
class Submission:
    """One prompt's generation, as queued for a worker."""

    request_id: str
    model: str
    prompt_token_ids: list[int]
    # What to generate; None for an embedding (then `pooling` says how to embed).
    sampling: SamplingParams | None
    priority: int
    stream: bool
    # "interactive" or "batch" (conveyor.bus.LANES): which of the model's streams it joins.
    lane: str = INTERACTIVE_LANE
    # The LoRA adapter of `model` to generate with (None: the model itself).
    lora: str | None = None
    # An embedding of the prompt: the wire form of engine/pooling_params.py.
    pooling: dict[str, Any] | None = None
    # Requests share cached prompt blocks only under equal salts (api/cache_salt.py).
    cache_salt: str | None = None
    # The id the client sees where it is not `request_id` (api/response_ids.py).
    public_id: str | None = None


def build_sampling(
    request: SamplingRequest,
    *,
    max_tokens: int | None,
    logprobs: int | None,
    prompt_logprobs: int | None = None,
    defaults: Mapping[str, Any] | None = None,
    vocab_size: int | None = None,
    max_logprobs: int = DEFAULT_MAX_LOGPROBS,
    param_names: Mapping[str, str] | None = None,
) -> SamplingParams:
    """Validate through SamplingParams; a bad value becomes a 400 naming the client's param.

    `defaults` are the model's generation_config values, used where the request
    leaves a knob unset (vLLM's behaviour); then OpenAI's defaults.
    """
    defaults = defaults or {}
    if request.use_beam_search:
        # The model's sampling defaults choose nothing in a beam search, and a default
        # repetition_penalty would refuse it: only the served max_new_tokens applies.
        defaults = {k: v for k, v in defaults.items() if k == "max_tokens"}
    param_names = param_names or {}
    cap = defaults.get("max_tokens")  # a served max_new_tokens caps every request, as in vLLM
    if cap is not None and (max_tokens is None or max_tokens > cap):
        max_tokens = int(cap)

    def pick(name: str, fallback: Any) -> Any:
        value = getattr(request, name)
        if value is not None:
            return value
        return defaults.get(name, fallback)

    if prompt_logprobs == -1 and vocab_size is not None:
        prompt_logprobs = vocab_size  # vLLM's -1: every token
    constraint, constraint_param = request.structured_output()
    param_names = {"structured_output": constraint_param, **param_names}
    logit_bias: dict[int, float] | None = None
    if request.logit_bias:
        logit_bias = {}
        for key, value in request.logit_bias.items():
            try:
                logit_bias[int(key)] = float(value)
            except ValueError:
                raise ApiError(
                    400, f"logit_bias keys must be token ids, got {key!r}", param="logit_bias"
                ) from None
    try:
        params = SamplingParams(
            n=request.n,
            temperature=float(pick("temperature", 1.0)),
            top_p=float(pick("top_p", 1.0)),
            top_k=int(pick("top_k", 0)),
            min_p=float(pick("min_p", 0.0)),
            presence_penalty=float(request.presence_penalty or 0.0),
            frequency_penalty=float(request.frequency_penalty or 0.0),
            repetition_penalty=float(pick("repetition_penalty", 1.0)),
            logit_bias=logit_bias,
            seed=request.seed,
            max_tokens=max_tokens,
            min_tokens=request.min_tokens,
            stop=[request.stop] if isinstance(request.stop, str) else list(request.stop or []),
            stop_token_ids=list(request.stop_token_ids or []),
            ignore_eos=request.ignore_eos,
            include_stop_str_in_output=request.include_stop_str_in_output,
            skip_special_tokens=request.skip_special_tokens,
            logprobs=logprobs,
            prompt_logprobs=prompt_logprobs,
            structured_output=constraint,
            allowed_token_ids=request.allowed_token_ids,
            bad_words=tuple(request.bad_words or ()),
            use_beam_search=request.use_beam_search,
            # Without beam search it scores nothing (vLLM ignores it too): kept off the
            # wire, where a worker of the release before would refuse it.
            length_penalty=request.length_penalty if request.use_beam_search else 1.0,
        )
        if vocab_size is not None:
            params.validate_against_vocab(vocab_size, max_logprobs)
    except SamplingParamError as exc:
        param = param_names.get(exc.param, exc.param)
        detail = str(exc).split(": ", 1)[-1]
        raise ApiError(400, f"{param}: {detail}", param=param) from None
    return params


async def check_structured_output(
    request: SamplingRequest, sampling: SamplingParams, model: ModelTokenizer
) -> None:
    """Compile-check the request's constraint for this model's vocabulary: a 400, not a
    failure on the worker, for a schema, regex or grammar that cannot be used."""
    if sampling.structured_output is not None:
        await check_constraint(sampling.structured_output, model, request.structured_output()[1])


async def check_constraint(constraint: StructuredOutput, model: ModelTokenizer, param: str) -> None:
    """`constraint` compile-checked for `model`; a 400 naming `param` where it cannot be."""
    with refused_as(param):
        # Not on the catalog's one tokenizing thread: a big schema must not hold up
        # every other request's chat template.
        await asyncio.to_thread(model.grammars.check, constraint)


def check_prompt_ids(token_ids: list[int], vocab_size: int, param: str = "prompt") -> None:
    for token_id in token_ids:
        if not 0 <= token_id < vocab_size:
            raise ApiError(
                400, f"token id {token_id} is outside the vocabulary ({vocab_size})", param=param
            )


def check_length(
    prompt_tokens: int,
    max_tokens: int | None,
    max_model_len: int | None,
    *,
    chat: bool,
    where: str | None = None,
) -> None:
    """Reject a request that cannot fit the context, stating both numbers (as vLLM does).

    `where` names the prompt's field when it is neither chat's nor completions' own."""
    if max_model_len is None:
        return
    where = where or ("messages" if chat else "prompt")
    if max_tokens is None:
        if prompt_tokens >= max_model_len:
            raise ApiError(
                400,
                f"This model's maximum context length is {max_model_len} tokens. However, your "
                f"{where} resulted in {prompt_tokens} tokens, which leaves no room for the "
                f"completion. Please reduce the length of the {where}.",
                param=where,
                code="context_length_exceeded",
            )
        return
    if prompt_tokens + max_tokens > max_model_len:
        raise ApiError(
            400,
            f"This model's maximum context length is {max_model_len} tokens. However, you "
            f"requested {prompt_tokens + max_tokens} tokens ({prompt_tokens} in the {where}, "
            f"{max_tokens} in the completion). Please reduce the length of the {where} or "
            "completion.",
            param=where,
            code="context_length_exceeded",
        )


class RequestSubmitter:
    """Queues generations for workers and tells them when a client has gone."""

    def __init__(
        self, redis: Redis, names: BusNames, router: ReplyRouter, settings: Settings
    ) -> None:
        self.redis = redis
        self.names = names
        self.router = router
        self.settings = settings
        self.admission = QueueAdmission(redis, settings.max_queued_requests)
        self._admissions: set[asyncio.Task[list[str]]] = set()

    async def check_capacity(self, model: str, lane: str = INTERACTIVE_LANE) -> None:
        """503 + Retry-After while the lane's stream holds too many undelivered requests."""
        self.names.requests(model, lane)  # an unknown lane is a bug: fail before any work
        stats = await queue_stats(self.redis, self.names, model, lanes=(lane,))
        # Cheap, before tokenizing; the queueing itself decides (api/queue_admission.py).
        if is_full(stats.undelivered, 1, self.settings.max_queued_requests):
            raise overloaded(model, lane, stats.undelivered)

    async def submit_all(
        self, submissions: Sequence[Submission], readers: list[ReplyReader]
    ) -> None:
        """Queue all of a request's submissions together (admitted or refused as one),
        appending their readers to `readers` (a request's record keeps them)."""
        readers.extend(await self._queue(submissions))

    async def submit(self, submission: Submission) -> ReplyReader:
        """Register for replies first (none may be missed), then queue the request."""
        (reader,) = await self._queue([submission])
        return reader

    async def _queue(self, submissions: Sequence[Submission]) -> list[ReplyReader]:
        """Readers open before any entry is queued; the entries of each lane's stream (one,
        in practice) go in one admission; if any cannot, none stays queued."""
        now = time.time()
        deadline = now + self.settings.request_timeout
        by_stream: dict[str, list[tuple[Submission, ReplyReader, str]]] = {}
        opened: list[ReplyReader] = []
        queued: list[ReplyReader] = []
        try:
            for submission in submissions:
                stream = self.names.requests(submission.model, submission.lane)
                reader = self.router.open(
                    submission.request_id, deadline, streaming=submission.stream
                )
                opened.append(reader)
                message = self._message(submission, now, deadline)
                by_stream.setdefault(stream, []).append((submission, reader, message))
            for stream, entries in by_stream.items():
                first = entries[0][0]
                admission = asyncio.get_running_loop().create_task(
                    self.admission.queue(
                        stream,
                        REQUEST_FIELD,
                        [message for _, _, message in entries],
                        model=first.model,
                        lane=first.lane,
                    )
                )
                self._admissions.add(admission)  # held until done, cancelled caller or not
                admission.add_done_callback(self._admissions.discard)
                try:
                    ids = await asyncio.shield(admission)
                except asyncio.CancelledError:
                    # The script may run (or have run) all the same: once it answers,
                    # pull whatever it queued back out, or workers would generate for
                    # a client that has gone.
                    admission.add_done_callback(partial(self._withdraw, stream, entries))
                    raise
                for (submission, reader, _), entry_id in zip(entries, ids, strict=True):
                    self.router.queued(submission.request_id, stream, entry_id, submission.model)
                    queued.append(reader)
                    if self.settings.enable_log_requests:
                        _log_request(submission, self.settings.max_log_len)
        except BaseException:
            finish(self.router, queued)  # aborts what reached a stream
            for reader in opened:
                if reader not in queued:
                    reader.close()
            raise
        return opened

    def _withdraw(
        self,
        stream: str,
        entries: list[tuple[Submission, ReplyReader, str]],
        admission: asyncio.Future[list[str]],
    ) -> None:
        """An admission whose request was cancelled meanwhile: abort what it queued."""
        if admission.cancelled() or admission.exception() is not None:
            return
        for (submission, _, _), entry_id in zip(entries, admission.result(), strict=True):
            self.router.queued(submission.request_id, stream, entry_id, submission.model)
        self.router.abort_soon(submission.request_id for submission, _, _ in entries)

    def _message(self, submission: Submission, now: float, deadline: float) -> str:
        return GenerateRequest(
            id=submission.request_id,
            reply_to=self.router.instance,
            model=submission.model,
            prompt_token_ids=submission.prompt_token_ids,
            sampling=(
                submission.sampling.wire() if submission.sampling is not None else EMBEDDING_MARKER
            ),
            priority=submission.priority,
            deadline=deadline,
            arrival=now,
            stream=submission.stream,
            lane=submission.lane,
            lora=submission.lora,
            pooling=submission.pooling,
            cache_salt=submission.cache_salt,
            public_id=submission.public_id,
        ).encode()


def _log_request(submission: Submission, max_log_len: int | None) -> None:
    """vLLM's --enable-log-requests line: what was queued, its prompt ids cut to
    --max-log-len. Named by the id its client sees, and the one it is queued under where
    that differs (api/response_ids.py)."""
    ids = submission.prompt_token_ids
    shown = ids if max_log_len is None else ids[:max_log_len]
    more = f" ... ({len(ids) - len(shown)} more)" if len(shown) < len(ids) else ""
    logger.info(
        "Received request %s (x-request-id %s%s): model %s%s, lane %s, priority %d, "
        "params %s, prompt_token_ids (%d): %s%s",
        submission.public_id or submission.request_id,
        current_request_id(),
        f", queued as {submission.request_id}" if submission.public_id else "",
        submission.model,
        f" (LoRA {submission.lora})" if submission.lora else "",
        submission.lane,
        submission.priority,
        submission.sampling if submission.sampling is not None else submission.pooling,
        len(ids),
        shown,
        more,
    )
