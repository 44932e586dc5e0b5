"""Fused row kernels (numba) for verify's CPU default path.

Why: on the CPU the int8 GEMMs are fast (oneDNN, AMX/VNNI); the time went into the
element-wise work around them, which torch runs as one pass over memory (and often one
fresh allocation) per operation: RMSNorm (square, mean, multiply, weight), the 8-bit
activation quantizer (abs, max, scale, round, clamp, cast) and the rescale of every int32
GEMM result (cast, times s, divided by 127/γ, then the residual add or the relu² gating).
Each kernel here does all of one token row's work while the row is in cache, and the rows
are split over the torch threads (`nogil`), so a layer makes a few passes instead of ~40.

Numerics: float32 throughout, as the torch formulas they replace. The rescales
(`acc·s/(127/γ)`, then `+ x` or `relu(g)²·u`) are the same float32 operations in the same
order, so their results are bit-identical. RMSNorm sums squares in 16 float32 lanes (a
fixed order, so any thread count gives the same bytes), where torch uses its own
vectorized order: the normalized values differ in the last bit now and then, which can
move an activation across an 8-bit rounding boundary, like any float reordering. verify's
tests hold the resulting perplexity to the float path's within the documented bound.
"""

from __future__ import annotations

import numpy as np

from ..kernels import jit
from ..kernels.floats import f32_from_bits

LANES = 16


_ROUND = np.float32(12582912.0)  # 1.5·2^23: (v + R) - R is v rounded half to even, as torch.round


@jit(inline=True)
def _norm_quant_row(row, w, eps, use_norm, tmp, lanes, qi):  # pragma: no cover - compiled
    """One row (float32 [K]): optional RMSNorm (weight w [K], through tmp), then absmax
    8-bit quantization into qi (int8 [K]). Returns 127/max(γ, 1e-5).

    Written so that LLVM vectorizes every loop without fastmath: unsigned indices, the
    absmax as an integer maximum of the values' bits with the sign cleared (a float maximum
    is not vectorized; for non-negative floats the bit patterns sort as the values do), and
    rounding by adding and subtracting 1.5·2^23 (exact for |v| < 2^22, half to even)."""
    k = np.uint64(row.size)
    kk = k - k % np.uint64(LANES)
    src = row
    if use_norm:
        for l in range(LANES):
            lanes[l] = 0
        for j0 in range(np.uint64(0), kk, np.uint64(LANES)):
            for l in range(np.uint64(LANES)):
                v = row[j0 + l]
                lanes[l] += v * v
        s = np.float32(0.0)
        for l in range(LANES):
            s += lanes[l]
        for j in range(kk, k):
            s += row[j] * row[j]
        r = np.float32(1.0) / np.sqrt(s / np.float32(k) + eps)
        for j in range(k):
            tmp[j] = w[j] * (row[j] * r)
        src = tmp
    bits = src.view(np.uint32)
    m = np.uint32(0)
    for j in range(k):
        m = max(m, bits[j] & np.uint32(0x7FFFFFFF))
    g = max(f32_from_bits(np.uint32(m)), np.float32(1e-5))
    sc = (np.float32(1.0) / g) * np.float32(127.0)  # torch's `127.0 / t`: reciprocal, then times 127
    for j in range(k):
        v = np.int32((src[j] * sc + _ROUND) - _ROUND)
        qi[j] = np.int8(max(min(v, 127), -128))
    return sc


@jit
def _rms_quant_rows(x, w, eps, use_norm, r0, r1, xq, scale):  # pragma: no cover - compiled
    """Rows r0..r1 of x [N, K] float32: `_norm_quant_row` of each into xq, scale."""
    tmp = np.empty(x.shape[1], np.float32)
    lanes = np.empty(LANES, np.float32)
    for i in range(r0, r1):
        scale[i] = _norm_quant_row(x[i], w, eps, use_norm, tmp, lanes, xq[i])


@jit
def _heads_norm_quant_rows(a, w, eps, use_norm, r0, r1, xq, scale):  # pragma: no cover - compiled
    """`_rms_quant_rows` of the attention output a [b, heads, t, d] read as rows [b·t,
    heads·d] (token row r = b·t + p gathers a[b, :, p, :]), without making that copy."""
    heads, t, d = a.shape[1], a.shape[2], a.shape[3]
    row = np.empty(heads * d, np.float32)
    tmp = np.empty(heads * d, np.float32)
    lanes = np.empty(LANES, np.float32)
    for r in range(r0, r1):
        b = r // t
        p = r % t
        for h in range(heads):
            src = a[b, h, p]
            for j in range(d):
                row[h * d + j] = src[j]
        scale[r] = _norm_quant_row(row, w, eps, use_norm, tmp, lanes, xq[r])


