"""TL2: bitnet.cpp's x86 lookup-table layout (GGML type 39, FORMATS.md §4, §5).

K splits into `K3 = K - K % BK` three-weight columns and a two-weight tail of `K2 = K % BK`
columns. Triples become `v = 9*t0 + 3*t1 + t2`, stored as a 4-bit magnitude (two per byte)
and a sign bit (sixteen per little-endian uint16 word); the tail uses TL1's pair codes
with fixed sub-tiles (BK=32, bm=32). Inside every 32-byte run of magnitude and tail bytes
the four 8-byte chunks are stored in the order 0, 2, 1, 3, i.e. the 32 rows of a sub-tile
split as (chunk_hi, chunk_lo, 8) are emitted as (chunk_lo, chunk_hi, 8).
Layout of the data: magnitudes, signs, tail, zeros up to the engine's length
`L = (K-256)*M/3*5/8 + 256*M/2*4/8`, zeros up to a multiple of 32, then the 32-byte tail
with the float32 scale (read by the engine at offset roundup32(L)).

Packing computes each row's magnitude bytes, sign bits and pair codes, then transposes
them into the emission order (bitconv.kernels.tl, one compiled pass; the numpy formulas,
reshape/transposes of the index digits and np.packbits, are the reference in
tests/reference_packing.py). Unpacking runs the same steps backwards.
"""

from __future__ import annotations

import numpy as np

from ..errors import CorruptFileError
from ..quant import Ternary
from .inspect_bytes import tail_scale
from .i2s import TAIL, bad_values, int8_values, read_scale, scale_tail
from .tiles import TiledLayout, tl2_padded_size, tl2_real_size


def _roundup32(n: int) -> int:
    return (n + 31) // 32 * 32


class TL2(TiledLayout, name="tl2"):
    """~1.67 bits per weight in x86 lookup-table order; tiles per shape (presets, rule or --kernel-config)."""

    ggml_type = 39
    file_type = 39  # LLAMA_FTYPE_MOSTLY_TL2
    bits_per_weight = 5 / 3
    description = "bitnet.cpp TL2 (x86 lookup tables), ~1.67 bpw; needs kernels built for these tiles"

    def nbytes(self, shape: tuple[int, int]) -> int:
        return _roundup32(tl2_padded_size(shape)) + TAIL

    def stored_scales(self, data: np.ndarray, shape: tuple[int, int]) -> np.ndarray | None:
        return tail_scale(data, self.nbytes(shape) - TAIL)

    def pack(self, tern: Ternary, name: str = "tensor") -> np.ndarray:
        from ..kernels.tl import tl2_pack

        m, k = tern.shape
        self.check(name, (m, k), tern.group)
        cfg = self.tiles_for(name, (m, k))
        values = int8_values(tern.values, name)
        real = tl2_real_size((m, k), cfg.BK)
        out = np.empty(self.nbytes((m, k)), dtype=np.uint8)
        if not tl2_pack(values.reshape(-1).view(np.uint8), out[:real], m, k, cfg.BM, cfg.BK):
            raise bad_values(name)
        out[real:-TAIL] = 0  # up to the engine's length L, then to a multiple of 32
        self._check_scales(tern, name)  # a float32 scale: only NaN/inf (e.g. 1/1e-39) fails
        out[-TAIL:] = scale_tail(tern.scale)
        return out

    def unpack(self, data: np.ndarray, shape: tuple[int, int], name: str = "tensor") -> Ternary:
        from ..kernels.tl import tl2_unpack

        data = self._check_data(data, shape, name)
        m, k = shape
        cfg = self.tiles_for(name, (m, k))
        real = tl2_real_size((m, k), cfg.BK)
        values = np.empty((m, k), dtype=np.int8)
        status = tl2_unpack(np.ascontiguousarray(data[:real]), values.reshape(-1).view(np.uint8), m, k,
                            cfg.BM, cfg.BK)
        if status == 1:
            raise CorruptFileError(f"{name}: TL2 data holds a triple magnitude above 13")
        if status:
            raise CorruptFileError(f"{name}: TL2 two-weight tail holds a pair code above 8")
        scale = read_scale(data, _roundup32(tl2_padded_size(shape)), name)
        return Ternary(values, np.float32(scale), "tensor")
