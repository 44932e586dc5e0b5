"""TL1: bitnet.cpp's ARM lookup-table layout (GGML type 38, FORMATS.md §3, §5).

Pairs of weights along K become a code `3*t0 + t1 + 4` (0..8), two pair codes per byte
(the even pair in the high nibble). The byte order follows the kernel's tiles:
`m = i0*BM + i2*bm + i4*16 + i7`, pair `p = i1*(BK/2) + i3*(by/2) + i5*2 + i6`, bytes in
the order (i0, i1, i2, i3, i4, i5, i7) with i6 combined inside the byte, `by = 256/bm`.
Because i6 is the lowest pair digit, one byte always holds four consecutive columns
`4c..4c+3` of one row, so packing is: make those bytes for the whole [M, K/4] grid at once,
then one transpose of the (row, column) index digits into the emission order. Unpacking
is the inverse transpose and a 256-entry table.
Data = `M*K/4` code bytes, then the 32-byte tail with the float32 scale (the engine reads
it at offset `M*K/4`, which is where the tail starts).
"""

from __future__ import annotations

import numpy as np

from ..errors import CorruptFileError
from ..quant import Ternary
from .i2s import TAIL, nibbles_above, pair_bytes, pair_values, read_scale, scale_tail, ternary_codes
from .tiles import TileConfig, TiledLayout

# axes of the reshaped [M, K/4] byte grid: (i0, i2, i4, i7, i1, i3, i5) -> emission order
_TO_FILE = (0, 4, 1, 5, 2, 6, 3)
# axes of the file's byte run: (i0, i1, i2, i3, i4, i5, i7) -> back to (i0, i2, i4, i7, i1, i3, i5)
_FROM_FILE = (0, 2, 4, 6, 1, 3, 5)


class TL1(TiledLayout, name="tl1"):
    """2 bits per weight in ARM lookup-table order; tiles per shape (presets, rule or --kernel-config)."""

    ggml_type = 38
    file_type = 38  # LLAMA_FTYPE_MOSTLY_TL1 (the converter writes the type value)
    bits_per_weight = 2.0
    description = "bitnet.cpp TL1 (ARM lookup tables), 2 bpw; needs kernels built for these tiles"

    def nbytes(self, shape: tuple[int, int]) -> int:
        m, k = shape
        return m * k // 4 + TAIL

    @staticmethod
    def _grid(shape: tuple[int, int], cfg: TileConfig) -> tuple[int, ...]:
        """The [M, K/4] byte grid split into its index digits (i0, i2, i4, i7, i1, i3, i5)."""
        m, k = shape
        by = 256 // cfg.bm
        return (m // cfg.BM, cfg.BM // cfg.bm, cfg.bm // 16, 16, k // cfg.BK, cfg.BK // by, by // 4)

    def pack(self, tern: Ternary, name: str = "tensor") -> np.ndarray:
        m, k = tern.shape
        self.check(name, (m, k), tern.group)
        cfg = self.tiles_for(name, (m, k))
        b = pair_bytes(ternary_codes(tern.values, name))  # [M, K/4]: columns 4c..4c+3 of row m
        grid = self._grid((m, k), cfg)
        out = np.empty(self.nbytes((m, k)), dtype=np.uint8)
        dst = out[: m * k // 4].reshape(tuple(grid[i] for i in _TO_FILE))
        np.copyto(dst, b.reshape(grid).transpose(_TO_FILE))
        out[m * k // 4:] = scale_tail(tern.scale)
        return out

    def unpack(self, data: np.ndarray, shape: tuple[int, int], name: str = "tensor") -> Ternary:
        data = self._check_data(data, shape, name)
        m, k = shape
        cfg = self.tiles_for(name, (m, k))
        n = m * k // 4
        if nibbles_above(data[:n], 8):
            raise CorruptFileError(f"{name}: TL1 data holds a pair code above 8")
        grid = self._grid((m, k), cfg)
        b = data[:n].reshape(tuple(grid[i] for i in _TO_FILE)).transpose(_FROM_FILE).reshape(m, k // 4)
        return Ternary(pair_values(b), np.float32(read_scale(data, n, name)), "tensor")
