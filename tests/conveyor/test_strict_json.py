"""JSON as the standard has it: what Python's json reads beyond it is refused."""

from __future__ import annotations

import pytest

from conveyor.strict_json import strict_json_loads


@pytest.mark.parametrize("text", ["NaN", "[Infinity]", '{"x": -Infinity}', "1e400", "[-1e999]"])
def test_what_no_other_reader_takes_back_is_refused(text: str) -> None:
    with pytest.raises(ValueError):
        strict_json_loads(text)


def test_json_itself_reads_as_json_does() -> None:
    assert strict_json_loads('{"a": [1, 2.5e10, -0.0, null, true, "NaN"]}') == {
        "a": [1, 2.5e10, -0.0, None, True, "NaN"]
    }
