"""vLLM's torch profiler settings: `--profiler-config '{"profiler": "torch",
"torch_profiler_dir": "/traces"}'`, or its older `VLLM_TORCH_PROFILER_DIR`.

With one, POST /start_profile and /stop_profile are served: every worker records its
engine thread's torch ops (and CUDA kernels on a GPU) between the two calls and writes a
Chrome / Perfetto trace into the folder. vLLM's "cuda" profiler (an nsys capture range)
is refused: there is no nsys session to control here.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class ProfilerConfig:
    torch_profiler_dir: str
    with_stack: bool = False
    record_shapes: bool = False
    with_memory: bool = False
    use_gzip: bool = True

    @classmethod
    def parse(cls, config_json: str | None, legacy_dir: str | None) -> ProfilerConfig | None:
        """From --profiler-config (which wins) or the older profiler-dir variable; None
        where neither is set. A ValueError names what is wrong."""
        if config_json is None:
            return cls(legacy_dir) if legacy_dir else None
        value: Any = json.loads(config_json)
        if not isinstance(value, dict):
            raise ValueError("--profiler-config must be a JSON object")
        profiler = value.get("profiler", "torch")
        if profiler is None:
            return None
        if profiler != "torch":
            raise ValueError(
                f"--profiler-config: profiler {profiler!r} is not served; "
                '"torch" writes traces to torch_profiler_dir'
            )
        folder = value.get("torch_profiler_dir") or legacy_dir
        if not isinstance(folder, str) or not folder:
            raise ValueError('--profiler-config: "torch_profiler_dir" (a folder) is required')
        flags = {
            "with_stack": value.get("torch_profiler_with_stack", False),
            "record_shapes": value.get("torch_profiler_record_shapes", False),
            "with_memory": value.get("torch_profiler_with_memory", False),
            "use_gzip": value.get("torch_profiler_use_gzip", True),
        }
        for name, flag in flags.items():
            if not isinstance(flag, bool):
                raise ValueError(f"--profiler-config: torch_profiler_{name} must be true or false")
        return cls(folder, **flags)
