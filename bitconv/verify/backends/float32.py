"""The float backend: every linear a float matmul with s·t, activations fake-quantized by
the activation scheme at each site. On the CPU this is transformers' AutoBitLinear operation
order (`F.linear(x_q/scale, s·t)`: bit-identical logits), and the only backend that runs a
scheme other than "a8", per-linear input norms (use_rms_norm), K-block scale groups and float
weights."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..graph import qkv_heads
from ..ops import rms_norm
from ..weights import Linear


class FloatBackend:
    def __init__(self, hp, dtype: torch.dtype, scheme) -> None:
        self.hp, self.dtype, self.scheme = hp, dtype, scheme

    def _rms(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        return rms_norm(x, w, self.hp.rms_eps)

    def _lin(self, lin: list[Linear] | Linear, x: torch.Tensor, site: str, layer: int) -> list[torch.Tensor]:
        """Linears sharing input x [..., K]: quantize x once at `site` (or each linear's own
        normalized input, use_rms_norm), return each output [..., M]."""
        lead = x.shape[:-1]
        x2 = x.reshape(-1, x.shape[-1])
        outs: list[torch.Tensor] = []
        shared: torch.Tensor | None = None
        for m in (lin if isinstance(lin, list) else [lin]):
            if m.in_norm is not None:  # use_rms_norm: the linear normalizes its own input first
                xin = self.scheme.act(rms_norm(x2, m.in_norm, self.hp.linear_norm_eps), site, layer)
            else:
                if shared is None:
                    shared = self.scheme.act(x2, site, layer)
                xin = shared
            outs.append(F.linear(xin.to(m.weight.dtype), m.weight).to(self.dtype))
        del shared
        return [y.reshape(*lead, y.shape[-1]) for y in outs]

    def attn_input(self, x, lw, layer):
        return self._rms(x, lw.norms["attn_norm"])

    def qkv(self, h, lw, rope, b, t, layer):
        return qkv_heads(*self._lin(lw.qkv, h, "attn_in", layer), lw, self.hp, rope, b, t)

    def out_input(self, a, lw, layer):
        b, heads, t, d = a.shape
        return lw.norm(a.transpose(1, 2).reshape(b, t, heads * d), "attn_sub_norm", self.hp.rms_eps)

    def out_residual(self, h, lw, x, layer):
        x = x + self._lin(lw.o, h, "attn_out_in", layer)[0]
        return x, self._rms(x, lw.norms["ffn_norm"])

    def ffn_hidden(self, h, lw, layer):
        gate, up = self._lin(lw.gate_up, h, "ffn_in", layer)
        gate = torch.relu(gate).square_() if self.hp.hidden_act == "relu2" else F.silu(gate)
        gate = gate.mul_(up)
        del up
        return lw.norm(gate, "ffn_sub_norm", self.hp.rms_eps)

    def down_residual(self, h, lw, x, layer):
        return x + self._lin(lw.down, h, "ffn_down_in", layer)[0]
