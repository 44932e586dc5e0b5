"""Qwen3 with ternary linears (Ternary-Bonsai and other ternary Qwen3 exports).

transformers' `Qwen3ForCausalLM`: a Llama-shaped decoder whose attention applies an
RMSNorm over each head's `head_dim` to q and k (`q_norm`, `k_norm`) before rope, with
`head_dim` set on its own (often not hidden / heads), GQA, SiLU FFN and a tied or untied
head. llama.cpp's converter writes it as GGUF arch `qwen3` with `blk.N.attn_q_norm` /
`attn_k_norm`, NEOX rope (no q/k row permutation) and the `qwen3.attention.key_length` /
`value_length` keys for the head size.
"""

from __future__ import annotations

from typing import Any

from ..config_values import get_bool
from ..errors import CorruptFileError, UnsupportedArchitectureError
from ..model import HParams
from .base import BITNET_CPP, Architecture, register


@register("Qwen3ForCausalLM")
class Qwen3(Architecture):
    hidden_act = "silu"
    qk_norm = True
    layer_names = {
        **Architecture.layer_names,
        "self_attn.q_norm.weight": "attn_q_norm",
        "self_attn.k_norm.weight": "attn_k_norm",
    }

    def hparams(self, config: dict[str, Any], source: str = "config.json") -> HParams:
        layer_types = config.get("layer_types")
        if layer_types is None:
            layer_types = []
        # a string or a list of other things was ignored before: "sliding_attention" as a string
        # converted with exit 0 into a file whose every layer attends fully
        if not isinstance(layer_types, list) or not all(isinstance(t, str) for t in layer_types):
            raise CorruptFileError(f"{source}: layer_types must be a list of strings (one per layer), got "
                                   f"{type(layer_types).__name__}: {str(layer_types)[:40]!r}")
        unknown = sorted(set(layer_types) - {"full_attention", "sliding_attention"})
        if unknown:
            raise UnsupportedArchitectureError(f"{source}: Qwen3 layer type {unknown[0]!r} is not supported "
                                               "(bitconv knows full_attention only)")
        if get_bool(config, "use_sliding_window", source) or "sliding_attention" in layer_types:
            raise UnsupportedArchitectureError(
                f"{source}: Qwen3 with sliding-window attention is not supported (bitconv's forward pass and the "
                "GGUF keys it writes assume full attention in every layer)")
        if config.get("attention_bias"):
            raise UnsupportedArchitectureError(f"{source}: Qwen3 with attention_bias (q/k/v biases) is not supported")
        return super().hparams(config, source)

    def gguf_arch(self, hp: HParams, engine: str) -> str:
        return "qwen3"

    def engine_problems(self, hp: HParams, engine: str, has_output: bool) -> list[str]:
        if engine == BITNET_CPP:
            # bitnet.cpp's llama.cpp fork predates llama.cpp's qwen3 graph (April 2025)
            return ["its llama.cpp fork has no 'qwen3' graph (no q_norm/k_norm)"]
        return []

    def alternative(self, layout: str) -> str:
        return "Qwen3 runs in llama.cpp: use --layout tq2_0 or tq1_0, or --format safetensors"
