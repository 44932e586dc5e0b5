"""2-bit codes in 32-bit words, 16 a word, least significant first (MLX, compressed-tensors).

Both formats store a ternary row as words along K: word w of a row holds the codes of
values 16·w … 16·w + 15, value 16·w + i in bits 2i, 2i + 1. They differ only in the code a
value gets: MLX's affine 2-bit codes are `q = t + 1` (with `scale = s`, `bias = −s`),
compressed-tensors' symmetric int2 codes are `q = t + 2` (its `pack_to_int32` adds
`2^(bits−1)`); `offset` is that +1 or +2. Values past K (when K % 16 != 0) leave zero bits,
as compressed-tensors pads. One call per tensor; values travel as the uint8 view of int8.

The numpy formula these replace is the reference in tests/test_engine_layouts.py.
"""

from __future__ import annotations

import numpy as np

from . import jit


@jit
def words2_pack(u, offset, out):
    """uint8 view of int8 values [M, K] -> uint32 words [M, ceil(K/16)]; returns 1 when a
    value is outside {-1, 0, 1} (the output is then not meaningful), else 0."""
    m, k = u.shape
    nw = out.shape[1]
    off = np.uint32(offset)
    bad = 0
    for i in range(m):
        row = u[i]
        o = out[i]
        for w in range(nw):
            word = np.uint32(0)
            base = 16 * w
            n = min(16, k - base)
            for j in range(n):
                t1 = np.uint32(np.uint8(row[base + j] + np.uint8(1)))  # t + 1 in 0..2 for ternary t
                if t1 > 2:
                    bad = 1
                word |= np.uint32(t1 + off - np.uint32(1)) << np.uint32(2 * j)
            o[w] = word
    return bad


@jit
def words2_unpack(words, offset, vals):
    """uint32 words [M, W] -> int8 values t = q − offset [M, K] (as uint8 bytes); returns
    the number of codes that are no ternary value (q − offset outside {-1, 0, 1}); they
    decode to the out-of-range value they stand for, so callers refuse them with a count."""
    m, k = vals.shape
    bad = 0
    off = np.int32(offset)
    for i in range(m):
        row = words[i]
        o = vals[i]
        for j in range(k):
            q = np.int32((row[j >> 4] >> np.uint32(2 * (j & 15))) & np.uint32(3))
            t = q - off
            if t < -1 or t > 1:
                bad += 1
            o[j] = np.uint8(t & 255)
    return bad


@jit
def words2_count_bad(words, offset, k):
    """The number of codes among the first K of each row that are no ternary value (what
    `words2_unpack` would count), without writing the values: a reader's open-time check."""
    m = words.shape[0]
    bad = 0
    off = np.int32(offset)
    for i in range(m):
        row = words[i]
        for j in range(k):
            t = np.int32((row[j >> 4] >> np.uint32(2 * (j & 15))) & np.uint32(3)) - off
            if t < -1 or t > 1:
                bad += 1
    return bad
