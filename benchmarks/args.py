"""Command-line argument types the benchmarks share."""

from __future__ import annotations

import argparse
from pathlib import Path


def int_list(text: str) -> list[int]:
    """ "1,32,128" -> [1, 32, 128]: one or more positive integers."""
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected integers, got {text!r}") from None
    if not values or any(v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return values


def add_engine_args(p: argparse.ArgumentParser, data_dir: bool = True) -> None:
    """The flags of a benchmark that loads a model in-process: which, where, on what."""
    p.add_argument("--model", default=None, help="model (default: the bundled SmolLM2)")
    if data_dir:
        p.add_argument("--data-dir", type=Path, default=Path("~/.cache/conveyor").expanduser())
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda if available)")
    p.add_argument("--dtype", default=None, help="float32, bfloat16 or float16 (default: auto)")
