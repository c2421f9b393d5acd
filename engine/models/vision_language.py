"""The text model of a vision-language checkpoint (Gemma 3 4B+, Mistral Small 3.1/3.2).

The engine serves text: such a checkpoint's language model is an ordinary
decoder (Gemma 3's, Mistral's) saved under a prefix, beside a vision tower and
a projector whose weights are not loaded. Which prefix depends on the
transformers version that saved it; all of them are read.
"""

from __future__ import annotations

from engine.models.gemma import Gemma2ForCausalLM
from engine.models.llama import LlamaForCausalLM

# Where the text model's tensors live: the original layout, then transformers 5's.
TEXT_PREFIXES = ("language_model.model.", "model.language_model.", "language_model.", "model.")
VISION_PREFIXES = (
    "vision_tower.",
    "multi_modal_projector.",
    "model.vision_tower.",
    "model.multi_modal_projector.",
)


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
