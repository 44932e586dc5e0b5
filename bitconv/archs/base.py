"""Architecture families: how a checkpoint's names and config map onto one model graph.

One class per family, registered under the Hugging Face `architectures` names it reads
(as llama.cpp's `@ModelBase.register`). A family knows its tensor-name mapping, its
hyperparameters, and which GGUF arch string each engine needs for it; it refuses targets
whose engine would compute a different function.
"""

from __future__ import annotations

import re
from typing import Any, ClassVar

from ..errors import LayoutError, UnsupportedArchitectureError
from ..model import EMBEDDING, LINEAR, NORM, OUTPUT, HParams

_ARCHS: dict[str, type["Architecture"]] = {}

# Engines that own each GGUF layout. Decides arch strings and what a file may contain.
LLAMA_CPP, BITNET_CPP = "llama.cpp", "bitnet.cpp"

_LAYER = re.compile(r"^model\.layers\.(\d+)\.(.+)$")


def register(*hf_names: str):
    """Class decorator: register an Architecture under the HF `architectures` names given."""

    def wrap(cls: type["Architecture"]) -> type["Architecture"]:
        for n in hf_names:
            if n in _ARCHS:
                raise AssertionError(f"architecture {n!r} registered twice")
            _ARCHS[n] = cls
        cls.hf_names = hf_names
        return cls

    return wrap


def supported_architectures() -> list[str]:
    return sorted(_ARCHS)


def architecture_for(config: dict[str, Any], config_path: str = "config.json") -> "Architecture":
    names = config.get("architectures") or []
    for n in names:
        if n in _ARCHS:
            return _ARCHS[n]()
    raise UnsupportedArchitectureError(
        f"{config_path}: architecture {', '.join(names) or '(none given)'} is not supported; "
        f"bitconv supports: {', '.join(supported_architectures())}",
        hint="open an issue with the model's config.json if it is a ternary model bitconv should read",
    )


class Architecture:
    """Base family: a Llama-shaped decoder. Subclasses set the class attributes."""

    hf_names: ClassVar[tuple[str, ...]] = ()
    hidden_act: ClassVar[str] = "silu"
    sub_norms: ClassVar[bool] = False
    # HF suffix inside a layer -> GGUF kind
    layer_names: ClassVar[dict[str, str]] = {
        "input_layernorm.weight": "attn_norm",
        "self_attn.q_proj.weight": "attn_q",
        "self_attn.k_proj.weight": "attn_k",
        "self_attn.v_proj.weight": "attn_v",
        "self_attn.o_proj.weight": "attn_output",
        "post_attention_layernorm.weight": "ffn_norm",
        "mlp.gate_proj.weight": "ffn_gate",
        "mlp.up_proj.weight": "ffn_up",
        "mlp.down_proj.weight": "ffn_down",
    }
    global_names: ClassVar[dict[str, tuple[str, str]]] = {
        "model.embed_tokens.weight": ("token_embd.weight", EMBEDDING),
        "model.norm.weight": ("output_norm.weight", NORM),
        "lm_head.weight": ("output.weight", OUTPUT),
    }
    ignored: ClassVar[tuple[str, ...]] = ("rotary_emb.inv_freq",)
    permute_qk_for_llama_arch: ClassVar[bool] = False

    # -- names ---------------------------------------------------------------------
    def map_name(self, hf_name: str) -> tuple[str, str] | None:
        """HF tensor name -> (GGUF name, role); None for tensors to skip; KeyError if unknown."""
        if hf_name in self.global_names:
            return self.global_names[hf_name]
        if any(hf_name.endswith(s) for s in self.ignored):
            return None
        m = _LAYER.match(hf_name)
        if m and m.group(2) in self.layer_names:
            kind = self.layer_names[m.group(2)]
            role = NORM if kind.endswith("norm") else LINEAR
            return f"blk.{m.group(1)}.{kind}.weight", role
        raise KeyError(hf_name)

    # -- hyperparameters -----------------------------------------------------------
    def hparams(self, config: dict[str, Any]) -> HParams:
        def need(key: str) -> Any:
            if key not in config:
                raise UnsupportedArchitectureError(f"config.json: missing required field {key!r}")
            return config[key]

        hidden = int(need("hidden_size"))
        heads = int(need("num_attention_heads"))
        rope = config.get("rope_parameters") or config.get("rope_scaling") or {}
        theta = config.get("rope_theta", rope.get("rope_theta", 10000.0))
        eos = config.get("eos_token_id")
        return HParams(
            vocab_size=int(need("vocab_size")),
            hidden_size=hidden,
            intermediate_size=int(need("intermediate_size")),
            num_layers=int(need("num_hidden_layers")),
            num_heads=heads,
            num_kv_heads=int(config.get("num_key_value_heads") or heads),
            head_dim=int(config.get("head_dim") or hidden // heads),
            context_length=int(config.get("max_position_embeddings", 2048)),
            rope_theta=float(theta),
            rms_eps=float(config.get("rms_norm_eps", 1e-6)),
            hidden_act=self._activation(config),
            tie_embeddings=bool(config.get("tie_word_embeddings", False)),
            sub_norms=self.sub_norms,
            bos_token_id=config.get("bos_token_id"),
            eos_token_id=eos[0] if isinstance(eos, list) and eos else eos,
        )

    def _activation(self, config: dict[str, Any]) -> str:
        act = str(config.get("hidden_act", self.hidden_act)).lower()
        if act in ("relu2", "relu_squared", "squared_relu"):
            return "relu2"
        if act in ("silu", "swish"):
            return "silu"
        raise UnsupportedArchitectureError(f"config.json: hidden_act {act!r} is not supported (relu2 or silu)")

    # -- engines -------------------------------------------------------------------
    def gguf_arch(self, hp: HParams, engine: str) -> str:
        raise NotImplementedError

    def engine_problems(self, hp: HParams, engine: str, has_output: bool) -> list[str]:
        """Reasons the engine would compute a different function from this model (empty: fine)."""
        return []

    def check_engine(self, hp: HParams, engine: str, layout: str, has_output: bool,
                     allow: bool) -> list[str]:
        """Raise LayoutError (or, with `allow`, return warnings) for an engine mismatch."""
        problems = self.engine_problems(hp, engine, has_output)
        if problems and not allow:
            raise LayoutError(
                f"{layout} files run in {engine}, which would not compute this model: " + "; ".join(problems),
                hint=self.alternative(layout) + " (or pass --allow-engine-mismatch to write it anyway)",
            )
        return [f"{layout}: {p}" for p in problems]

    def alternative(self, layout: str) -> str:
        return "use --layout i2_s or tl2 (bitnet.cpp) or --format safetensors"
