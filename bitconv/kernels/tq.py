"""TQ1_0 / TQ2_0 pack and unpack kernels (llama.cpp's ternary block types, FORMATS.md §6).

One call per tensor, values flat and C-contiguous. TQ2_0 reads them as the uint8 view of
int8, so that code `q = t + 1` is a wrapping uint8 add (-1 -> 0, 0 -> 1, 1 -> 2) and any
other value becomes a code above 2; TQ1_0 reads int8 and tracks the smallest and largest
value. Either way a value outside {-1, 0, 1} is reported instead of packed as a
valid-looking wrong code. Every inner loop has a fixed trip count over one 256-value block,
which LLVM turns into vector code: each block is taken as a slice first, so indices are
loop counters LLVM knows are non-negative (indexing the whole array with computed offsets
keeps numba's negative-index wraparound and compiles to scalar gathers, ten times slower).

Scales: `sc` holds the fp16 bits of the tensor's group scales as a [Ms, Gs] uint16 array
(Ms = 1 for a per-tensor scale, else M; Gs groups per row); block `c` of row `r` takes
`sc[r or 0, c // per]`. An all-zero block stores d = 0, as gguf.quants writes it.

The numpy formulas these replace are kept as the reference in tests/reference_packing_tq.py.
"""

from __future__ import annotations

import numpy as np

from . import jit
from .floats import to_f32

QK = 256
TQ2_BYTES = 66  # 64 code bytes, fp16 d
TQ1_BYTES = 54  # 32 + 16 + 4 code bytes, fp16 d


@jit
def _block_d(lo, hi):
    """A block's little-endian fp16 d, widened by the one routine every kernel uses
    (`floats.to_f32`: exact for every finite value and infinity; a NaN stays NaN)."""
    return to_f32(np.int16(np.uint16(lo) | (np.uint16(hi) << np.uint16(8))))


