"""IBM Granite 3 mixture-of-experts models (granite-3.x-1b-a400m, -3b-a800m).

Granite's multipliers on the Llama graph (config switches, as for dense Granite),
with Mixtral's routing: the top-k router logits, softmaxed among themselves (the
same weights as a softmax over all experts renormalised over the chosen ones).
The checkpoint stores each layer's experts as stacks already in the engine's
layout: `input_linear` [experts, gate then up, hidden] and `output_linear`
[experts, hidden, intermediate], with the router as `router.layer` (transformers
renames them as it loads, and saves them back under these names).
"""

from __future__ import annotations

import re

import torch

from engine.models.llama import DecoderLayer, LlamaForCausalLM
from engine.models.moe import SparseMoE

_STACK_KEY = re.compile(
    r"^layers\.(?P<layer>\d+)\.block_sparse_moe\."
    r"(?P<part>input_linear|output_linear|router\.layer)\.weight$"
)
# Checkpoint name -> the stack (or the router, `gate`) it fills.
_PARTS = {"input_linear": "gate_up", "output_linear": "down", "router.layer": "gate"}


class GraniteExperts(SparseMoE):
    """Experts loaded a stack at a time, not one matrix per expert."""

    def expected_parts(self) -> set[str]:
        return {"gate_up", "down"}


class GraniteMoeDecoderLayer(DecoderLayer):
    sparse_mlp = GraniteExperts


class GraniteMoeForCausalLM(LlamaForCausalLM):
    decoder_layer = GraniteMoeDecoderLayer

    def load_own_weight(self, name: str, tensor: torch.Tensor) -> str | None:
        key = _STACK_KEY.match(name)
        if key is None:
            return None
        index = int(key["layer"])
        if index >= len(self.layers):
            raise ValueError(f"unexpected weight {name!r}: the model has {len(self.layers)} layers")
        part = _PARTS[key["part"]]
        with torch.no_grad():
            getattr(self.layers[index].mlp, part).copy_(tensor)
        return f"layers.{index}.mlp.gate" if part == "gate" else f"layers.{index}.mlp:{part}"
