"""Seeded random checkpoints in Hugging Face layout, for tests, benchmarks and judges.

They are real model folders (config.json, safetensors, a byte-level BPE tokenizer.json
trained with `tokenizers`), so every reader path runs on them exactly as on a download.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file

FAMILIES = {
    # family -> (architectures, model_type, hidden_act, attn sub-norm name, ffn sub-norm name)
    "relu2": ("BitNetForCausalLM", "bitnet", "relu2", "self_attn.attn_sub_norm", "mlp.ffn_sub_norm"),
    "silu": ("BitnetForCausalLM", "bitnet", "silu", "self_attn.inner_attn_ln", "mlp.ffn_layernorm"),
    "llama": ("LlamaForCausalLM", "llama", "silu", None, None),
    "qwen3": ("Qwen3ForCausalLM", "qwen3", "silu", None, None),
}
PLAIN_FAMILIES = ("llama", "qwen3")  # no BitNet graph of their own
# The quantization_config that makes a plain family a BitNet model with latent weights
# (transformers ternarizes them online): what `weights="latent"` gives llama / qwen3.
BITNET_ONLINE = {"quant_method": "bitnet", "linear_class": "autobitlinear", "quantization_mode": "online"}
_LINEARS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")

_TEXT = (
    "The quick brown fox jumps over the lazy dog. A ternary network stores each weight as "
    "minus one, zero or plus one, and a single scale per tensor. Engines read packed bytes; "
    "converters must write exactly what they expect, or the model speaks nonsense. "
)


@dataclass
class SynthConfig:
    family: str = "silu"
    hidden: int = 256
    intermediate: int = 512
    layers: int = 2
    heads: int = 4
    kv_heads: int = 2
    vocab: int = 512
    context: int = 512
    tie: bool = True
    dtype: str = "bf16"  # bf16 | f16 | f32
    shards: int = 1
    seed: int = 0
    rope_theta: float = 10000.0
    embed_std: float = 1.0
    # Scale the head (tied embeddings or lm_head) so the logits have about this standard
    # deviation, as a trained model's do: mean NLL on real text then sits within a few nats
    # of ln(vocab). None keeps `embed_std`, whose tied logits have a std of ~sqrt(hidden):
    # perplexities like e^150 on which engine comparisons ride on rounding (issue 9).
    logit_std: float | None = None
    quantization_config: dict | None = None
    # "latent": BitNet latent floats (plain families get BITNET_ONLINE unless a
    # quantization_config is given); "exact": every linear already s·t with `ternary_group`
    # scales, no quantization_config (TriLM / Bonsai "unpacked"); "float": a plain float
    # model that is not ternary (bitconv refuses it without --ternarize).
    weights: str = "latent"
    ternary_group: str | int = "tensor"
    ternary_embeddings: str | int | None = None  # "exact": embedding (and lm_head) s·t with this group too
    head_dim: int | None = None  # qwen3: head size other than hidden // heads
    use_rms_norm: bool = False  # an RMSNorm inside every linear (quantization_config use_rms_norm)


# The logit scale judge tests use (see `SynthConfig.logit_std`): ln(vocab) + ~2 nats.
SANE_LOGIT_STD = 2.0


def train_tokenizer(vocab: int, text: str = _TEXT * 20) -> "object":
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab, special_tokens=["<|begin_of_text|>", "<|end_of_text|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False,
    )
    tok.train_from_iterator([text], trainer=trainer)
    return tok


def hf_weights(cfg: SynthConfig, device: str = "cpu") -> dict[str, torch.Tensor]:
    """Float weights named as transformers names them, seeded and deterministic.

    `device` only says where the random numbers are drawn (the GPU for large benchmark
    models); the tensors are returned on the CPU, ready to save.
    """
    arch, _, _, attn_sub, ffn_sub = FAMILIES[cfg.family]
    g = torch.Generator(device).manual_seed(cfg.seed)
    d = cfg.head_dim or cfg.hidden // cfg.heads
    dt = {"bf16": torch.bfloat16, "f16": torch.float16, "f32": torch.float32}[cfg.dtype]

    def lin(m: int, k: int) -> torch.Tensor:
        return (torch.randn(m, k, generator=g, device=device) * k**-0.5).to(dt).cpu()

    def norm(n: int) -> torch.Tensor:
        return (1.0 + 0.1 * torch.randn(n, generator=g, device=device)).to(dt).cpu()

    # the final norm makes the head's input about unit RMS, so a head of std c/sqrt(hidden)
    # gives logits of std ~c
    head_std = None if cfg.logit_std is None else cfg.logit_std * cfg.hidden**-0.5
    embed_std = head_std if head_std is not None and cfg.tie else cfg.embed_std
    embed = embed_std * torch.randn(cfg.vocab, cfg.hidden, generator=g, device=device)
    w: dict[str, torch.Tensor] = {"model.embed_tokens.weight": embed.to(dt).cpu()}
    for i in range(cfg.layers):
        p = f"model.layers.{i}."
        w[p + "input_layernorm.weight"] = norm(cfg.hidden)
        w[p + "self_attn.q_proj.weight"] = lin(cfg.heads * d, cfg.hidden)
        w[p + "self_attn.k_proj.weight"] = lin(cfg.kv_heads * d, cfg.hidden)
        w[p + "self_attn.v_proj.weight"] = lin(cfg.kv_heads * d, cfg.hidden)
        w[p + "self_attn.o_proj.weight"] = lin(cfg.hidden, cfg.heads * d)
        w[p + "post_attention_layernorm.weight"] = norm(cfg.hidden)
        w[p + "mlp.gate_proj.weight"] = lin(cfg.intermediate, cfg.hidden)
        w[p + "mlp.up_proj.weight"] = lin(cfg.intermediate, cfg.hidden)
        w[p + "mlp.down_proj.weight"] = lin(cfg.hidden, cfg.intermediate)
        if attn_sub:
            w[p + attn_sub + ".weight"] = norm(cfg.hidden)
            w[p + ffn_sub + ".weight"] = norm(cfg.intermediate)
        if cfg.family == "qwen3":
            w[p + "self_attn.q_norm.weight"] = norm(d)
            w[p + "self_attn.k_norm.weight"] = norm(d)
        if cfg.use_rms_norm:
            for name in [n for n in w if n.startswith(p) and n.endswith("_proj.weight")]:
                w[name[: -len(".weight")] + ".rms_norm.weight"] = norm(w[name].shape[1])
    w["model.norm.weight"] = norm(cfg.hidden)
    if not cfg.tie:
        w["lm_head.weight"] = lin(cfg.vocab, cfg.hidden) if head_std is None else \
            (head_std * torch.randn(cfg.vocab, cfg.hidden, generator=g, device=device)).to(dt).cpu()
    if cfg.weights == "exact":
        _make_exact(w, cfg, dt)
    return w


def _make_exact(w: dict[str, torch.Tensor], cfg: SynthConfig, dt: torch.dtype) -> None:
    """Replace linears (and, if asked, the embedding / head) by s·t: their absmean
    ternarization with the configured group, stored in the checkpoint's dtype."""
    from .quant import ternarize

    for name in list(w):
        is_linear = name.endswith("_proj.weight") and any(f".{n}." in name for n in _LINEARS)
        is_table = name in ("model.embed_tokens.weight", "lm_head.weight")
        if is_linear or (is_table and cfg.ternary_embeddings is not None):
            group = cfg.ternary_group if is_linear else cfg.ternary_embeddings
            tern = ternarize(w[name].to(torch.float32).numpy(), group, name)
            w[name] = torch.from_numpy(tern.dequantize()).to(dt)


