"""GLM-4-0414 (GLM-4-9B/32B-0414, GLM-Z1): Gemma 2's sandwich-norm layers with GLM's
names, and an interleaved partial rotation.

Each sublayer's output is normalised before it joins the stream, as in Gemma 2
(`GemmaDecoderLayer`; its `1 + w` norms and scaled embeddings are Gemma's config
switches, off here); the checkpoint calls the norms `post_self_attn_layernorm`
(after attention), `post_attention_layernorm` (before the MLP) and
`post_mlp_layernorm`. Queries and keys turn in adjacent pairs over the first
half of each head (`partial_rotary_factor` 0.5): the Llama loader reorders their
projections' rows (`interleaved_rope`, engine/interleaved_rope.py) so the
half-split kernels rotate them.
"""

from __future__ import annotations

import re

from engine.models.gemma import Gemma2ForCausalLM

# GLM's norm names -> the sandwich layer's.
_NORMS = {
    "post_self_attn_layernorm": "post_attention_layernorm",
    "post_attention_layernorm": "pre_feedforward_layernorm",
    "post_mlp_layernorm": "post_feedforward_layernorm",
}
_NORM = re.compile(r"^(layers\.\d+\.)(\w+)(\.weight)$")


class Glm4ForCausalLM(Gemma2ForCausalLM):
    def checkpoint_name(self, hf_name: str) -> str | None:
        name = super().checkpoint_name(hf_name)
        if name is None:
            return None
        norm = _NORM.match(name)
        if norm is not None and norm.group(2) in _NORMS:
            return norm.group(1) + _NORMS[norm.group(2)] + norm.group(3)
        return name
