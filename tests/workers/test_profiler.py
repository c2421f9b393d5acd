"""A worker recording a torch profile (vLLM's POST /start_profile, /stop_profile), driven
through Redis as the API drives it: the `profile` key in, the heartbeat out."""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import Any

from conveyor.profile_request import ProfileRequest

from .conftest import Harness, wait_for

PROMPT = [5, 77, 300, 12, 9]


def ask(h: Harness, request: ProfileRequest) -> dict[str, Any]:
    """What the API writes; then the heartbeat's word once it reached the gen."""
    h.client.set(h.names.profile(h.model), request.encode())
    h.client.publish(h.names.controls(h.model), request.gen)
    wait_for(lambda: (h.beat().get("profile") or {}).get("gen") == request.gen)
    return h.beat()["profile"]


def recording_a_request(make_worker: Any, folder: Path) -> Harness:
    """A worker writing traces to `folder`, recording, one request served meanwhile."""
    h: Harness = make_worker(torch_profiler_dir=str(folder))
    ask(h, ProfileRequest(True, "p:1"))
    h.collect([h.send(h.request(PROMPT))])
    return h


def test_the_steps_between_start_and_stop_are_written_as_a_trace(
    make_worker: Any, tmp_path: Path
) -> None:
    folder = tmp_path / "traces"
    h: Harness = make_worker(torch_profiler_dir=str(folder))
    assert h.beat()["profile"] == {"gen": None, "on": False, "trace": None, "error": None}
    assert ask(h, ProfileRequest(True, "p:1"))["on"] is True
    assert ask(h, ProfileRequest(True, "p:2"))["on"] is True  # already recording: no-op
    h.collect([h.send(h.request(PROMPT))])
    stopped = ask(h, ProfileRequest(False, "p:3"))
    assert stopped["on"] is False and stopped["error"] is None
    trace = Path(str(stopped["trace"]))
    assert trace.parent == folder and trace.name.endswith(".pt.trace.json.gz")
    assert trace.name.startswith(f"{h.model}.{h.worker.instance}.")
    events = json.loads(gzip.decompress(trace.read_bytes()))["traceEvents"]
    names = {event.get("name", "") for event in events}
    assert any(name.startswith("aten::") for name in names)  # the model's ops were recorded
    # Stopping again writes nothing new and keeps naming the last trace.
    assert ask(h, ProfileRequest(False, "p:4"))["trace"] == str(trace)
    assert list(folder.iterdir()) == [trace]


def test_a_folder_that_cannot_be_written_fails_the_start_at_once(
    make_worker: Any, tmp_path: Path
) -> None:
    blocked = tmp_path / "a-file"
    blocked.write_text("not a folder")
    h: Harness = make_worker(torch_profiler_dir=str(blocked / "traces"))
    started = ask(h, ProfileRequest(True, "p:1"))
    assert started["on"] is False and "Error" in str(started["error"])


def test_a_stop_that_could_not_write_keeps_the_recording_for_a_retry(
    make_worker: Any, tmp_path: Path
) -> None:
    folder = tmp_path / "traces"
    h = recording_a_request(make_worker, folder)
    folder.rmdir()
    folder.write_text("in the way")  # the folder became a file meanwhile
    failed = ask(h, ProfileRequest(False, "p:2"))
    assert failed["on"] is False and failed["trace"] is None and failed["error"]
    folder.unlink()
    retried = ask(h, ProfileRequest(False, "p:3"))
    assert retried["error"] is None and Path(str(retried["trace"])).is_file()


def test_a_worker_that_stops_while_recording_writes_its_trace(
    make_worker: Any, tmp_path: Path
) -> None:
    folder = tmp_path / "traces"
    h = recording_a_request(make_worker, folder)
    h.shutdown()
    assert h.exit_code == 0
    (trace,) = folder.iterdir()
    assert trace.name.endswith(".pt.trace.json.gz")


def test_without_a_profiler_config_the_key_is_ignored(make_worker: Any) -> None:
    h: Harness = make_worker()
    h.client.set(h.names.profile(h.model), ProfileRequest(True, "p:1").encode())
    h.client.publish(h.names.controls(h.model), "p:1")
    h.collect([h.send(h.request(PROMPT))])
    assert h.beat()["profile"] is None
