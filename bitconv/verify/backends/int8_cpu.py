"""The int8 backend on the CPU in float32: the GEMMs of `int8_torch`, with everything around
them fused numba row kernels (`cpu_kernels`): RMSNorm + quantization, rescale + rope,
rescale + residual add + RMSNorm + quantization, rescale + relu² gating + sub-norm +
quantization, so a layer is its GEMMs, attention and a few passes over memory. The Runner
splits the batch into one group of sequences per core (`cpu_kernels.per_core`)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .. import cpu_kernels as ck
from ..act_schemes import require_int8_fused
from ..graph import qkv_heads
from ..ops import int_matmul


class Int8CpuBackend:
    def __init__(self, hp, dtype: torch.dtype, scheme) -> None:
        require_int8_fused(scheme)
        self.hp, self.dtype, self.scheme = hp, dtype, scheme

    def attn_input(self, x, lw, layer):
        return ck.rms_quant(x.reshape(-1, x.shape[-1]).contiguous(), lw.norms["attn_norm"], self.hp.rms_eps)

    def qkv(self, h, lw, rope, b, t, layer):
        hp, d = self.hp, self.hp.head_dim
        xq, sc = h
        qkv = lw.qkv
        acc = int_matmul(xq, qkv.int_codes())
        del xq, h
        nq, nk = hp.num_heads * d, hp.num_kv_heads * d
        cos, sin = rope
        if "attn_q_norm" in lw.norms or "attn_k_norm" in lw.norms or cos.dtype != torch.float32:
            y = ck.rescale(acc, qkv.row_scale, sc)
            return qkv_heads(y[:, :nq], y[:, nq:nq + nk], y[:, nq + nk:], lw, hp, rope, b, t)
        # rescale + rope in one pass over the GEMM output
        return ck.qkv_rope(acc, qkv.row_scale, sc, hp.num_heads, hp.num_kv_heads, d, b, t, cos, sin)

    def out_input(self, a, lw, layer):
        w = lw.norms.get("attn_sub_norm")
        if a.is_contiguous():  # [b, heads, t, d]: the kernel gathers each token's heads itself
            return ck.heads_rms_quant(a, w, self.hp.rms_eps)
        b, heads, t, d = a.shape
        return ck.rms_quant(a.transpose(1, 2).reshape(b * t, heads * d).contiguous(), w, self.hp.rms_eps)

    def out_residual(self, h, lw, x, layer):
        (xq, sc), o = h, lw.o
        # the residual add (a new tensor: x stays as it was) and the FFN's input quantization
        x2, xq, sc = ck.rescale_add_rms_quant(int_matmul(xq, o.int_codes()), o.row_scale, sc,
                                              x.reshape(-1, x.shape[-1]).contiguous(), lw.norms["ffn_norm"],
                                              self.hp.rms_eps)
        return x2, (xq, sc)

    def ffn_hidden(self, h, lw, layer):
        (xq, sc), gu, m = h, lw.gate_up, self.hp.intermediate_size
        acc = int_matmul(xq, gu.int_codes())
        sub = lw.norms.get("ffn_sub_norm")
        if self.hp.hidden_act == "relu2":
            return ck.relu2_rms_quant(acc, gu.row_scale, sc, m, sub, self.hp.rms_eps)
        y = ck.rescale(acc, gu.row_scale, sc)
        del acc
        g = F.silu(y[:, :m]).mul_(y[:, m:])
        del y
        return ck.rms_quant(g, sub, self.hp.rms_eps)

    def down_residual(self, h, lw, x, layer):
        (xq, sc), dn = h, lw.down
        ck.rescale_add(int_matmul(xq, dn.int_codes()), dn.row_scale, sc, x, out=x)
        return x
