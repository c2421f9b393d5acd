"""Object ids: OpenAI's form, unique, and in the order they were made."""

from __future__ import annotations

import re
import time

from conveyor.db.ids import new_id


def test_ids_are_unguessable_and_in_creation_order() -> None:
    ids = [new_id("batch_") for _ in range(2000)]  # many within one millisecond
    assert all(re.fullmatch(r"batch_[0-9a-f]{24}", i) for i in ids)
    assert len(set(ids)) == len(ids)
    assert ids == sorted(ids)
    # The first 12 digits are the time in milliseconds (ahead of the clock at most by
    # the ids made within one millisecond).
    stamp = int(new_id("file-")[5:17], 16)
    assert abs(stamp - time.time() * 1000) < 5_000
    assert len({i[-12:] for i in ids}) == len(ids)  # the random half differs too
