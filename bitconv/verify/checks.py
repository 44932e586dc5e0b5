"""Tensor by tensor, the artifact against the source weights verify computes with: ternary
codes identical, dequantized values within a fraction of the tensor's largest magnitude; and
the shapes and hyperparameters that must agree for the artifact to compute the same function."""

from __future__ import annotations

import math

from ..errors import InputError
from ..model import LINEAR
from .report import TensorCheck

_HP_COMPARED = ("num_heads", "num_kv_heads", "head_dim", "hidden_act", "rope_theta", "rms_eps", "sub_norms", "qk_norm",
                "linear_norms")


def _compare_arrays(a, s) -> tuple[float, float]:
    import torch

    a = a.to(torch.float32)
    s = s.to(a.device, torch.float32)
    diff = a - s
    ns = float(torch.linalg.vector_norm(s))
    rel = float(torch.linalg.vector_norm(diff)) / ns if ns > 0 else float(torch.linalg.vector_norm(diff))
    ms = float(s.abs().max()) if s.numel() else 0.0
    md = float(diff.abs().max()) if diff.numel() else 0.0
    return rel, (md / ms if ms > 0 else md)


def _check_linear(name, art_st, src_st, art_t, src_t, fp_w, max_err: float) -> "TensorCheck":
    import torch

    dev = art_t.values.device if art_t.values.device.type != "cpu" else src_t.values.device
    av, sv = art_t.values.to(dev), src_t.values.to(dev)
    mismatched = int((av != sv).sum())
    da = art_t.dequantize().to(dev)
    rel, mx = _compare_arrays(da, src_t.dequantize().to(dev))
    rel_fp = None
    if fp_w is not None:
        rel_fp, _ = _compare_arrays(da, torch.as_tensor(fp_w).to(dev))
    chk = TensorCheck(name, LINEAR, tuple(art_st.shape), art_st.dtype, src_st.dtype, rel, mx,
                      mismatched, rel_fp)
    problems = []
    if mismatched:
        problems.append(f"{mismatched} of {av.numel()} ternary values differ from the source")
    if not (mx <= max_err):
        problems.append(f"weights differ by up to {mx:.3g} of their largest magnitude (limit {max_err:g})")
    chk.problem = "; ".join(problems) or None
    return chk


def _check_float(name, role, art_st, src_st, a, s, max_err: float) -> "TensorCheck":
    import torch

    rel, mx = _compare_arrays(torch.as_tensor(a), torch.as_tensor(s))
    chk = TensorCheck(name, role, tuple(art_st.shape), art_st.dtype, src_st.dtype, rel, mx)
    if not (mx <= max_err):
        chk.problem = f"values differ by up to {mx:.3g} of their largest magnitude (limit {max_err:g})"
    return chk


def _check_shapes(art, src) -> None:
    ha, hs = art.spec.hparams, src.spec.hparams
    for key in ("vocab_size", "hidden_size", "intermediate_size", "num_layers"):
        if getattr(ha, key) != getattr(hs, key):
            raise InputError(
                f"artifact and source are different models: {key} {getattr(ha, key)} vs {getattr(hs, key)}",
                hint="verify an artifact against the source it was converted from",
            )
    src_by = {t.name: t for t in src.tensors}
    for t in art.tensors:
        s = src_by.get(t.name)
        if s is not None and tuple(s.shape) != tuple(t.shape):
            raise InputError(
                f"{t.name}: artifact shape {list(t.shape)} but source shape {list(s.shape)}",
                hint="verify an artifact against the source it was converted from",
            )


# ----------------------------------------------------------------------------------------
# verify


def hparam_failures(art, src) -> list[str]:
    """Hyperparameters the artifact declares differently from the source (another function)."""
    failures = []
    ha, hs = art.spec.hparams, src.spec.hparams
    for key in _HP_COMPARED:
        va, vs = getattr(ha, key), getattr(hs, key)
        if (va != vs) if not isinstance(va, float) else not math.isclose(va, vs, rel_tol=1e-6):
            failures.append(f"the artifact declares {key}={va!r} but the source has {vs!r}: "
                            "an engine reading it computes another function")
    return failures


def check_layer(i: int, r_art, r_src, raw_art: dict, raw_src: dict, tern_art: dict, tern_src: dict,
                with_fp: bool, max_err: float, checks: list[TensorCheck], failures: list[str]) -> None:
    """Every tensor of decoder layer i: linears by their codes and scales, norms by value."""
    import numpy as np

    for kind, payload in raw_art.items():
        name = f"blk.{i}.{kind}.weight"
        a_st, s_st = r_art.by_name[name], r_src.by_name.get(name)
        if s_st is None:
            failures.append(f"{name}: in the artifact but not in the source")
            continue
        if kind in tern_art:
            fp_w = raw_src[kind] if (with_fp and isinstance(raw_src[kind], np.ndarray)) else None
            checks.append(_check_linear(name, a_st, s_st, tern_art[kind], tern_src[kind], fp_w, max_err))
        else:
            checks.append(_check_float(name, "norm", a_st, s_st, payload, raw_src[kind], max_err))
    for kind in raw_src:
        if kind not in raw_art:
            failures.append(f"blk.{i}.{kind}.weight: in the source but missing from the artifact")


def check_globals(r_art, r_src, max_err: float) -> list[TensorCheck]:
    """The embedding, the final norm and the (effective) output layer."""
    checks = []
    for name, role in (("token_embd.weight", "embedding"), ("output_norm.weight", "norm")):
        a_st, s_st = r_art.by_name[name], r_src.by_name[name]
        checks.append(_check_float(name, role, a_st, s_st, r_art.load_raw(name), r_src.load_raw(name), max_err))
    art_head_tied, src_head_tied = r_art.head_is_embedding(), r_src.head_is_embedding()
    if not (art_head_tied and src_head_tied):
        a_name = "token_embd.weight" if art_head_tied else "output.weight"
        s_name = "token_embd.weight" if src_head_tied else "output.weight"
        checks.append(_check_float("output.weight", "output", r_art.by_name[a_name], r_src.by_name[s_name],
                                   r_art.load_raw(a_name), r_src.load_raw(s_name), max_err))
    return checks
