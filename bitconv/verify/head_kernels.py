"""The output projection's statistics on verify's CPU default path (numba).

The head is one bfloat16 GEMM (`Runner._head_bf16`). Its output rounds every logit to 8
bits of mantissa; that noise on the few logits that carry a peaked distribution's mass
moves perplexity, so each row's EXACT largest logits are recomputed in float32 from the
float32 head and hidden state. These kernels do that fix-up, and the log-softmax after it,
in a few passes over each row while it is in cache, instead of torch's topk, widening
copy, scatter, max, subtract, exp, sum and gather (~90 ms of a 0.5 s forward on the bench
model, ~15 ms here).

Per row:
1. keep the maximum of each chunk of 64 bfloat16 logits;
2. the EXACT-th largest chunk maximum is a lower bound of the EXACT-th largest logit (the
   chunk maxima are distinct logits), so only chunks reaching it are scanned for the EXACT
   largest (ties: the lower index first);
3. those (and, for log-probabilities, the target's) are recomputed as float32 dot products
   (16 lanes, a fixed order) and written over their bfloat16 values;
4. log p(target) = x_t - (M + log Σ exp(x_j - M)), M the row's maximum, with exp a
   polynomial that vectorizes (Cody-Waite reduction, Cephes' expf coefficients, within
   1 ulp of exp) summed in 16 float32 lanes per 1024 and float64 across those.

Deterministic: each row is one thread's, every sum has a fixed order.
"""

from __future__ import annotations

import numpy as np

from ..kernels import jit
from ..kernels.floats import f32_from_bits, to_f32

EXACT = 8  # logits per row recomputed in float32
CHUNK = 64  # logits per chunk whose maximum decides whether the top-EXACT scan looks inside
SUM_CHUNK = 1024  # exponentials per float32 lane sum (16 lanes, 64 terms each), then float64
LANES = 16
_LOG2E = np.float32(1.4426950408889634)
_LN2_HI = np.float32(0.693359375)  # ln 2 = HI + LO, HI with few mantissa bits: k·HI is exact
_LN2_LO = np.float32(-2.12194440e-4)
_ROUND = np.float32(12582912.0)  # 1.5·2^23: x + R - R rounds x to an integer (|x| < 2^22)
_LOW = np.float32(-87.0)  # exp below is < 2^-125: clamped there, 2^k stays a normal float
_P0, _P1, _P2 = np.float32(1.9875691500e-4), np.float32(1.3981999507e-3), np.float32(8.3334519073e-3)
_P3, _P4, _P5 = np.float32(4.1665795894e-2), np.float32(1.6666665459e-1), np.float32(5.0000001201e-1)


@jit(inline=True)
def _expf(x):  # pragma: no cover - compiled
    """exp(x) for x <= 0 in float32, branch-free so a loop of it vectorizes."""
    x = max(x, _LOW)
    k = (x * _LOG2E + _ROUND) - _ROUND
    r = (x - k * _LN2_HI) - k * _LN2_LO
    p = ((((_P0 * r + _P1) * r + _P2) * r + _P3) * r + _P4) * r + _P5
    e = (p * r) * r + r + np.float32(1.0)
    return e * f32_from_bits(np.uint32((k + np.float32(127.0)) * np.float32(8388608.0)))


_NO_KEY = np.int32(-(2**31) + 1)  # below every bfloat16 key


@jit(inline=True)
def _key(b):  # pragma: no cover - compiled
    """bfloat16 bits (uint16) -> an int32 ordered as the values are (+0 and -0 equal, NaN
    above +inf). Integer maxima vectorize without fastmath; float ones do not."""
    v = np.int32(b)
    s = v >> 15
    return ((v & 0x7FFF) ^ -s) + s


@jit(inline=True)
def _key_value(k):  # pragma: no cover - compiled
    """The float32 value of a bfloat16 key (-inf for _NO_KEY)."""
    if k == _NO_KEY:
        return np.float32(-np.inf)
    bits = k if k >= 0 else (-k) | 0x8000
    return to_f32(np.uint16(bits))