@jit
def _relu2_norm_quant_rows(acc, rows, scale, m, w, eps, use_norm, r0, r1, xq, scale_out):  # pragma: no cover
    """relu(gate)²·up of the rescaled halves [:m], [m:] of each acc row (the same float32
    operations as `ops._k_rescale_glu`), then `_rms_quant_rows` of it, a row at a time:
    the FFN's hidden activation h never leaves the cache."""
    h = np.empty(m, np.float32)
    tmp = np.empty(m, np.float32)
    lanes = np.empty(LANES, np.float32)
    mm = np.uint64(m)
    for i in range(r0, r1):
        sc = scale[i]
        a = acc[i]
        for j in range(mm):
            g = np.float32(a[j]) * rows[j] / sc
            u = np.float32(a[mm + j]) * rows[mm + j] / sc
            g = max(g, np.float32(0.0))
            h[j] = (g * g) * u
        scale_out[i] = _norm_quant_row(h, w, eps, use_norm, tmp, lanes, xq[i])


@jit
def _rescale_add_norm_quant_rows(acc, rows, scale, x, w, eps, r0, r1, out, xq, scale_out):  # pragma: no cover
    """`_rescale_add_rows` (the residual add after o_proj) then the next RMSNorm + 8-bit
    quantization of the sum, a row at a time while it is in cache."""
    tmp = np.empty(x.shape[1], np.float32)
    lanes = np.empty(LANES, np.float32)
    m = np.uint64(acc.shape[1])
    for i in range(r0, r1):
        sc = scale[i]
        a, xi, oi = acc[i], x[i], out[i]
        for j in range(m):
            oi[j] = xi[j] + np.float32(a[j]) * rows[j] / sc
        scale_out[i] = _norm_quant_row(oi, w, eps, True, tmp, lanes, xq[i])


@jit
def _rescale_rows(acc, rows, scale, r0, r1, out):  # pragma: no cover - compiled
    """out[i, j] = acc[i, j]·rows[j] / scale[i] (float32), rows r0..r1."""
    m = acc.shape[1]
    for i in range(r0, r1):
        sc = scale[i]
        for j in range(m):
            out[i, j] = np.float32(acc[i, j]) * rows[j] / sc


@jit
def _rescale_add_rows(acc, rows, scale, x, r0, r1, out):  # pragma: no cover - compiled
    """out[i, j] = x[i, j] + acc[i, j]·rows[j] / scale[i] (the residual add after o_proj /
    down_proj; out may be x)."""
    m = acc.shape[1]
    for i in range(r0, r1):
        sc = scale[i]
        for j in range(m):
            out[i, j] = x[i, j] + np.float32(acc[i, j]) * rows[j] / sc


@jit
def _qkv_rope_rows(acc, rows, scale, heads, kv_heads, d, t, cos, sin, r0, r1, q, k, v):  # pragma: no cover
    """`_rescale_rows` of the fused q|k|v GEMM output, then rope of the q and k heads, a
    token row at a time (the rescaled row stays in cache): x·cos[p] + rotate_half(x)·sin[p]
    in HF's rotate-half convention, the two products rounded, then added, as torch does.
    q [b, heads, t, d], k and v [b, kv_heads, t, d]: what `ops._k_rescale` + `ops._k_rope`
    + a copy of v compute, bit for bit."""
    m = acc.shape[1]
    y = np.empty(m, np.float32)
    half = d // 2
    nq = heads * d
    nk = kv_heads * d
    for r in range(r0, r1):
        sc = scale[r]
        a = acc[r]
        for j in range(m):
            y[j] = np.float32(a[j]) * rows[j] / sc
        b = r // t
        p = r % t
        for h in range(heads + kv_heads):
            c = h * d
            out = q[b, h, p] if h < heads else k[b, h - heads, p]
            for j in range(half):
                x1 = y[c + j]
                x2 = y[c + half + j]
                out[j] = x1 * cos[p, j] + (-x2) * sin[p, j]
                out[half + j] = x2 * cos[p, half + j] + x1 * sin[p, half + j]
        for h in range(kv_heads):
            vo = v[b, h, p]
            c = nq + nk + h * d
            for j in range(d):
                vo[j] = y[c + j]


