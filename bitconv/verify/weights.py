"""The weights one decoder layer computes with, in torch: ternary matrices (`TTernary`), the
linears a backend multiplies by (`Linear`), one layer's set (`LayerWeights`), and the torch
decoders of layouts that are decoded on the device they run on (TQ2_0)."""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Callable, Mapping, Union

import numpy as np
import torch

from ..model import LINEAR_KINDS
from ..quant import GroupSize, Ternary
from .ops import rms_norm, unpack2

ATTN = ("attn_q", "attn_k", "attn_v")
FFN_IN = ("ffn_gate", "ffn_up")
LAYER_NORMS = ("attn_norm", "ffn_norm")
LAYER_SUB_NORMS = ("attn_sub_norm", "ffn_sub_norm")
LAYER_QK_NORMS = ("attn_q_norm", "attn_k_norm")  # Qwen3: per-head RMSNorm of q and k before rope
IN_NORM = "_in_norm"  # use_rms_norm: `attn_q_in_norm` is the RMSNorm inside attn_q (archs.base.INPUT_NORM_SUFFIX)
LAYER_IN_NORMS = tuple(k + IN_NORM for k in LINEAR_KINDS)

Groups = Union[GroupSize, Mapping[str, GroupSize], None]


@dataclass
class TTernary:
    """A ternary matrix in torch: `values` int8 [M, K], `scales` float32 of shape () (tensor),
    [M, 1] (row) or [M, K // g] (K-blocks), on any device. Mirrors `bitconv.quant.Ternary`."""

    values: torch.Tensor
    scales: torch.Tensor
    group: GroupSize = "tensor"

    @classmethod
    def from_numpy(cls, tern: Ternary, device: torch.device | str = "cpu") -> "TTernary":
        values = torch.from_numpy(np.ascontiguousarray(tern.values, dtype=np.int8))
        scales = torch.from_numpy(np.array(tern.scales, dtype=np.float32, copy=True))
        return cls(values.to(device, non_blocking=False), scales.to(device), tern.group)

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.values.shape)  # type: ignore[return-value]

    def row_scales(self) -> torch.Tensor | None:
        """Scales as one float32 per output row, or None for K-block groups."""
        m = self.values.shape[0]
        if self.scales.numel() == 1:
            return self.scales.reshape(1).expand(m).contiguous()
        if self.scales.dim() == 2 and self.scales.shape[1] == 1:
            return self.scales.reshape(m)
        return None

    def expanded_scales(self) -> torch.Tensor:
        if self.scales.numel() == 1 or (self.scales.dim() == 2 and self.scales.shape[1] == 1):
            return self.scales
        m, k = self.shape
        g = k // self.scales.shape[1]
        return self.scales.repeat_interleave(g, dim=1)

    def dequantize(self, dtype=torch.float32) -> torch.Tensor:
        return (self.values.to(torch.float32) * self.expanded_scales()).to(dtype)


def tq2_0_decode(raw: np.ndarray | torch.Tensor, shape: tuple[int, int], group: GroupSize,
                  device: torch.device | str = "cpu",
                  put: Callable[[torch.Tensor], torch.Tensor] | None = None,
                  out: torch.Tensor | None = None, name: str = "tensor") -> TTernary:
    """TQ2_0 bytes -> TTernary on `device`; the same result as `pack.tq.TQ2_0.unpack`.

    On the CPU the format's own decoder runs (`TQ2_0.decode_rows`, rows over the threads),
    `out` (int8 [m, k]) receiving the values: a slice of the buffer that linears sharing an
    input are fused into. On a GPU the bytes are copied (pinned, asynchronously) and unpacked
    there by the layout's torch ops (`TQ2_0.torch_values`); the block scales are read and
    collapsed into their group on the host and code 3 is refused there
    (`TQ2_0.scales_from_bytes`), so nothing waits for the GPU."""
    from ..pack.tq import QK, TQ2_0, collapse_block_scales

    m, k = shape
    nb = m * (k // QK)
    if isinstance(raw, torch.Tensor):  # bytes already in (pinned) host memory: `put` uploads them
        host = raw.reshape(nb, -1)
        blocks = host.numpy()
    else:
        blocks = np.asarray(raw).reshape(nb, -1)
    if torch.device(device).type == "cpu" and put is None:  # one fused pass (numba), rows over the threads
        from . import cpu_kernels

        values, d = cpu_kernels.tq2_0_values(blocks, m, k, out, name)
        tern = collapse_block_scales(values.numpy(), d, group, name)  # live blocks with d = 0 read as 0
        return TTernary(values, torch.from_numpy(np.array(tern.scales, np.float32)), tern.group)
    if not isinstance(raw, torch.Tensor):
        with warnings.catch_warnings():  # a read-only memmap: torch only reads it (copy to the device)
            warnings.simplefilter("ignore", UserWarning)
            host = torch.from_numpy(blocks)
    lay = TQ2_0()
    tern = lay.scales_from_bytes(blocks.reshape(-1), shape, group, name)
    put = put or (lambda t: h2d(t, device))
    values = lay.torch_values(put(host), shape)  # the contiguous bytes, scales included: one copy
    return TTernary(values, put(torch.from_numpy(np.array(tern.scales, np.float32))), tern.group)


def h2d(t: torch.Tensor, device: torch.device | str) -> torch.Tensor:
    """Host -> device without blocking the host: pinned staging + non_blocking copy on CUDA
    (the caching host allocator keeps the staging buffer until its copy has run)."""
    device = torch.device(device)
    if device.type != "cuda" or t.device.type != "cpu":
        return t.to(device)
    return t.pin_memory().to(device, non_blocking=True)


# Raw-byte decoders that run on the target device (GGUF layouts only). Others unpack with
# the layout's numpy code through `SourceTensor.load_ternary()`.
TORCH_DECODERS: dict[str, Callable[..., TTernary]] = {
    "tq2_0": tq2_0_decode,
}




Payload = Union[np.ndarray, Ternary, TTernary]


@dataclass
class Linear:
    """One linear, or several sharing an input concatenated along M, ready on a device:
    int8 `codes` [M, K] (uint8 2-bit packed when `packed`) with one float32 `row_scale` per
    output row for the int8 backends, or a float `weight` [M, K] (s·t, or a float model's
    weight) for the float backend."""

    weight: torch.Tensor | None = None
    codes: torch.Tensor | None = None
    row_scale: torch.Tensor | None = None
    k: int = 0
    packed: bool = False
    in_norm: torch.Tensor | None = None  # use_rms_norm: the RMSNorm weight applied to this linear's input

    @property
    def is_int(self) -> bool:
        return self.codes is not None

    def int_codes(self) -> torch.Tensor:
        assert self.codes is not None
        return unpack2(self.codes, self.k) if self.packed else self.codes


@dataclass
class LayerWeights:
    """One decoder layer: its norms by kind (only those the family has) and its linears,
    q|k|v and gate|up fused (int8) or as lists (float)."""

    norms: dict[str, torch.Tensor] = field(default_factory=dict)
    qkv: list[Linear] | Linear | None = None
    o: Linear | None = None
    gate_up: list[Linear] | Linear | None = None
    down: Linear | None = None

    def norm(self, x: torch.Tensor, kind: str, eps: float) -> torch.Tensor:
        """RMSNorm `kind` of x where the layer has it, else x itself."""
        w = self.norms.get(kind)
        return x if w is None else rms_norm(x, w, eps)

    def all_int(self) -> bool:
        return all(isinstance(m, Linear) and m.is_int and m.in_norm is None
                   for m in (self.qkv, self.o, self.gate_up, self.down))