@jit(inline=True)
def _insert(sk, si, cnt, k, j):  # pragma: no cover - compiled
    """Keep the EXACT largest keys seen (sk descending, si their indices); a key equal to
    one kept ranks after it, so among ties the first seen wins. Returns the new count."""
    if cnt == EXACT and not k > sk[EXACT - 1]:
        return cnt
    p = cnt if cnt < EXACT else EXACT - 1
    while p > 0 and sk[p - 1] < k:
        sk[p] = sk[p - 1]
        si[p] = si[p - 1]
        p -= 1
    sk[p] = k
    si[p] = j
    return cnt + 1 if cnt < EXACT else cnt


@jit(inline=True)
def _top(y, ckey, sk, si):  # pragma: no cover - compiled
    """The EXACT largest of the bfloat16 row y: indices si[:cnt] (cnt < EXACT only for rows
    shorter than that), and the float32 value every other logit is <= to."""
    v = np.uint64(y.size)
    nc = v // np.uint64(CHUNK)
    for c in range(nc):
        m = _NO_KEY
        for j in range(c * np.uint64(CHUNK), (c + np.uint64(1)) * np.uint64(CHUNK)):
            m = max(m, _key(y[j]))
        ckey[c] = m
    cnt = 0
    for c in range(nc):  # the EXACT largest chunk maxima: distinct logits, so a lower bound
        cnt = _insert(sk, si, cnt, ckey[c], c)
    thr = sk[EXACT - 1] if cnt == EXACT else _NO_KEY
    cnt = 0
    for c in range(nc):
        if ckey[c] >= thr:
            for j in range(c * np.uint64(CHUNK), (c + np.uint64(1)) * np.uint64(CHUNK)):
                k = _key(y[j])
                if k >= thr:
                    cnt = _insert(sk, si, cnt, k, j)
    for j in range(nc * np.uint64(CHUNK), v):
        k = _key(y[j])
        if k >= thr:
            cnt = _insert(sk, si, cnt, k, j)
    return cnt, _key_value(sk[EXACT - 1] if cnt == EXACT else thr)


@jit(inline=True)
def _dot(w, j, h, i, lanes):  # pragma: no cover - compiled
    """w[j]·h[i] in float32, 16 lanes then their sum (a fixed order)."""
    k = np.uint64(h.shape[1])
    kk = k - k % np.uint64(LANES)
    for l in range(LANES):
        lanes[l] = 0
    for j0 in range(np.uint64(0), kk, np.uint64(LANES)):
        for l in range(np.uint64(LANES)):
            lanes[l] += w[j, j0 + l] * h[i, j0 + l]
    s = np.float32(0.0)
    for l in range(LANES):
        s += lanes[l]
    for c in range(kk, k):
        s += w[j, c] * h[i, c]
    return s


