"""The vectorized numpy formulas of the bitnet.cpp packers (I2_S, TL1, TL2), kept as the reference.

These are the packers bitconv shipped before the numba kernels (bitconv/kernels/i2s.py,
tl.py): whole-array numpy operations that are easy to read next to FORMATS.md §2-4. They
were checked against the golden vectors and the loop transcriptions in test_pack_bitnet.py,
and test_pack_kernels.py now pins the kernels to them byte for byte on many more shapes.

Only the byte formulas live here: no shape checks, no scale tail (the tests build that),
no error types (callers get plain bools or assertions).
"""

from __future__ import annotations

import numpy as np

_U64 = np.dtype("<u8")
_LO2 = np.uint64(0x0303030303030303)
_B55 = np.uint64(0x5555555555555555)
_SHIFTS = np.array([6, 4, 2, 0], dtype=np.uint64)

I2S_LANES = {"x86-act": 32, "arm": 16}  # bytes per block; x86-1x4 uses K (4 rows per group)


def codes(values: np.ndarray) -> np.ndarray:
    """`q = t + 1` as uint8 [M, K] (the values must already be in {-1, 0, 1})."""
    v = np.ascontiguousarray(values, dtype=np.int8)
    assert v.size == 0 or (v.min() >= -1 and v.max() <= 1)
    return v.view(np.uint8) + np.uint8(1)


def i2s_groups(shape: tuple[int, int], variant: str) -> tuple[int, int]:
    m, k = shape
    if variant == "x86-1x4":
        return m // 4, k
    lane = I2S_LANES[variant]
    return m * k // (4 * lane), lane


# -- I2_S --------------------------------------------------------------------------------------

