"""The model a request names, checked as every inference route checks it before any work.

Usage is logged under the name asked until it resolves, then under the model's own (an
alias or adapter asked by any name); a key over its request rate is refused before
anything else; the model must run `runner` (a 400 naming the endpoint that serves it);
and, for a request to be served now rather than only rendered, the model must be awake
and its lane's queue not full. Its tokenizer comes with it. Chat, completions, tokens in
and every pooling endpoint call this one check.
"""

from __future__ import annotations

from fastapi import Request

from api.admission import refuse_early
from api.catalog import LiveModel, ModelCatalog, ModelTokenizer
from api.request_record import RequestRecord
from api.request_submitter import RequestSubmitter


async def served_model(
    request: Request,
    catalog: ModelCatalog,
    submitter: RequestSubmitter,
    record: RequestRecord,
    model: str,
    runner: str,
    endpoint: str,
    *,
    to_serve: bool = True,
) -> tuple[LiveModel, ModelTokenizer]:
    record.model = model
    if to_serve:
        refuse_early(request, record)
    live = await catalog.resolve(model)
    record.model = live.name  # usage under the model's own name, asked by any
    live.require_runner(runner, endpoint)
    if to_serve:
        await catalog.require_awake(live)
        await submitter.check_capacity(live.queue_model, record.lane)
    return live, await catalog.tokenizer(live.queue_model)
