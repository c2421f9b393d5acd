"""Every flag the README and docs/architecture.md name is one some conveyor command (or
benchmark) takes: a user copying one from the docs must not meet "unrecognized arguments"."""

from __future__ import annotations

import argparse
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from conveyor.cli import build_parser
from conveyor.settings import Settings

ROOT = Path(__file__).resolve().parents[2]

# Other programs' flags the docs show in their commands (docker, kubectl, helm, pip,
# systemctl, useradd), and vLLM's the docs say conveyor does not have.
OTHER_TOOLS = frozenset(
    {
        "--calculate-kv-scales",
        "--strict",
        "--build",
        "--from-literal",
        "--gpus",
        "--home-dir",
        "--index-url",
        "--no-deps",
        "--now",
        "--rm",
        "--scale",
        "--stop-timeout",  # docker run
        "--ready",  # conveyor-healthcheck (deploy/healthcheck.py)
        "--set",
        "--shell",
        "--system",
        "--pipe",  # systemd-run
        "--wait",
    }
)


def _cli_actions(parser: argparse.ArgumentParser | None = None) -> Iterator[argparse.Action]:
    """Every argument of `conveyor` and of each of its subcommands."""
    for action in (parser or build_parser())._actions:
        yield action
        if isinstance(action, argparse._SubParsersAction):
            for command in action.choices.values():
                yield from _cli_actions(command)


def _conveyor_flags() -> set[str]:
    known = {flag for action in _cli_actions() for flag in action.option_strings}
    # `conveyor bench X --flag`, and the scripts' and tools' own flags.
    sources = [*(ROOT / "benchmarks").glob("*.py"), *(ROOT / "kernels").glob("*.py")]
    for source in [*sources, *(ROOT / "scripts").glob("*.sh")]:
        known.update(re.findall(r"""["'(|](--[a-z0-9-]+)""", source.read_text()))
    return known


@pytest.mark.parametrize("doc", ["README.md", "docs/architecture.md"])
def test_documented_flags_exist(doc: str) -> None:
    text = (ROOT / doc).read_text()
    named = set(re.findall(r"(?<![\w-])--[a-z][a-z0-9-]+", text))
    assert sorted(named - _conveyor_flags() - OTHER_TOOLS) == []


def test_serve_takes_its_children_s_flags() -> None:
    """`conveyor serve` runs the API and a batch worker, so their flags are its own too."""
    parser = build_parser()
    flags = ["--batch-max-inflight", "2", "--batch-worker-concurrency", "3"]
    flags += ["--log-flush-interval", "0.5", "--batch-api-url", "http://api:8000"]
    serve = parser.parse_args(["serve", *flags])
    assert (serve.batch_max_inflight, serve.batch_worker_concurrency) == (2, 3)
    assert (serve.log_flush_interval, serve.batch_api_url) == (0.5, "http://api:8000")


# Set by `conveyor serve` for its children, or derived from other flags: not for operators.
INTERNAL_SETTINGS = frozenset({"served_model_aliases", "api_socket_fd", "supervisor_pid"})


def test_every_setting_without_a_flag_is_documented_as_a_variable() -> None:
    """A tunable only the environment can set is findable: README names its variable."""
    dests = {action.dest for action in _cli_actions()}
    readme = (ROOT / "README.md").read_text()
    flagless = set(Settings.model_fields) - dests - INTERNAL_SETTINGS
    assert flagless, "every setting has a flag: drop this test's premise"
    assert sorted(f for f in flagless if f"CONVEYOR_{f.upper()}" not in readme) == []
