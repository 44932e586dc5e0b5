"""The independent reference every engine judge compares with: the SOURCE model, run by
transformers (issue 22, item 1).

Never bitconv's own forward pass or quantizer: a latent BitNet source is ternarized by
transformers' own online rule (`autobitlinear` + `online`: float32 absmean per tensor,
8-bit per-token activations), an exact-ternary float source (TriLM / Bonsai "unpacked")
runs as the plain float model it is. So a defect in what bitconv writes (a scale, a code,
a row order) shows up as a distance between the engine and this reference, which a
comparison with bitconv's own forward of the same file cannot see.

The SiLU family (1bitLLM `BitnetForCausalLM`) has no transformers class of its own; its
graph is transformers' `BitNetForCausalLM` with `hidden_act: silu` once the sub-norms carry
transformers' names, so the reference runs a renamed copy of the source (same weights).
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("TORCHDYNAMO_DISABLE", "1")

import numpy as np  # noqa: E402

from bitconv.synth import SANE_LOGIT_STD  # noqa: E402

from ._metrics import mean_kl  # noqa: E402

_CACHE: dict[tuple[str, tuple[int, ...]], np.ndarray] = {}


def transformers_view(folder: Path) -> Path:
    """The folder transformers can load: a 1bitLLM SiLU BitNet renamed into BitNetForCausalLM
    (written once beside it, as `<name>-hf`); any other folder as it is."""
    folder = Path(folder)
    cfg = json.loads((folder / "config.json").read_text())
    if cfg.get("architectures") != ["BitnetForCausalLM"]:
        return folder
    dst = folder.with_name(folder.name + "-hf")
    if not dst.exists():
        from safetensors.torch import load_file, save_file

        tmp = folder.with_name(folder.name + "-hf.tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(folder, tmp)
        cfg["architectures"], cfg["model_type"] = ["BitNetForCausalLM"], "bitnet"
        (tmp / "config.json").write_text(json.dumps(cfg))
        for f in tmp.glob("*.safetensors"):
            w = load_file(str(f))
            renamed = {k.replace("self_attn.inner_attn_ln", "self_attn.attn_sub_norm")
                       .replace("mlp.ffn_layernorm", "mlp.ffn_sub_norm"): v for k, v in w.items()}
            save_file(renamed, str(f), metadata={"format": "pt"})
        tmp.rename(dst)
    return dst


def load_transformers(folder: Path, *, expect: str | None = None, dtype=None):
    """transformers' own model of `folder` (float32 unless `dtype`), in eval mode.

    `expect` says which ternary layers transformers must be running for the judge to mean
    anything: "online" (AutoBitLinear ternarizing latent weights), "offline", "bitlinear"
    (uint8 codes), "float" (plain nn.Linear), or None (not checked)."""
    import torch
    import transformers

    folder = transformers_view(Path(folder))
    cfg = json.loads((folder / "config.json").read_text())
    cls = getattr(transformers, cfg["architectures"][0])
    model = cls.from_pretrained(folder, dtype=dtype or torch.float32, attn_implementation="sdpa").eval()
    if expect is not None:
        from transformers.integrations.bitnet import AutoBitLinear, BitLinear

        for layer in model.model.layers:
            for lin in (layer.self_attn.q_proj, layer.self_attn.o_proj, layer.mlp.down_proj):
                if expect == "bitlinear":
                    assert isinstance(lin, BitLinear) and lin.weight.dtype == torch.uint8, type(lin)
                elif expect == "float":
                    assert type(lin) is torch.nn.Linear, type(lin)
                else:
                    assert isinstance(lin, AutoBitLinear) and lin.online_quant == (expect == "online"), type(lin)
    return model


def transformers_logits(folder: Path, ids, *, expect: str | None = None, dtype=None) -> np.ndarray:
    """Logits [len(ids), vocab] (float32 numpy) of transformers' model of `folder` on one sequence."""
    import torch

    model = load_transformers(folder, expect=expect, dtype=dtype)
    with torch.no_grad():
        out = model(torch.tensor([list(ids)]), use_cache=False).logits[0].float().numpy()
    del model
    return out


def source_kind(folder: Path) -> str:
    """How transformers runs a synth/HF source: "online" with a bitnet online config, else
    "float" (an exact-ternary float model: its weights already are s·t)."""
    q = json.loads((Path(folder) / "config.json").read_text()).get("quantization_config") or {}
    if q.get("quant_method") == "bitnet":
        return "online" if q.get("quantization_mode") == "online" else "offline"
    return "float"


