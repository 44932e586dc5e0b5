"""Activation schemes: how the decoder layer quantizes the inputs of its linears and its KV cache.

The layer graph (`graph.py`) calls a scheme at four sites and once for the KV cache:
`scheme.act(x, site, layer)` returns x fake-quantized (quantize -> dequantize, same shape and
dtype) for site in `SITES`; `scheme.kv(k, v, layer)` returns k and v after rope, before
attention. A scheme is a plug-in of the one layer, not another copy of it.

This file is the registry (`get_scheme`). "a8" is BitNet b1.58's per-token absmax int8 rule
(FORMATS.md §1), the default: the int8 backends fuse exactly this rule into their kernels, so
they run only "a8" without a KV scheme; any other scheme runs on the float backend.
"""

from __future__ import annotations

from typing import Callable

import torch

SITES = ("attn_in", "attn_out_in", "ffn_in", "ffn_down_in")
ACT_EPS = 1e-5  # γ floor of the per-token absmax (BitNet's clamp)


def absmax_int8(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token 8-bit absmax quantization: integer-valued float32 x_q and 127/γ."""
    xf = x.to(torch.float32)
    gamma = torch.linalg.vector_norm(xf, float("inf"), dim=-1, keepdim=True)  # max|x|, one pass
    scale = 127.0 / gamma.clamp_(min=ACT_EPS)
    return (xf * scale).round_().clamp_(-128, 127), scale


class A8:
    """BitNet b1.58: every linear input per-token absmax int8; the KV cache in float."""

    name = "a8"
    kv_bits: int | None = None

    def act(self, x: torch.Tensor, site: str, layer: int) -> torch.Tensor:
        xq, scale = absmax_int8(x)
        return (xq / scale).to(x.dtype)  # x_q / scale: what transformers' BitLinear feeds F.linear

    def kv(self, k: torch.Tensor, v: torch.Tensor, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
        return k, v


class NoQuant:
    """No activation quantization (a plain family as transformers runs it, `--no-act-quant`)."""

    name = "none"
    kv_bits: int | None = None

    def act(self, x: torch.Tensor, site: str, layer: int) -> torch.Tensor:
        return x

    def kv(self, k: torch.Tensor, v: torch.Tensor, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
        return k, v


SCHEMES: dict[str, Callable[[int | None], object]] = {"a8": lambda kv_bits: A8(), "none": lambda kv_bits: NoQuant()}


def get_scheme(name: str, kv_bits: int | None = None):
    """The scheme called `name` (with a KV cache of `kv_bits` bits where it supports one)."""
    from ..errors import UsageError

    if name not in SCHEMES:
        raise UsageError(f"--act must be one of {', '.join(sorted(SCHEMES))}, got {name!r}")
    if kv_bits is not None:
        raise UsageError("--kv-bits needs a KV-cache scheme; none is registered in this build")
    return SCHEMES[name](kv_bits)


def is_int8_fused(scheme) -> bool:
    """Whether the int8 backends' fused kernels compute `scheme` (plain a8, float KV cache)."""
    return type(scheme) is A8 and getattr(scheme, "kv_bits", None) is None
