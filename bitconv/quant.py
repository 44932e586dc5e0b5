"""Absmean ternarization (BitNet b1.58, FORMATS.md §1) with tensor, row or K-block groups.

`round` is numpy's round-half-to-even, as torch's `round` in BitNet's training code.
Absmean is not idempotent, so weights that are already ternary on disk never come through
here: readers hand them over as `Ternary` directly.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Union

import numpy as np
import torch

from .errors import BadWeightsError, UsageError

GroupSize = Union[str, int]  # "tensor" | "row" | N (block of N consecutive values along K)

SCALE_EPS = 1e-5


def parse_group_size(value: str | int) -> GroupSize:
    """Accept what a user types (`tensor`, `row`, `128`) and return the canonical form."""
    if isinstance(value, int):
        if value <= 0:
            raise UsageError(f"--group-size must be positive, got {value}")
        return value
    text = str(value).strip().lower()
    if text in ("tensor", "row"):
        return text
    if text.isdigit() and int(text) > 0:
        return int(text)
    raise UsageError(f"--group-size must be 'tensor', 'row' or a positive integer, got {value!r}")


@dataclass
class Ternary:
    """A ternary matrix `values` [M, K] (int8 in {-1,0,1}) and the scales that dequantize it.

    `scales` has shape () for a per-tensor group, [M, 1] for rows and [M, K // g] for blocks
    of g values along K, always float32, so `dequantize` is one broadcast.
    """

    values: np.ndarray
    scales: np.ndarray
    group: GroupSize = "tensor"

    def __post_init__(self) -> None:
        self.scales = np.asarray(self.scales, dtype=np.float32)
        if self.group == "tensor":
            self.scales = self.scales.reshape(())

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.values.shape)  # type: ignore[return-value]

    @property
    def scale(self) -> float:
        """The per-tensor scale; layouts that hold one scale per tensor call this."""
        if self.scales.size != 1:
            raise UsageError(f"tensor has {self.scales.size} scales (group {self.group}), not one")
        return float(self.scales.reshape(-1)[0])

    def expanded_scales(self) -> np.ndarray:
        """Scales broadcastable against `values` ([M, K] or smaller)."""
        if self.group == "tensor" or self.group == "row":
            return self.scales
        m, k = self.shape
        g = int(self.group)
        return np.repeat(self.scales, g, axis=1) if self.scales.shape[1] * g == k else self.scales

    def dequantize(self, dtype=np.float32) -> np.ndarray:
        return (self.values.astype(np.float32) * self.expanded_scales()).astype(dtype, copy=False)


@dataclass
class TensorStats:
    """What ternarization cost for one tensor; `convert` reports these per tensor."""

    name: str
    shape: tuple[int, ...]
    scale_min: float
    scale_mean: float
    scale_max: float
    zero_fraction: float
    rel_error: float | None  # None when the source was already ternary (nothing was lost)

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "shape": list(self.shape),
            "scale": self.scale_mean if self.scale_min == self.scale_max else None,
            "scale_min": self.scale_min,
            "scale_mean": self.scale_mean,
            "scale_max": self.scale_max,
            "zero_fraction": self.zero_fraction,
            "rel_error": self.rel_error,
        }


def _group_view(w: np.ndarray, group: GroupSize, name: str) -> tuple[np.ndarray, tuple[int, ...]]:
    """Reshape W so absmean reduces over the last axis; return the view and the scale shape."""
    m, k = w.shape
    if group == "tensor":
        return w.reshape(1, -1), ()
    if group == "row":
        return w, (m, 1)
    g = int(group)
    if k % g:
        raise UsageError(
            f"{name}: K={k} is not a multiple of --group-size {g}",
            hint="choose a group size that divides every linear's input width, or 'row'",
        )
    return w.reshape(m * (k // g), g), (m, k // g)


def check_finite(w: np.ndarray, name: str) -> None:
    if not np.isfinite(w).all():
        bad = int(np.count_nonzero(~np.isfinite(w)))
        raise BadWeightsError(
            f"{name}: {bad} NaN/Inf value(s) in a weight of shape {list(w.shape)}",
            hint="the checkpoint is damaged or diverged in training; fix the source, nothing was written",
        )


def ternarize(w: np.ndarray, group: GroupSize = "tensor", name: str = "tensor") -> Ternary:
    """Absmean-ternarize a float matrix [M, K]: s = mean|W| per group, t = clip(round(W/s))."""
    if w.ndim != 2:
        raise UsageError(f"{name}: expected a 2-D weight, got shape {list(w.shape)}")
    w = np.asarray(w, dtype=np.float32)
    check_finite(w, name)
    view, scale_shape = _group_view(w, group, name)
    # float32 mean through torch: the same reduction BitNet's training code and transformers'
    # online quantizer use, so bitconv picks their scale to the last bit, not a float64 neighbour
    s = torch.from_numpy(view).abs().mean(dim=1).clamp_(min=SCALE_EPS).numpy()
    q = np.divide(view, s[:, None])  # one float temporary; rint/clip work in place on it
    np.rint(q, out=q)
    np.clip(q, -1, 1, out=q)
    t = q.astype(np.int8).reshape(w.shape)
    return Ternary(values=t, scales=s.reshape(scale_shape), group=group)


def tensor_stats(name: str, tern: Ternary, source: np.ndarray | None) -> TensorStats:
    """Scale summary, zero share and ‖W − s·t‖/‖W‖ (None when there is no float source)."""
    rel = None
    if source is not None:
        w = np.asarray(source, dtype=np.float32)
        denom = float(np.linalg.norm(w.reshape(-1)))
        diff = float(np.linalg.norm((w - tern.dequantize()).reshape(-1)))
        rel = diff / denom if denom > 0 else 0.0
    s = tern.scales
    return TensorStats(
        name=name,
        shape=tern.shape,
        scale_min=float(s.min()),
        scale_mean=float(s.mean()),
        scale_max=float(s.max()),
        zero_fraction=float(np.count_nonzero(tern.values == 0)) / max(tern.values.size, 1),
        rel_error=rel,
    )