@jit
def head_fix_rows(y, w, h, r0, r1, out):  # pragma: no cover - compiled
    """out[i] = float32 logits of row i: y[i] (bfloat16 bits, uint16) widened, its EXACT
    largest recomputed as w[j]·h[i] in float32."""
    v = np.uint64(y.shape[1])
    ckey = np.empty(v // np.uint64(CHUNK) + np.uint64(1), np.int32)
    lanes = np.empty(LANES, np.float32)
    sk = np.empty(EXACT, np.int32)
    si = np.empty(EXACT, np.int64)
    for i in range(r0, r1):
        yi, oi = y[i], out[i]
        for j in range(v):
            oi[j] = to_f32(yi[j])
        cnt, bound = _top(yi, ckey, sk, si)
        for e in range(cnt):
            oi[si[e]] = _dot(w, si[e], h, i, lanes)


@jit
def head_logprob_rows(y, w, h, tgt, r0, r1, lp, am):  # pragma: no cover - compiled
    """lp[i] = log p(tgt[i]) and am[i] = argmax (the first index of the maximum) of row i's
    logits, made as `head_fix_rows` makes them, the target's also recomputed in float32.

    The bfloat16 row is read as it is: the sum of exponentials runs over it and then swaps
    each recomputed logit's term for its float32 one (an absolute error of a few ulp of the
    sum, so of log-probabilities)."""
    v = np.uint64(y.shape[1])
    ns = v // np.uint64(SUM_CHUNK)
    ckey = np.empty(v // np.uint64(CHUNK) + np.uint64(1), np.int32)
    lanes = np.empty(LANES, np.float32)
    tot = np.empty(LANES, np.float64)
    sk = np.empty(EXACT, np.int32)
    si = np.empty(EXACT + 1, np.int64)
    ev = np.empty(EXACT + 1, np.float32)
    row = np.empty(0, np.float32)
    for i in range(r0, r1):
        yi = y[i]
        cnt, bound = _top(yi, ckey, sk, si)
        t = tgt[i]
        found = False
        for e in range(cnt):
            found = found or si[e] == t
        if not found:
            si[cnt] = t
            cnt += 1
        best = np.float32(-np.inf)
        arg = np.int64(-1)
        for e in range(cnt):
            x = _dot(w, si[e], h, i, lanes)
            ev[e] = x
            if x > best or (x == best and si[e] < arg):
                best, arg = x, si[e]
        if not best > bound:  # a logit not recomputed may reach the maximum: look at all of them
            if row.size == 0:
                row = np.empty(v, np.float32)
            for j in range(v):
                row[j] = to_f32(yi[j])
            for e in range(cnt):
                row[si[e]] = ev[e]
            best, arg = np.float32(-np.inf), np.int64(-1)
            for j in range(v):
                if row[j] > best:
                    best, arg = row[j], j
        if arg < 0:  # every logit NaN
            lp[i] = np.float32(np.nan)
            am[i] = 0
            continue
        for l in range(LANES):
            tot[l] = 0.0
        for c in range(ns):
            base = c * np.uint64(SUM_CHUNK)
            for l in range(LANES):
                lanes[l] = 0
            for j0 in range(np.uint64(0), np.uint64(SUM_CHUNK), np.uint64(LANES)):
                for l in range(np.uint64(LANES)):
                    lanes[l] += _expf(to_f32(yi[base + j0 + l]) - best)
            for l in range(LANES):
                tot[l] += lanes[l]
        s = 0.0
        for l in range(LANES):
            s += tot[l]
        for j in range(ns * np.uint64(SUM_CHUNK), v):
            s += _expf(to_f32(yi[j]) - best)
        xt = np.float32(0.0)
        for e in range(cnt):
            s += np.float64(_expf(ev[e] - best)) - np.float64(_expf(to_f32(yi[si[e]]) - best))
            if si[e] == t:
                xt = ev[e]
        lp[i] = np.float32(np.float64(xt) - (np.float64(best) + np.log(s)))
        am[i] = arg


# ----------------------------------------------------------------------------------------
# torch-facing wrappers: rows split over the torch threads
# ----------------------------------------------------------------------------------------
def _bits(y):
    """A contiguous bfloat16 torch tensor as its uint16 bit patterns (numpy view, no copy)."""
    import torch

    return y.contiguous().view(torch.int16).numpy().view(np.uint16)


def fix_logits(y, w, h):
    """float32 logits [n, V] from the bfloat16 GEMM output y [n, V], with each row's EXACT
    largest recomputed as float32 dot products of w [V, H] and h [n, H] (float32)."""
    import torch

    from .cpu_kernels import split_rows

    n, v = y.shape
    out = torch.empty((n, v), dtype=torch.float32)
    ya, wa, ha, oa = _bits(y), w.detach().numpy(), h.contiguous().numpy(), out.numpy()
    split_rows(n, lambda r0, r1: head_fix_rows(ya, wa, ha, r0, r1, oa))
    return out


def logprobs(y, w, h, targets):
    """(log p(targets) float32 [n], argmax int64 [n]) of the logits `fix_logits` makes,
    without making them."""
    import torch

    from .cpu_kernels import split_rows

    n = y.shape[0]
    lp = torch.empty(n, dtype=torch.float32)
    am = torch.empty(n, dtype=torch.int64)
    ya, wa, ha = _bits(y), w.detach().numpy(), h.contiguous().numpy()
    ta, la, aa = targets.contiguous().numpy(), lp.numpy(), am.numpy()
    split_rows(n, lambda r0, r1: head_logprob_rows(ya, wa, ha, ta, r0, r1, la, aa))
    return lp, am
