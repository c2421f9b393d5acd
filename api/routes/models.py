"""GET /v1/models and /v1/models/{id}: the models live workers serve right now."""

from __future__ import annotations

from fastapi import APIRouter, Request

from api.catalog import LiveModel
from api.deps import Authenticated, CatalogDep
from api.schemas.models import ModelCard, ModelList, ModelPermission

router = APIRouter(dependencies=[Authenticated])


def _card(model: LiveModel, created: int) -> ModelCard:
    """A LoRA adapter's card names its base model as `parent` and its folder as `root`,
    as vLLM's does."""
    return ModelCard(
        id=model.name,
        created=created,
        root=model.root,
        parent=model.parent,
        max_model_len=model.max_model_len,
        permission=[ModelPermission.of(model.name, created)],
    )


@router.get("/v1/models")
async def list_models(request: Request, catalog: CatalogDep) -> ModelList:
    live = await catalog.live_models()
    created = request.app.state.started
    return ModelList(data=[_card(model, created) for model in live.values()])


@router.get("/v1/models/{model_id:path}")
async def retrieve_model(model_id: str, request: Request, catalog: CatalogDep) -> ModelCard:
    return _card(await catalog.resolve(model_id), request.app.state.started)
