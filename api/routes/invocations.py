"""POST /invocations for a body the invocations middleware could not route (api/invocations.py):
after the key check, a 400 naming the fields each route's body has."""

from __future__ import annotations

from fastapi import APIRouter, Request

from api.deps import Authenticated
from api.invocations import INVOCATIONS_PATH, unroutable

router = APIRouter(dependencies=[Authenticated])


@router.post(INVOCATIONS_PATH, response_model=None)
async def invocations(request: Request) -> None:
    """SageMaker's inference path: a chat, completion, embedding, rerank or score body."""
    raise unroutable(await request.body())
