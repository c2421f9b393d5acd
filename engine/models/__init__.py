"""Model registry: HF architecture name -> our implementation."""

from __future__ import annotations

from torch import nn

from engine.config import ModelConfig
from engine.models.bert import BertModel
from engine.models.cohere import CohereForCausalLM
from engine.models.gemma import Gemma2ForCausalLM
from engine.models.glm4 import Glm4ForCausalLM
from engine.models.gpt_oss import GptOssForCausalLM
from engine.models.granite_moe import GraniteMoeForCausalLM
from engine.models.llama import LlamaForCausalLM
from engine.models.olmo2 import Olmo2ForCausalLM
from engine.models.starcoder2 import Starcoder2ForCausalLM
from engine.models.vision_language import (
    Gemma3ForConditionalGeneration,
    Mistral3ForConditionalGeneration,
    QwenVLForConditionalGeneration,
)
from kernels.fused_ops import TORCH_OPS, FusedOps

_REGISTRY: dict[str, type[nn.Module]] = {
    "LlamaForCausalLM": LlamaForCausalLM,
    "MistralForCausalLM": LlamaForCausalLM,
    "Qwen2ForCausalLM": LlamaForCausalLM,
    "Qwen3ForCausalLM": LlamaForCausalLM,
    "GemmaForCausalLM": LlamaForCausalLM,
    "Gemma2ForCausalLM": Gemma2ForCausalLM,
    # Text-only Gemma 3 checkpoints name their tensors as the text model of a
    # vision-language one does (without the prefix), so one class reads both.
    "Gemma3ForCausalLM": Gemma3ForConditionalGeneration,
    "Gemma3ForConditionalGeneration": Gemma3ForConditionalGeneration,
    "Mistral3ForConditionalGeneration": Mistral3ForConditionalGeneration,
    "Qwen2VLForConditionalGeneration": QwenVLForConditionalGeneration,
    "Qwen2_5_VLForConditionalGeneration": QwenVLForConditionalGeneration,
    "Qwen3VLForConditionalGeneration": QwenVLForConditionalGeneration,
    "Qwen3VLMoeForConditionalGeneration": QwenVLForConditionalGeneration,
    "SmolLM3ForCausalLM": LlamaForCausalLM,
    "GraniteForCausalLM": LlamaForCausalLM,
    "Phi3ForCausalLM": LlamaForCausalLM,
    "Olmo2ForCausalLM": Olmo2ForCausalLM,
    "Olmo3ForCausalLM": Olmo2ForCausalLM,
    "Exaone4ForCausalLM": Olmo2ForCausalLM,
    "Glm4ForCausalLM": Glm4ForCausalLM,
    "Ernie4_5ForCausalLM": LlamaForCausalLM,
    "CohereForCausalLM": CohereForCausalLM,
    "Cohere2ForCausalLM": CohereForCausalLM,
    "SeedOssForCausalLM": LlamaForCausalLM,
    "MinistralForCausalLM": LlamaForCausalLM,
    "Starcoder2ForCausalLM": Starcoder2ForCausalLM,
    "MixtralForCausalLM": LlamaForCausalLM,
    "Qwen2MoeForCausalLM": LlamaForCausalLM,
    "Qwen3MoeForCausalLM": LlamaForCausalLM,
    "GraniteMoeForCausalLM": GraniteMoeForCausalLM,
    "GptOssForCausalLM": GptOssForCausalLM,
    "LlamaModel": LlamaForCausalLM,
    "MistralModel": LlamaForCausalLM,
    "Qwen2Model": LlamaForCausalLM,
    "Qwen3Model": LlamaForCausalLM,
    # The base network plus `score`, the classifier head (LlamaForCausalLM.classify).
    "LlamaForSequenceClassification": LlamaForCausalLM,
    "MistralForSequenceClassification": LlamaForCausalLM,
    "Qwen2ForSequenceClassification": LlamaForCausalLM,
    "Qwen3ForSequenceClassification": LlamaForCausalLM,
    # Encoders (bidirectional): embeddings, and cross-encoders with their head.
    "BertModel": BertModel,
    "RobertaModel": BertModel,
    "XLMRobertaModel": BertModel,
    "BertForSequenceClassification": BertModel,
    "RobertaForSequenceClassification": BertModel,
    "XLMRobertaForSequenceClassification": BertModel,
}


def build_model(
    config: ModelConfig, max_positions: int, ops: FusedOps = TORCH_OPS, lm_head: bool = True
) -> nn.Module:
    """The model; `lm_head=False` (the pooling runner) leaves the LM head out."""
    try:
        cls = _REGISTRY[config.architecture]
    except KeyError:
        raise ValueError(f"unsupported architecture {config.architecture!r}") from None
    return cls(config, max_positions, ops, lm_head=lm_head and config.has_lm_head)
