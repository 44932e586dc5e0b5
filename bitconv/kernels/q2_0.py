"""Q2_0 pack and unpack kernels (mainline llama.cpp's 2-bit type, FORMATS.md §6b).

Blocks of 64 values, 18 bytes each: fp16 d, then 16 code bytes, value j at byte j // 4,
bits 2·(j % 4). One call per tensor, one row at a time in two steps: a long loop over the
row's K values (which LLVM vectorizes; its loads or stores are four-way interleaved) into a
row buffer of code bytes, and a short per-block step that moves those bytes between the
buffer and the 18-byte blocks as 16-bit words (blocks are 9 of them), with the block's d.
A single per-block loop was 2-3x slower: a 16-byte inner loop is too short to vectorize.
Slices keep indices non-negative loop counters (see kernels/tq.py).

Scales: `sc` is the fp16 bits of the group scales, [Ms, Gs] uint16, with `per` 64-blocks per
group, as in kernels/tq.py. The numpy formulas these replace are kept as the reference in
tests/reference_packing_tq.py.
"""

from __future__ import annotations

import numpy as np

from . import jit
from .floats import to_f32

QK = 64
HALF = 9  # uint16 words per 18-byte block: d, then 8 words of codes
CODE_WORDS = 8
ALL_ZERO = 0x5555  # two code bytes of four t = 0 values (code 1) each


@jit
def q2_0_pack(u, m, k, sc, per, out):
    """uint8 view of int8 values [M*K] -> Q2_0 blocks [nb*18] (an even-aligned uint8 array).

    Returns mx: mx > 2 when a value is outside {-1, 0, 1} (the output is then not
    meaningful). All-zero blocks store d = 0 whatever their group's scale; a scale that fp16
    does not hold is refused before this runs (Layout._check_scales)."""
    kb = k // 4  # code bytes per row
    nbr = k // QK
    ms = sc.shape[0]
    out16 = out.view(np.uint16)
    row = np.empty(kb, np.uint8)
    row16 = row.view(np.uint16)
    nzs = np.empty(nbr, np.uint16)  # per block of the row: 0 when all its values are 0
    one = np.uint8(1)
    mx = np.uint8(0)
    for r in range(m):
        ur = u[r * k:(r + 1) * k]
        for i in range(kb):
            c0 = np.uint8(ur[4 * i] + one)  # t + 1, wrapping: -1 -> 0
            c1 = np.uint8(ur[4 * i + 1] + one)
            c2 = np.uint8(ur[4 * i + 2] + one)
            c3 = np.uint8(ur[4 * i + 3] + one)
            mx = max(mx, max(max(c0, c1), max(c2, c3)))
            row[i] = np.uint8(c0 | (c1 << 2) | (c2 << 4) | (c3 << 6))
        orow = out16[r * nbr * HALF:(r + 1) * nbr * HALF]
        for c in range(nbr):  # code bytes into the blocks
            ob = orow[c * HALF:(c + 1) * HALF]
            cb = row16[c * CODE_WORDS:(c + 1) * CODE_WORDS]
            diff = np.uint16(0)
            for i in range(CODE_WORDS):
                ob[1 + i] = cb[i]
                diff |= cb[i] ^ np.uint16(ALL_ZERO)
            nzs[c] = diff
        sr = sc[r if ms > 1 else 0]
        for g in range(nbr // per):  # then each block's d (a separate loop vectorizes better)
            s = sr[g]
            for c in range(g * per, (g + 1) * per):
                d = s if nzs[c] != 0 else np.uint16(0)
                orow[c * HALF] = d
    return mx


@jit
def q2_0_unpack(data, m, k, vals, d):
    """Q2_0 blocks [nb*18] (even-aligned uint8) -> values t = q - 1 [M*K] (as uint8 bytes)
    and d [nb] as float32.

    Returns the index of the first block holding code 3 (+2·d, a 2-bit model, not ternary),
    or -1; code 3 decodes to +2."""
    kb = k // 4
    nbr = k // QK
    data16 = data.view(np.uint16)
    row = np.empty(kb, np.uint8)
    row16 = row.view(np.uint16)
    first_bad = -1
    for r in range(m):
        irow = data16[r * nbr * HALF:(r + 1) * nbr * HALF]
        drow = d[r * nbr:(r + 1) * nbr]
        for c in range(nbr):
            ib = irow[c * HALF:(c + 1) * HALF]
            cb = row16[c * CODE_WORDS:(c + 1) * CODE_WORDS]
            for i in range(CODE_WORDS):
                cb[i] = ib[1 + i]
        for c in range(nbr):  # a separate loop: the widening's branches kept the copy scalar
            drow[c] = to_f32(np.int16(irow[c * HALF]))
        vr = vals[r * k:(r + 1) * k]
        three = np.uint8(0)
        for i in range(kb):
            x = row[i]
            three |= np.uint8(x & (x >> 1) & 0x55)  # bit 2j set: code j of the byte is 3
            vr[4 * i] = np.uint8((x & 3) + 255)
            vr[4 * i + 1] = np.uint8(((x >> 2) & 3) + 255)
            vr[4 * i + 2] = np.uint8(((x >> 4) & 3) + 255)
            vr[4 * i + 3] = np.uint8((x >> 6) + 255)
        if three != 0 and first_bad < 0:  # the error path: find the block
            for i in range(kb):
                x = row[i]
                if x & (x >> 1) & 0x55:
                    first_bad = r * nbr + i // (QK // 4)
                    break
    return first_bad
