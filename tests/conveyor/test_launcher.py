"""`conveyor serve`'s placement of data-parallel engine workers: GPU i for worker i."""

from __future__ import annotations

import pytest

from conveyor.launcher import Supervisor, run_serve, worker_device_env
from conveyor.settings import Settings


def test_one_worker_keeps_the_environment_as_it_is() -> None:
    assert worker_device_env(Settings(), 0) == {}
    assert Supervisor(Settings()).worker_names == ["worker"]


def test_worker_i_sees_gpu_i(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    settings = Settings(data_parallel_size=3)
    assert Supervisor(settings).worker_names == ["worker-0", "worker-1", "worker-2"]
    assert [worker_device_env(settings, r) for r in range(3)] == [
        {"CUDA_VISIBLE_DEVICES": str(r)} for r in range(3)
    ]
    # Of the GPUs the operator made visible, in their order.
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4, 6,7")
    assert [worker_device_env(settings, r)["CUDA_VISIBLE_DEVICES"] for r in range(3)] == [
        "4",
        "6",
        "7",
    ]
    # On CPU every worker shares the cores; nothing to pin.
    assert worker_device_env(Settings(data_parallel_size=2, device="cpu"), 1) == {}


def test_more_workers_than_visible_gpus_stops_start_up(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")
    with pytest.raises(ValueError, match="lists 2"):
        worker_device_env(Settings(data_parallel_size=3), 2)
    assert run_serve(Settings(data_parallel_size=3)) == 2  # before anything starts
