"""vLLM's torch profiler settings: `--profiler-config '{"profiler": "torch",
"torch_profiler_dir": "/traces"}'`, or its older `VLLM_TORCH_PROFILER_DIR`.

With one, POST /start_profile and /stop_profile are served: every worker records its
engine thread's torch ops (and CUDA kernels on a GPU) between the two calls and writes a
Chrome / Perfetto trace into the folder. vLLM's fields are read with its defaults (stack
traces on, gzip on); those that would change what is recorded and are not implemented
here (iteration schedules, CUDA-graph capture traces, the "cuda" nsys profiler, a
`gs://`-style folder) are refused at start-up, as is a field vLLM does not have.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from conveyor.json_flag import read_json_flag

# vLLM's fields that record nothing different here: accepted, whatever their value.
_NO_EFFECT = {
    "ignore_frontend": bool,  # the API processes are never profiled here
    "torch_profiler_dump_cuda_time_total": bool,  # a console table, not the trace
    "active_iterations": int,  # only read with warmup_iterations, refused below
}
# vLLM's fields not implemented here, and the value that asks for nothing.
_UNSERVED_UNLESS = {
    "delay_iterations": 0,
    "max_iterations": 0,
    "warmup_iterations": 0,
    "wait_iterations": 0,
    "capture_torch_profiler": False,
    "detailed_trace_annotation": False,
}
_FLAGS = {
    "torch_profiler_with_stack": "with_stack",
    "torch_profiler_with_flops": "with_flops",
    "torch_profiler_use_gzip": "use_gzip",
    "torch_profiler_record_shapes": "record_shapes",
    "torch_profiler_with_memory": "with_memory",
}


@dataclass(frozen=True)
class ProfilerConfig:
    torch_profiler_dir: str  # absolute
    with_stack: bool = True
    with_flops: bool = False
    use_gzip: bool = True
    record_shapes: bool = False
    with_memory: bool = False

    @classmethod
    def parse(cls, config_json: str | None, legacy_dir: str | None) -> ProfilerConfig | None:
        """From --profiler-config (which wins) or the older profiler-dir variable; None
        where neither turns the profiler on. A ValueError names what is wrong."""
        if config_json is None:
            return cls(_folder(legacy_dir)) if legacy_dir else None
        value: Any = read_json_flag("--profiler-config", config_json)
        if not isinstance(value, dict):
            raise ValueError("--profiler-config must be a JSON object")
        known = {"profiler", "torch_profiler_dir", *_NO_EFFECT, *_UNSERVED_UNLESS, *_FLAGS}
        unknown = sorted(set(value) - known)
        if unknown:
            raise ValueError(f"--profiler-config: unknown field(s) {', '.join(unknown)}")
        for name, off in _UNSERVED_UNLESS.items():
            if value.get(name, off) != off:
                raise ValueError(f"--profiler-config: {name} is not served here")
        for name, kind in _NO_EFFECT.items():
            if name in value and not isinstance(value[name], kind):
                raise ValueError(f"--profiler-config: {name} must be a {kind.__name__}")
        profiler, folder = value.get("profiler"), value.get("torch_profiler_dir") or None
        if profiler is None:
            if folder is not None:
                raise ValueError('--profiler-config: torch_profiler_dir needs "profiler": "torch"')
            return None
        if profiler != "torch":
            raise ValueError(
                f"--profiler-config: profiler {profiler!r} is not served; "
                '"torch" writes traces to torch_profiler_dir'
            )
        folder = folder or legacy_dir
        if not isinstance(folder, str) or not folder:
            raise ValueError('--profiler-config: "torch_profiler_dir" (a folder) is required')
        flags = {}
        for name, field in _FLAGS.items():
            if name in value:
                if not isinstance(value[name], bool):
                    raise ValueError(f"--profiler-config: {name} must be true or false")
                flags[field] = value[name]
        return cls(_folder(folder), **flags)


def _folder(path: str) -> str:
    """An absolute local folder, `~` expanded, as vLLM makes it; a URI is refused."""
    scheme, sep, _ = path.partition("://")
    if sep and len(scheme) > 1:
        raise ValueError(f"--profiler-config: {path} is not a local folder (traces go to disk)")
    return os.path.abspath(os.path.expanduser(path))
