"""--profiler-config (vLLM's) and the older profiler folder: what turns the profiler
endpoints on, and what is refused at start-up."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from conveyor.profile_request import ProfileRequest
from conveyor.profiler_config import ProfilerConfig
from conveyor.settings import Settings


def test_the_config_or_the_older_folder_turns_it_on_with_vllms_defaults() -> None:
    assert Settings().profiler is None
    config = '{"profiler": "torch", "torch_profiler_dir": "/traces", '
    config += '"torch_profiler_with_flops": true, "torch_profiler_use_gzip": false}'
    assert Settings(profiler_config=config).profiler == ProfilerConfig(
        "/traces", with_stack=True, with_flops=True, use_gzip=False
    )
    assert Settings(torch_profiler_dir="/old").profiler == ProfilerConfig("/old")
    # The older folder fills a config that names none; no profiler (vLLM's default) is off.
    assert ProfilerConfig.parse('{"profiler": "torch"}', "/old") == ProfilerConfig("/old")
    assert ProfilerConfig.parse("{}", None) is None
    assert ProfilerConfig.parse('{"profiler": null}', "/old") is None
    # Fields that record nothing different here are accepted.
    quiet = '{"profiler": "torch", "torch_profiler_dir": "/t", "ignore_frontend": true, '
    quiet += '"torch_profiler_dump_cuda_time_total": false, "max_iterations": 0}'
    assert ProfilerConfig.parse(quiet, None) == ProfilerConfig("/t")


def test_the_folder_is_made_absolute_as_vllm_makes_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", "/home/op")
    home = ProfilerConfig.parse('{"profiler": "torch", "torch_profiler_dir": "~/t"}', None)
    assert home is not None and home.torch_profiler_dir == "/home/op/t"
    relative = ProfilerConfig.parse(None, "traces")
    assert relative is not None
    assert relative.torch_profiler_dir == str(Path(os.getcwd()) / "traces")


def test_vllms_environment_variable_is_read(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VLLM_TORCH_PROFILER_DIR", "/vllm-traces")
    assert Settings().profiler == ProfilerConfig("/vllm-traces")


@pytest.mark.parametrize(
    ("config", "says"),
    [
        ('{"profiler": "cuda"}', "not served"),
        ('{"profiler": "torch"}', "torch_profiler_dir"),
        ('{"torch_profiler_dir": "/t"}', '"profiler": "torch"'),
        ('{"profiler": "torch", "torch_profiler_dir": "gs://b/t"}', "not a local folder"),
        ('{"profiler": "torch", "torch_profiler_dir": "/t", "max_iterations": 5}', "not served"),
        ('{"profiler": "torch", "torch_profiler_dirr": "/t"}', "unknown field"),
        (
            '{"profiler": "torch", "torch_profiler_dir": "/t", "torch_profiler_with_stack": 1}',
            "true or false",
        ),
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
