"""Absmean ternarization kernels: group sums of |W|, and the threshold quantizer with the
sums its statistics need. Used by `bitconv.quant`; the formulas are documented there.

Summation order (fixed, so every scale bit is the same on every machine and thread count):
inside a group, element i goes to block i // BLOCK and lane i % LANES (a last partial
block is padded with zeros, which add nothing); in each block every lane adds its 8
values in float32 in index order; each lane adds its block partials into a float64 lane
total, block after block; the group's sum is the 16 lane totals added in lane order.
Lanes let LLVM use SIMD registers without reordering any addition (no fastmath), and
float64 above the block keeps the float32 mean within an ulp of the exact one (as
torch's float32 `abs().mean()` is, in torch's own order).

Half-precision weights are read in registers (`floats.to_f32`), so a bfloat16 or float16
tensor is never widened into a float32 copy: both passes read 2 bytes per weight.

Implementation notes (each worth ~2-4x here, found by reading the generated assembly):
indices are unsigned (`np.uint64`), so numba emits no negative-index wraparound; the
block loop has a constant trip count; each block is first widened into a small buffer
that the caller allocates and the block helper is inlined into, so LLVM knows the
buffer aliases nothing and vectorizes both loops.
"""

from __future__ import annotations

import numpy as np

from . import jit
from .floats import to_f32

LANES = 16
BLOCK = 128  # 8 values per lane per block


@jit(inline=True)
def _abs_blocks(xr, stop, fb, lane, acc):
    """Add |x| of the full blocks in xr[0:stop] into the float64 lane totals `acc`.

    Each block is first widened into a local buffer, then lane j adds values j, j+16, ...
    of it in order: the documented order. Staging through `fb` is what lets the loops
    vectorize (~3x); it must be allocated in the (inlining) caller, so that LLVM knows it
    aliases nothing, as an argument of a separate function it did not."""
    for blk in range(0, stop, BLOCK):
        for i in range(BLOCK):
            fb[i] = abs(to_f32(xr[np.uint64(blk + i)]))
        lane[:] = 0
        for i in range(0, BLOCK, LANES):
            for j in range(LANES):
                lane[j] += fb[i + j]
        for j in range(LANES):
            acc[j] += np.float64(lane[j])


@jit
def abs_sums(x):
    """Per row of a C-contiguous [G, L] view of float32, bfloat16 bits (uint16) or float16
    bits (int16, see `floats`): Σ|x| in the order above (float64[G])."""
    g, n = x.shape
    out = np.empty(g, np.float64)
    fb = np.empty(BLOCK, np.float32)
    lane = np.zeros(LANES, np.float32)
    acc = np.zeros(LANES, np.float64)
    pad = np.zeros(BLOCK, np.float32)
    full = n // BLOCK * BLOCK
    for r in range(g):
        xr = x[r]
        acc[:] = 0
        _abs_blocks(xr, full, fb, lane, acc)
        if full < n:
            pad[:] = 0
            for i in range(n - full):
                pad[i] = to_f32(xr[full + i])
            _abs_blocks(pad, BLOCK, fb, lane, acc)
        s = 0.0
        for j in range(LANES):
            s += acc[j]
        out[r] = s
    return out


@jit(inline=True)
def _quantize_blocks(xr, qr, stop, t, sq, sw, cnt, sq64, sw64, fb):
    """The full blocks of xr[0:stop]: int8 codes into qr, and the lane sums of x², |x|·[t≠0]
    (float32 in a block, float64 lane totals) and the lane counts of t ≠ 0. Each block is
    widened into `fb` first (allocated by the inlining caller, as in `_abs_blocks`)."""
    mt = -t
    for blk in range(0, stop, BLOCK):
        for i in range(BLOCK):
            fb[i] = to_f32(xr[np.uint64(blk + i)])
        sq[:] = 0
        sw[:] = 0
        for i in range(blk, blk + BLOCK, LANES):
            for j in range(LANES):
                k = np.uint64(i + j)
                v = fb[i - blk + j]
                p = v >= t
                m = v <= mt
                qr[k] = np.int8(p) - np.int8(m)
                sq[j] += v * v
                sw[j] += abs(v) if (p or m) else np.float32(0.0)
                cnt[j] += np.int32(p) + np.int32(m)
        for j in range(LANES):
            sq64[j] += np.float64(sq[j])
            sw64[j] += np.float64(sw[j])


@jit
def quantize(x, thr, q, wt, nnz):
    """t = (x >= T) - (x <= -T) per row of [G, L] (float32 or 16-bit patterns, as `abs_sums`)
    into int8 `q` [G, L], with T =
    thr[g] > 0; fills wt[g] = Σ|x| over t ≠ 0 (= Σ x·t) and nnz[g]; returns ‖x‖² (float64).
    Sums follow the module's lane/block order (zero padding adds nothing and codes 0)."""
    g, n = x.shape
    sq = np.zeros(LANES, np.float32)
    sw = np.zeros(LANES, np.float32)
    cnt = np.zeros(LANES, np.int32)
    sq64 = np.zeros(LANES, np.float64)
    sw64 = np.zeros(LANES, np.float64)
    xpad = np.zeros(BLOCK, np.float32)
    qpad = np.zeros(BLOCK, np.int8)
    fbuf = np.empty(BLOCK, np.float32)
    full = n // BLOCK * BLOCK
    total_sq = 0.0
    for r in range(g):
        xr = x[r]
        qr = q[r]
        t = thr[r]
        cnt[:] = 0
        sq64[:] = 0
        sw64[:] = 0
        _quantize_blocks(xr, qr, full, t, sq, sw, cnt, sq64, sw64, fbuf)
        if full < n:
            xpad[:] = 0
            for i in range(n - full):
                xpad[i] = to_f32(xr[full + i])
            _quantize_blocks(xpad, qpad, BLOCK, t, sq, sw, cnt, sq64, sw64, fbuf)
            for i in range(n - full):  # not `qr[full:] = qpad[...]`: a slice copy makes numba compile
                qr[full + i] = qpad[i]  # its shape-mismatch error path (string formatting), ~8 s cold
        a = 0.0
        b = 0.0
        c = 0
        for j in range(LANES):
            a += sq64[j]
            b += sw64[j]
            c += cnt[j]
        total_sq += a
        wt[r] = b
        nnz[r] = c
    return total_sq
