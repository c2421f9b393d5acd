"""Command-line argument types the benchmarks share."""

from __future__ import annotations

import argparse


def int_list(text: str) -> list[int]:
    """ "1,32,128" -> [1, 32, 128]: one or more positive integers."""
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected integers, got {text!r}") from None
    if not values or any(v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return values
