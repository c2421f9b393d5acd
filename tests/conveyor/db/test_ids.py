"""Object ids: OpenAI's form, unique, and in the order they were made."""

from __future__ import annotations

import re
import time

from conveyor.db.ids import created_second, new_id


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


def test_an_id_tells_the_second_it_was_made_in() -> None:
    before = int(time.time())
    made = new_id("file-")
    assert before <= (created_second(made, "file-") or 0) <= int(time.time()) + 5
    assert created_second(made, "batch_") is None  # another kind of object
    assert created_second("file-nope", "file-") is None
    assert created_second(made + "0", "file-") is None
