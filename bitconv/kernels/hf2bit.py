"""Hugging Face 2-bit packing kernels (`quant_method: bitnet`, FORMATS.md §7).

Packed byte [i, k] holds the codes q = t + 1 of rows i, R + i, 2R + i, 3R + i (R = ceil(M/4))
in bits 0, 2, 4, 6; rows past M are zero bits. One call per tensor; each packed row is one
inner loop over K with non-negative loop-counter indices (rows are taken as slices, see
kernels/tq.py), which LLVM vectorizes. Values travel as the uint8 view of int8 values.

The numpy formulas these replace are kept as the reference in tests/reference_packing_tq.py.
"""

from __future__ import annotations

import numpy as np

from . import jit


@jit
def hf2bit_pack(u, out):
    """uint8 view of int8 values [M, K] -> packed [R, K]; returns the largest code seen
    (> 2: a value outside {-1, 0, 1}; the output is then not meaningful)."""
    m, k = u.shape
    r = out.shape[0]
    one = np.uint8(1)
    mx = np.uint8(0)
    for i in range(r):
        o = out[i]
        planes = min(4, (m - i + r - 1) // r)  # rows i + p·R that exist
        if planes == 4:
            a0, a1, a2, a3 = u[i], u[r + i], u[2 * r + i], u[3 * r + i]
            for j in range(k):
                c0 = np.uint8(a0[j] + one)
                c1 = np.uint8(a1[j] + one)
                c2 = np.uint8(a2[j] + one)
                c3 = np.uint8(a3[j] + one)
                mx = max(mx, max(max(c0, c1), max(c2, c3)))
                o[j] = np.uint8(c0 | (c1 << 2) | (c2 << 4) | (c3 << 6))
        else:  # the last rows when M % 4 != 0: missing rows leave zero bits
            for j in range(k):
                o[j] = 0
            for p in range(planes):
                a = u[p * r + i]
                for j in range(k):
                    cp = np.uint8(a[j] + one)
                    mx = max(mx, cp)
                    o[j] |= np.uint8(cp << (2 * p))
    return mx


@jit
def hf2bit_unpack(packed, vals):
    """Packed [R, K] -> int8 values t = q - 1 [M, K] (as uint8 bytes); returns the number of
    code-3 weights (not a ternary code; they decode to +2)."""
    m, k = vals.shape
    r = packed.shape[0]
    ones = np.uint8(0x55)
    threes = 0
    for i in range(r):
        pi = packed[i]
        planes = min(4, (m - i + r - 1) // r)
        bad = np.uint8(0)
        if planes == 4:
            o0, o1, o2, o3 = vals[i], vals[r + i], vals[2 * r + i], vals[3 * r + i]
            for j in range(k):
                x = pi[j]
                bad |= np.uint8(x & (x >> 1) & ones)  # bit 2p set: field p holds code 3
                o0[j] = np.uint8((x & 3) + 255)
                o1[j] = np.uint8(((x >> 2) & 3) + 255)
                o2[j] = np.uint8(((x >> 4) & 3) + 255)
                o3[j] = np.uint8((x >> 6) + 255)
        else:  # the last rows when M % 4 != 0: fields past M are padding, never looked at
            for p in range(planes):
                op = vals[p * r + i]
                for j in range(k):
                    q = np.uint8((pi[j] >> (2 * p)) & 3)
                    bad |= np.uint8(q & (q >> 1))
                    op[j] = np.uint8(q + 255)
        if bad:
            threes += _count_threes(pi, planes)
    return threes


@jit
def _count_threes(pi, planes):
    """Code-3 fields among the first `planes` of one packed row (the error path only)."""
    n = 0
    for j in range(pi.shape[0]):
        for p in range(planes):
            n += ((pi[j] >> (2 * p)) & 3) == 3
    return n
