"""TQ1_0 and TQ2_0: llama.cpp's ternary types (FORMATS.md §6), byte-identical to gguf.quants.

Both use blocks of 256 values along K with an fp16 scale `d` at the end of each block.
`d` is the group scale of the block (0 for an all-zero block, as gguf.quants writes it),
so per-tensor, per-row and K-groups that are whole multiples of 256 can all be stored.

Packing and unpacking are numba kernels (bitconv/kernels/tq.py, one call per tensor); the
numpy formulas they replaced are the reference in tests/reference_packing_tq.py.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np

from ..errors import BadWeightsError
from ..quant import GroupSize, Ternary
from .base import Layout
from .inspect_bytes import CodeCount, block_codes, block_scales_f16, count_code3
from .kernel_args import bad_values_error, block_scale_bits, ternary_bytes

QK = 256


class _TQ(Layout):
    tensor_scale_only = False
    scale_type = "f16"  # each block's d
    block_k = QK
    engine = "llama.cpp"
    codes_bytes: int  # bytes of codes per 256-value block

    def check(self, name: str, shape: tuple[int, int], group: GroupSize) -> None:
        self._check_blocks(name, shape, group, QK, "TQ")

    def nbytes(self, shape: tuple[int, int]) -> int:
        m, k = shape
        return m * (k // QK) * (self.codes_bytes + 2)

    def _kernels(self) -> tuple[Callable[..., Any], Callable[..., Any]]:
        """(pack, unpack) numba kernels, imported here so importing a layout never imports numba."""
        raise NotImplementedError

    def stored_scales(self, data: np.ndarray, shape: tuple[int, int]) -> np.ndarray | None:
        if shape[1] % QK:
            return None
        return block_scales_f16(data, self.codes_bytes + 2, self.codes_bytes)  # d ends each block

    def pack(self, tern: Ternary, name: str = "tensor") -> np.ndarray:
        m, k = tern.shape
        self.check(name, (m, k), tern.group)
        u = ternary_bytes(tern.values, name)
        self._check_scales(tern, name)
        sc, per = block_scale_bits(tern, QK, name)
        out = np.empty(m * (k // QK) * (self.codes_bytes + 2), dtype=np.uint8)
        if self._kernels()[0](self._kernel_values(u.reshape(-1)), m, k, sc, per, out):
            raise bad_values_error(name)
        return out

    @staticmethod
    def _kernel_values(u: np.ndarray) -> np.ndarray:
        """The values as the pack kernel reads them (TQ2_0: uint8 bytes; TQ1_0: int8)."""
        return u

    def unpack(self, data: np.ndarray, shape: tuple[int, int], name: str = "tensor",
               group: GroupSize = "tensor") -> Ternary:
        self._check_whole_blocks(name, shape)  # K < 256: no block holds these values
        data = self._check_data(data, shape, name)
        m, k = shape
        values = np.empty((m, k), dtype=np.int8)
        d = np.empty((m, k // QK), dtype=np.float32)
        self.decode_rows(data, shape, values, d, 0, m, name)
        return collapse_block_scales(values, d, group, name)

    def decode_rows(self, data: np.ndarray, shape: tuple[int, int], values: np.ndarray, d: np.ndarray,
                    r0: int, r1: int, name: str = "tensor") -> None:
        """Rows [r0, r1) of a tensor's blocks (`data`: all nbytes(shape) bytes) into the int8
        `values` [M, K] and float32 block scales `d` [M, K/256] (both C-contiguous): the one
        CPU decoder of the format, which `unpack` and verify's fused path (rows over threads,
        straight into its q|k|v and gate|up matrices) both call. Refuses TQ2_0's code 3."""
        m, k = shape
        kb, bb = k // QK, self.codes_bytes + 2
        rows = np.asarray(data)[r0 * kb * bb:r1 * kb * bb]
        bad = self._kernels()[1](np.ascontiguousarray(rows), (r1 - r0) * kb, values[r0:r1].reshape(-1).view(np.uint8),
                                 d[r0:r1].reshape(-1))
        if bad >= 0:  # TQ2_0 only: TQ1_0 bytes all decode to ternary digits
            bad += r0 * kb
            raise BadWeightsError(
                f"{name}: {self.name.upper()} block {bad} (row {bad // kb}, values {QK * (bad % kb)}.."
                f"{QK * (bad % kb) + QK - 1}) holds code 3 (+2·d), which is not ternary",
                hint="the file is corrupt: TQ2_0 codes are 0, 1, 2 (-1, 0, +1); reconvert from the source",
            )


