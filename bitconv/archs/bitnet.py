"""The two BitNet b1.58 families and their engine constraints (FORMATS.md §8)."""

from __future__ import annotations

from ..model import HParams
from .base import BITNET_CPP, Architecture, register


class _BitNetBase(Architecture):
    sub_norms = True
    bitnet_graph = True

    def engine_problems(self, hp: HParams, engine: str, has_output: bool) -> list[str]:
        problems = []
        arch = self.gguf_arch(hp, engine)
        if arch == "bitnet":
            # The `bitnet` graph of both engines hard-codes a SiLU FFN and reuses token_embd
            # as the output layer; anything else silently computes another function.
            if hp.hidden_act != "silu":
                problems.append(
                    f"its 'bitnet' graph computes a SiLU FFN but the model uses {hp.hidden_act}"
                )
            if has_output and not hp.tie_embeddings:
                problems.append(
                    "its 'bitnet' graph has no output tensor and reuses token_embd, but the model has its own lm_head"
                )
        return problems


@register("BitNetForCausalLM")
class BitNet(_BitNetBase):
    """transformers' BitNetForCausalLM (microsoft/bitnet-b1.58-2B-4T): relu² FFN."""

    hidden_act = "relu2"
    layer_names = {
        **Architecture.layer_names,
        "self_attn.attn_sub_norm.weight": "attn_sub_norm",
        "mlp.ffn_sub_norm.weight": "ffn_sub_norm",
    }

    def gguf_arch(self, hp: HParams, engine: str) -> str:
        # bitnet.cpp (2025+) runs relu² models as `bitnet-b1.58`; upstream llama.cpp only has
        # the SiLU `bitnet` graph, which engine_problems() reports for a relu² model.
        if engine == BITNET_CPP and hp.hidden_act == "relu2":
            return "bitnet-b1.58"
        return "bitnet"

    def alternative(self, layout: str) -> str:
        return "relu² BitNet models run in bitnet.cpp: use --layout i2_s or tl2, or --format safetensors"


@register("BitnetForCausalLM")
class BitNet1bitLLM(_BitNetBase):
    """1bitLLM's BitnetForCausalLM (bitnet_b1_58-large/-3B): SiLU FFN, sub-norms named
    inner_attn_ln / ffn_layernorm, full-precision latent weights."""

    hidden_act = "silu"
    layer_names = {
        **Architecture.layer_names,
        "self_attn.inner_attn_ln.weight": "attn_sub_norm",
        "mlp.ffn_layernorm.weight": "ffn_sub_norm",
    }

    def gguf_arch(self, hp: HParams, engine: str) -> str:
        return "bitnet"
