"""Torch math every backend shares: RMSNorm, rope, attention, exact int8 GEMM, 2-bit code
packing, and the small fused helpers of the int8 torch backend (compiled on CUDA where
torch.compile works).

Kept apart from the layer graph (`graph.py`) so that a backend is a list of calls into
this file (or into `cpu_kernels`), and from the activation schemes (`act_schemes.py`), which
own the quantization rules.
"""

from __future__ import annotations

import math
import os
import warnings
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import InputError, UsageError
from ..model import HParams
from .act_schemes import absmax_int8


def rms_norm(x: torch.Tensor, w: torch.Tensor, eps: float) -> torch.Tensor:
    """transformers' LlamaRMSNorm/BitNetRMSNorm: float32 statistics, weight in x's dtype."""
    xf = x.to(torch.float32)
    xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    return w * xf.to(x.dtype)


def _k_quant(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Scheme "a8"'s per-token absmax (act_schemes.absmax_int8) with x_q as int8."""
    xq, scale = absmax_int8(x)
    return xq.to(torch.int8), scale


def _k_rms_quant(x: torch.Tensor, w: torch.Tensor, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    return _k_quant(rms_norm(x, w, eps))


def _k_rescale(acc: torch.Tensor, rows: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """(x_q @ tᵀ) int32 -> (x_q @ tᵀ)·s·γ/127 in dtype (s per output row, 127/γ per token)."""
    return (acc.to(torch.float32) * rows / scale).to(dtype)


def _k_rescale_add(acc: torch.Tensor, rows: torch.Tensor, scale: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return x + _k_rescale(acc, rows, scale, x.dtype)


def _k_rescale_glu(acc: torch.Tensor, rows: torch.Tensor, scale: torch.Tensor, m: int, relu2: bool,
                   dtype: torch.dtype) -> torch.Tensor:
    y = _k_rescale(acc, rows, scale, dtype)
    gate, up = y[:, :m], y[:, m:]
    act = torch.relu(gate).square() if relu2 else F.silu(gate)
    return act * up


def _k_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x [b, t, h, d] (any strides) -> rotated, [b, h, t, d]."""
    x = x.transpose(1, 2)
    return x * cos + rotate_half(x) * sin


def _k_logprob(logits: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """log p(target) and argmax of a chunk of logits (any float dtype), float32 statistics."""
    lf = logits.to(torch.float32)
    mx, top = lf.max(dim=-1)  # the max and its (first) index in one pass
    mx = mx.masked_fill(mx.isinf(), 0.0)  # then torch.logsumexp's own steps, bit for bit
    lse = torch.log((lf - mx[:, None]).exp_().sum(-1)) + mx
    return lf.gather(1, targets[:, None]).squeeze(1) - lse, top



class Kernels:
    """The fused helpers, compiled (torch.compile, inductor) when asked and possible. A
    helper whose compilation fails falls back to eager for the rest of the run."""

    NAMES = ("_k_quant", "_k_rms_quant", "_k_rescale", "_k_rescale_add", "_k_rescale_glu", "_k_rope",
             "_k_logprob")

    def __init__(self, compile: bool) -> None:
        for name in self.NAMES:
            fn = globals()[name]
            setattr(self, name[3:], self._compiled(fn) if compile else fn)

    @staticmethod
    def _compiled(fn: Callable) -> Callable:
        state = {"fn": None, "ok": True}

        def call(*args):
            if state["ok"]:
                try:
                    if state["fn"] is None:
                        state["fn"] = torch.compile(fn, dynamic=False)
                    return state["fn"](*args)
                except Exception as exc:  # noqa: BLE001 - any compiler failure: run eager
                    state["ok"] = False
                    warnings.warn(f"bitconv verify: torch.compile of {fn.__name__} failed, running eager "
                                  f"({type(exc).__name__}: {str(exc)[:200]})", stacklevel=2)
            return fn(*args)

        return call


def want_compile(device: torch.device, compile: bool | None) -> bool:
    if compile is not None:
        return compile
    if device.type != "cuda" or os.environ.get("BITCONV_COMPILE", "1") == "0":
        return False
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True



def pack2(values: torch.Tensor) -> torch.Tensor:
    """int8 {-1,0,1} [M, K] -> uint8 [M, ceil(K/4)], 4 codes (t+1) per byte, low bits first."""
    m, k = values.shape
    q = (values + 1).to(torch.uint8)
    if k % 4:
        q = F.pad(q, (0, 4 - k % 4))
    q = q.reshape(m, -1, 4)
    return q[..., 0] | (q[..., 1] << 2) | (q[..., 2] << 4) | (q[..., 3] << 6)


def unpack2(packed: torch.Tensor, k: int) -> torch.Tensor:
    shifts = torch.arange(0, 8, 2, dtype=torch.uint8, device=packed.device)  # no host copy, no sync
    q = (packed.unsqueeze(-1) >> shifts) & 3
    return q.reshape(packed.shape[0], -1)[:, :k].to(torch.int8) - 1


_INT_MM_OK: dict[str, bool] = {}


def int_matmul(xq: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
    """Exact x_q @ tᵀ for int8 x_q [N, K] and int8 codes [M, K]: int32 [N, M] from
    torch._int_mm where it runs, else float32 (integer sums stay below 2^24, also exact)."""
    key = str(xq.device)
    n, k = xq.shape
    if _INT_MM_OK.get(key, True) and n > 16 and k % 8 == 0 and codes.shape[0] % 8 == 0:
        try:
            out = torch._int_mm(xq, codes.t())
            _INT_MM_OK[key] = True
            return out
        except torch.OutOfMemoryError:
            raise
        except RuntimeError:
            _INT_MM_OK[key] = False
    return xq.to(torch.float32) @ codes.to(torch.float32).t()


def adjacent(parts: list[torch.Tensor]) -> bool:
    """Whether `parts` are consecutive row blocks that tile one whole contiguous tensor."""
    base = parts[0]._base
    if base is None or not base.is_contiguous() or any(p._base is not base or not p.is_contiguous() for p in parts):
        return False
    off = 0
    for p in parts:
        if p.storage_offset() != base.storage_offset() + off:
            return False
        off += p.numel()
    return off == base.numel()



def rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, n_rep: int) -> torch.Tensor:
    if n_rep > 1 and q.device.type == "cuda":  # repeated k/v keep SDPA on its flash kernels
        k = k.repeat_interleave(n_rep, dim=1)
        v = v.repeat_interleave(n_rep, dim=1)
    elif n_rep > 1:  # as transformers calls it on the CPU
        try:
            return F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
        except (TypeError, RuntimeError):
            k = k.repeat_interleave(n_rep, dim=1)
            v = v.repeat_interleave(n_rep, dim=1)
    return F.scaled_dot_product_attention(q, k, v, is_causal=True)


def rope_inv_freq(hp: HParams, config: dict[str, Any]) -> torch.Tensor:
    """Default rope inverse frequencies, with Llama-3 frequency scaling when the config asks."""
    d = hp.head_dim
    inv = 1.0 / (hp.rope_theta ** (torch.arange(0, d, 2, dtype=torch.int64).to(torch.float32) / d))
    rs = (config or {}).get("rope_scaling") or (config or {}).get("rope_parameters") or {}
    kind = rs.get("rope_type") or rs.get("type")
    if kind in (None, "default"):
        return inv
    if kind != "llama3":
        raise InputError(f"rope scaling {kind!r} is not supported by verify's forward pass")
    factor, low, high = float(rs["factor"]), float(rs["low_freq_factor"]), float(rs["high_freq_factor"])
    old = float(rs["original_max_position_embeddings"])
    low_wl, high_wl = old / low, old / high
    wl = 2 * math.pi / inv
    scaled = torch.where(wl > low_wl, inv / factor, inv)
    smooth = (old / wl - low) / (high - low)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    medium = ~(wl < high_wl) & ~(wl > low_wl)
    return torch.where(medium, smoothed, scaled)



def as_tokens(tokens: torch.Tensor | np.ndarray, vocab: int | None = None) -> torch.Tensor:
    t = torch.as_tensor(np.asarray(tokens) if not isinstance(tokens, torch.Tensor) else tokens)
    if t.dim() == 1:
        t = t.unsqueeze(0)
    if t.dim() != 2:
        raise UsageError(f"tokens must be [batch, time], got shape {list(t.shape)}")
    t = t.to(torch.int64)
    if vocab is not None and t.numel() and (int(t.min()) < 0 or int(t.max()) >= vocab):
        raise InputError(f"token ids must lie in [0, {vocab}); got {int(t.min())}..{int(t.max())}",
                         hint="the tokenizer does not belong to this model")
    return t