# ----------------------------------------------------------------------------------------
# torch-facing wrappers: rows split over the torch threads
# ----------------------------------------------------------------------------------------
_POOL: dict[int, object] = {}
MIN_ROWS_PER_THREAD = 16


def _pool(threads: int):
    pool = _POOL.get(threads)
    if pool is None:
        from concurrent.futures import ThreadPoolExecutor

        pool = _POOL[threads] = ThreadPoolExecutor(threads, thread_name_prefix="bitconv-verify")
    return pool


def _gather(futs: list) -> list:
    """Every future's result, after all of them have finished (a failing one must not leave
    the others writing into buffers the caller is about to drop)."""
    from concurrent.futures import wait

    wait(futs)
    return [f.result() for f in futs]


def split_rows(n: int, call) -> None:
    """Run call(r0, r1) over row ranges covering [0, n), one per torch thread. Each row is
    computed by one thread alone, so the result does not depend on the thread count."""
    import torch

    threads = max(1, min(torch.get_num_threads(), n // MIN_ROWS_PER_THREAD))
    if threads == 1:
        call(0, n)
        return
    step = -(-n // threads)
    pool = _pool(threads)
    _gather([pool.submit(call, s, min(n, s + step)) for s in range(0, n, step)])


def per_core(calls: list) -> list:
    """Run each of `calls` (independent work, e.g. one group of sequences through a layer)
    on its own thread, with torch's intra-op threads at 1 in each, and return their results.

    Why: a layer on the CPU is a chain of short steps (GEMMs of a few ms, row kernels of
    well under one). Run one after the other with every step split over the cores, each
    step ends in a barrier, and between torch's OpenMP steps and the numba row kernels the
    OpenMP workers spin-wait on the cores the kernels need. Two independent chains, one per
    core, have no barrier at all and nothing spinning (measured on the bench model: 16-20%
    less wall time for the layers, bit-identical hidden states). The results do not depend
    on how the work is split as long as each call's own result does not: every op of the
    fused layer computes a sequence the same way whatever else is in its batch."""
    import torch

    if len(calls) == 1:
        return [calls[0]()]
    before = torch.get_num_threads()

    def one(call):
        torch.set_num_threads(1)  # this thread's OpenMP team (and MKL's); see the restore below
        with torch.inference_mode():
            return call()

    try:
        return _gather([_pool(len(calls)).submit(one, c) for c in calls])
    finally:
        # set_num_threads also sets the default that threads starting later take: put it back
        # (the caller's own team was never changed)
        torch.set_num_threads(before)


def _np(t):
    """A contiguous CPU torch tensor as a numpy view (no copy)."""
    return t.detach().numpy()


def _quantized(n: int, k: int):
    """A quantizing kernel's outputs: int8 x_q [n, k] and float32 127/γ [n, 1] (torch), and
    the numpy views the kernel writes (127/γ flat)."""
    import torch

    xq = torch.empty((n, k), dtype=torch.int8)
    scale = torch.empty((n, 1), dtype=torch.float32)
    return xq, scale, _np(xq), _np(scale).reshape(n)


def _norm_weight(w):
    """An RMSNorm weight as the kernels take it (empty when there is no norm)."""
    return _np(w) if w is not None else np.empty(0, np.float32)


def rms_quant(x, w, eps: float):
    """x float32 [N, K] (contiguous) -> (int8 x_q [N, K], float32 127/γ [N, 1]), with the
    RMSNorm of weight w [K] (float32) first unless w is None."""
    n, k = x.shape
    xq, scale, qa, sa = _quantized(n, k)
    xa, wa, e = _np(x), _norm_weight(w), np.float32(eps)
    split_rows(n, lambda r0, r1: _rms_quant_rows(xa, wa, e, w is not None, r0, r1, qa, sa))
    return xq, scale


def heads_rms_quant(a, w, eps: float):
    """`rms_quant(a.transpose(1, 2).reshape(b·t, heads·d), w, eps)` for the attention output
    a [b, heads, t, d] (contiguous), the same bytes without the transposed copy."""
    b, heads, t, d = a.shape
    n = b * t
    xq, so, qa, sa = _quantized(n, heads * d)
    aa, wa, e = _np(a), _norm_weight(w), np.float32(eps)
    split_rows(n, lambda r0, r1: _heads_norm_quant_rows(aa, wa, e, w is not None, r0, r1, qa, sa))
    return xq, so


def relu2_rms_quant(acc, rows, scale, m: int, w, eps: float):
    """int32 acc [N, 2m] (gate | up) -> `rms_quant` of relu(gate)²·up, gate and up rescaled
    (`ops._k_rescale_glu`), in one pass: the same bytes as the two steps."""
    n = acc.shape[0]
    xq, so, qa, oa = _quantized(n, m)
    aa, ra, sa = _np(acc), _np(rows), _np(scale).reshape(n)
    wa, e = _norm_weight(w), np.float32(eps)
    split_rows(n, lambda r0, r1: _relu2_norm_quant_rows(aa, ra, sa, m, wa, e, w is not None, r0, r1, qa, oa))
    return xq, so


def rescale_add_rms_quant(acc, rows, scale, x, w, eps: float):
    """`y = rescale_add(acc, rows, scale, x)` and `rms_quant(y, w, eps)` in one pass, the
    same bytes: returns (y, x_q, 127/γ)."""
    import torch

    n, k = x.shape
    out = torch.empty_like(x)
    xq, so, qa, soa = _quantized(n, k)
    aa, ra, sa, xa, oa = _np(acc), _np(rows), _np(scale).reshape(n), _np(x), _np(out)
    wa, e = _np(w), np.float32(eps)
    split_rows(n, lambda r0, r1: _rescale_add_norm_quant_rows(aa, ra, sa, xa, wa, e, r0, r1, oa, qa, soa))
    return out, xq, so


def rescale(acc, rows, scale):
    """int32 acc [N, M] -> float32 acc·s/(127/γ) [N, M]."""
    import torch

    n, m = acc.shape
    out = torch.empty((n, m), dtype=torch.float32)
    aa, ra, sa, oa = _np(acc), _np(rows), _np(scale).reshape(n), _np(out)
    split_rows(n, lambda r0, r1: _rescale_rows(aa, ra, sa, r0, r1, oa))
    return out


def rescale_add(acc, rows, scale, x, out=None):
    """x + acc·s/(127/γ) (x float32 [N, M], contiguous), into `out` (may be x) or a new tensor."""
    import torch

    n = acc.shape[0]
    out = torch.empty_like(x) if out is None else out
    aa, ra, sa, xa, oa = _np(acc), _np(rows), _np(scale).reshape(n), _np(x), _np(out)
    split_rows(n, lambda r0, r1: _rescale_add_rows(aa, ra, sa, xa, r0, r1, oa))
    return out


def qkv_rope(acc, rows, scale, heads: int, kv_heads: int, d: int, b: int, t: int, cos, sin):
    """int32 acc [b·t, (heads + 2·kv_heads)·d] of the fused q|k|v GEMM -> (q, k, v): q and k
    rescaled and rotated, [b, heads or kv_heads, t, d]; the same bytes as `rescale`, then
    `rope` of q and k and a contiguous copy of v."""
    import torch

    n = acc.shape[0]
    q = torch.empty((b, heads, t, d), dtype=torch.float32)
    k = torch.empty((b, kv_heads, t, d), dtype=torch.float32)
    v = torch.empty((b, kv_heads, t, d), dtype=torch.float32)
    aa, ra, sa, ca, si = _np(acc), _np(rows), _np(scale).reshape(n), _np(cos), _np(sin)
    qa, ka, va = _np(q), _np(k), _np(v)
    split_rows(n, lambda r0, r1: _qkv_rope_rows(aa, ra, sa, heads, kv_heads, d, t, ca, si, r0, r1, qa, ka, va))
    return q, k, v


def tq2_0_values(blocks: np.ndarray, m: int, k: int, out=None, name: str = "tensor"):
    """TQ2_0 blocks uint8 [m·k/256, 66] -> (int8 ternary values [m, k] (torch, CPU), into
    `out` (contiguous) if given; float32 block scales [m, k/256] (numpy)), decoded by the
    format's own decoder (`pack.tq.TQ2_0.decode_rows`: code 3 refused) with the rows split
    over the torch threads."""
    import torch

    from ..pack.tq import TQ2_0

    if out is None:
        out = torch.empty((m, k), dtype=torch.int8)
    elif tuple(out.shape) != (m, k) or out.dtype != torch.int8 or not out.is_contiguous():
        raise ValueError(f"tq2_0_values: out must be contiguous int8 [{m}, {k}]")
    oa = _np(out)
    d = np.empty((m, k // 256), np.float32)
    data, lay = np.asarray(blocks).reshape(-1), TQ2_0()
    split_rows(m, lambda r0, r1: lay.decode_rows(data, (m, k), oa, d, r0, r1, name))
    return out, d
