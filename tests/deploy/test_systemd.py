"""deploy/systemd: units that systemd accepts, run real conveyor commands, restart and are
hardened.

`systemd-analyze verify` (Debian's systemd package) runs where it is installed, against a
scratch root holding the units, the distribution's own units they depend on, and an
executable at ExecStart's path: so it checks every key and value, the dependencies, and
that the command exists. Everywhere, the units are parsed here and their commands are
parsed by conveyor's CLI parser.
"""

from __future__ import annotations

import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

from conveyor.cli import build_parser

from .conftest import SYSTEMD_DIR

# name -> (instance to verify a template with, the conveyor command it runs)
UNITS = {
    "conveyor.service": (None, "serve"),
    "conveyor-migrate.service": (None, "db"),
    "conveyor-api@.service": ("8000", "api"),
    "conveyor-worker@.service": ("0", "worker"),
    "conveyor-batch-worker.service": (None, "batch-worker"),
}
LONG_RUNNING = [name for name in UNITS if name != "conveyor-migrate.service"]
HARDENING = {
    "NoNewPrivileges": "yes",
    "ProtectSystem": "strict",
    "ProtectHome": "yes",
    "PrivateTmp": "yes",
    "RestrictSUIDSGID": "yes",
    "CapabilityBoundingSet": "",
}
SYSTEM_UNITS = Path("/usr/lib/systemd/system")


def parse_unit(path: Path) -> dict[str, dict[str, list[str]]]:
    """Sections -> key -> values (systemd allows a key more than once)."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] | None = None
    for number, raw in enumerate(path.read_text().splitlines(), 1):
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
            continue
        key, sep, value = line.partition("=")
        assert current is not None and sep, f"{path.name}:{number}: {raw!r}"
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


def instance_name(name: str) -> str:
    instance, _ = UNITS[name]
    return name.replace("@.", f"@{instance}.") if instance else name


def exec_start(name: str) -> list[str]:
    (command,) = parse_unit(SYSTEMD_DIR / name)["Service"]["ExecStart"]
    instance, _ = UNITS[name]
    return shlex.split(command.replace("%i", instance or ""))


def test_the_unit_set_is_complete() -> None:
    assert {p.name for p in SYSTEMD_DIR.glob("*.service")} == set(UNITS)


@pytest.mark.parametrize("name", UNITS)
def test_units_run_real_conveyor_commands(name: str) -> None:
    argv = exec_start(name)
    assert Path(argv[0]).name == "conveyor" and Path(argv[0]).is_absolute()
    args = build_parser().parse_args(argv[1:])
    assert args.command == UNITS[name][1]
    if name == "conveyor-api@.service":
        assert args.port == 8000  # the instance name is the port


@pytest.mark.parametrize("name", UNITS)
def test_units_are_hardened_and_read_an_environment_file(name: str) -> None:
    service = parse_unit(SYSTEMD_DIR / name)["Service"]
    assert service["EnvironmentFile"] == ["/etc/conveyor/conveyor.env"]
    assert service["User"] == ["conveyor"]
    for key, value in HARDENING.items():
        assert service.get(key) == [value], (name, key)
    if name in LONG_RUNNING:
        assert service["Restart"] == ["always"]
        assert service["LimitNOFILE"] == ["65536"]  # systemd's 1024 is ~1000 clients
        assert parse_unit(SYSTEMD_DIR / name)["Install"]["WantedBy"] == ["multi-user.target"]
    else:
        assert service["Type"] == ["oneshot"]


def test_gpu_units_leave_the_devices_open() -> None:
    """ProtectClock= before systemd 252 allow-lists only the RTC, closing /dev/nvidia*."""
    for name in ("conveyor-worker@.service", "conveyor.service"):
        service = parse_unit(SYSTEMD_DIR / name)["Service"]
        assert "ProtectClock" not in service and "DeviceAllow" not in service
        assert "PrivateDevices" not in service


def test_sql_users_start_after_the_migration() -> None:
    for name in ("conveyor-api@.service", "conveyor-batch-worker.service", "conveyor.service"):
        unit = parse_unit(SYSTEMD_DIR / name)["Unit"]
        assert "conveyor-migrate.service" in unit["Wants"][0].split()
        assert "conveyor-migrate.service" in unit["After"][0].split()


@pytest.mark.skipif(
    shutil.which("systemd-analyze") is None or not SYSTEM_UNITS.is_dir(),
    reason="systemd-analyze is not installed (Debian's systemd package)",
)
def test_systemd_analyze_verify(tmp_path: Path) -> None:
    root = tmp_path / "root"
    shutil.copytree(SYSTEM_UNITS, root / SYSTEM_UNITS.relative_to("/"), symlinks=True)
    units = root / "etc" / "systemd" / "system"
    units.mkdir(parents=True)
    for name in UNITS:
        shutil.copy(SYSTEMD_DIR / name, units / name)
        binary = root / exec_start(name)[0].lstrip("/")
        binary.parent.mkdir(parents=True, exist_ok=True)
        binary.write_text("#!/bin/sh\n")
        binary.chmod(0o755)
    result = subprocess.run(
        [
            "systemd-analyze",
            "verify",
            "--man=no",
            f"--root={root}",
            *(instance_name(name) for name in UNITS),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    # Warnings (an unknown key, a bad value) leave the exit status 0: any output fails too.
    assert result.returncode == 0 and result.stdout + result.stderr == "", result.stderr
