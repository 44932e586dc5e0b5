"""MLX affine 2-bit (`mx.quantize(w, group_size=G, bits=2)`'s storage), written exactly.

MLX dequantizes a group as `w = scale · q + bias`, `q ∈ {0..3}` from uint32 words (16 codes
a word, least significant first), one `scale` and `bias` per G values of a row. Its own
quantizer picks scale and bias from each group's min and max, which is lossy on ternary
weights (a group holding −s, 0, +s comes back with 0 as s/3). Written by hand as `q = t + 1`,
`scale = s`, `bias = −s`, `mx.dequantize` gives `s·t` exactly: `s·0 − s = −s`,
`s·1 − s = 0`, `s·2 − s = s`. Code 3 (`2s`) is never written.

Reading back, a group whose bias is not exactly −scale, or a code 3, is not ternary: the
reader hands such a tensor on as the floats it computes (`dequantize`).
"""

from __future__ import annotations

import numpy as np

from ..errors import LayoutError
from ..quant import GroupSize, Ternary
from .words2 import WordLayout, check_scales, coarsest, group_fits, grid_scales, pack_words, scales_ok, unpack_words

GROUP_SIZES = (128, 64, 32)  # mlx's affine group sizes, the largest (fewest scales) first
OFFSET = 1  # q = t + 1


class MLXAffine2(WordLayout, name="mlx_affine2"):
    offset = OFFSET
    bad_code = "code(s) equal 3"
    engine = "mlx-lm"
    description = "MLX affine 2-bit (uint32 words, scales and biases per group), q = t + 1, bias = -s"

    def __init__(self, group_size: int = 64) -> None:
        if group_size not in GROUP_SIZES:
            raise ValueError(f"MLX group size must be one of {GROUP_SIZES}, got {group_size}")
        self.group_size = group_size

    def check(self, name: str, shape: tuple[int, int], group: GroupSize) -> None:
        g = self.group_size
        if shape[1] % g:
            raise self._fail(name, shape, f"K={shape[1]} is not a multiple of the MLX group size {g}",
                             hint="mlx quantizes whole groups of 32, 64 or 128 values along K")
        if not group_fits(group, g):
            raise self._fail(name, shape, f"its own group-{group} scales do not fit MLX groups of {g}",
                             hint="MLX group sizes are 32, 64 and 128; the source's groups must be a multiple")

    def nbytes(self, shape: tuple[int, int]) -> int:
        m, k = shape
        return m * (k // 16) * 4

    def metadata(self) -> dict:
        return {"group_size": self.group_size, "bits": 2}

    # -- data ------------------------------------------------------------------------
    def pack_codes(self, values: np.ndarray, name: str = "tensor") -> np.ndarray:
        """Ternary [M, K] -> uint32 [M, K/16] with q = t + 1."""
        return pack_words(values, OFFSET, name)

    def scales_biases(self, tern: Ternary, name: str = "tensor") -> tuple[np.ndarray, np.ndarray]:
        """float32 `scales` [M, K/G] (= s, repeated per group) and `biases` (= −s)."""
        s = grid_scales(tern, self.group_size, name)
        check_scales(s, name)
        return s, -s

    @staticmethod
    def exact(bad: int, scales: np.ndarray, biases: np.ndarray) -> bool:
        """Whether a stored tensor is exactly ternary: no code 3 (BAD counts them), bias = −scale
        in every group, every scale finite and positive."""
        return not bad and bool(np.all(biases == -scales)) and scales_ok(scales)

    def read(self, words: np.ndarray, scales: np.ndarray, biases: np.ndarray, k: int,
             name: str = "tensor") -> Ternary | np.ndarray:
        """A stored tensor back: its Ternary when it is exact (codes 0..2, bias = −scale in every
        group), else the float32 weights MLX computes from it (a stock lossy `mlx_lm.convert`)."""
        m = words.shape[0]
        if k % self.group_size or scales.shape != (m, k // self.group_size) or biases.shape != scales.shape:
            raise LayoutError(f"{name}: scales {list(scales.shape)} / biases {list(biases.shape)} do not fit "
                              f"a [{m}, {k}] weight in groups of {self.group_size}")
        vals, bad = unpack_words(words, k, OFFSET, name)
        s = np.asarray(scales, dtype=np.float32)
        b = np.asarray(biases, dtype=np.float32)
        if self.exact(bad, s, b):
            return coarsest(vals, s, self.group_size)
        q = (vals.astype(np.float32) + OFFSET).reshape(m, -1, self.group_size)
        return (q * s[:, :, None] + b[:, :, None]).reshape(m, k)


def dequantize_affine(words: np.ndarray, scales: np.ndarray, biases: np.ndarray, bits: int, group_size: int,
                      name: str = "tensor") -> np.ndarray:
    """What MLX computes from any affine tensor whose codes fill whole words (bits 2, 4, 8):
    `scale · q + bias` per group, as float32. A stock `mlx_lm.convert -q` folder (4-bit by
    default) is read through this: its values are what mlx-lm runs, not a ternary model."""
    if bits not in (2, 4, 8):
        raise LayoutError(f"{name}: MLX {bits}-bit codes straddle 32-bit words; bitconv reads 2, 4 and 8-bit affine")
    w = np.ascontiguousarray(words).view(np.uint32)
    per = 32 // bits
    m = w.shape[0]
    k = w.shape[1] * per
    s = np.asarray(scales, dtype=np.float32)
    b = np.asarray(biases, dtype=np.float32)
    if s.shape != b.shape or s.ndim != 2 or s.shape[0] != m or s.shape[1] * group_size != k:
        raise LayoutError(f"{name}: scales {list(s.shape)} do not fit {bits}-bit words {list(w.shape)} in groups of "
                          f"{group_size}")
    shifts = (np.arange(per, dtype=np.uint32) * bits)
    q = ((w[:, :, None] >> shifts) & np.uint32((1 << bits) - 1)).reshape(m, k).astype(np.float32)
    q = q.reshape(m, -1, group_size)
    return (q * s[:, :, None] + b[:, :, None]).reshape(m, k)


def choose_group_size(shapes_groups: list[tuple[str, tuple[int, int], GroupSize]]) -> int:
    """The largest MLX group size that divides every quantized tensor's K and holds every
    tensor's own scale group; LayoutError naming the tensor that no size fits."""
    for g in GROUP_SIZES:
        if all(shape[1] % g == 0 and group_fits(group, g) for _, shape, group in shapes_groups):
            return g
    for name, shape, group in shapes_groups:
        if not any(shape[1] % g == 0 and group_fits(group, g) for g in GROUP_SIZES):
            why = (f"K={shape[1]} is not a multiple of 32" if shape[1] % 32 else
                   f"its own group-{group} scales are not a multiple of 32, 64 or 128")
            raise LayoutError(f"{name}: shape [M={shape[0]}, K={shape[1]}] cannot be written as MLX affine 2-bit: "
                              f"{why}", hint="mlx stores one scale and bias per 32, 64 or 128 values along K")
    raise LayoutError("no MLX group size (128, 64, 32) fits every tensor together: "
                      + ", ".join(f"{n} (K={s[1]}, group {g})" for n, s, g in shapes_groups[:4]),
                      hint="the tensors' own groups disagree; no single group size holds them all")
