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

Each part is one reshape/transpose of a per-row array into the emission order, written
straight into its slice of the output; the signs go through np.packbits.
"""

from __future__ import annotations

import numpy as np

from ..errors import CorruptFileError
from ..quant import Ternary
from .i2s import TAIL, nibbles_above, pair_bytes, pair_values, read_scale, scale_tail, ternary_codes
from .tiles import TileConfig, TiledLayout, tl2_padded_size

# magnitudes [M, K3/6] as (i0, i2, chunk_hi, chunk_lo, e, i1, i3) -> (i0, i1, i2, i3, chunk_lo, chunk_hi, e);
# the two-weight tail [M, K2/4] uses the same digits with BK=32.
_MAG_TO_FILE = (0, 5, 1, 6, 3, 2, 4)
_MAG_FROM_FILE = tuple(int(i) for i in np.argsort(_MAG_TO_FILE))
# signs [M, K3/3] as (i0, i2, h, b, i1, i3, jj) -> (i0, i1, i2, i3, b, jj, h): bit 15-(2jj+h) of word b
_SGN_TO_FILE = (0, 4, 1, 5, 3, 6, 2)
_SGN_FROM_FILE = tuple(int(i) for i in np.argsort(_SGN_TO_FILE))


def _roundup32(n: int) -> int:
    return (n + 31) // 32 * 32


def _triple_decode_table() -> np.ndarray:
    """(magnitude byte << 2 | sign0 << 1 | sign1) -> the six int8 values of its two triples.

    Stored as uint64 words (6 values + 2 unused bytes) so the decode is one 8-byte gather.
    Magnitudes above 13 never reach it (unpack refuses them first).
    """
    lut = np.zeros((1024, 8), dtype=np.int8)
    for idx in range(1024):
        mb, s0, s1 = idx >> 2, (idx >> 1) & 1, idx & 1
        for j, (mag, s) in enumerate(((mb >> 4, s0), (mb & 15, s1))):
            if mag > 13:
                continue
            w = (-mag if s else mag) + 13
            lut[idx, 3 * j:3 * j + 3] = (w // 9 - 1, w // 3 % 3 - 1, w % 3 - 1)
    return lut.view("<u8").reshape(1024)


_TRIPLE_LUT = _triple_decode_table()


class TL2(TiledLayout, name="tl2"):
    """~1.67 bits per weight in x86 lookup-table order; tiles per shape (presets, rule or --kernel-config)."""

    ggml_type = 39
    file_type = 39  # LLAMA_FTYPE_MOSTLY_TL2
    bits_per_weight = 5 / 3
    description = "bitnet.cpp TL2 (x86 lookup tables), ~1.67 bpw; needs kernels built for these tiles"

    def nbytes(self, shape: tuple[int, int]) -> int:
        return _roundup32(tl2_padded_size(shape)) + TAIL

    @staticmethod
    def _parts(shape: tuple[int, int], cfg: TileConfig) -> tuple[int, int, int, int]:
        """(K3, K2, magnitude bytes, sign bytes)."""
        m, k = shape
        k2 = k % cfg.BK
        k3 = k - k2
        return k3, k2, k3 * m // 6, k3 * m // 24

    @staticmethod
    def _mag_grid(m: int, ncols: int, BM: int, BK: int, per_byte: int) -> tuple[int, ...]:
        """Bytes [M, ncols/per_byte] split as (i0, i2, chunk_hi, chunk_lo, e, i1, i3)."""
        return (m // BM, BM // 32, 2, 2, 8, ncols // BK, BK // per_byte)

    @staticmethod
    def _sgn_grid(m: int, k3: int, cfg: TileConfig) -> tuple[int, ...]:
        """Sign bits [M, K3/3] split as (i0, i2, h, b, i1, i3, jj)."""
        return (m // cfg.BM, cfg.BM // 32, 2, 16, k3 // cfg.BK, cfg.BK // 24, 8)

    def pack(self, tern: Ternary, name: str = "tensor") -> np.ndarray:
        m, k = tern.shape
        self.check(name, (m, k), tern.group)
        cfg = self.tiles_for(name, (m, k))
        k3, k2, nmag, nsgn = self._parts((m, k), cfg)
        q = ternary_codes(tern.values, name)
        out = np.zeros(self.nbytes((m, k)), dtype=np.uint8)
        out[-TAIL:] = scale_tail(tern.scale)

        # three-weight part: v + 13 = 9*q0 + 3*q1 + q2, then magnitude and sign
        qt = q[:, :k3].reshape(m, k3 // 3, 3)
        v = qt[:, :, 0] * np.uint8(9)
        v += qt[:, :, 1] * np.uint8(3)
        v += qt[:, :, 2]
        v = v.view(np.int8)
        v -= np.int8(13)
        mag = np.abs(v).view(np.uint8)  # [M, K3/3], 0..13
        mb = mag[:, 0::2] << np.uint8(4)
        mb |= mag[:, 1::2]  # [M, K3/6]: byte of triples 2c, 2c+1
        grid = self._mag_grid(m, k3, cfg.BM, cfg.BK, 6)
        np.copyto(out[:nmag].reshape(tuple(grid[i] for i in _MAG_TO_FILE)),
                  mb.reshape(grid).transpose(_MAG_TO_FILE))

        sgn = (v < 0).view(np.uint8)  # [M, K3/3]
        sgrid = self._sgn_grid(m, k3, cfg)
        bits = sgn.reshape(sgrid).transpose(_SGN_TO_FILE).reshape(-1, 16, 16)  # (.., word b, bit a)
        words = np.packbits(bits, axis=-1)  # [.., 16, 2]: bits a=0..7 then 8..15, MSB first
        out[nmag:nmag + nsgn].reshape(-1, 16, 2)[...] = words[:, :, ::-1]  # uint16 little-endian

        if k2:
            tb = pair_bytes(np.ascontiguousarray(q[:, k3:]))  # [M, K2/4]
            tgrid = self._mag_grid(m, k2, cfg.BM, 32, 4)
            start = nmag + nsgn
            np.copyto(out[start:start + m * k2 // 4].reshape(tuple(tgrid[i] for i in _MAG_TO_FILE)),
                      tb.reshape(tgrid).transpose(_MAG_TO_FILE))
        return out

    def unpack(self, data: np.ndarray, shape: tuple[int, int], name: str = "tensor") -> Ternary:
        data = self._check_data(data, shape, name)
        m, k = shape
        cfg = self.tiles_for(name, (m, k))
        k3, k2, nmag, nsgn = self._parts((m, k), cfg)
        values = np.empty((m, k), dtype=np.int8)

        if nibbles_above(data[:nmag], 13):
            raise CorruptFileError(f"{name}: TL2 data holds a triple magnitude above 13")
        grid = self._mag_grid(m, k3, cfg.BM, cfg.BK, 6)
        mb = data[:nmag].reshape(tuple(grid[i] for i in _MAG_TO_FILE)).transpose(_MAG_FROM_FILE)
        mb = mb.reshape(m, k3 // 6)

        words = data[nmag:nmag + nsgn].reshape(-1, 16, 2)[:, :, ::-1]
        bits = np.unpackbits(words, axis=-1)  # [.., word b, bit a]
        sgrid = self._sgn_grid(m, k3, cfg)
        sgn = bits.reshape(tuple(sgrid[i] for i in _SGN_TO_FILE)).transpose(_SGN_FROM_FILE)
        sgn = sgn.reshape(m, k3 // 6, 2)

        idx = mb.astype(np.uint16) << np.uint16(2)
        idx |= sgn[:, :, 0] << np.uint8(1)
        idx |= sgn[:, :, 1]
        six = _TRIPLE_LUT[idx].view(np.int8).reshape(m, k3 // 6, 8)
        values[:, :k3].reshape(m, k3 // 6, 6)[...] = six[:, :, :6]

        if k2:
            start = nmag + nsgn
            raw = data[start:start + m * k2 // 4]
            if nibbles_above(raw, 8):
                raise CorruptFileError(f"{name}: TL2 two-weight tail holds a pair code above 8")
            tgrid = self._mag_grid(m, k2, cfg.BM, 32, 4)
            tb = raw.reshape(tuple(tgrid[i] for i in _MAG_TO_FILE)).transpose(_MAG_FROM_FILE)
            values[:, k3:] = pair_values(tb.reshape(m, k2 // 4))
        scale = read_scale(data, _roundup32(tl2_padded_size(shape)), name)
        return Ternary(values, np.float32(scale), "tensor")
