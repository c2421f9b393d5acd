"""The API process never loads torch (it would cost seconds and gigabytes per replica)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

CHECK = """
import pkgutil, importlib, sys
import api, api.app
for module in pkgutil.walk_packages(api.__path__, "api."):
    importlib.import_module(module.name)
loaded = sorted(m for m in sys.modules if m == "torch" or m.startswith("torch."))
assert not loaded, loaded
print("ok")
"""


def test_importing_the_api_does_not_import_torch() -> None:
    result = subprocess.run(
        [sys.executable, "-c", CHECK], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"
