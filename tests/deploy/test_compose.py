"""docker-compose.yml: valid Compose, real conveyor commands, the topology the issue asks for.

No Docker engine here: the file is checked against the Compose Specification's JSON
schema (the copy check-jsonschema ships), and each `command:` is parsed by conveyor's
own CLI parser. test_compose_topology.py then runs those commands for real.
"""

from __future__ import annotations

import json
import shutil
import stat
import subprocess
from importlib.resources import files
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from conveyor.cli import build_parser

from .conftest import (
    COMPOSE_ENV_EXAMPLE,
    COMPOSE_FILE,
    COMPOSE_GPU_FILE,
    CONVEYOR_SERVICES,
    POSTGRES_ENV_EXAMPLE,
    REPO,
    load_yaml,
    read_env_file,
    service_command,
)

SECRET_VARS = ("CONVEYOR_ADMIN_KEY", "CONVEYOR_SERVICE_KEY", "CONVEYOR_DATABASE_URL")


@pytest.fixture(scope="module")
def compose_validator() -> jsonschema.protocols.Validator:
    schema = json.loads(
        files("check_jsonschema.builtin_schemas.vendor").joinpath("compose-spec.json").read_text()
    )
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    return cls(schema, format_checker=cls.FORMAT_CHECKER)


def schema_errors(validator: jsonschema.protocols.Validator, document: Any) -> list[str]:
    return [
        f"{'/'.join(map(str, error.absolute_path))}: {error.message}"
        for error in validator.iter_errors(document)
    ]


@pytest.mark.parametrize("path", [COMPOSE_FILE, COMPOSE_GPU_FILE], ids=lambda p: p.name)
def test_compose_files_match_the_compose_specification(
    compose_validator: jsonschema.protocols.Validator, path: Path
) -> None:
    assert schema_errors(compose_validator, load_yaml(path)) == []


def test_the_schema_catches_mistakes(
    compose_validator: jsonschema.protocols.Validator, compose: dict[str, Any]
) -> None:
    """The validator is not vacuous: typical slips in this very file are refused."""
    broken = json.loads(json.dumps(compose))
    broken["services"]["api"]["depends_on"]["migrate"]["condition"] = "service_done"
    broken["services"]["worker"]["stop_grace_period"] = {"seconds": 45}
    broken["services"]["redis"]["helthcheck"] = broken["services"]["redis"].pop("healthcheck")
    errors = schema_errors(compose_validator, broken)
    assert any(e.startswith("services/api/depends_on:") for e in errors)
    assert any(e.startswith("services/worker/stop_grace_period") for e in errors)
    assert any("helthcheck" in e for e in errors)


@pytest.mark.parametrize("name", CONVEYOR_SERVICES)
def test_commands_are_real_conveyor_commands(compose: dict[str, Any], name: str) -> None:
    """The image's entrypoint runs `conveyor <command>`; the CLI's own parser must take it."""
    command = service_command(compose["services"][name])
    args = build_parser().parse_args(command)
    expected = {"migrate": "db", "batch-worker": "batch-worker"}.get(name, name)
    assert args.command == expected
    if name == "migrate":
        assert args.db_command == "upgrade"


def test_unknown_flags_would_be_caught() -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args(["api", "--portt", "8000"])