def source_logits(src: Path, ids) -> np.ndarray:
    """The SOURCE model's logits by transformers, cached per (folder, ids) for the session."""
    key = (str(Path(src).resolve()), tuple(int(i) for i in ids))
    if key not in _CACHE:
        _CACHE[key] = transformers_logits(src, ids, expect=source_kind(src))
    return _CACHE[key]


def float_twin(packed: Path, dst: Path) -> Path:
    """A plain float model folder computing what a packed Hugging Face bitnet folder stores
    (FORMATS.md §7), for the packed conventions transformers cannot load itself (group
    scales): each linear decoded as s·t with the test suite's own numpy reference decoder
    (tests/reference_packing_tq.py), s from `weight_scale` by the folder's `linear_class`
    (bitlinear: 1/weight_scale; autobitlinear: weight_scale), broadcast over its group; the
    quantization_config dropped, so transformers runs it as float (no activation rounding)."""
    import torch
    from safetensors.torch import load_file, save_file

    from reference_packing_tq import hf2bit_unpack_codes

    shutil.copytree(packed, dst)
    cfg = json.loads((dst / "config.json").read_text())
    reciprocal = cfg.pop("quantization_config").get("linear_class", "bitlinear") == "bitlinear"
    cfg["torch_dtype"] = "float32"
    (dst / "config.json").write_text(json.dumps(cfg))
    for f in dst.glob("*.safetensors"):
        w = load_file(str(f))
        out = {}
        for name, t in w.items():
            if name.endswith("_scale"):
                continue
            if t.dtype == torch.uint8 and name + "_scale" in w:
                m = json_rows(cfg, name, t.shape[0])
                tern = hf2bit_unpack_codes(t.numpy(), m).astype(np.float32) - 1.0
                scale = w[name + "_scale"].float().numpy().astype(np.float64)
                s = (1.0 / scale) if reciprocal else scale
                s = s.reshape(-1, 1) if s.size == m else s.reshape(1, 1) if s.size == 1 else s
                if s.ndim == 2 and s.shape[1] > 1:  # [M, K/g]: one scale per group of g along K
                    s = np.repeat(s, tern.shape[1] // s.shape[1], axis=1)
                out[name] = torch.from_numpy((tern * s).astype(np.float32))
            else:
                out[name] = t.float() if t.is_floating_point() else t
        save_file(out, str(f), metadata={"format": "pt"})
    return dst


def json_rows(cfg: dict, name: str, packed_rows: int) -> int:
    """Rows M of a packed linear from the model config (the packed tensor has ceil(M/4))."""
    h, inter = cfg["hidden_size"], cfg["intermediate_size"]
    heads, kv = cfg["num_attention_heads"], cfg.get("num_key_value_heads", cfg["num_attention_heads"])
    d = cfg.get("head_dim") or h // heads
    rows = {"q_proj": heads * d, "k_proj": kv * d, "v_proj": kv * d, "o_proj": h,
            "gate_proj": inter, "up_proj": inter, "down_proj": h}
    m = next(v for k, v in rows.items() if f".{k}." in name)
    assert (m + 3) // 4 == packed_rows, (name, m, packed_rows)
    return m


def text_ids(src: Path, n: int) -> list[int]:
    """The first `n` tokens of the shipped eval text through the checkpoint's own tokenizer."""
    from tokenizers import Tokenizer

    from bitconv.readers import DATA_DIR

    tok = Tokenizer.from_file(str(Path(src) / "tokenizer.json"))
    ids = tok.encode((DATA_DIR / "eval.txt").read_text()[: 40 * n], add_special_tokens=False).ids
    assert len(ids) >= n
    return ids[:n]


def mean_nll(logits: np.ndarray, ids) -> float:
    """Mean next-token NLL of `ids` under `logits` (nats): near ln(vocab) for a sane random model."""
    from ._metrics import log_softmax

    lp = log_softmax(logits[:-1])
    return float(-np.mean(lp[np.arange(len(ids) - 1), np.asarray(ids[1:])]))


@dataclass(frozen=True)
class Gates:
    """A judge's two gates: mean KL(reference || engine) at most `max_kl` nats, top-1
    agreement at least `min_top1` (each set 3x beyond what was measured)."""

    max_kl: float
    min_top1: float


@dataclass(frozen=True)
class Verdict:
    case: str
    kl: float
    top1: float
    gates: Gates

    @property
    def failures(self) -> list[str]:
        out = []
        if not self.kl <= self.gates.max_kl:  # NaN fails
            out.append(f"mean KL {self.kl:.3g} > {self.gates.max_kl:.1e}")
        if not self.top1 >= self.gates.min_top1:
            out.append(f"top-1 agreement {self.top1:.3f} < {self.gates.min_top1}")
        return out

    @property
    def passed(self) -> bool:
        return not self.failures

    def __str__(self) -> str:
        return (f"{self.case}: mean KL {self.kl:.2e} (gate {self.gates.max_kl:.1e}), top-1 {self.top1:.3f} "
                f"(gate {self.gates.min_top1})" + (f" FAILS: {'; '.join(self.failures)}" if self.failures else ""))


def judge(case: str, ref: np.ndarray, got: np.ndarray, gates: Gates) -> Verdict:
    """Compare an engine's logits with the reference's (same positions, same vocabulary)."""
    ref, got = np.asarray(ref), np.asarray(got)
    assert ref.shape == got.shape, (ref.shape, got.shape)
    if not np.isfinite(got).all():
        return Verdict(case, float("nan"), 0.0, gates)
    top1 = float(np.mean(ref.argmax(-1) == got.argmax(-1)))
    return Verdict(case, mean_kl(ref, got), top1, gates)


# -- the judges' models and gates -------------------------------------------------------------
# Small seeded sources with a trained model's logit scale (`synth.SANE_LOGIT_STD`): mean NLL
# of real text ln(vocab) + ~2 nats. One per family; the judges and the mutation check share them.
JUDGE_DIMS = dict(hidden=256, intermediate=512, layers=2, heads=4, kv_heads=2, vocab=512, logit_std=SANE_LOGIT_STD, seed=0)
JUDGE_SOURCES: dict[str, dict] = {
    # 1bitLLM BitnetForCausalLM: latent bf16 weights, transformers ternarizes online
    "silu": dict(family="silu", tie=True, quantization_config={"quant_method": "bitnet",
                 "linear_class": "autobitlinear", "quantization_mode": "online"}),
    # transformers BitNetForCausalLM (relu², sub-norms): no llama.cpp graph runs it
    "relu2": dict(family="relu2", tie=True, quantization_config={"quant_method": "bitnet",
                  "linear_class": "autobitlinear", "quantization_mode": "online"}),
    # Llama with a bitnet online config (HF1BitLLM-style): llama.cpp arch llama, q/k permuted
    "llama": dict(family="llama", tie=False),
    # Ternary-Bonsai-style exact-ternary float Qwen3: row scales, head_dim != hidden / heads
    "qwen3": dict(family="qwen3", weights="exact", ternary_group="row", head_dim=128, tie=False),
}

# llama.cpp (llama-cpp-python 0.3.36, 2 threads) against transformers on the source, 160
# tokens of the eval text. Measured on seeds 0, 1, 2 (mean KL / top-1, worst over TQ1_0,
# TQ2_0, Q2_0): silu 1.5e-3 / 0.950 (TQ 7.1e-4..9.1e-4, Q2_0 1.1e-3..1.5e-3); llama 6.1e-5 /
# 0.988; qwen3 4.6e-5 / 0.981. Gates: 3x the KL, 3x the disagreement (1 - top-1).
LLAMACPP_GATES: dict[str, Gates] = {
    "silu": Gates(max_kl=5e-3, min_top1=0.85),
    "llama": Gates(max_kl=2e-4, min_top1=0.96),
    "qwen3": Gates(max_kl=1.5e-4, min_top1=0.94),
}

# transformers on bitconv's packed safetensors folder (BitLinear, uint8 codes, 1/s) against
# transformers on the source, same 160 tokens. Measured on seeds 0 and 1, bf16 and f32
# sources, written directly and through an I2_S / TL1 / TL2 GGUF (whose F16 embedding rounds
# an f32 source's tied head): relu2 / silu worst 9.0e-4 / 0.944 (f32 through GGUF; direct
# bf16 <= 4.1e-4, direct f32 <= 6.6e-6); llama 3.4e-5 / 0.981. Gates: 3x, as above.
TRANSFORMERS_GATES: dict[str, Gates] = {
    "relu2": Gates(max_kl=3e-3, min_top1=0.83),
    "silu": Gates(max_kl=3e-3, min_top1=0.83),
    "llama": Gates(max_kl=1e-4, min_top1=0.94),
}
