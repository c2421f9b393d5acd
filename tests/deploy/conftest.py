"""What the deployment tests share: the repo's deploy files, read as their tools read them."""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
COMPOSE_FILE = REPO / "docker-compose.yml"
COMPOSE_GPU_FILE = REPO / "deploy" / "compose.gpu.yml"
COMPOSE_ENV_EXAMPLE = REPO / "deploy" / "conveyor.env.example"
POSTGRES_ENV_EXAMPLE = REPO / "deploy" / "postgres.env.example"
DOCKERFILE = REPO / "deploy" / "Dockerfile"
ENTRYPOINT = REPO / "deploy" / "docker-entrypoint.sh"
HEALTHCHECK = REPO / "deploy" / "healthcheck.py"
CHART = REPO / "helm" / "conveyor"
SYSTEMD_DIR = REPO / "deploy" / "systemd"

# The conveyor services of docker-compose.yml (the others run third-party images).
CONVEYOR_SERVICES = ("migrate", "api", "worker", "batch-worker")


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


@pytest.fixture(scope="session")
def compose() -> dict[str, Any]:
    """docker-compose.yml as parsed YAML (anchors and `<<` merges resolved, as Compose does)."""
    return load_yaml(COMPOSE_FILE)


def read_env_file(path: Path) -> dict[str, str]:
    """A Compose env file: KEY=VALUE lines, `#` comments, optional quotes."""
    env: dict[str, str] = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.partition("=")
        assert sep, f"{path.name}: not KEY=VALUE: {line!r}"
        env[key.strip()] = value.strip().strip("'\"")
    return env


def service_command(service: dict[str, Any]) -> list[str]:
    command = service["command"]
    return shlex.split(command) if isinstance(command, str) else [str(arg) for arg in command]


def service_env(service: dict[str, Any], env_file: Path) -> dict[str, str]:
    """What a service's process sees: its env_file (the example stands in for the operator's
    file), then its `environment:` on top, as Compose layers them."""
    env = read_env_file(env_file) if service.get("env_file") else {}
    environment = service.get("environment") or {}
    if isinstance(environment, list):
        environment = dict(item.split("=", 1) for item in environment)
    env.update({key: str(value) for key, value in environment.items()})
    return env


def dockerfile_stages(text: str) -> list[list[tuple[str, str]]]:
    """Instructions (keyword, arguments) per build stage, each starting with its FROM
    (global ARGs before the first FROM left out); continuation lines joined."""
    joined = text.replace("\\\n", " ")
    stages: list[list[tuple[str, str]]] = [[]]
    for raw in joined.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        keyword, _, rest = line.partition(" ")
        keyword = keyword.upper()
        if keyword == "FROM":
            stages.append([])
        stages[-1].append((keyword, rest.strip()))
    return [stage for stage in stages if stage and stage[0][0] == "FROM"]


def runtime_env(dockerfile: str) -> dict[str, str]:
    """The final stage's ENV (KEY=VALUE form), what every container starts with."""
    env: dict[str, str] = {}
    for keyword, rest in dockerfile_stages(dockerfile)[-1]:
        if keyword == "ENV":
            for item in shlex.split(rest):
                key, _, value = item.partition("=")
                env[key] = value
    return env
