"""Q2_0: mainline llama.cpp's 2-bit type (GGML type 42, FORMATS.md §6b), byte-identical to ggml.

Blocks of 64 values along K, 18 bytes each: the fp16 scale `d` first, then 16 bytes of
2-bit codes, value `j` at byte `j // 4`, bits `2·(j % 4)` (least significant first); a code
`q` means `(q − 1)·d`. A ternary model only uses codes 0..2; code 3 (`+2d`) is a 2-bit
model that is not ternary, and unpacking refuses it rather than clipping it.

`d` is the block's group scale (0 for an all-zero block, as ggml's quantizer writes it,
since it takes the block maximum), so per-tensor, per-row and K-groups that are multiples
of 64 are stored exactly: a group-128 model is two 64-blocks with the same `d`.

Vectorized with SWAR on 64-bit words in cache-sized steps: packing turns eight int8 values
into codes per uint64 and gathers four codes into a byte with one multiply; unpacking
spreads two code bytes into eight values with two multiplies.
"""

from __future__ import annotations

import numpy as np

from ..errors import BadWeightsError
from ..quant import GroupSize, Ternary
from .base import Layout
from .tq import block_scales, collapse_block_scales

QK = 64
BLOCK_BYTES = 2 + QK // 4  # fp16 d, then 16 code bytes


_CHUNK = 4096  # blocks per step: the step's temporaries (256 KiB each) stay in cache
_LOW7 = np.uint64(0x7F7F7F7F7F7F7F7F)
_ONES = np.uint64(0x0101010101010101)
_LOW2 = np.uint64(0x0303030303030303)
_HIGH = np.uint64(0x8080808080808080)
_BIAS = np.uint64(0x7F7F7F7F7F7F7F7F)
# Packing: (four 2-bit codes in bytes 0..3 of a uint32) * _GATHER puts code j at bits 24 + 2j;
# the shifted copies sit at distinct even bit positions, so the sum has no carries.
_GATHER = np.uint32((1 << 24) | (1 << 18) | (1 << 12) | (1 << 6))
# Unpacking: two code bytes (a uint16, codes j = 0..7 at bits 2j) -> code j in byte j of a
# uint64. Even codes (2j at bits 4j) move by 12j bits, odd ones by 12j + 6, one multiply each;
# stray partial sums land outside the kept bits, which the masks clear.
_EVEN, _ODD = np.uint64(0x3333), np.uint64(0xCCCC)
_SPREAD = np.uint64(1 | (1 << 12) | (1 << 24) | (1 << 36))
_SPREAD_ODD = np.uint64(int(_SPREAD) << 6)
_EVEN_KEEP, _ODD_KEEP = np.uint64(0x0003000300030003), np.uint64(0x0300030003000300)