def hf_config(cfg: SynthConfig) -> dict:
    arch, model_type, act, _, _ = FAMILIES[cfg.family]
    c = {
        "architectures": [arch], "model_type": model_type, "hidden_act": act,
        "hidden_size": cfg.hidden, "intermediate_size": cfg.intermediate, "num_hidden_layers": cfg.layers,
        "num_attention_heads": cfg.heads, "num_key_value_heads": cfg.kv_heads, "vocab_size": cfg.vocab,
        "max_position_embeddings": cfg.context, "rms_norm_eps": 1e-5, "rope_theta": cfg.rope_theta,
        "tie_word_embeddings": cfg.tie, "bos_token_id": 0, "eos_token_id": 1, "torch_dtype":
            {"bf16": "bfloat16", "f16": "float16", "f32": "float32"}[cfg.dtype],
        "attention_bias": False,
    }
    if cfg.head_dim or cfg.family == "qwen3":  # Qwen3Config's own default head_dim is 128
        c["head_dim"] = cfg.head_dim or cfg.hidden // cfg.heads
    if cfg.family == "qwen3":
        c["use_sliding_window"] = False
    q = cfg.quantization_config
    if q is None and cfg.weights == "latent" and cfg.family in PLAIN_FAMILIES:
        q = dict(BITNET_ONLINE)
    if q and cfg.use_rms_norm:
        q = {**q, "use_rms_norm": True, "rms_norm_eps": 1e-6}
    if q:
        c["quantization_config"] = q
    return c


def save_weights(folder: Path, weights: dict[str, torch.Tensor], shards: int = 1) -> None:
    names = list(weights)
    if shards <= 1:
        save_file(weights, str(folder / "model.safetensors"), metadata={"format": "pt"})
        return
    parts = np.array_split(np.arange(len(names)), shards)
    weight_map = {}
    for i, idx in enumerate(parts):
        fname = f"model-{i + 1:05d}-of-{shards:05d}.safetensors"
        chunk = {names[j]: weights[names[j]] for j in idx}
        save_file(chunk, str(folder / fname), metadata={"format": "pt"})
        weight_map.update({n: fname for n in chunk})
    total = sum(t.numel() * t.element_size() for t in weights.values())
    (folder / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2))


def make_checkpoint(folder: str | Path, cfg: SynthConfig | None = None, **overrides) -> Path:
    """Write a random model folder and return its path."""
    cfg = cfg or SynthConfig()
    for k, v in overrides.items():
        setattr(cfg, k, v)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(hf_config(cfg), indent=2))
    save_weights(folder, hf_weights(cfg), cfg.shards)
    tok = train_tokenizer(min(cfg.vocab, 400))
    tok.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps(
        {"bos_token": "<|begin_of_text|>", "eos_token": "<|end_of_text|>", "add_bos_token": False}))
    return folder
