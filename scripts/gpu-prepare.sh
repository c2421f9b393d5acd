#!/usr/bin/env bash
# Run here before scripts/gpu-check.sh goes to a GPU machine: copies the bundled model's
# tokenizer (a few MB; the 94 MB GGUF is too large to carry) into .gpu/, which git ignores
# (.gitignore) so it travels only when the device call carries it.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-.venv/bin}
"$BIN/python" -c 'from pathlib import Path
from benchmarks.random_model import copy_tokenizer
from conveyor.settings import Settings
from engine.loader import resolve_model
copy_tokenizer(resolve_model(None, Settings().data_dir).path, Path(".gpu/tokenizer"))'
du -sh .gpu
