"""TL1/TL2 pack/unpack inner loops (bitconv.pack.tl1, tl2; numpy reference in tests/reference_packing.py).

Both layouts emit each kernel tile column by column: consecutive file bytes belong to
consecutive rows (16 rows for TL1, 32 with a fixed chunk order for TL2) of one column of
per-row codes. So every kernel works one sub-tile (bm or 32 rows x one tile of columns)
at a time, in two steps that both stay in L1:
1. per row, contiguous: ternary values -> code bytes of the row (TL1/TL2 pair codes, TL2
   triple magnitudes and sign bits) into a small scratch matrix, with byte-wide SIMD and
   a running maximum that detects values outside {-1, 0, 1};
2. the scratch matrix is transposed in 8x8 byte blocks held in eight uint64 registers
   (three rounds of shift/mask/xor) and each transposed row, i.e. 8 consecutive rows of
   one column, is stored as one uint64 at its place in the file.
Unpacking runs the same steps backwards. Tile shapes whose columns are not a multiple of
8 bytes (tiny BK, never a stock config) use a plain byte loop for step 2.
"""

from __future__ import annotations

import numpy as np

from . import jit

_M32 = np.uint64(0x00000000FFFFFFFF)
_M16 = np.uint64(0x0000FFFF0000FFFF)
_M8 = np.uint64(0x00FF00FF00FF00FF)
_S32 = np.uint64(32)
_S16 = np.uint64(16)
_S8 = np.uint64(8)


@jit
def transpose8(a0, a1, a2, a3, a4, a5, a6, a7):  # type: ignore[no-untyped-def]
    """8x8 bytes: input word i holds row i (byte j = column j); output word j holds column j."""
    t = ((a0 >> _S32) ^ a4) & _M32
    a0 ^= t << _S32
    a4 ^= t
    t = ((a1 >> _S32) ^ a5) & _M32
    a1 ^= t << _S32
    a5 ^= t
    t = ((a2 >> _S32) ^ a6) & _M32
    a2 ^= t << _S32
    a6 ^= t
    t = ((a3 >> _S32) ^ a7) & _M32
    a3 ^= t << _S32
    a7 ^= t

    t = ((a0 >> _S16) ^ a2) & _M16
    a0 ^= t << _S16
    a2 ^= t
    t = ((a1 >> _S16) ^ a3) & _M16
    a1 ^= t << _S16
    a3 ^= t
    t = ((a4 >> _S16) ^ a6) & _M16
    a4 ^= t << _S16
    a6 ^= t
    t = ((a5 >> _S16) ^ a7) & _M16
    a5 ^= t << _S16
    a7 ^= t

    t = ((a0 >> _S8) ^ a1) & _M8
    a0 ^= t << _S8
    a1 ^= t
    t = ((a2 >> _S8) ^ a3) & _M8
    a2 ^= t << _S8
    a3 ^= t
    t = ((a4 >> _S8) ^ a5) & _M8
    a4 ^= t << _S8
    a5 ^= t
    t = ((a6 >> _S8) ^ a7) & _M8
    a6 ^= t << _S8
    a7 ^= t
    return a0, a1, a2, a3, a4, a5, a6, a7


# -- TL1 ---------------------------------------------------------------------------------------------
# Sub-tile (i0, i1, i2) = rows i0*BM + i2*bm .. +bm, pair-byte columns i1*BK/4 .. +BK/4, is one
# contiguous run of bm*BK/4 file bytes in the order (i3, i4, i5, i7): file byte
# ((i3*(bm/16) + i4)*(by/4) + i5)*16 + i7 is the pair byte of row i4*16 + i7, column i3*(by/4) + i5.
# The kernels walk the bm rows of (i0, i2) along all of K (long SIMD rows), then place or
# fetch the runs of every i1.


