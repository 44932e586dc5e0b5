"""compressed-tensors `pack-quantized` int2, symmetric (what llm-compressor writes and vLLM's
compressed-tensors loader reads), written exactly.

A linear is `weight_packed` (int32 [M, ceil(K/16)]: `pack_to_int32(q, 2)`, the int2 value
q ∈ {−2..1} stored as q + 2, 16 a word, least significant first, rows padded with zero bits),
`weight_scale` ([M, 1] for `strategy: channel`, [M, K/G] for `strategy: group`) and
`weight_shape` (int64 [2] = [M, K]); it dequantizes as `q · scale`. compressed-tensors' own
symmetric int2 rule (`scale = max|w| / 1.5`) turns −s, 0, +s into −1.33·s, 0, +0.67·s; with
`q = t` (int2 holds −1, 0, 1) and `scale = s` it is exact. A per-tensor scale is repeated per
row (`channel`): the pack-quantized path has no tensor strategy for int weights.
"""

from __future__ import annotations

import numpy as np

from ..errors import BadWeightsError
from ..quant import GroupSize, Ternary
from .words2 import WordLayout, check_scales, coarsest, grid_scales, n_words, pack_words, scales_ok, unpack_words

OFFSET = 2  # pack_to_int32 stores q + 2^(bits-1)


def strategy_of(group: GroupSize) -> tuple[str, int | None]:
    """compressed-tensors (strategy, group_size) that holds a source's own scales as they are."""
    if group in ("tensor", "row", None):
        return "channel", None
    return "group", int(group)


class CTInt2(WordLayout, name="ct_int2"):
    offset = OFFSET
    bad_code = "int2 value(s) equal -2"
    engine = "vLLM (compressed-tensors)"
    description = "compressed-tensors pack-quantized int2 symmetric (int32 words), q = t, scale = s"

    def check(self, name: str, shape: tuple[int, int], group: GroupSize) -> None:
        if group not in ("tensor", "row", None) and shape[1] % int(group):
            raise self._fail(name, shape, f"K={shape[1]} is not a multiple of its group size {group}")

    def nbytes(self, shape: tuple[int, int]) -> int:
        return shape[0] * n_words(shape[1]) * 4

    # -- data ------------------------------------------------------------------------
    def pack_codes(self, values: np.ndarray, name: str = "tensor") -> np.ndarray:
        """Ternary [M, K] -> int32 [M, ceil(K/16)], bytes equal to `pack_to_int32(t, 2)`."""
        return pack_words(values, OFFSET, name).view(np.int32)

    def weight_scale(self, tern: Ternary, name: str = "tensor") -> np.ndarray:
        """float32 `weight_scale`: [M, 1] (channel) or [M, K/G] (group, G the source's group)."""
        _, g = strategy_of(tern.group)
        m, k = tern.shape
        s = grid_scales(tern, g if g else k, name) if k else np.zeros((m, 0), np.float32)
        check_scales(s, name)
        return s

    @staticmethod
    def exact(bad: int, scale: np.ndarray) -> bool:
        """Whether a stored linear is exactly ternary: no int2 value −2 (BAD counts them), every
        scale finite and positive."""
        return not bad and scales_ok(scale)

    def read(self, packed: np.ndarray, scale: np.ndarray, shape: tuple[int, int],
             name: str = "tensor") -> Ternary | np.ndarray:
        """A stored linear back: its Ternary when every int2 value is −1, 0 or 1, else the
        float32 weights compressed-tensors computes (`q · scale`, q = −2 included)."""
        m, k = shape
        vals, bad = unpack_words(packed, k, OFFSET, name)
        s = np.asarray(scale, dtype=np.float32)
        if s.ndim != 2 or s.shape[0] != m or s.shape[1] == 0 or k % s.shape[1]:
            raise BadWeightsError(f"{name}: weight_scale of shape {list(s.shape)} does not fit a [{m}, {k}] weight")
        g = k // s.shape[1]
        if self.exact(bad, s):
            return coarsest(vals, s, g)
        return (vals.astype(np.float32).reshape(m, -1, g) * s[:, :, None]).reshape(m, k)
