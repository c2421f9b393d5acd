"""load_model builds a skeleton on the meta device and fills it from the checkpoint."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from tests.encoder_models import make_encoder

# In a fresh process, as a worker starts: load each folder and say whether any step
# imported torch._dynamo or sympy (torch's Python references for meta tensors do:
# ~2.5 s of a worker's startup, for values nobody reads).
_LOAD_AND_REPORT = """
import sys
from pathlib import Path
import torch
from engine.config import ModelConfig
from engine.model_runner import load_model
for folder in map(Path, sys.argv[1:]):
    load_model(folder, ModelConfig.from_folder(folder, {}), 256, torch.float32, torch.device("cpu"))
    print(folder.name, "torch._dynamo" in sys.modules or "sympy" in sys.modules)
"""


def test_building_a_model_computes_nothing_on_the_meta_device(
    make_random_model: Callable[[str], Path], tmp_path: Path
) -> None:
    folders = [make_random_model(family) for family in ("llama", "gemma3", "phi3", "gpt_oss")]
    make_encoder(tmp_path / "bert", "BertForSequenceClassification", num_labels=1)
    folders.append(tmp_path / "bert")
    done = subprocess.run(
        [sys.executable, "-c", _LOAD_AND_REPORT, *map(str, folders)],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    lines = done.stdout.split("\n")
    assert [line for line in lines if line] == [f"{f.name} False" for f in folders]