def test_topology(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert set(services) == {"redis", "postgres", "proxy", *CONVEYOR_SERVICES}

    redis = services["redis"]
    assert service_command(redis)[:3] == ["redis-server", "--appendonly", "yes"]
    assert "healthcheck" in redis and "/data" in redis["volumes"][0]
    postgres = services["postgres"]
    assert "healthcheck" in postgres
    assert postgres["volumes"][0].endswith(":/var/lib/postgresql/data")

    # Everything that touches SQL waits for the one-shot migration, which waits for PostgreSQL.
    assert services["migrate"]["depends_on"] == {"postgres": {"condition": "service_healthy"}}
    assert services["migrate"]["restart"] == "no"
    for name in ("api", "batch-worker"):
        depends = services[name]["depends_on"]
        assert depends["migrate"] == {"condition": "service_completed_successfully"}
        assert depends["redis"] == {"condition": "service_healthy"}
    assert services["worker"]["depends_on"]["redis"] == {"condition": "service_healthy"}

    # Long-running services come back; the migration does not.
    for name in ("redis", "postgres", "api", "worker", "batch-worker", "proxy"):
        assert services[name]["restart"] == "unless-stopped", name

    # `--scale api=N`: no fixed host port on the API; the proxy publishes one.
    assert "ports" not in services["api"]
    assert services["proxy"]["ports"] == ["${CONVEYOR_PORT:-8000}:8000"]
    api_command = service_command(services["api"])
    api_port = api_command[api_command.index("--port") + 1]
    assert f"http://api:{api_port}" in (REPO / "deploy" / "nginx.conf").read_text()
    assert services["batch-worker"]["environment"]["CONVEYOR_BATCH_API_URL"] == (
        f"http://api:{api_port}"
    )

    # The API and the batch workers share the uploaded/result files.
    files_mount = "conveyor-files:/var/lib/conveyor/files"
    assert files_mount in services["api"]["volumes"]
    assert files_mount in services["batch-worker"]["volumes"]


def test_gpu_override_reserves_a_gpu_for_the_worker_only() -> None:
    override = load_yaml(COMPOSE_GPU_FILE)["services"]
    assert set(override) == {"worker"}
    worker = override["worker"]
    (device,) = worker["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and device["capabilities"] == ["gpu"]
    assert worker["build"]["args"]["VARIANT"] == "cuda"
    assert worker["environment"]["CONVEYOR_DEVICE"] == "cuda"


def test_secrets_come_from_the_env_files_only(compose: dict[str, Any]) -> None:
    for name in CONVEYOR_SERVICES:
        service = compose["services"][name]
        assert service["env_file"] == "deploy/conveyor.env", name
        for var in (*SECRET_VARS, "POSTGRES_PASSWORD"):
            assert var not in (service.get("environment") or {}), (name, var)
    # PostgreSQL reads a file of its own: it never sees the admin key.
    postgres = compose["services"]["postgres"]
    assert postgres["env_file"] == "deploy/postgres.env"
    assert "POSTGRES_PASSWORD" not in postgres["environment"]
    assert set(read_env_file(COMPOSE_ENV_EXAMPLE)) == {
        "CONVEYOR_ADMIN_KEY",
        "CONVEYOR_DATABASE_URL",
    }
    assert set(read_env_file(POSTGRES_ENV_EXAMPLE)) == {"POSTGRES_PASSWORD"}
    # The real files are never committed.
    for written in ("deploy/conveyor.env", "deploy/postgres.env"):
        ignored = subprocess.run(["git", "check-ignore", "-q", written], cwd=REPO, check=False)
        assert ignored.returncode == 0, written


def _compose_env_dir(tmp_path: Path) -> Path:
    """A copy of what `make compose-env` reads, so it writes there and not in the repo."""
    (tmp_path / "deploy").mkdir()
    shutil.copy(REPO / "Makefile", tmp_path / "Makefile")
    shutil.copy(COMPOSE_ENV_EXAMPLE, tmp_path / "deploy" / "conveyor.env.example")
    shutil.copy(POSTGRES_ENV_EXAMPLE, tmp_path / "deploy" / "postgres.env.example")
    return tmp_path / "deploy"


def _make_compose_env(cwd: Path, *, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["make", "--no-print-directory", "compose-env"],
        cwd=cwd,
        capture_output=True,
        text=True,
        check=check,
    )


@pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
def test_make_compose_env_writes_random_secrets(tmp_path: Path) -> None:
    deploy = _compose_env_dir(tmp_path)
    run = _make_compose_env(tmp_path)
    conveyor_env, postgres_env = deploy / "conveyor.env", deploy / "postgres.env"
    env = read_env_file(conveyor_env)
    password = read_env_file(postgres_env)["POSTGRES_PASSWORD"]
    for written in (conveyor_env, postgres_env):
        assert "change-me" not in written.read_text()
        assert stat.S_IMODE(written.stat().st_mode) == 0o600
    assert len(env["CONVEYOR_ADMIN_KEY"]) == 48 and len(password) == 48
    assert f":{password}@postgres:" in env["CONVEYOR_DATABASE_URL"]
    assert "wrote" in run.stdout
    # A second run keeps the secrets already in use.
    before = conveyor_env.read_text(), postgres_env.read_text()
    _make_compose_env(tmp_path)
    assert (conveyor_env.read_text(), postgres_env.read_text()) == before


@pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
def test_make_compose_env_keeps_the_password_a_volume_holds(tmp_path: Path) -> None:
    deploy = _compose_env_dir(tmp_path)
    # A lost conveyor.env is written with the password PostgreSQL was created with.
    (deploy / "postgres.env").write_text("POSTGRES_PASSWORD='kept-pw'\n")
    _make_compose_env(tmp_path)
    url = read_env_file(deploy / "conveyor.env")["CONVEYOR_DATABASE_URL"]
    assert url == "postgresql://conveyor:kept-pw@postgres:5432/conveyor"
    # One the URL cannot hold as it is (or none) is refused, and nothing is written.
    (deploy / "conveyor.env").unlink()
    for written in ("POSTGRES_PASSWORD='p/w&x@y'\n", "OTHER=1\n"):
        (deploy / "postgres.env").write_text(written)
        refused = _make_compose_env(tmp_path, check=False)
        assert refused.returncode != 0 and "letters, digits" in refused.stderr
        assert not (deploy / "conveyor.env").exists()
    # The older layout held the password in conveyor.env: it moves to postgres.env as is.
    (deploy / "postgres.env").unlink()
    old = "CONVEYOR_ADMIN_KEY=k\nPOSTGRES_PASSWORD=old-pw\nCONVEYOR_DATABASE_URL=x\n"
    (deploy / "conveyor.env").write_text(old)
    run = _make_compose_env(tmp_path)
    assert read_env_file(deploy / "postgres.env") == {"POSTGRES_PASSWORD": "old-pw"}
    assert (deploy / "conveyor.env").read_text() == old
    assert "remove POSTGRES_PASSWORD" in run.stdout
    # With no password anywhere, it asks rather than inventing one the volume won't take.
    (deploy / "postgres.env").unlink()
    (deploy / "conveyor.env").write_text("CONVEYOR_ADMIN_KEY=k\n")
    failed = _make_compose_env(tmp_path, check=False)
    assert failed.returncode != 0 and "POSTGRES_PASSWORD=" in failed.stderr
    assert not (deploy / "postgres.env").exists()
