"""I2_S pack/unpack inner loops (bitconv.pack.i2s; the numpy formulas live in tests/reference_packing.py).

Every I2_S code order is the same loop over "groups": group g owns `4*lane` consecutive
values of the row-major matrix and `lane` consecutive bytes, and byte j of the group holds
the values j, j+lane, j+2*lane, j+3*lane (high bits first). x86-act is lane 32 (blocks of
128 values), arm lane 16 (blocks of 64) and x86-1x4 lane K (four rows per group).

The inner loop walks four contiguous slices at once, which LLVM turns into byte-wide SIMD;
validation rides along as a running maximum (codes `t + 1` above 2 mean a value outside
{-1, 0, 1}; in unpack the code 3 is the only invalid one), so neither direction needs a
second pass over the weights. The kernels return False instead of raising, and the
caller raises the typed error with the tensor's name.
"""

from __future__ import annotations

import numpy as np

from . import jit


@jit
def i2s_pack(values: np.ndarray, out: np.ndarray, ngroups: int, lane: int) -> bool:
    """values: uint8 view of int8 [ngroups*4*lane]; out: uint8 [ngroups*lane]. False on a bad value."""
    # a literal lane lets LLVM specialize the inlined loop (x86-act and arm ~1.6x faster)
    if lane == 32:
        top = _pack_groups(values, out, ngroups, 32)
    elif lane == 16:
        top = _pack_groups(values, out, ngroups, 16)
    else:
        top = _pack_groups(values, out, ngroups, lane)
    return top <= 2


@jit
def i2s_unpack(codes: np.ndarray, values: np.ndarray, ngroups: int, lane: int) -> bool:
    """codes: uint8 [ngroups*lane]; values: uint8 view of the int8 output. False on the code 3."""
    if lane == 32:
        bad = _unpack_groups(codes, values, ngroups, 32)
    elif lane == 16:
        bad = _unpack_groups(codes, values, ngroups, 16)
    else:
        bad = _unpack_groups(codes, values, ngroups, lane)
    return bad == 0


@jit
def _pack_groups(values: np.ndarray, out: np.ndarray, ngroups: int, lane: int) -> np.uint8:
    """The packing loop; returns the largest code `t + 1` seen (above 2: a bad value)."""
    top = np.uint8(0)
    one = np.uint8(1)
    for g in range(ngroups):
        src = g * 4 * lane
        s0 = values[src:src + lane]
        s1 = values[src + lane:src + 2 * lane]
        s2 = values[src + 2 * lane:src + 3 * lane]
        s3 = values[src + 3 * lane:src + 4 * lane]
        d = out[g * lane:(g + 1) * lane]
        for j in range(lane):
            q0 = np.uint8(s0[j] + one)  # -1 (0xFF) wraps to 0
            q1 = np.uint8(s1[j] + one)
            q2 = np.uint8(s2[j] + one)
            q3 = np.uint8(s3[j] + one)
            top = max(top, max(max(q0, q1), max(q2, q3)))
            d[j] = np.uint8((q0 << 6) | (q1 << 4) | (q2 << 2) | q3)
    return top


@jit
def _unpack_groups(codes: np.ndarray, values: np.ndarray, ngroups: int, lane: int) -> np.uint8:
    """The unpacking loop; returns the OR of every byte's code-3 bits (non-zero: corrupt)."""
    bad = np.uint8(0)
    one = np.uint8(1)
    three = np.uint8(3)
    for g in range(ngroups):
        dst = g * 4 * lane
        d0 = values[dst:dst + lane]
        d1 = values[dst + lane:dst + 2 * lane]
        d2 = values[dst + 2 * lane:dst + 3 * lane]
        d3 = values[dst + 3 * lane:dst + 4 * lane]
        s = codes[g * lane:(g + 1) * lane]
        for j in range(lane):
            b = s[j]
            bad |= np.uint8(b & (b >> one) & np.uint8(0x55))
            d0[j] = np.uint8((b >> 6) - one)  # code 0 wraps to 0xFF = int8 -1
            d1[j] = np.uint8(((b >> 4) & three) - one)
            d2[j] = np.uint8(((b >> 2) & three) - one)
            d3[j] = np.uint8((b & three) - one)
    return bad