@jit
def _store_scales(orow, nzs, sc_row, per, block_bytes, at):
    """Each block's fp16 d at byte `at` of its block: its group's scale, or 0 when all-zero.

    A separate pass per row: deciding d inside the block loop kept LLVM from vectorizing
    the code loop (2.3x slower)."""
    for g in range(nzs.shape[0] // per):
        s = sc_row[g]
        for c in range(g * per, (g + 1) * per):
            d = s if nzs[c] != 0 else np.uint16(0)
            orow[c * block_bytes + at] = np.uint8(d & 0xFF)
            orow[c * block_bytes + at + 1] = np.uint8(d >> 8)


@jit
def tq2_0_pack(u, m, k, sc, per, out):
    """uint8 view of int8 values [M*K] -> TQ2_0 blocks [nb*66]; returns True when a value is
    outside {-1, 0, 1} (a code q = t + 1 above 2; the output is then not meaningful)."""
    nbr = k // QK
    ms = sc.shape[0]
    one = np.uint8(1)
    mx = np.uint8(0)
    nzs = np.empty(nbr, np.uint8)  # per block of the row: OR of its values (0: all zero)
    for r in range(m):
        for c in range(nbr):
            b = r * nbr + c
            ub = u[b * QK:(b + 1) * QK]
            ob = out[b * TQ2_BYTES:(b + 1) * TQ2_BYTES]
            nz = np.uint8(0)
            for h in range(2):
                for j in range(32):
                    a = 128 * h + j
                    c0 = np.uint8(ub[a] + one)
                    c1 = np.uint8(ub[a + 32] + one)
                    c2 = np.uint8(ub[a + 64] + one)
                    c3 = np.uint8(ub[a + 96] + one)
                    nz |= np.uint8((c0 ^ one) | (c1 ^ one) | (c2 ^ one) | (c3 ^ one))
                    mx = max(mx, max(max(c0, c1), max(c2, c3)))
                    ob[32 * h + j] = np.uint8(c0 | (c1 << 2) | (c2 << 4) | (c3 << 6))
            nzs[c] = nz
        _store_scales(out[r * nbr * TQ2_BYTES:(r + 1) * nbr * TQ2_BYTES], nzs, sc[r if ms > 1 else 0],
                      per, TQ2_BYTES, 64)
    return mx > 2


@jit
def tq2_0_unpack(data, nb, vals, d):
    """TQ2_0 blocks [nb*66] -> int8 values [nb*256] (as uint8 bytes) and d [nb] as float32.

    Returns the index of the first block holding code 3, or -1. TQ2_0 is ternary (llama.cpp's
    quantizer writes codes 0..2 only) and code 3 would decode to +2·d, a value no ternary model
    has, so the caller refuses it; the block is found with a flag OR-ed over the block's bytes,
    which keeps the decode loop vector code. Every code still decodes (3 gives +2, as the
    numpy reference), so the kernel stays total over bytes."""
    first_bad = -1
    for b in range(nb):
        ib = data[b * TQ2_BYTES:(b + 1) * TQ2_BYTES]
        ob = vals[b * QK:(b + 1) * QK]
        three = np.uint8(0)
        for h in range(2):
            for j in range(32):
                x = ib[32 * h + j]
                three |= np.uint8(x & (x >> 1) & 0x55)  # bit 2f set: field f of the byte is 3
                o = 128 * h + j
                ob[o] = np.uint8((x & 3) + 255)
                ob[o + 32] = np.uint8(((x >> 2) & 3) + 255)
                ob[o + 64] = np.uint8(((x >> 4) & 3) + 255)
                ob[o + 96] = np.uint8((x >> 6) + 255)
        if three != 0 and first_bad < 0:
            first_bad = b
        d[b] = _block_d(ib[64], ib[65])
    return first_bad


@jit
def _tq1_byte(t0, t1, t2, t3, t4):
    """Five values t (int16, -1..1) -> one TQ1_0 byte: the base-3 number of the codes t + 1
    (Σ 3^(4-f)·(t_f + 1) = Σ 3^(4-f)·t_f + 121), scaled to 0..255, rounded up. Computing
    with t saves the five t + 1; a four-digit byte passes t4 = -1 (code 0)."""
    x = np.int16(81) * t0 + np.int16(27) * t1 + np.int16(9) * t2 + np.int16(3) * t3 + t4 + np.int16(121)
    return np.uint8((np.uint16(x) * np.uint16(256) + np.uint16(242)) // np.uint16(243))


@jit
def tq1_0_pack(v, m, k, sc, per, out):
    """int8 values [M*K] -> TQ1_0 blocks [nb*54]; returns True when a value is outside
    {-1, 0, 1} (the output is then not meaningful).

    Byte j < 32 holds values 32f + j (f = 0..4), byte 32 + j < 48 values 160 + 16f + j,
    byte 48 + j < 52 values 240 + 4f + j (four digits; the fifth is 0)."""
    nbr = k // QK
    ms = sc.shape[0]
    lo = np.int8(0)
    hi = np.int8(0)
    nzs = np.empty(nbr, np.uint8)
    for r in range(m):
        for c in range(nbr):
            b = r * nbr + c
            ub = v[b * QK:(b + 1) * QK]
            ob = out[b * TQ1_BYTES:(b + 1) * TQ1_BYTES]
            nz = np.int8(0)
            for j in range(32):
                t0, t1, t2, t3, t4 = ub[j], ub[32 + j], ub[64 + j], ub[96 + j], ub[128 + j]
                nz |= t0 | t1 | t2 | t3 | t4
                lo = min(lo, min(min(min(t0, t1), min(t2, t3)), t4))
                hi = max(hi, max(max(max(t0, t1), max(t2, t3)), t4))
                ob[j] = _tq1_byte(np.int16(t0), np.int16(t1), np.int16(t2), np.int16(t3), np.int16(t4))
            for j in range(16):
                t0, t1, t2, t3, t4 = ub[160 + j], ub[176 + j], ub[192 + j], ub[208 + j], ub[224 + j]
                nz |= t0 | t1 | t2 | t3 | t4
                lo = min(lo, min(min(min(t0, t1), min(t2, t3)), t4))
                hi = max(hi, max(max(max(t0, t1), max(t2, t3)), t4))
                ob[32 + j] = _tq1_byte(np.int16(t0), np.int16(t1), np.int16(t2), np.int16(t3), np.int16(t4))
            for j in range(4):
                t0, t1, t2, t3 = ub[240 + j], ub[244 + j], ub[248 + j], ub[252 + j]
                nz |= t0 | t1 | t2 | t3
                lo = min(lo, min(min(t0, t1), min(t2, t3)))
                hi = max(hi, max(max(t0, t1), max(t2, t3)))
                ob[48 + j] = _tq1_byte(np.int16(t0), np.int16(t1), np.int16(t2), np.int16(t3), np.int16(-1))
            nzs[c] = np.uint8(nz)
        _store_scales(out[r * nbr * TQ1_BYTES:(r + 1) * nbr * TQ1_BYTES], nzs, sc[r if ms > 1 else 0],
                      per, TQ1_BYTES, 52)
    return lo < -1 or hi > 1


@jit
def _tq1_digits(x, ob, n, j, five):
    """The base-3 digits of TQ1_0 byte x, minus 1, to ob[f·n + j]: digit f is
    (x·3^f mod 256)·3 >> 8."""
    mul = np.uint8(1)
    for f in range(5 if five else 4):
        y = np.uint16(np.uint8(x * mul))
        ob[f * n + j] = np.uint8(((y * np.uint16(3)) >> 8) + 255)
        mul = np.uint8(mul * np.uint8(3))


@jit
def tq1_0_unpack(data, nb, vals, d):
    """TQ1_0 blocks [nb*54] -> int8 values [nb*256] (as uint8 bytes) and d [nb] as float32.
    Every byte decodes to digits 0..2, so no code is invalid: returns -1 (no bad block), the
    answer tq2_0_unpack gives for a valid tensor, so both unpackers share one caller."""
    for b in range(nb):
        ib = data[b * TQ1_BYTES:(b + 1) * TQ1_BYTES]
        ob = vals[b * QK:(b + 1) * QK]
        o0 = ob[0:160]
        for j in range(32):
            _tq1_digits(ib[j], o0, 32, j, True)
        o1 = ob[160:240]
        for j in range(16):
            _tq1_digits(ib[32 + j], o1, 16, j, True)
        o2 = ob[240:256]
        for j in range(4):
            _tq1_digits(ib[48 + j], o2, 4, j, False)
        d[b] = _block_d(ib[52], ib[53])
    return -1
