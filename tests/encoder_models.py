"""Tiny random encoders (BERT, XLM-RoBERTa) with a WordPiece tokenizer, saved as HF folders.

They stand in for sentence-transformers embedding models and cross-encoder
rerankers: the same architectures and files, a small vocabulary and random
weights, so tests can hold the engine to transformers' own outputs.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import transformers

SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
# What the vocabulary's whole words come from (the rest is spelled out in letters).
SAMPLE_TEXT = (
    "the capital of france is paris what a city how many people live in berlin germany "
    "cats and dogs are animals which one do you like best question answer document "
    "search query relevant about weather today rain sun"
)
WORDS = SAMPLE_TEXT.split()
LETTERS = "abcdefghijklmnopqrstuvwxyz"
VOCAB = [*SPECIAL, *WORDS, *LETTERS, *"0123456789.,?!'", *(f"##{c}" for c in LETTERS)]

ST_MODELS = "sentence_transformers.models"
SIZES = dict(
    vocab_size=len(VOCAB),
    hidden_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    intermediate_size=128,
    max_position_embeddings=64,
    initializer_range=0.2,
)


def write_tokenizer(folder: Path) -> transformers.PreTrainedTokenizerBase:
    """A lower-casing WordPiece tokenizer over VOCAB, saved into `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    vocab = {token: index for index, token in enumerate(VOCAB)}
    tokenizer = transformers.BertTokenizerFast(vocab=vocab, do_lower_case=True)
    tokenizer.save_pretrained(folder)
    return tokenizer


def make_encoder(
    folder: Path,
    architecture: str,
    num_labels: int = 0,
    pooling: str | None = None,
    seed: int = 0,
) -> transformers.PreTrainedModel:
    """Save a random `architecture` (BertModel, XLMRobertaModel or their
    *ForSequenceClassification) with the tokenizer; `pooling` ("mean", "cls") adds
    sentence-transformers' modules.json and pooling config (with a Normalize module)."""
    torch.manual_seed(seed)
    extra: dict[str, object] = {}
    if num_labels:
        extra["num_labels"] = num_labels
    if architecture.startswith("XLMRoberta"):
        # pad_token_id 0: [PAD] here, never in a prompt (real XLM-R's is 1, positions
        # start at 2; here at 1).
        config = transformers.XLMRobertaConfig(**SIZES, **extra, pad_token_id=0, type_vocab_size=1)
    else:
        config = transformers.BertConfig(**SIZES, **extra)
    model = getattr(transformers, architecture)(config).eval()
    model.save_pretrained(folder)
    write_tokenizer(folder)
    if pooling is not None:
        modules = [("", "Transformer"), ("1_Pooling", "Pooling"), ("2_Normalize", "Normalize")]
        (folder / "modules.json").write_text(
            json.dumps(
                [
                    {"idx": i, "name": str(i), "path": path, "type": f"{ST_MODELS}.{kind}"}
                    for i, (path, kind) in enumerate(modules)
                ]
            )
        )
        (folder / "1_Pooling").mkdir()
        mode = {"mean": "pooling_mode_mean_tokens", "cls": "pooling_mode_cls_token"}[pooling]
        (folder / "1_Pooling" / "config.json").write_text(
            json.dumps({"word_embedding_dimension": SIZES["hidden_size"], mode: True})
        )
    return model
