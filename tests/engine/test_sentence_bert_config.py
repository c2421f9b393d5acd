"""sentence_bert_config.json's max_seq_length: read where stated, refused where unusable."""

from __future__ import annotations

from pathlib import Path

import pytest

from engine.configuration_error import ConfigurationError
from engine.sentence_bert_config import max_seq_length


def test_max_seq_length_is_read_where_stated(tmp_path: Path) -> None:
    assert max_seq_length(tmp_path) is None
    (tmp_path / "sentence_bert_config.json").write_text('{"do_lower_case": false}')
    assert max_seq_length(tmp_path) is None
    (tmp_path / "sentence_bert_config.json").write_text('{"max_seq_length": 256}')
    assert max_seq_length(tmp_path) == 256


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("{", "not valid JSON"),
        ('{"max_seq_length": 0}', "positive"),
        ('{"max_seq_length": "x"}', "positive"),
    ],
)
def test_an_unusable_max_seq_length_is_refused(tmp_path: Path, text: str, message: str) -> None:
    (tmp_path / "sentence_bert_config.json").write_text(text)
    with pytest.raises(ConfigurationError, match=message):
        max_seq_length(tmp_path)
