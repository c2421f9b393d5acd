"""Kernel tests run the Triton kernels on CPU through Triton's interpreter.

Triton reads TRITON_INTERPRET when a `@triton.jit` function is defined, i.e.
when a kernels.triton_* module is first imported (and for its own helpers,
when triton is). pytest imports this file while collecting tests/kernels,
before any test module here and before any test runs; nothing imports those
modules earlier (the engine imports them only when the Triton backend is
chosen; test modules import libraries that pull in triton, such as PEFT,
inside their tests), and the check below proves it. With
a GPU the tests run the compiled kernels on it instead.
"""

from __future__ import annotations

import os
import sys

import pytest
import torch

if not torch.cuda.is_available():
    # triton itself too: its own @triton.jit helpers (tl.max, tl.sum, ...) are defined
    # when it is imported, and a kernel under the interpreter cannot call compiled ones.
    early = [
        m
        for m in sys.modules
        if m == "triton" or (m.startswith("kernels.triton_") and m != "kernels.triton_support")
    ]
    if early:
        raise pytest.UsageError(
            f"{early} were imported before tests/kernels/conftest.py set TRITON_INTERPRET=1"
        )
    os.environ["TRITON_INTERPRET"] = "1"


@pytest.fixture(scope="session")
def device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")
