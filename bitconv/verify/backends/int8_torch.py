"""The int8 backend in torch ops (CUDA, and the CPU outside float32 or with
BITCONV_VERIFY_FUSED=0): every linear one exact int8 GEMM (`torch._int_mm`) of "a8"-quantized
activations and int8 codes, q|k|v and gate|up fused; each RMSNorm fused with the
quantization that reads it, each rescale by s·γ/127 with the residual add or the gating after
it (`ops.Kernels`, compiled with torch.compile on CUDA where it works). Every function here is
plain torch, so the CPU runs the same code with device="cpu" (what CI tests without a GPU)."""

from __future__ import annotations

import torch

from ..act_schemes import require_int8_fused
from ..graph import qkv_heads
from ..ops import Kernels, int_matmul


class Int8TorchBackend:
    def __init__(self, hp, dtype: torch.dtype, scheme, kernels: Kernels) -> None:
        require_int8_fused(scheme)
        self.hp, self.dtype, self.scheme, self.k = hp, dtype, scheme, kernels

    def _quant(self, x: torch.Tensor, lw, norm: str):
        """The int8 input of a linear: the norm (if the layer has it) fused with the quantization."""
        w = lw.norms.get(norm)
        return self.k.quant(x) if w is None else self.k.rms_quant(x, w, self.hp.rms_eps)

    def attn_input(self, x, lw, layer):
        return self.k.rms_quant(x.reshape(-1, x.shape[-1]), lw.norms["attn_norm"], self.hp.rms_eps)

    def qkv(self, h, lw, rope, b, t, layer):
        hp, k, d = self.hp, self.k, self.hp.head_dim
        xq, sc = h
        qkv = lw.qkv
        y = k.rescale(int_matmul(xq, qkv.int_codes()), qkv.row_scale, sc, self.dtype)
        nq, nk = hp.num_heads * d, hp.num_kv_heads * d
        return qkv_heads(y[:, :nq], y[:, nq:nq + nk], y[:, nq + nk:], lw, hp, rope, b, t, k.rope)

    def out_input(self, a, lw, layer):
        b, heads, t, d = a.shape
        return self._quant(a.transpose(1, 2).reshape(b * t, heads * d), lw, "attn_sub_norm")

    def out_residual(self, h, lw, x, layer):
        (xq, sc), o = h, lw.o
        x2 = self.k.rescale_add(int_matmul(xq, o.int_codes()), o.row_scale, sc, x.reshape(-1, x.shape[-1]))
        return x2, self.k.rms_quant(x2, lw.norms["ffn_norm"], self.hp.rms_eps)

    def ffn_hidden(self, h, lw, layer):
        (xq, sc), gu = h, lw.gate_up
        y = self.k.rescale_glu(int_matmul(xq, gu.int_codes()), gu.row_scale, sc, self.hp.intermediate_size,
                               self.hp.hidden_act == "relu2", self.dtype)
        return self._quant(y, lw, "ffn_sub_norm")

    def down_residual(self, h, lw, x, layer):
        (xq, sc), dn = h, lw.down
        return self.k.rescale_add(int_matmul(xq, dn.int_codes()), dn.row_scale, sc, x)