def collapse_block_scales(values: np.ndarray, d: np.ndarray, group: GroupSize, name: str,
                          qk: int = QK, live: np.ndarray | None = None) -> Ternary:
    """Turn per-block scales back into the group the tensor was written with.

    All-zero blocks store d = 0; they take the scale of their group so nothing is lost.
    When the blocks disagree with `group` (bitconv's metadata records the --group-size
    option, which a repack of an already-ternary source does not apply; or a file bitconv
    did not write), the coarsest group the scales agree on is taken: tensor, row, then the
    largest K-group; at worst the qk-blocks themselves (256 for TQ, 64 for Q2_0).
    LIVE ([M, K/qk] bool, read only where d = 0) says which blocks hold a non-zero code; it
    is computed from VALUES when not given (verify's GPU staging, which decodes the codes on
    the device, gives it from the block bytes instead).
    """
    m, nblk = d.shape
    zero_d = d == 0
    if zero_d.any():  # a d = 0 is free only where the block's codes are all 0 (issue 25): a
        # block with codes and d = 0 computes zeros in the engine, so it must read back as zeros
        if live is None:
            live = np.zeros(d.shape, dtype=bool)
            live[zero_d] = np.any(values.reshape(m, nblk, qk)[zero_d] != 0, axis=1)
        dead = zero_d & live
        if dead.any():
            d = d.copy()
            d[dead] = np.float32(np.nan)  # NaN: agrees with no group scale
    candidates: list[GroupSize] = [group, "tensor", "row"]
    candidates += [qk * per for per in range(nblk // 2, 1, -1) if nblk % per == 0]
    for g in candidates:
        s = _group_scales(d, g, qk)
        if s is not None:
            return Ternary(values, s, g)
    return Ternary(values, np.nan_to_num(d, nan=0.0), qk)


def _group_scales(d: np.ndarray, group: GroupSize, qk: int) -> np.ndarray | None:
    """The scales of `group` when every non-zero block scale agrees with its group's, else None
    (a NaN, a live block stored with d = 0, agrees with none)."""
    m, nblk = d.shape
    if group == "tensor":
        nz = d[d != 0]
        if nz.size == 0 or np.all(nz == nz[0]):
            return np.float32(nz[0] if nz.size else 0.0)
        return None
    if group == "row":
        s = d.max(axis=1, keepdims=True)
        return s if np.all((d == 0) | (d == s)) else None
    if int(group) % qk or nblk % (int(group) // qk):
        return None
    per = int(group) // qk
    g = d.reshape(m, nblk // per, per)
    s = g[:, :, 0].copy()  # max over the short last axis, one slice at a time (much faster)
    for j in range(1, per):
        np.maximum(s, g[:, :, j], out=s)
    if all(np.all((g[:, :, j] == 0) | (g[:, :, j] == s)) for j in range(per)):
        return s
    return None


class TQ2_0(_TQ, name="tq2_0"):
    """2.0625 bits per weight; value j of a block sits at byte 32·(j//128) + j%32, bits 2·((j%128)//32)."""

    ggml_type = 35
    file_type = 37
    bits_per_weight = 2.0625
    codes_bytes = 64
    description = "llama.cpp ternary, 2.06 bpw (runs in upstream llama.cpp)"

    def invalid_codes(self, data: np.ndarray, shape: tuple[int, int]) -> CodeCount | None:
        if shape[1] % QK:
            return None
        return CodeCount(count_code3(block_codes(data, self.codes_bytes + 2, 0, self.codes_bytes)), "2-bit code 3")

    def scales_from_bytes(self, data: np.ndarray, shape: tuple[int, int], group: GroupSize,
                          name: str = "tensor") -> Ternary:
        """The scales `unpack` would give (values left empty, [M, 0]), read from the block
        bytes without decoding the codes: for a decoder that unpacks the codes elsewhere
        (verify's GPU staging, `torch_values`). Refuses code 3 as `unpack` does; a block
        holding codes (bytes other than 0x55, four zeros) stored with d = 0 reads as zeros."""
        m, k = shape
        if self.invalid_codes(data, shape).count:
            self.unpack(data, shape, name)  # raises, naming the first block with code 3
        d = self.stored_scales(data, shape).reshape(m, k // QK)
        live = np.zeros(d.shape, dtype=bool)
        zero_d = d == 0
        if zero_d.any():
            codes = block_codes(data, self.codes_bytes + 2, 0, self.codes_bytes).reshape(m, k // QK, -1)
            live[zero_d] = np.any(codes[zero_d] != 0x55, axis=1)
        return collapse_block_scales(np.empty((m, 0), np.int8), d, group, name, live=live)

    def torch_values(self, blocks: Any, shape: tuple[int, int]) -> Any:
        """TQ2_0 bytes as a uint8 torch tensor (any device, [M·K/256, 66]) -> int8 values
        [M, K] on that device, by torch ops (the layout of this class's docstring); the bytes'
        d and code 3 are not looked at (`scales_from_bytes` does that on the host)."""
        import torch

        m, k = shape
        nb = m * (k // QK)
        shifts = torch.arange(0, 8, 2, dtype=torch.uint8, device=blocks.device).view(1, 1, 4, 1)
        codes = blocks.reshape(nb, self.codes_bytes + 2)[:, :self.codes_bytes]
        q = (codes.reshape(nb, 2, 1, 32) >> shifts) & 3  # value 128h + 32f + j: byte 32h + j, bits 2f
        return q.reshape(m, k).to(torch.int8) - 1

    def _kernels(self) -> tuple[Callable[..., Any], Callable[..., Any]]:
        from ..kernels.tq import tq2_0_pack, tq2_0_unpack

        return tq2_0_pack, tq2_0_unpack


class TQ1_0(_TQ, name="tq1_0"):
    """1.6875 bits per weight: five (then four) base-3 digits per byte, scaled to fill 0..255."""

    ggml_type = 34
    file_type = 36
    bits_per_weight = 1.6875
    codes_bytes = 52
    description = "llama.cpp ternary, 1.69 bpw (runs in upstream llama.cpp)"

    def _kernels(self) -> tuple[Callable[..., Any], Callable[..., Any]]:
        from ..kernels.tq import tq1_0_pack, tq1_0_unpack

        return tq1_0_pack, tq1_0_unpack

    @staticmethod
    def _kernel_values(u: np.ndarray) -> np.ndarray:
        return u.view(np.int8)  # the base-3 sum is computed from t itself
