"""--profiler-config (vLLM's) and the older profiler folder: what turns the profiler
endpoints on, and what is refused at start-up."""

from __future__ import annotations

import pytest

from conveyor.profile_request import ProfileRequest
from conveyor.profiler_config import ProfilerConfig
from conveyor.settings import Settings


def test_the_config_or_the_older_folder_turns_it_on() -> None:
    assert Settings().profiler is None
    config = '{"profiler": "torch", "torch_profiler_dir": "/traces", '
    config += '"torch_profiler_with_stack": true, "torch_profiler_use_gzip": false}'
    assert Settings(profiler_config=config).profiler == ProfilerConfig(
        "/traces", with_stack=True, use_gzip=False
    )
    assert Settings(torch_profiler_dir="/old").profiler == ProfilerConfig("/old")
    # The older folder fills a config that names none; a null profiler turns it off.
    assert ProfilerConfig.parse('{"profiler": "torch"}', "/old") == ProfilerConfig("/old")
    assert ProfilerConfig.parse('{"profiler": null}', "/old") is None


def test_vllms_environment_variable_is_read(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VLLM_TORCH_PROFILER_DIR", "/vllm-traces")
    assert Settings().profiler == ProfilerConfig("/vllm-traces")


@pytest.mark.parametrize(
    ("config", "says"),
    [
        ('{"profiler": "cuda"}', "not served"),
        ('{"profiler": "torch"}', "torch_profiler_dir"),
        ('{"torch_profiler_dir": "/t", "torch_profiler_with_stack": "yes"}', "true or false"),
        ("[]", "JSON object"),
    ],
)
def test_what_cannot_be_served_stops_the_start(config: str, says: str) -> None:
    with pytest.raises(ValueError, match=says):
        Settings(profiler_config=config)


def test_the_request_round_trips_and_junk_reads_as_none() -> None:
    asked = ProfileRequest(True, "e:3")
    assert ProfileRequest.decode(asked.encode()) == asked
    for junk in (None, "", "[]", '{"on": "yes", "gen": "e:1"}', '{"on": true}'):
        assert ProfileRequest.decode(junk) is None
