#!/usr/bin/env bash
# Run here before scripts/gpu-check.sh goes to a GPU machine: copies the bundled model's
# tokenizer (a few MB; the 94 MB GGUF is too large to carry) into .gpu/, which git ignores
# (.gitignore) so it travels only when the device call carries it.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-.venv/bin}
src=$("$BIN/python" -c 'from conveyor.settings import Settings
from engine.loader import resolve_model
print(resolve_model(None, Settings().data_dir).path)')
mkdir -p .gpu/tokenizer
for name in tokenizer.json tokenizer_config.json chat_template.jinja; do
    if [[ -f "$src/$name" ]]; then cp "$src/$name" .gpu/tokenizer/; fi
done
du -sh .gpu
