"""Once, then once per interval, per kind of problem."""

from __future__ import annotations

from workers.batch.log_throttle import LogThrottle


def test_once_per_interval_per_kind() -> None:
    now = [100.0]
    throttle = LogThrottle(30.0, clock=lambda: now[0])
    assert throttle.ready("down")
    assert not throttle.ready("down")
    assert throttle.ready("refused")  # another kind has its own clock
    now[0] += 29.9
    assert not throttle.ready("down")
    now[0] += 0.2
    assert throttle.ready("down")
    assert not throttle.ready("down")
