"""The decoder layer, written once for every family and every backend.

A layer is the same sequence of steps in every family bitconv reads (FORMATS.md §8):
RMSNorm -> q|k|v -> per-head q/k norms -> rope -> KV cache -> grouped-query attention ->
sub-norm -> o_proj + residual -> RMSNorm -> gate|up -> relu² or SiLU gating -> sub-norm ->
down_proj + residual. The family's differences are data, not branches here: which norms a
layer has (`LayerWeights.norms`, from the checkpoint the family's `archs/` mapping read),
its activation (`HParams.hidden_act`) and per-linear input norms (`Linear.in_norm`).

How each step computes is a backend's job (`backends/`): the float backend in transformers'
operation order with any activation scheme, the int8 backends with exact int8 GEMMs and the
"a8" quantization fused into their kernels (torch ops on CUDA, numba row kernels on the
CPU). Steps are cut where a backend fuses (an int8 backend rescales o_proj's output, adds
the residual, normalizes and quantizes the FFN input in one pass), so each backend is a
list of short methods instead of a copy of the layer.

The activation scheme (`act_schemes.py`) quantizes the input of every linear at its site
("attn_in", "attn_out_in", "ffn_in", "ffn_down_in") and the KV cache after rope.
"""

from __future__ import annotations

from typing import Any, Callable, Protocol

import torch

from .ops import _k_rope, attention
from .weights import LayerWeights

Rope = tuple[torch.Tensor, torch.Tensor]


class Backend(Protocol):
    """The arithmetic of one layer. A step's input `h` is whatever form the previous step
    returned for this backend (a float tensor, or int8 codes and their scales); `x` is the
    residual stream."""

    hp: Any  # HParams
    scheme: Any  # the activation scheme (act_schemes)

    def attn_input(self, x: torch.Tensor, lw: LayerWeights, layer: int) -> Any:
        """attn_norm(x), quantized at "attn_in" (the q/k/v input)."""

    def qkv(self, h: Any, lw: LayerWeights, rope: Rope, b: int, t: int, layer: int
            ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """q, k, v [b, heads, t, d]: the projections, per-head q/k norms, rope on q and k."""

    def out_input(self, a: torch.Tensor, lw: LayerWeights, layer: int) -> Any:
        """attention output [b, heads, t, d] -> attn_sub_norm, quantized at "attn_out_in"."""

    def out_residual(self, h: Any, lw: LayerWeights, x: torch.Tensor, layer: int) -> tuple[torch.Tensor, Any]:
        """x + o_proj(h), and its ffn_norm quantized at "ffn_in" (the gate/up input)."""

    def ffn_hidden(self, h: Any, lw: LayerWeights, layer: int) -> Any:
        """act(gate(h))·up(h) -> ffn_sub_norm, quantized at "ffn_down_in"."""

    def down_residual(self, h: Any, lw: LayerWeights, x: torch.Tensor, layer: int) -> torch.Tensor:
        """x + down_proj(h)."""


def qkv_heads(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, lw: LayerWeights, hp: Any, rope: Rope,
              b: int, t: int, rope_fn: Callable[..., torch.Tensor] = _k_rope
              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The per-head part of every backend's `qkv` step: the projections' outputs (b·t rows of
    heads·d each) -> q, k, v [b, heads, t, d], with the per-head q/k norms the layer has and
    rope (`rope_fn`, `ops._k_rope` or its compiled form) on q and k."""
    d = hp.head_dim
    cos, sin = rope
    q = rope_fn(lw.norm(q.view(b, t, hp.num_heads, d), "attn_q_norm", hp.rms_eps), cos, sin)
    k = rope_fn(lw.norm(k.view(b, t, hp.num_kv_heads, d), "attn_k_norm", hp.rms_eps), cos, sin)
    v = v.view(b, t, hp.num_kv_heads, d).transpose(1, 2)
    return q, k, v


def decoder_layer(be: Backend, x: torch.Tensor, lw: LayerWeights, rope: Rope, layer: int) -> torch.Tensor:
    """One decoder layer over x [b, t, hidden] -> [b, t, hidden]."""
    hp = be.hp
    b, t, _ = x.shape
    h = be.attn_input(x, lw, layer)
    q, k, v = be.qkv(h, lw, rope, b, t, layer)
    del h
    k, v = be.scheme.kv(k, v, layer)
    a = attention(q, k, v, hp.num_heads // hp.num_kv_heads)
    del q, k, v
    h = be.out_input(a, lw, layer)
    del a
    x, h = be.out_residual(h, lw, x, layer)
    h = be.ffn_hidden(h, lw, layer)
    return be.down_residual(h, lw, x, layer).view(b, t, -1)
