"""How a `Runner` reads one decoder layer's tensors from its checkpoint.

Linears come through the readers (`SourceTensor.load_ternary()`, the layout's own unpack in
`pack/`), except TQ2_0 tensors on CUDA and on the fused CPU path: the bytes the reader
located (`SourceTensor.stored`) are decoded where they are multiplied
(`weights.tq2_0_decode`: on the GPU from pinned memory by the layout's torch ops, or on the CPU by the
layout's own decoder straight into the fused q|k|v and gate|up matrices). No GGUF is parsed
here.
"""

from __future__ import annotations

import os

import numpy as np
import torch

from ..model import LINEAR, LINEAR_KINDS, SourceTensor
from .weights import (ATTN, FFN_IN, LAYER_IN_NORMS, LAYER_NORMS, LAYER_QK_NORMS, LAYER_SUB_NORMS,
                      TORCH_DECODERS, Payload, TTernary)


class LayerLoader:
    """Mixin of `Runner`: reading tensors (uses by_name, ckpt, fused_cpu, keep, device,
    _stager)."""

    def load_raw(self, name: str, on_device: bool = False, out: torch.Tensor | None = None) -> Payload:
        """Read one tensor: `Ternary`/`TTernary` for ternary linears; float32 numpy for the rest
        (a ternary token_embd/output, e.g. Q2_0, is looked up and multiplied dequantized).
        `out`: where a CPU-decoded linear's int8 values go (see `_fused_buffers`)."""
        st = self.by_name[name]
        if st.is_ternary and st.role == LINEAR:
            if self._decodes_on_device(st) and on_device:
                return self._decode_on_device(st, out)
            return st.load_ternary()
        return np.asarray(st.load(), dtype=np.float32)

    def _decodes_on_device(self, st: SourceTensor) -> bool:
        return st.dtype in TORCH_DECODERS and st.stored is not None

    def _fused_buffers(self, i: int) -> dict[str, torch.Tensor]:
        """On the fused CPU path: q/k/v, and gate/up, decode straight into one int8 buffer per
        group, the fused linear's matrix (`Runner._int_linear` takes it as it is), instead of
        into one tensor each that is then copied into it (a copy of ~10% of the layer time on
        the bench model)."""
        if not self.fused_cpu or self.keep:
            return {}
        out: dict[str, torch.Tensor] = {}
        for kinds in (ATTN, FFN_IN):
            sts = [self.by_name.get(f"blk.{i}.{k}.weight") for k in kinds]
            if any(st is None or not (st.is_ternary and st.role == LINEAR and self._decodes_on_device(st))
                   for st in sts) or len({st.shape[1] for st in sts}) != 1:
                continue
            if any(st.stored.rope_heads for st in sts):  # q/k rows are permuted back after decoding: a copy anyway
                continue
            buf = torch.empty((sum(st.shape[0] for st in sts), sts[0].shape[1]), dtype=torch.int8)
            r = 0
            for k, st in zip(kinds, sts):
                out[k] = buf[r:r + st.shape[0]]
                r += st.shape[0]
        return out

    def _decode_on_device(self, st: SourceTensor, out: torch.Tensor | None = None) -> TTernary:
        """A packed tensor decoded where it is multiplied, from the bytes the reader located
        (`SourceTensor.stored`): read into the staging buffers (CUDA, or stage=True), else mapped."""
        from ..archs.llama import from_llama_rows

        sb = st.stored
        if self._stager is not None and hasattr(os, "preadv"):  # pread into pinned memory, upload from there
            raw = self._stager.read_file(sb.path, sb.offset, sb.nbytes)
            stager = self._stager

            def put(t: torch.Tensor) -> torch.Tensor:  # the read bytes are pinned already
                return stager.upload(t) if t.data_ptr() == raw.data_ptr() else stager.put(t)
        else:
            raw, put = sb.read(), None
        tern = TORCH_DECODERS[st.dtype](raw, st.shape, st.group or "tensor", self.device, put, out, st.name)
        if sb.rope_heads:  # a GGUF `llama` q/k: back to HF row order, as the reader does
            tern = TTernary(from_llama_rows(tern.values, sb.rope_heads).contiguous(),
                            from_llama_rows(tern.scales, sb.rope_heads).contiguous() if tern.scales.dim() == 2
                            else tern.scales, tern.group)
        return tern

    def load_layer(self, i: int) -> dict[str, Payload]:
        """Raw tensors of decoder layer i (host memory; GPU-decoded layouts already on the device)."""
        out: dict[str, Payload] = {}
        bufs = self._fused_buffers(i)
        for kind in LINEAR_KINDS + LAYER_NORMS + LAYER_SUB_NORMS + LAYER_QK_NORMS + LAYER_IN_NORMS:
            name = f"blk.{i}.{kind}.weight"
            if name in self.by_name:
                out[kind] = self.load_raw(name, on_device=(self._stager is not None or self.fused_cpu) and kind in LINEAR_KINDS,
                                          out=bufs.get(kind))
        return out

