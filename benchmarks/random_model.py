"""Random-weight models of real shapes, for benchmarking where no weights can be downloaded.

Throughput depends on a model's shape, not its weight values, so a folder
with the shape of SmolLM2-1.7B and random weights measures what the real one
would, on machines that cannot reach a model hub (the GPU machines here
cannot; the bundled GGUF is too large to carry there). Every shape uses
SmolLM2's 49152-token vocabulary so the bundled tokenizer (copied in) covers
every id the model can emit. The default init is wide (std 0.3), as in the
tests' random models: next-token distributions are then peaked, so greedy
outputs of two implementations agree unless one of them is wrong, instead
of flipping on float noise between near-ties.

    python -m benchmarks.random_model OUT --shape smollm2-1.7b --tokenizer DIR
"""

from __future__ import annotations

import argparse
import shutil
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja")


def copy_tokenizer(source: Path, folder: Path) -> Path:
    """Copy a model folder's tokenizer files (those it has) into `folder`."""
    if not (source / TOKENIZER_FILES[0]).is_file():
        raise FileNotFoundError(f"{source} has no {TOKENIZER_FILES[0]}")
    folder.mkdir(parents=True, exist_ok=True)
    for name in TOKENIZER_FILES:
        if (source / name).is_file():
            shutil.copy(source / name, folder / name)
    return folder


@dataclass(frozen=True)
class ModelShape:
    """The Llama architecture numbers that decide a model's cost per token."""

    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    tie_word_embeddings: bool
    vocab_size: int = 49152
    max_position_embeddings: int = 8192


SHAPES: dict[str, ModelShape] = {
    # The bundled model's own shape.
    "smollm2-135m": ModelShape(576, 1536, 30, 9, 3, tie_word_embeddings=True),
    "smollm2-1.7b": ModelShape(2048, 8192, 24, 32, 32, tie_word_embeddings=True),
    # Llama-3-8B's layers (GQA 32:8, head_dim 128) over SmolLM2's vocabulary.
    "llama3-8b": ModelShape(4096, 14336, 32, 32, 8, tie_word_embeddings=False),
    # Two small layers: scripts/gpu-check.sh --smoke runs its stages on CPU with it.
    "tiny": ModelShape(64, 128, 2, 4, 2, tie_word_embeddings=True),
}


def build_random_model(
    folder: Path,
    shape: ModelShape,
    tokenizer_dir: Path,
    dtype: torch.dtype = torch.bfloat16,
    init_std: float = 0.3,
    seed: int = 0,
    device: str | torch.device = "cpu",
    num_labels: int = 0,
) -> Path:
    """Write a HF Llama folder (config, safetensors, tokenizer) with random weights; with
    `num_labels`, a sequence classifier of that many labels instead of a causal LM."""
    import transformers

    if not (tokenizer_dir / TOKENIZER_FILES[0]).is_file():  # before minutes of init
        raise FileNotFoundError(f"{tokenizer_dir} has no {TOKENIZER_FILES[0]}")
    config = transformers.LlamaConfig(
        **asdict(shape),
        initializer_range=init_std,
        bos_token_id=1,
        eos_token_id=2,
        rope_parameters={"rope_type": "default", "rope_theta": 100000.0},
        **({"num_labels": num_labels} if num_labels else {}),
    )
    torch.manual_seed(seed)
    kind = (
        transformers.LlamaForSequenceClassification if num_labels else transformers.LlamaForCausalLM
    )
    # Initialised on `device` (a GPU makes an 8B init take seconds, not minutes).
    with torch.device(device):
        model = kind(config)
    model.to(dtype).save_pretrained(folder)
    return copy_tokenizer(tokenizer_dir, folder)


_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.random_model",
        description="Write a random-weight HF Llama folder of a real model's shape.",
    )
    p.add_argument("out", type=Path, help="folder to write (created)")
    p.add_argument("--shape", choices=sorted(SHAPES), default="smollm2-1.7b")
    p.add_argument("--tokenizer", type=Path, required=True, help="folder with tokenizer.json")
    p.add_argument("--dtype", choices=sorted(_DTYPES), default="bf16")
    p.add_argument("--init-std", type=float, default=0.3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--num-labels", type=int, default=0, help="a sequence classifier's labels")
    args = p.parse_args(argv)
    build_random_model(
        args.out,
        SHAPES[args.shape],
        args.tokenizer,
        dtype=_DTYPES[args.dtype],
        init_std=args.init_std,
        seed=args.seed,
        device=args.device,
        num_labels=args.num_labels,
    )
    print(args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
