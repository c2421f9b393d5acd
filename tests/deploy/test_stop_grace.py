"""Every orchestrator lets a stopping API finish its whole stop: the drain, the 503s for
what is left, rate-limit settlements and the request-log flush (the billing rows a kill
would lose). Compose, the chart and systemd each state it; this ties them to the code."""

from __future__ import annotations

import re

from api.shutdown_drain import CLOSE_MARGIN_SECONDS
from conveyor.settings import Settings

from .conftest import CHART, COMPOSE_FILE, SYSTEMD_DIR, load_yaml

# After uvicorn's wait: settlements (up to 5 s) and the log flush.
AFTER_SERVER_SECONDS = 5 + 2
API_STOP_SECONDS = Settings().drain_timeout + CLOSE_MARGIN_SECONDS + AFTER_SERVER_SECONDS


def seconds(text: str) -> float:
    match = re.fullmatch(r"(\d+)s?", str(text))
    assert match, text
    return float(match.group(1))


def test_compose_lets_the_api_stop() -> None:
    api = load_yaml(COMPOSE_FILE)["services"]["api"]
    assert seconds(api["stop_grace_period"]) >= API_STOP_SECONDS


def test_the_chart_lets_the_api_stop_after_its_pre_stop_pause() -> None:
    api = load_yaml(CHART / "values.yaml")["api"]
    pre_stop = 5  # templates/api-deployment.yaml: sleep 5 while the Service drops the pod
    assert api["terminationGracePeriodSeconds"] >= pre_stop + API_STOP_SECONDS


def test_systemd_lets_the_api_stop() -> None:
    unit = (SYSTEMD_DIR / "conveyor-api@.service").read_text()
    (value,) = re.findall(r"^TimeoutStopSec=(\d+)$", unit, re.M)
    assert float(value) >= API_STOP_SECONDS
