"""TL1: bitnet.cpp's ARM lookup-table layout (GGML type 38, FORMATS.md §3, §5).

Pairs of weights along K become a code `3*t0 + t1 + 4` (0..8), two pair codes per byte
(the even pair in the high nibble). The byte order follows the kernel's tiles:
`m = i0*BM + i2*bm + i4*16 + i7`, pair `p = i1*(BK/2) + i3*(by/2) + i5*2 + i6`, bytes in
the order (i0, i1, i2, i3, i4, i5, i7) with i6 combined inside the byte, `by = 256/bm`.
Because i6 is the lowest pair digit, one byte always holds four consecutive columns
`4c..4c+3` of one row, so packing is: make those bytes row by row, then transpose them
into the emission order (bitconv.kernels.tl, one compiled pass; the numpy formula, a
reshape/transpose of the index digits, is the reference in tests/reference_packing.py).
Unpacking runs the same steps backwards.
Data = `M*K/4` code bytes, then the 32-byte tail with the float32 scale (the engine reads
it at offset `M*K/4`, which is where the tail starts).
"""

from __future__ import annotations

import numpy as np

from ..errors import CorruptFileError
from ..quant import Ternary
from .inspect_bytes import CodeCount, count_nibbles_above, tail_scale
from .i2s import TAIL, bad_values, int8_values, read_scale, scale_tail
from .tiles import TiledLayout


class TL1(TiledLayout, name="tl1"):
    """2 bits per weight in ARM lookup-table order; tiles per shape (presets, rule or --kernel-config)."""

    ggml_type = 38
    file_type = 38  # LLAMA_FTYPE_MOSTLY_TL1 (the converter writes the type value)
    bits_per_weight = 2.0
    description = "bitnet.cpp TL1 (ARM lookup tables), 2 bpw; needs kernels built for these tiles"

    def nbytes(self, shape: tuple[int, int]) -> int:
        m, k = shape
        return m * k // 4 + TAIL

    def stored_scales(self, data: np.ndarray, shape: tuple[int, int]) -> np.ndarray | None:
        return tail_scale(data, self.nbytes(shape) - TAIL)

    def invalid_codes(self, data: np.ndarray, shape: tuple[int, int]) -> CodeCount | None:
        # each nibble indexes one of the 9 ternary pairs
        return CodeCount(count_nibbles_above(np.asarray(data)[:shape[0] * shape[1] // 4], 8),
                         "pair codes above 8 (no ternary pair)")

    def pack(self, tern: Ternary, name: str = "tensor") -> np.ndarray:
        from ..kernels.tl import tl1_pack

        m, k = tern.shape
        self.check(name, (m, k), tern.group)
        cfg = self.tiles_for(name, (m, k))
        values = int8_values(tern.values, name)
        n = m * k // 4
        out = np.empty(self.nbytes((m, k)), dtype=np.uint8)
        if not tl1_pack(values.reshape(-1).view(np.uint8), out[:n], m, k, cfg.BM, cfg.BK, cfg.bm):
            raise bad_values(name)
        self._check_scales(tern, name)  # a float32 scale: only NaN/inf (e.g. 1/1e-39) fails
        out[n:] = scale_tail(tern.scale)
        return out

    def unpack(self, data: np.ndarray, shape: tuple[int, int], name: str = "tensor") -> Ternary:
        from ..kernels.tl import tl1_unpack

        data = self._check_data(data, shape, name)
        m, k = shape
        cfg = self.tiles_for(name, (m, k))
        n = m * k // 4
        values = np.empty((m, k), dtype=np.int8)
        if not tl1_unpack(np.ascontiguousarray(data[:n]), values.reshape(-1).view(np.uint8), m, k,
                          cfg.BM, cfg.BK, cfg.bm):
            raise CorruptFileError(f"{name}: TL1 data holds a pair code above 8")
        return Ternary(values, np.float32(read_scale(data, n, name)), "tensor")