@jit
def _tl1_column_offsets(bk4: int, bm: int) -> np.ndarray:
    """Offset inside a sub-tile's run of row 0's pair byte in each byte column c."""
    by4 = 64 // bm
    offs = np.empty(bk4, np.int64)
    for c in range(bk4):
        offs[c] = ((c // by4) * (bm // 16) * by4 + c % by4) * 16
    return offs


@jit
def _tl1_row_offset(r: int, bm: int) -> int:
    """Offset of row r (i4*16 + i7) from row 0 in the same column."""
    return (r >> 4) * (64 // bm) * 16 + (r & 15)


@jit
def tl1_pack(values: np.ndarray, out: np.ndarray, m: int, k: int, BM: int, BK: int, bm: int) -> bool:
    """values: uint8 view of int8 [m*k]; out: uint8 [m*k/4]. False on a value outside {-1, 0, 1}."""
    k4 = k // 4
    bk4 = BK // 4
    nk = k // BK
    nsub = BM // bm
    offs = _tl1_column_offsets(bk4, bm)
    scratch = np.empty(bm * k4, np.uint8)  # pair bytes of bm whole rows
    wide = bk4 % 8 == 0
    s64 = scratch.view(np.uint64)
    o64 = out.view(np.uint64)
    w8 = k4 // 8
    top = np.uint8(0)
    one = np.uint8(1)
    for i0 in range(m // BM):
        for i2 in range(nsub):
            row0 = i0 * BM + i2 * bm
            for r in range(bm):
                src = values[(row0 + r) * k:(row0 + r + 1) * k]
                dst = scratch[r * k4:(r + 1) * k4]
                for c in range(k4):
                    q0 = np.uint8(src[4 * c] + one)
                    q1 = np.uint8(src[4 * c + 1] + one)
                    q2 = np.uint8(src[4 * c + 2] + one)
                    q3 = np.uint8(src[4 * c + 3] + one)
                    top = max(top, max(max(q0, q1), max(q2, q3)))
                    dst[c] = np.uint8(q0 * np.uint8(48) + q1 * np.uint8(16) + q2 * np.uint8(3) + q3)
            for i1 in range(nk):
                run = ((i0 * nk + i1) * nsub + i2) * bm * bk4
                if wide:
                    for rb in range(bm // 8):
                        rbase = run + _tl1_row_offset(rb * 8, bm)
                        for cb in range(bk4 // 8):
                            s = rb * 8 * w8 + i1 * (bk4 // 8) + cb
                            b = transpose8(s64[s], s64[s + w8], s64[s + 2 * w8], s64[s + 3 * w8],
                                           s64[s + 4 * w8], s64[s + 5 * w8], s64[s + 6 * w8], s64[s + 7 * w8])
                            for j in range(8):
                                o64[(rbase + offs[cb * 8 + j]) >> 3] = b[j]
                else:
                    for r in range(bm):
                        rbase = run + _tl1_row_offset(r, bm)
                        for c in range(bk4):
                            out[rbase + offs[c]] = scratch[r * k4 + i1 * bk4 + c]
    return top <= 2


@jit
def tl1_unpack(data: np.ndarray, values: np.ndarray, m: int, k: int, BM: int, BK: int, bm: int) -> bool:
    """data: uint8 [m*k/4] file bytes; values: uint8 view of the int8 output. False on a code above 8."""
    k4 = k // 4
    bk4 = BK // 4
    nk = k // BK
    nsub = BM // bm
    offs = _tl1_column_offsets(bk4, bm)
    scratch = np.empty(bm * k4, np.uint8)
    wide = bk4 % 8 == 0
    s64 = scratch.view(np.uint64)
    d64 = data.view(np.uint64)
    w8 = k4 // 8
    top = np.uint8(0)
    one = np.uint8(1)
    three = np.uint8(3)
    for i0 in range(m // BM):
        for i2 in range(nsub):
            row0 = i0 * BM + i2 * bm
            for i1 in range(nk):
                run = ((i0 * nk + i1) * nsub + i2) * bm * bk4
                if wide:
                    for rb in range(bm // 8):
                        rbase = run + _tl1_row_offset(rb * 8, bm)
                        for cb in range(bk4 // 8):
                            c = rbase + offs[cb * 8]  # file words: 8 rows of one column each
                            a = transpose8(d64[c >> 3], d64[(rbase + offs[cb * 8 + 1]) >> 3],
                                           d64[(rbase + offs[cb * 8 + 2]) >> 3], d64[(rbase + offs[cb * 8 + 3]) >> 3],
                                           d64[(rbase + offs[cb * 8 + 4]) >> 3], d64[(rbase + offs[cb * 8 + 5]) >> 3],
                                           d64[(rbase + offs[cb * 8 + 6]) >> 3], d64[(rbase + offs[cb * 8 + 7]) >> 3])
                            s = rb * 8 * w8 + i1 * (bk4 // 8) + cb
                            for j in range(8):
                                s64[s + j * w8] = a[j]
                else:
                    for r in range(bm):
                        rbase = run + _tl1_row_offset(r, bm)
                        for c in range(bk4):
                            scratch[r * k4 + i1 * bk4 + c] = data[rbase + offs[c]]
            for r in range(bm):
                src = scratch[r * k4:(r + 1) * k4]
                dst = values[(row0 + r) * k:(row0 + r + 1) * k]
                for c in range(k4):
                    b = src[c]
                    hi = np.uint8(b >> 4)
                    lo = np.uint8(b & np.uint8(15))
                    top = max(top, max(hi, lo))
                    h3 = np.uint8((hi * np.uint8(11)) >> 5)  # hi // 3 for hi <= 8
                    l3 = np.uint8((lo * np.uint8(11)) >> 5)
                    dst[4 * c] = np.uint8(h3 - one)
                    dst[4 * c + 1] = np.uint8(hi - three * h3 - one)
                    dst[4 * c + 2] = np.uint8(l3 - one)
                    dst[4 * c + 3] = np.uint8(lo - three * l3 - one)
    return top <= 8
