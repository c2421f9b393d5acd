"""GET /health (and /ping), /version, /load and /metrics: public (no API key), for load
balancers and Prometheus."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterable
from importlib.metadata import PackageNotFoundError, version
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    GCCollector,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from redis.exceptions import RedisError

from api.deps import CatalogDep, NamesDep, RedisDep, RouterDep, SettingsDep
from api.errors import ApiError
from api.queue_stats import QueueStats, lane_stats
from conveyor.bus import BusNames

logger = logging.getLogger(__name__)

router = APIRouter()

try:
    __version__ = version("conveyor")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "unknown"


@router.get("/health", response_model=None)
@router.get("/ping", response_model=None)  # vLLM's (SageMaker's) name for it
@router.post("/ping", response_model=None)
async def health(settings: SettingsDep, redis: RedisDep, catalog: CatalogDep) -> Response:
    """200 only when Redis answers and every served model has a live worker."""
    try:
        await redis.ping()
        expected = (
            {settings.served_model_name}
            if settings.served_model_name
            else await catalog.known_models()
        )
        live = await catalog.live_models(max_age=0.5)
    except (RedisError, OSError) as exc:
        return _unhealthy(f"Redis does not answer: {exc}")
    if not expected:
        expected = set(live)
    if not expected:
        return _unhealthy("no model has a live worker yet")
    missing = sorted(expected - set(live))
    if missing:
        return _unhealthy(f"no live worker for {', '.join(missing)}")
    return JSONResponse({"status": "ok"})


@router.get("/readyz", response_model=None)
async def ready(request: Request, redis: RedisDep) -> Response:
    """This API process can take requests (a Kubernetes readiness probe): it is not
    draining and its Redis answers. Unlike /health it does not wait for workers: with no
    worker a request still gets the API's own 503 `no_worker`, and the admin, files and
    batch routes go on working, where an unready pod would get the proxy's bare 503."""
    if request.app.state.drain.begun:
        return _unhealthy("shutting down")
    try:
        await redis.ping()
    except (RedisError, OSError) as exc:
        return _unhealthy(f"Redis does not answer: {exc}")
    return JSONResponse({"status": "ok"})


def _unhealthy(message: str) -> Response:
    return ApiError(503, message, code="unhealthy", headers={"Retry-After": "5"}).response()


@router.get("/version")
async def get_version() -> dict[str, str]:
    return {"version": __version__}


@router.get("/load")
async def get_load(replies: RouterDep) -> dict[str, int]:
    """vLLM's load endpoint (--enable-server-load-tracking, always on here): the
    generations this API process is waiting on, for a load balancer choosing replicas."""
    return {"server_load": replies.in_flight}


@router.get("/metrics", response_model=None)
async def metrics(
    redis: RedisDep, names: NamesDep, catalog: CatalogDep, replies: RouterDep
) -> Response:
    """Workers' engine metrics (their snapshots in Redis) plus this deployment's queues."""
    snapshots = await _worker_snapshots(redis, names.worker_metrics_pattern)
    # A snapshot outlives its worker (final counts for a last scrape); say which are live.
    live = {key async for key in redis.scan_iter(match=names.worker_pattern)}
    for snap in snapshots:
        beat = names.worker(str(snap.get("model_name", "")), str(snap.get("worker", "")))
        snap["live"] = beat in live
    bases = {name for name, m in (await catalog.live_models()).items() if m.parent is None}
    models = bases | await catalog.known_models()  # adapters share their base's queues
    stats = {
        model: await lane_stats(redis, names, model, live_workers=_instances(live, names, model))
        for model in sorted(models)
    }
    # Waiting, as vLLM counts it: not taken yet, or taken by a worker that is gone since.
    queued = {model: sum(s.waiting for s in lanes.values()) for model, lanes in stats.items()}
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_QueueCollector(stats, replies.in_flight))
    # This API process's own, as prometheus_client's default registry (vLLM's) has them:
    # process_* (CPU, memory, open files), python_info, python_gc_*.
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    GCCollector(registry=registry)
    body = _render_workers(snapshots, queued) + generate_latest(registry)
    return Response(body, media_type=CONTENT_TYPE_LATEST)


def _instances(heartbeats: set[str], names: BusNames, model: str) -> set[str]:
    """The ids of `model`'s workers among these heartbeat keys."""
    prefix = names.worker(model, "")
    return {key[len(prefix) :] for key in heartbeats if key.startswith(prefix)}


async def _worker_snapshots(redis: Any, pattern: str) -> list[dict[str, Any]]:
    keys = [key async for key in redis.scan_iter(match=pattern, count=500)]
    if not keys:
        return []
    snapshots = []
    for raw in await redis.mget(keys):
        try:
            value = json.loads(raw) if raw is not None else None
        except ValueError:
            continue
        if isinstance(value, dict):
            snapshots.append(value)
    return snapshots


def _render_workers(snapshots: list[dict[str, Any]], queued: dict[str, int]) -> bytes:
    """conveyor.metrics renders the workers' part (the models' queues counted as waiting,
    as vLLM counts them); without it /metrics still serves ours."""
    try:
        from conveyor.metrics import render_worker_metrics
    except ImportError:
        return b""
    render: Callable[[list[dict[str, Any]], dict[str, int]], bytes] = render_worker_metrics
    try:
        return render(snapshots, queued)
    except Exception:
        logger.exception("rendering worker metrics failed")
        return b""


class _QueueCollector(Collector):
    """Each model's request streams, one series per lane (interactive, batch).

    `sum by (model)` gives the model's whole queue; the dead-letter stream is
    shared by the lanes, so it is per model only.
    """

    def __init__(self, stats: dict[str, dict[str, QueueStats]], in_flight: int) -> None:
        self.stats = stats
        self.in_flight = in_flight

    def collect(self) -> Iterable[Metric]:
        lanes = ["model", "lane"]
        families = {
            "length": GaugeMetricFamily(
                "conveyor:queue_length", "Entries in the model's request stream", labels=lanes
            ),
            "pending": GaugeMetricFamily(
                "conveyor:queue_pending",
                "Requests delivered to a worker and not yet acknowledged",
                labels=lanes,
            ),
            "undelivered": GaugeMetricFamily(
                "conveyor:queue_undelivered",
                "Requests no worker has taken yet",
                labels=lanes,
            ),
            "orphaned": GaugeMetricFamily(
                "conveyor:queue_orphaned",
                "Requests pending on a worker without a heartbeat, waiting to be reclaimed",
                labels=lanes,
            ),
        }
        dead_letters = GaugeMetricFamily(
            "conveyor:dead_letters",
            "Requests that failed too many deliveries",
            labels=["model"],
        )
        for model, per_lane in self.stats.items():
            for lane, stats in per_lane.items():
                for field, family in families.items():
                    family.add_metric([model, lane], getattr(stats, field))
            if per_lane:
                dead_letters.add_metric([model], next(iter(per_lane.values())).dead_letters)
        yield from families.values()
        yield dead_letters
        yield GaugeMetricFamily(
            "conveyor:api_requests_in_flight",
            "Requests this API process is waiting on",
            value=self.in_flight,
        )
