"""Seeded source models the MLX and compressed-tensors judges share (issue 20, item 3), and
the reference they are judged against: the SOURCE folder run by transformers in float32
(never bitconv's forward pass or quantizer)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from bitconv.synth import SANE_LOGIT_STD, make_checkpoint

from ._metrics import mean_kl

_LOGITS: dict[tuple, np.ndarray] = {}

DIMS = dict(hidden=256, intermediate=512, layers=2, heads=4, kv_heads=2, vocab=512)

# case -> make_checkpoint overrides. "exact": Bonsai-style plain models whose float weights are
# s·t (the model runs activations in float: W2A16); "latent": a Llama with a bitnet
# quantization_config (absmean weights and int8 per-token activations at run time).
CASES = {
    "llama-exact-tensor-f32": dict(family="llama", weights="exact", ternary_group="tensor", dtype="f32", tie=False),
    "llama-exact-row-bf16": dict(family="llama", weights="exact", ternary_group="row", dtype="bf16", tie=True),
    "qwen3-exact-g128-f32-ternary-embeddings": dict(family="qwen3", weights="exact", ternary_group=128, dtype="f32",
                                                   tie=False, ternary_embeddings=128, head_dim=96),
    "qwen3-exact-g64-bf16": dict(family="qwen3", weights="exact", ternary_group=64, dtype="bf16", tie=True),
    "llama-bitnet-latent-f32": dict(family="llama", weights="latent", dtype="f32", tie=False),
}

# (min top-1, max rel L2, max mean KL), measured worst in the comments; the mutation check
# (test_mutations.py) judges its MLX and compressed-tensors targets with these too.
# mlx-lm (test_mlx.py), per kind of case:
MLX_GATES = {
    "f32": (1.0, 1.5e-6, 3e-12),  # 1.0, 4.9e-7, 7.5e-13
    "bf16": (0.968, 0.13, 2.6e-3),  # 0.9896, 0.0424, 8.4e-4
    "latent": (0.968, 0.015, 1.5e-4),  # 0.9896, 0.0050, 4.8e-5
}
# transformers on the compressed-tensors folders (test_compressed_tensors.py):
CT_EXACT_GATES = (1.0, 1e-6, 1e-12)  # measured 1.0, 0.0, 0.0 (bit-identical logits)
CT_LATENT_GATES = (0.968, 0.017, 1.8e-4)  # measured 0.9896, 0.0055, 6.0e-5


def make_case(root: Path, case: str, seed: int = 11) -> Path:
    folder = root / case
    if not (folder / "config.json").exists():
        make_checkpoint(folder, seed=seed, logit_std=SANE_LOGIT_STD, **{**DIMS, **CASES[case]})
    return folder


def tokens(seed: int = 0, batch: int = 2, t: int = 96) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, DIMS["vocab"], (batch, t))


def source_logits(folder: Path, toks: np.ndarray) -> np.ndarray:
    """The source model in transformers, float32 (a bitnet quantization_config runs online),
    cached per (folder, tokens) for the session. Do not modify the array it returns."""
    key = (str(Path(folder).resolve()), toks.dtype.str, toks.shape, toks.tobytes())
    if key not in _LOGITS:
        import torch
        import transformers

        model = transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
        model.eval()
        with torch.no_grad():
            _LOGITS[key] = model(torch.from_numpy(toks), use_cache=False).logits.float().numpy()
    return _LOGITS[key]


def mlx_logits(folder: Path, toks) -> np.ndarray:
    """mlx-lm's logits (float32 numpy) of an MLX folder on a [batch, t] token batch (skips
    when mlx or mlx-lm is not importable)."""
    mx = pytest.importorskip("mlx.core", reason="mlx (the MLX judge) is not importable here")
    mlx_utils = pytest.importorskip("mlx_lm.utils", reason="mlx-lm (the MLX judge) is not importable here")
    model, _ = mlx_utils.load_model(folder)
    return np.array(model(mx.array(toks)).astype(mx.float32))


def compare(got: np.ndarray, ref: np.ndarray) -> tuple[float, float, float]:
    """(top-1 agreement, relative L2 of the logits, mean KL in nats)."""
    assert got.shape == ref.shape, (got.shape, ref.shape)
    got, ref = got.astype(np.float64), ref.astype(np.float64)
    top1 = float((got.argmax(-1) == ref.argmax(-1)).mean())
    rel = float(np.linalg.norm(got - ref) / np.linalg.norm(ref))
    return top1, rel, mean_kl(ref, got)


def config(folder: Path) -> dict:
    return json.loads((folder / "config.json").read_text())
