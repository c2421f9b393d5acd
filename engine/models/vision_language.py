"""The text model of a vision-language checkpoint (Gemma 3 4B+, Mistral Small 3.1/3.2,
Qwen2-VL, Qwen2.5-VL, Qwen3-VL and Qwen3-VL MoE).

The engine serves text: such a checkpoint's language model is an ordinary
decoder (Gemma 3's, Mistral's, Qwen's) saved under a prefix, beside a vision
tower and a projector whose weights are not loaded. Which prefix depends on the
transformers version that saved it; all of them are read.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator

import torch

from engine.models.gemma import Gemma2ForCausalLM
from engine.models.llama import LlamaForCausalLM

# Where the text model's tensors live: the original layout, then transformers 5's.
TEXT_PREFIXES = ("language_model.model.", "model.language_model.", "language_model.", "model.")
VISION_PREFIXES = (
    "vision_tower.",
    "multi_modal_projector.",
    "model.vision_tower.",
    "model.multi_modal_projector.",
    # Qwen's vision towers, projector (`merger`) included.
    "visual.",
    "model.visual.",
)
# Qwen3-VL MoE's experts, one stack per layer and kind of matrix.
_EXPERT_STACK = re.compile(r"^(?P<layer>.*\.mlp\.experts)\.(?P<part>gate_up_proj|down_proj)$")


def text_model_name(hf_name: str) -> str | None:
    """A checkpoint tensor's name in the text model; None for the vision side's."""
    if hf_name.startswith(VISION_PREFIXES):
        return None
    for prefix in TEXT_PREFIXES:
        if hf_name.startswith(prefix):
            return hf_name.removeprefix(prefix)
    return hf_name


class Gemma3ForConditionalGeneration(Gemma2ForCausalLM):
    """Gemma 3's text model (Gemma 2's layers with Gemma 3's config switches), from a
    text-only checkpoint or a vision-language one."""

    def checkpoint_name(self, hf_name: str) -> str | None:
        return text_model_name(hf_name)


class Mistral3ForConditionalGeneration(LlamaForCausalLM):
    """Mistral Small 3.1/3.2's text model: Mistral's decoder."""

    def checkpoint_name(self, hf_name: str) -> str | None:
        return text_model_name(hf_name)


class QwenVLForConditionalGeneration(LlamaForCausalLM):
    """Qwen2-VL's, Qwen2.5-VL's and Qwen3-VL's text models (Qwen2's and Qwen3's
    decoders, Qwen3-MoE's for Qwen3-VL MoE)."""

    def checkpoint_name(self, hf_name: str) -> str | None:
        return text_model_name(hf_name)

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> None:
        super().load_weights(self._expert_matrices(weights))

    def _expert_matrices(
        self, weights: Iterable[tuple[str, torch.Tensor]]
    ) -> Iterator[tuple[str, torch.Tensor]]:
        """Qwen3-VL MoE's expert stacks as the per-expert matrices Qwen3-MoE checkpoints
        hold (its FP8 release's form). `gate_up_proj` holds each expert's gate then up
        rows, `down_proj` its down matrix: [experts, out, in] as transformers 5 saves
        them, or transposed ([experts, in, out]) as the release stores them, told apart
        by shape as transformers tells them (its orientation where both fit). Each
        expert's slice is a view, copied once as it loads; other tensors pass through."""
        config = self.config
        hidden, inter = config.hidden_size, config.moe_intermediate_size
        for name, tensor in weights:
            stack = _EXPERT_STACK.match(name)
            if stack is None:
                yield name, tensor
                continue
            down = stack["part"] == "down_proj"
            rows, cols = (hidden, inter) if down else (2 * inter, hidden)
            shape = tuple(tensor.shape)
            if shape == (config.num_experts, cols, rows) != (config.num_experts, rows, cols):
                tensor = tensor.transpose(1, 2)
            elif shape != (config.num_experts, rows, cols):
                raise ValueError(
                    f"{name!r}: expected experts stacked as {[config.num_experts, rows, cols]} "
                    f"or transposed, got {list(shape)}"
                )
            prefix = stack["layer"]
            for expert, matrix in enumerate(tensor):
                if down:
                    yield f"{prefix}.{expert}.down_proj.weight", matrix
                else:
                    yield f"{prefix}.{expert}.gate_proj.weight", matrix[:inter]
                    yield f"{prefix}.{expert}.up_proj.weight", matrix[inter:]
