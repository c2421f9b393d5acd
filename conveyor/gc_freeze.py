"""Keep the garbage collector off what a server process builds at startup.

A worker or API process holds torch's and transformers' object graphs (~300k objects)
for its whole life, and a full collection walks them all: measured, a 220 ms pause of
every thread, the engine loop's included, whenever one comes due. `gc.freeze()` moves what
exists once startup is done to a permanent generation the collector skips, as vLLM does
once its engine is up; what is made later is collected as before. At shutdown the objects
are handed back, so extensions (Triton's nanobind bindings) see theirs freed at exit
instead of reporting leaks.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager


def freeze_startup_objects() -> None:
    """Collect startup's garbage, then exempt everything left from later collections."""
    gc.collect()
    gc.freeze()


def thaw_startup_objects() -> None:
    """Give the frozen objects back to the collector (at shutdown)."""
    gc.unfreeze()


@contextmanager
def frozen_while_serving() -> Iterator[None]:
    """Startup's objects frozen for the body: the serving loop."""
    freeze_startup_objects()
    try:
        yield
    finally:
        thaw_startup_objects()