def _encode(v8: np.ndarray, out: np.ndarray, zero: np.ndarray) -> None:
    """int8 values as uint64 words (8 per word, 8 words per block) -> code bytes out[:, 2:],
    and zero[b] = block b is all zero. Per byte, t ∈ {-1, 0, 1} (0xFF/0x00/0x01) becomes
    t + 1 = ((t & 0x7F) + 1) & 3 with no carry between bytes."""
    nb = out.shape[0]
    x = np.empty(min(nb, _CHUNK) * 8, np.uint64)
    nz = np.empty(x.size, np.bool_)
    for b0 in range(0, nb, _CHUNK):
        b1 = min(nb, b0 + _CHUNK)
        v, xc, nzc = v8[b0 * 8:b1 * 8], x[:(b1 - b0) * 8], nz[:(b1 - b0) * 8]
        np.bitwise_and(v, _LOW7, out=xc)
        np.add(xc, _ONES, out=xc)
        np.bitwise_and(xc, _LOW2, out=xc)
        x4 = xc.view("<u4")
        np.multiply(x4, _GATHER, out=x4)
        out[b0:b1, 2:] = x4.view(np.uint8)[3::4].reshape(b1 - b0, QK // 4)
        np.not_equal(v, 0, out=nzc)
        np.equal(nzc.view("<u8"), 0, out=zero[b0:b1])  # a block's 8 word flags are one uint64


def _decode(blocks: np.ndarray, values: np.ndarray) -> None:
    """Code bytes of [nb, 18] blocks -> int8 values t = q - 1, written to `values` (uint64
    words, 8 values each). Code 3 gives +2, which the caller detects."""
    nb = blocks.shape[0]
    c16 = blocks[:, 2:].view("<u2")
    a = np.empty(min(nb, _CHUNK) * 8, np.uint64)
    b = np.empty(a.size, np.uint64)
    for b0 in range(0, nb, _CHUNK):
        b1 = min(nb, b0 + _CHUNK)
        ac, bc = a[:(b1 - b0) * 8], b[:(b1 - b0) * 8]
        ac.reshape(b1 - b0, 8)[...] = c16[b0:b1]
        np.bitwise_and(ac, _ODD, out=bc)
        np.multiply(bc, _SPREAD_ODD, out=bc)
        np.bitwise_and(bc, _ODD_KEEP, out=bc)
        np.bitwise_and(ac, _EVEN, out=ac)
        np.multiply(ac, _SPREAD, out=ac)
        np.bitwise_and(ac, _EVEN_KEEP, out=ac)
        np.bitwise_or(ac, bc, out=ac)
        np.add(ac, _BIAS, out=ac)  # q + 0x7F per byte (no carry), then ^ 0x80: q - 1 as int8
        np.bitwise_xor(ac, _HIGH, out=values[b0 * 8:b1 * 8])


class Q2_0(Layout, name="q2_0"):
    """2.25 bits per weight; runs in stock llama.cpp on CPU, CUDA, Metal and Vulkan."""

    ggml_type = 42
    file_type = 41  # LLAMA_FTYPE_MOSTLY_Q2_0 in llama.h (40 is MOSTLY_Q1_0)
    bits_per_weight = 2.25
    tensor_scale_only = False
    engine = "llama.cpp"
    description = "llama.cpp mainline 2-bit, 2.25 bpw (CPU, CUDA, Metal, Vulkan in stock llama.cpp)"

    def check(self, name: str, shape: tuple[int, int], group: GroupSize) -> None:
        self._check_blocks(name, shape, group, QK, "Q2_0")

    def nbytes(self, shape: tuple[int, int]) -> int:
        m, k = shape
        return m * (k // QK) * BLOCK_BYTES

    def pack(self, tern: Ternary, name: str = "tensor") -> np.ndarray:
        m, k = tern.shape
        self.check(name, (m, k), tern.group)
        nb = m * (k // QK)
        out = np.empty((nb, BLOCK_BYTES), dtype=np.uint8)
        zero = np.empty(nb, dtype=np.bool_)
        _encode(np.ascontiguousarray(tern.values, dtype=np.int8).reshape(-1).view("<u8"), out, zero)
        d = np.broadcast_to(block_scales(tern, QK), (m, k // QK)).astype(np.float16).reshape(nb)
        d[zero] = 0  # as ggml: the maximum of an all-zero block
        if not np.isfinite(d).all():
            raise BadWeightsError(f"{name}: a scale does not fit in Q2_0's fp16 block scale (|s| > 65504)",
                                  hint="the weights are out of range for llama.cpp's fp16 scales")
        out[:, :2].view("<u2")[:, 0] = d.view("<u2")
        return out.reshape(-1)

    def unpack(self, data: np.ndarray, shape: tuple[int, int], name: str = "tensor",
               group: GroupSize = "tensor") -> Ternary:
        """Bytes -> Ternary; `group` is the group the file was written with (bitconv metadata):
        the 64-block scales are collapsed back into it when they agree."""
        data = self._check_data(data, shape, name)
        m, k = shape
        nb = m * (k // QK)
        blocks = data.reshape(nb, BLOCK_BYTES)
        words = np.empty(nb * 8, dtype=np.uint64)
        _decode(blocks, words)
        values = words.view(np.int8).reshape(m, k)
        if values.max(initial=0) > 1:
            bad = int(np.argmax((values.reshape(nb, QK) > 1).any(axis=1)))
            raise BadWeightsError(
                f"{name}: Q2_0 block {bad} holds code 3 (+2·d): a 2-bit model, not ternary",
                hint="bitconv reads ternary Q2_0 only (codes 0, 1, 2); requantize from the float model",
            )
        d = blocks[:, :2].view("<u2")[:, 0].view(np.float16).astype(np.float32).reshape(m, k // QK)
        return collapse_block_scales(values, d, group, name, qk=QK)
