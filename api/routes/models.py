"""GET /v1/models and /v1/models/{id}: the models live workers serve right now."""

from __future__ import annotations

from fastapi import APIRouter, Request

from api.catalog import LiveModel
from api.deps import Authenticated, CatalogDep
from api.schemas.models import ModelCard, ModelList, ModelPermission

router = APIRouter(dependencies=[Authenticated])


def _card(model: LiveModel, created: int, name: str | None = None) -> ModelCard:
    """A LoRA adapter's card names its base model as `parent` and its folder as `root`,
    as vLLM's does; another name of a model (`name`) gets a card like the model's."""
    name = name or model.name
    return ModelCard(
        id=name,
        created=created,
        root=model.root,
        parent=model.parent,
        max_model_len=model.max_model_len,
        permission=[ModelPermission.of(name, created)],
    )


@router.get("/v1/models")
async def list_models(request: Request, catalog: CatalogDep) -> ModelList:
    live = await catalog.live_models()
    aliases = await catalog.aliases()
    created = request.app.state.started
    cards = [_card(model, created) for model in live.values()]
    cards += [
        _card(live[model], created, alias) for alias, model in aliases.items() if model in live
    ]
    return ModelList(data=cards)


@router.get("/v1/models/{model_id:path}")
async def retrieve_model(model_id: str, request: Request, catalog: CatalogDep) -> ModelCard:
    return _card(await catalog.resolve(model_id), request.app.state.started, model_id)
