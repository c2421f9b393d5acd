from __future__ import annotations

import gc
import weakref

from conveyor.gc_freeze import frozen_while_serving


class _Node:
    pass


def test_startup_garbage_is_collected_and_the_rest_frozen_until_shutdown() -> None:
    cycle = _Node()
    cycle.itself = cycle  # type: ignore[attr-defined]
    gone = weakref.ref(cycle)
    del cycle
    assert gc.get_freeze_count() == 0
    with frozen_while_serving():
        assert gone() is None  # collected before freezing, never kept for good
        assert gc.get_freeze_count() > 0
    assert gc.get_freeze_count() == 0  # handed back: finalizers run at exit
