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
# transformers' BitNetQuantConfig(use_rms_norm=True): an RMSNorm inside every BitLinear,
# `<linear>.rms_norm.weight`; bitconv names it `blk.N.<linear kind>_in_norm.weight`.
INPUT_NORM_HF = ".rms_norm"
INPUT_NORM_SUFFIX = "_in_norm"


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
    if isinstance(names, str):
        names = [names]
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise UnsupportedArchitectureError(f"{config_path}: architectures must be a list of names, got {names!r:.60}")
    for n in names:
        if n in _ARCHS:
            return _ARCHS[n]()
    raise UnsupportedArchitectureError(
        f"{config_path}: architecture {', '.join(names) or '(none given)'} is not supported; "
        f"bitconv supports: {', '.join(supported_architectures())}",
        hint="open an issue with the model's config.json if it is a ternary model bitconv should read",
    )


def family_of(spec) -> "Architecture":
    """The family of a model spec: from its config.json's architectures when it has one, else
    (a GGUF source, which has none) from the family name its reader settled on."""
    return architecture_for(spec.config) if spec.config else _ARCHS[spec.family]()


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
    # A BitNet family: its float linears are latent weights ternarized by absmean at run
    # time, with 8-bit activations (source_kind.is_bitnet_model).
    bitnet_graph: ClassVar[bool] = False
    # Per-head RMSNorm of q and k before rope (Qwen3): GGUF kinds attn_q_norm / attn_k_norm.
    qk_norm: ClassVar[bool] = False

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
        if m and m.group(2).endswith(INPUT_NORM_HF + ".weight"):  # use_rms_norm: `...q_proj.rms_norm.weight`
            linear = self.layer_names.get(m.group(2)[: -len(INPUT_NORM_HF + ".weight")] + ".weight")
            if linear is not None and not linear.endswith("norm"):
                return f"blk.{m.group(1)}.{linear}{INPUT_NORM_SUFFIX}.weight", NORM
        raise KeyError(hf_name)

    def hf_layer_name(self, kind: str) -> str | None:
        """GGUF kind -> the HF suffix inside a layer (`attn_q_in_norm` -> `self_attn.q_proj.rms_norm.weight`)."""
        for suffix, k in self.layer_names.items():
            if k == kind:
                return suffix
        if kind.endswith(INPUT_NORM_SUFFIX):
            linear = self.hf_layer_name(kind[: -len(INPUT_NORM_SUFFIX)])
            if linear is not None:
                return linear[: -len(".weight")] + INPUT_NORM_HF + ".weight"
        return None

    # -- hyperparameters -----------------------------------------------------------
    def hparams(self, config: dict[str, Any], source: str = "config.json") -> HParams:
        """Typed, range-checked hyperparameters; a bad value is a CorruptFileError naming the key."""
        from ..config_values import get_bool, get_dict, get_float, get_int, get_token_id

        hidden = get_int(config, "hidden_size", source)
        heads = get_int(config, "num_attention_heads", source)
        kv_heads = get_int(config, "num_key_value_heads", source, default=heads)
        head_dim = get_int(config, "head_dim", source, default=None)
        if head_dim is None:
            if hidden % heads:
                raise UnsupportedArchitectureError(
                    f"{source}: hidden_size {hidden} is not divisible by num_attention_heads {heads}",
                    hint="the config is inconsistent; without head_dim the head size is hidden_size / heads")
            head_dim = hidden // heads
        if heads % kv_heads:
            raise UnsupportedArchitectureError(
                f"{source}: num_attention_heads {heads} is not a multiple of num_key_value_heads {kv_heads}")
        rope = get_dict(config, "rope_parameters", source) or get_dict(config, "rope_scaling", source)
        theta = get_float(config, "rope_theta", source, default=None)
        if theta is None:
            theta = get_float(rope, "rope_theta", f"{source}: rope_parameters", default=10000.0)
        qconfig = get_dict(config, "quantization_config", source)
        qsource = f"{source}: quantization_config"
        return HParams(
            vocab_size=get_int(config, "vocab_size", source),
            hidden_size=hidden,
            intermediate_size=get_int(config, "intermediate_size", source),
            num_layers=get_int(config, "num_hidden_layers", source),
            num_heads=heads,
            num_kv_heads=kv_heads,
            head_dim=head_dim,
            context_length=get_int(config, "max_position_embeddings", source, default=2048),
            rope_theta=theta,
            rms_eps=get_float(config, "rms_norm_eps", source, default=1e-6),
            hidden_act=self._activation(config),
            tie_embeddings=get_bool(config, "tie_word_embeddings", source, default=False),
            sub_norms=self.sub_norms,
            qk_norm=self.qk_norm,
            linear_norms=get_bool(qconfig, "use_rms_norm", qsource, default=False),
            linear_norm_eps=get_float(qconfig, "rms_norm_eps", qsource, default=1e-6),
            bos_token_id=get_token_id(config, "bos_token_id", source),
            eos_token_id=get_token_id(config, "eos_token_id", source),
        )

    def _activation(self, config: dict[str, Any]) -> str:
        act = config.get("hidden_act") or self.hidden_act
        if not isinstance(act, str):
            raise UnsupportedArchitectureError(f"config.json: hidden_act must be a string, got {act!r:.40}")
        act = act.lower()
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