def i2s_pack(values: np.ndarray, variant: str) -> np.ndarray:
    """The M*K/4 code bytes (no scale tail)."""
    m, k = values.shape
    q = codes(values)
    ngroups, lane = i2s_groups((m, k), variant)
    out = np.empty(m * k // 4, dtype=np.uint8)
    if lane % 8 == 0:  # eight bytes at a time; fields never exceed their byte
        q4 = q.reshape(-1).view(_U64).reshape(ngroups, 4, lane // 8)
        dst = out.view(_U64).reshape(ngroups, lane // 8)
    else:
        q4 = q.reshape(ngroups, 4, lane)
        dst = out.reshape(ngroups, lane)
    u = q4.dtype.type
    np.left_shift(q4[:, 0], u(6), out=dst)
    dst |= q4[:, 1] << u(4)
    dst |= q4[:, 2] << u(2)
    dst |= q4[:, 3]
    return out


def i2s_unpack(code_bytes: np.ndarray, shape: tuple[int, int], variant: str) -> np.ndarray | None:
    """int8 [M, K], or None when a byte holds the invalid code 3."""
    m, k = shape
    ngroups, lane = i2s_groups((m, k), variant)
    c = np.ascontiguousarray(code_bytes, dtype=np.uint8)
    if lane % 8 == 0:
        d = c.view(_U64).reshape(ngroups, 1, lane // 8)
        if np.any(d & (d >> np.uint64(1)) & _B55):
            return None
        q = (d >> _SHIFTS.reshape(1, 4, 1)) & _LO2
    else:
        d = c.reshape(ngroups, 1, lane)
        if np.any(d & (d >> 1) & 0x55):
            return None
        q = (d >> _SHIFTS.astype(np.uint8).reshape(1, 4, 1)) & np.uint8(3)
    return (q.reshape(-1).view(np.int8) - np.int8(1)).reshape(m, k)


# -- pair codes (TL1, and TL2's two-weight tail) --------------------------------------------------

# A byte holds the codes of two pairs, `(3*t0 + t1 + 4) << 4 | (3*t2 + t3 + 4)`, which for
# q = t + 1 is 48*q0 + 16*q1 + 3*q2 + q3: multiplying the little-endian uint32 word
# q0 | q1<<8 | q2<<16 | q3<<24 by this constant puts exactly that sum in the top byte.
PAIR_MUL = np.uint32(48 << 24 | 16 << 16 | 3 << 8 | 1)


def pair_bytes(q: np.ndarray) -> np.ndarray:
    """Codes uint8 [M, K] (C-contiguous, K % 4 == 0) -> pair-code bytes uint8 [M, K/4]."""
    m, k = q.shape
    w = np.ascontiguousarray(q).reshape(-1).view("<u4").reshape(m, k // 4)
    w = w * PAIR_MUL
    w >>= np.uint32(24)
    return w.astype(np.uint8)


def _pair_decode_table() -> np.ndarray:
    """byte -> its four ternary values as one little-endian uint32 of int8s (0 if invalid)."""
    lut = np.zeros(256, dtype="<u4")
    for b in range(256):
        hi, lo = b >> 4, b & 15
        if hi <= 8 and lo <= 8:
            vals = np.array([hi // 3 - 1, hi % 3 - 1, lo // 3 - 1, lo % 3 - 1], dtype=np.int8)
            lut[b] = vals.view("<u4")[0]
    return lut


PAIR_LUT = _pair_decode_table()


def nibbles_above(raw: np.ndarray, limit: int) -> bool:
    """Whether any 4-bit field of `raw` exceeds `limit`."""
    raw = np.ascontiguousarray(raw, dtype=np.uint8).reshape(-1)
    return bool(np.any(((raw >> 4) > limit) | ((raw & 15) > limit)))


def pair_values(b: np.ndarray) -> np.ndarray:
    """Pair-code bytes uint8 [M, K/4] (validated by the caller) -> ternary int8 [M, K]."""
    m, k4 = b.shape
    return PAIR_LUT[np.ascontiguousarray(b)].reshape(-1).view(np.int8).reshape(m, 4 * k4)


# -- TL1 -------------------------------------------------------------------------------------------

# axes of the reshaped [M, K/4] byte grid: (i0, i2, i4, i7, i1, i3, i5) -> emission order
_TL1_TO_FILE = (0, 4, 1, 5, 2, 6, 3)
_TL1_FROM_FILE = (0, 2, 4, 6, 1, 3, 5)


def _tl1_grid(shape: tuple[int, int], BM: int, BK: int, bm: int) -> tuple[int, ...]:
    m, k = shape
    by = 256 // bm
    return (m // BM, BM // bm, bm // 16, 16, k // BK, BK // by, by // 4)


def tl1_pack(values: np.ndarray, BM: int, BK: int, bm: int) -> np.ndarray:
    """The M*K/4 code bytes (no scale tail)."""
    m, k = values.shape
    b = pair_bytes(codes(values))  # [M, K/4]: columns 4c..4c+3 of row m
    grid = _tl1_grid((m, k), BM, BK, bm)
    return np.ascontiguousarray(b.reshape(grid).transpose(_TL1_TO_FILE)).reshape(-1)


def tl1_unpack(code_bytes: np.ndarray, shape: tuple[int, int], BM: int, BK: int, bm: int) -> np.ndarray | None:
    """int8 [M, K], or None when a pair code is above 8."""
    m, k = shape
    raw = np.ascontiguousarray(code_bytes, dtype=np.uint8)
    if nibbles_above(raw, 8):
        return None
    grid = _tl1_grid((m, k), BM, BK, bm)
    b = raw.reshape(tuple(grid[i] for i in _TL1_TO_FILE)).transpose(_TL1_FROM_FILE).reshape(m, k // 4)
    return pair_values(b)


# -- TL2 -------------------------------------------------------------------------------------------

# magnitudes [M, K3/6] as (i0, i2, chunk_hi, chunk_lo, e, i1, i3) -> (i0, i1, i2, i3, chunk_lo, chunk_hi, e);
# the two-weight tail [M, K2/4] uses the same digits with BK=32.
_MAG_TO_FILE = (0, 5, 1, 6, 3, 2, 4)
_MAG_FROM_FILE = tuple(int(i) for i in np.argsort(_MAG_TO_FILE))
# signs [M, K3/3] as (i0, i2, h, b, i1, i3, jj) -> (i0, i1, i2, i3, b, jj, h): bit 15-(2jj+h) of word b
_SGN_TO_FILE = (0, 4, 1, 5, 3, 6, 2)
_SGN_FROM_FILE = tuple(int(i) for i in np.argsort(_SGN_TO_FILE))


def _triple_decode_table() -> np.ndarray:
    """(magnitude byte << 2 | sign0 << 1 | sign1) -> the six int8 values of its two triples."""
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


def tl2_parts(shape: tuple[int, int], BK: int) -> tuple[int, int, int, int]:
    """(K3, K2, magnitude bytes, sign bytes)."""
    m, k = shape
    k2 = k % BK
    k3 = k - k2
    return k3, k2, k3 * m // 6, k3 * m // 24


def _mag_grid(m: int, ncols: int, BM: int, BK: int, per_byte: int) -> tuple[int, ...]:
    return (m // BM, BM // 32, 2, 2, 8, ncols // BK, BK // per_byte)


def _sgn_grid(m: int, k3: int, BM: int, BK: int) -> tuple[int, ...]:
    return (m // BM, BM // 32, 2, 16, k3 // BK, BK // 24, 8)


def tl2_pack(values: np.ndarray, BM: int, BK: int) -> np.ndarray:
    """Magnitudes, signs and the two-weight tail: the first tl2_real_size bytes of the data."""
    m, k = values.shape
    k3, k2, nmag, nsgn = tl2_parts((m, k), BK)
    q = codes(values)
    out = np.zeros(nmag + nsgn + m * k2 // 4, dtype=np.uint8)

    qt = q[:, :k3].reshape(m, k3 // 3, 3)
    v = qt[:, :, 0] * np.uint8(9)
    v += qt[:, :, 1] * np.uint8(3)
    v += qt[:, :, 2]
    v = v.view(np.int8)
    v -= np.int8(13)
    mag = np.abs(v).view(np.uint8)  # [M, K3/3], 0..13
    mb = mag[:, 0::2] << np.uint8(4)
    mb |= mag[:, 1::2]  # [M, K3/6]: byte of triples 2c, 2c+1
    grid = _mag_grid(m, k3, BM, BK, 6)
    np.copyto(out[:nmag].reshape(tuple(grid[i] for i in _MAG_TO_FILE)), mb.reshape(grid).transpose(_MAG_TO_FILE))

    sgn = (v < 0).view(np.uint8)  # [M, K3/3]
    sgrid = _sgn_grid(m, k3, BM, BK)
    bits = sgn.reshape(sgrid).transpose(_SGN_TO_FILE).reshape(-1, 16, 16)  # (.., word b, bit a)
    words = np.packbits(bits, axis=-1)  # [.., 16, 2]: bits a=0..7 then 8..15, MSB first
    out[nmag:nmag + nsgn].reshape(-1, 16, 2)[...] = words[:, :, ::-1]  # uint16 little-endian

    if k2:
        tb = pair_bytes(np.ascontiguousarray(q[:, k3:]))  # [M, K2/4]
        tgrid = _mag_grid(m, k2, BM, 32, 4)
        start = nmag + nsgn
        np.copyto(out[start:start + m * k2 // 4].reshape(tuple(tgrid[i] for i in _MAG_TO_FILE)),
                  tb.reshape(tgrid).transpose(_MAG_TO_FILE))
    return out


def tl2_unpack(data: np.ndarray, shape: tuple[int, int], BM: int, BK: int) -> np.ndarray | None:
    """int8 [M, K] from the first tl2_real_size bytes, or None on a magnitude above 13 or a
    tail pair code above 8."""
    m, k = shape
    k3, k2, nmag, nsgn = tl2_parts((m, k), BK)
    data = np.ascontiguousarray(data, dtype=np.uint8)
    values = np.empty((m, k), dtype=np.int8)
    if nibbles_above(data[:nmag], 13):
        return None
    grid = _mag_grid(m, k3, BM, BK, 6)
    mb = data[:nmag].reshape(tuple(grid[i] for i in _MAG_TO_FILE)).transpose(_MAG_FROM_FILE).reshape(m, k3 // 6)

    words = data[nmag:nmag + nsgn].reshape(-1, 16, 2)[:, :, ::-1]
    bits = np.unpackbits(words, axis=-1)  # [.., word b, bit a]
    sgrid = _sgn_grid(m, k3, BM, BK)
    sgn = bits.reshape(tuple(sgrid[i] for i in _SGN_TO_FILE)).transpose(_SGN_FROM_FILE).reshape(m, k3 // 6, 2)

    idx = mb.astype(np.uint16) << np.uint16(2)
    idx |= sgn[:, :, 0] << np.uint8(1)
    idx |= sgn[:, :, 1]
    six = _TRIPLE_LUT[idx].view(np.int8).reshape(m, k3 // 6, 8)
    values[:, :k3].reshape(m, k3 // 6, 6)[...] = six[:, :, :6]

    if k2:
        start = nmag + nsgn
        raw = data[start:start + m * k2 // 4]
        if nibbles_above(raw, 8):
            return None
        tgrid = _mag_grid(m, k2, BM, 32, 4)
        tb = raw.reshape(tuple(tgrid[i] for i in _MAG_TO_FILE)).transpose(_MAG_FROM_FILE)
        values[:, k3:] = pair_values(tb.reshape(m, k2 // 4))
    return values
