"""Every Triton kernel compiles for sm_80 and sm_90 without a GPU, fits, and does not spill.

The interpreted tests prove the kernels' arithmetic; this proves the same
kernels, as the engine launches them for its model shapes and dtypes, build
for real GPUs with Triton's own ptxas: no compile errors, shared memory within
the architecture's limit, no registers spilled to local memory.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from kernels.triton_offline_compile import SHARED_LIMIT, CompiledLaunch, _usage_in_log

ROOT = Path(__file__).resolve().parents[2]
KERNELS = {
    "store_kv_kernel",
    "decode_partition_kernel",
    "decode_combine_kernel",
    "prefill_attention_kernel",
    "rms_norm_kernel",
    "rotary_kernel",
    "silu_and_mul_kernel",
    "gelu_tanh_and_mul_kernel",
    "clamped_swiglu_and_mul_kernel",
    "grouped_gemm_kernel",
    "fp8_linear_kernel",
    "fp8_dequantize_kernel",
    "int_linear_kernel",
    "int_dequantize_kernel",
}


# 2 x 295 compiles (1456 launches), one process per architecture: 35 s warm here (ptxas
# runs again on each cached kernel for its register counts). Cold, beside the other
# workers, the 2 x 393 before fp32's quantized GEMMs were dropped took 570 s: more room
# than the suite's 600 s.
@pytest.mark.slow
@pytest.mark.timeout(1200)
@pytest.mark.skipif(
    torch.cuda.is_available(), reason="with a GPU the other kernel tests compile and run them"
)
def test_every_launch_compiles_for_ampere_and_hopper_without_spills() -> None:
    # A fresh interpreter: this session's kernels were defined under TRITON_INTERPRET=1.
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    result = subprocess.run(
        [sys.executable, "-m", "kernels.triton_offline_compile", "--arch", "80,90", "--json"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=1140,  # inside this test's 1200 s, so a hang fails with its output
    )
    launches = [json.loads(line) for line in result.stdout.splitlines()]
    problems = [launch for launch in launches if launch["problems"]]
    assert result.returncode == 0 and not problems, problems or result.stderr[-3000:]
    for arch in (80, 90):
        compiled = {launch["kernel"] for launch in launches if launch["arch"] == arch}
        assert compiled == KERNELS
    assert all(launch["registers"] > 0 for launch in launches)
    # gpt-oss's experts as released: the GEMMs that decode MXFP4 tiles.
    assert any(launch["case"].endswith("mxfp4") for launch in launches)
    # Attention over an FP8 KV cache: codes encoded and decoded in registers.
    fp8_cache = {launch["kernel"] for launch in launches if " kv e4m3" in launch["case"]}
    assert {"store_kv_kernel", "decode_partition_kernel", "prefill_attention_kernel"} <= fp8_cache


def test_problems_name_what_is_wrong() -> None:
    fine = CompiledLaunch(90, "k", "case", 1024, 96, 0, 0)
    assert fine.problems == []
    assert CompiledLaunch(90, "k", "case", 1024, 255, 8, 8).problems == [
        "spills registers (8 B stored, 8 B loaded)"
    ]
    too_big = CompiledLaunch(80, "k", "case", SHARED_LIMIT[80] + 1, 96, 0, 0)
    assert too_big.problems == [f"needs {SHARED_LIMIT[80] + 1} B of shared memory"]
    assert CompiledLaunch(90, "k", "case", 0, 0, 0, 0, "boom").problems == [
        "does not compile: boom"
    ]


# As Triton 3.9's `ptxas -v` writes it for one kernel (its Blackwell-capable build's prefix).
_PTXAS_LOG = """\
ptxas-blackwell info    : 0 bytes gmem
ptxas-blackwell info    : Compiling entry function 'rms_norm_kernel' for 'sm_90a'
ptxas-blackwell info    : Function properties for rms_norm_kernel
    8 bytes stack frame, 4 bytes spill stores, 12 bytes spill loads
ptxas-blackwell info    : Used 32 registers, used 1 barriers, 384 bytes cmem[0]
"""


def test_the_usage_is_read_from_a_ptxas_log_and_none_from_other_output() -> None:
    assert _usage_in_log(_PTXAS_LOG) == {"registers": 32, "spill_stores": 4, "spill_loads": 12}
    assert _usage_in_log("") is None  # a cache hit prints nothing: ptxas runs again
    assert _usage_in_log("// -----// NVPTX Dump //----- //\n.target sm_90a") is None
