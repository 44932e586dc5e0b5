"""What the two 2-bit-in-32-bit-word layouts (MLX affine, compressed-tensors int2) share:
the word packing of ternary codes, the per-group scale grid both store, and the check that
a source's own scale group fits a target group size.

Both formats keep one scale per (row, group of G consecutive values along K): a source
whose scales are per tensor or per row is written with its scale repeated per group, a
source with its own group g with g a multiple of G likewise. Nothing is ever averaged.
"""

from __future__ import annotations

import numpy as np

from typing import ClassVar

from ..errors import BadWeightsError, LayoutError
from ..quant import GroupSize, Ternary
from .base import Layout
from .kernel_args import bad_values_error, ternary_bytes
from .tq import collapse_block_scales


def n_words(k: int) -> int:
    return (k + 15) // 16


def pack_words(values: np.ndarray, offset: int, name: str) -> np.ndarray:
    """Ternary int8 [M, K] -> uint32 [M, ceil(K/16)], code t + offset, 16 a word, LSB first."""
    from ..kernels.words2 import words2_pack

    u = ternary_bytes(values, name)
    if u.ndim != 2:
        raise LayoutError(f"{name}: a 2-bit word layout takes a 2-D weight, got shape {list(u.shape)}")
    out = np.empty((u.shape[0], n_words(u.shape[1])), dtype=np.uint32)
    if words2_pack(u, offset, out):
        raise bad_values_error(name)
    return out


def _stored_words(words: np.ndarray, k: int, name: str | None) -> np.ndarray:
    """Stored words as C uint32 [M, ceil(K/16)], refusing any other shape (named by NAME when given)."""
    w = np.ascontiguousarray(words).view(np.uint32)
    if w.ndim != 2 or w.shape[1] != n_words(k):
        where = "" if name is None else f"{name}: "
        raise LayoutError(f"{where}packed shape {list(w.shape)} does not hold K={k} values "
                          f"(expected [M, {n_words(k)}])", hint="the file is corrupt or its shape entry disagrees")
    return w


def unpack_words(words: np.ndarray, k: int, offset: int, name: str) -> tuple[np.ndarray, int]:
    """uint32 (or int32) words [M, W] -> (int8 values [M, K], count of non-ternary codes)."""
    from ..kernels.words2 import words2_unpack

    w = _stored_words(words, k, name)
    vals = np.empty((w.shape[0], k), dtype=np.int8)
    bad = words2_unpack(w, offset, vals.view(np.uint8))
    return vals, int(bad)


def group_fits(source_group: GroupSize, g: int) -> bool:
    """A source group a grid of G-value groups can hold as is (tensor, row or a multiple of G)."""
    return source_group in ("tensor", "row", None) or int(source_group) % g == 0


def grid_scales(tern: Ternary, g: int, name: str) -> np.ndarray:
    """The scales as [M, K / g] float32, each source scale repeated over the groups it covers."""
    m, k = tern.shape
    if k % g:
        raise LayoutError(f"{name}: K={k} is not a multiple of the group size {g}")
    s = np.asarray(tern.scales, dtype=np.float32)
    ng = k // g
    if tern.group == "tensor" or s.size == 1:
        return np.full((m, ng), s.reshape(-1)[0], dtype=np.float32)
    if tern.group == "row":
        return np.repeat(s.reshape(m, 1), ng, axis=1)
    src = int(tern.group)
    if src % g:
        raise LayoutError(f"{name}: its own group-{src} scales do not fit group-{g} storage")
    return np.ascontiguousarray(np.repeat(s.reshape(m, k // src), src // g, axis=1))


def coarsest(values: np.ndarray, scales: np.ndarray, g: int) -> Ternary:
    """A Ternary read from a [M, K/g] scale grid of finite, positive scales (the callers check),
    with the coarsest group that holds the same scales (tensor, row, else the widest multiple
    of g over which they repeat; pack/tq.collapse_block_scales with g-value blocks): a
    per-tensor model written with repeated scales reads back per tensor, a group-128 one
    stored in groups of 64 as group 128, so each goes on into any layout that holds its own
    group."""
    s = np.asarray(scales, dtype=np.float32)
    if s.size == 0:  # no rows or no groups: read as rows ([M, 0] scales), as always
        return Ternary(values, np.ascontiguousarray(s[:, :1]), "row")
    t = collapse_block_scales(values, s, "tensor", "scales", qk=g or 1)
    if not g and t.group not in ("tensor", "row"):  # K = 0 (compressed-tensors weight_shape [M, 0]):
        t.group = 0  # groups of g = 0 values, as the grid's own g says
    return t


def scales_ok(s: np.ndarray) -> bool:
    """Every scale finite and positive (an empty grid too): what a stored grid must hold to
    read back as ternary, and `check_scales` asks of a non-empty one before writing."""
    return bool(np.all(np.isfinite(s)) and np.all(s > 0))


def check_scales(s: np.ndarray, name: str) -> None:
    if s.size == 0 or not scales_ok(s):
        raise BadWeightsError(f"{name}: scales must be finite and positive, got {s.reshape(-1)[:4].tolist()}",
                              hint="the checkpoint is corrupt; fix or re-export it")


def count_bad(words: np.ndarray, k: int, offset: int) -> int:
    """Codes that are no ternary value in stored words (read-only scan, no values written)."""
    from ..kernels.words2 import words2_count_bad

    w = _stored_words(words, k, None)
    return int(words2_count_bad(w, offset, k))


class WordLayout(Layout):
    """The byte side both 2-bit word layouts share: codes `t + offset`, 16 a 32-bit word, each
    row padded to whole words. A subclass sets `offset` and `bad_code` (what the one code no
    ternary value uses is, in its format's words); scales live in separate tensors, so
    `pack` / `unpack` carry the codes only."""

    offset: ClassVar[int]
    bad_code: ClassVar[str]
    ggml_type = None  # a safetensors-folder layout, never in a GGUF
    bits_per_weight = 2.0
    tensor_scale_only = False  # scales are a separate [M, K/G] tensor

    def pack(self, tern: Ternary, name: str = "tensor") -> np.ndarray:
        return pack_words(tern.values, self.offset, name).reshape(-1).view(np.uint8)

    def unpack(self, data: np.ndarray, shape: tuple[int, int], name: str = "tensor") -> Ternary:
        data = self._check_data(data, shape, name)
        vals, bad = unpack_words(data.view(np.uint32).reshape(shape[0], -1), shape[1], self.offset, name)
        if bad:
            raise BadWeightsError(f"{name}: {bad} {self.bad_code}, which no ternary weight has")
        return Ternary(vals, np.float32(1.0), "tensor")
