"""Decode graphs: which batch sizes get recorded, and which backends can take part.

The whole path (static buffers, padding, replay routing) is checked end to end
against the torch backend in tests/kernels/test_triton_attention.py, under
Triton's interpreter; recording itself needs a GPU (scripts/gpu-check.sh).
"""

from __future__ import annotations

import pytest
import torch

from engine.decode_graphs import DecodeGraphs, capture_sizes, supports_graphs
from kernels.torch_attention import TorchAttentionBackend


@pytest.mark.parametrize(
    "max_num_seqs,sizes",
    [
        (1, [1]),
        (3, [1, 2, 3]),
        (8, [1, 2, 4, 8]),
        (20, [1, 2, 4, 8, 16, 20]),
        (128, [1, 2, 4, *range(8, 129, 8)]),
    ],
)
def test_capture_sizes(max_num_seqs: int, sizes: list[int]) -> None:
    assert capture_sizes(max_num_seqs) == sizes


def test_every_batch_size_has_a_recorded_size_at_most_8_rows_larger() -> None:
    sizes = capture_sizes(256)
    for n in range(1, 257):
        padded = next(s for s in sizes if s >= n)
        assert padded - n < 8


def test_the_torch_backend_cannot_run_from_static_buffers() -> None:
    backend = TorchAttentionBackend(torch.device("cpu"))
    assert not supports_graphs(backend)
    with pytest.raises(ValueError, match="static buffers"):
        DecodeGraphs(torch.nn.Identity(), [], backend, 4, 64, 16, torch.device("cpu"), False)


def test_a_recording_that_fails_is_dropped_and_decodes_run_eagerly(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    class StaticBackend:
        name = "static"

        def graph_metadata(self, *args: object) -> None:
            return None

        def graph_context_caps(self, max_model_len: int) -> list[int]:
            return [max_model_len]

    graphs = DecodeGraphs(
        torch.nn.Identity(), [], StaticBackend(), 2, 16, 4, torch.device("cpu"), False
    )
    graphs._graphs[1, 16] = "recorded before it failed"  # type: ignore[assignment]

    def fails() -> None:
        raise RuntimeError("capture failed")

    monkeypatch.setattr(graphs, "record", fails)
    assert graphs.record_or_release() is False
    assert graphs._graphs == {} and graphs._outputs == {}
    monkeypatch.setattr(graphs, "record", lambda: None)
    assert graphs.record_or_release() is True
