"""Absmean ternarization (BitNet b1.58, FORMATS.md §1) with tensor, row or K-block groups.

`round` is numpy's round-half-to-even, as torch's `round` in BitNet's training code.
Absmean is not idempotent, so weights that are already ternary on disk never come through
here: readers hand them over as `Ternary` directly.

Speed (issue 14): the weights are walked twice, each time by one compiled kernel
(`bitconv.kernels.quant`, no GIL held): pass one sums |W| per group in a fixed order
(bfloat16 sources are widened to float32 in the same walk); pass two compares W with the
exact float32 thresholds `±T` of each group (`rint(W/s)` is +1 exactly when `W >= T`, see
`round_thresholds`), writes the int8 values and accumulates what the statistics need:
`‖W‖²`, `Σ W·t` and the non-zero count, from which `‖W − s·t‖² = ‖W‖² − 2·s·Σ W·t + s²·nnz`
follows without a dequantized copy. The values are the ones `clip(rint(W/s), -1, 1)` gives,
bit for bit (tests compare both on adversarial inputs).
"""

from __future__ import annotations

import sys
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator, Union

import numpy as np

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
    """Refuse NaN/Inf weights by name (one compiled pass over float32 weights)."""
    if w.dtype == np.float32 and w.size:
        from .kernels.floats import count_nonfinite

        bad = int(count_nonfinite(np.ascontiguousarray(w).reshape(-1)))
    else:
        bad = int(np.count_nonzero(~np.isfinite(w)))
    if bad:
        raise_nonfinite(name, bad, tuple(w.shape))


def raise_nonfinite(name: str, bad: int, shape: tuple[int, ...]) -> None:
    raise BadWeightsError(
        f"{name}: {bad} NaN/Inf value(s) in a weight of shape {list(shape)}",
        hint="the checkpoint is damaged or diverged in training; fix the source, nothing was written",
    )


@contextmanager
def serial_torch() -> Iterator[None]:
    """Run torch on one intra-op thread in this block (this thread only; restored after).

    The pipeline's workers are the conversion's parallelism; a torch op inside a job (a
    reader that decodes with torch, exact-ternary recovery) must not start its own pool on
    top of them. The setting is per calling thread (OpenMP), so workers can use it
    concurrently. Nothing here imports torch: where nothing has, there is nothing to pin.
    """
    if "torch" not in sys.modules:
        yield
        return
    import torch  # waits for an import another thread may have under way

    n = torch.get_num_threads()
    if n == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


def _scales(sums: np.ndarray, length: int) -> np.ndarray:
    s = (sums / float(length)).astype(np.float32)
    return np.maximum(s, np.float32(SCALE_EPS))


def round_thresholds(s: np.ndarray) -> np.ndarray:
    """Per scale s > 0, the smallest float32 T with float32(T / s) > 0.5.

    float32 division is monotone in the dividend, so `rint(W / s) >= 1` (half to even:
    0.5 rounds to 0) exactly when `W >= T`, and `<= -1` exactly when `W <= -T` (division
    is symmetric in sign). T starts at 0.5·s, whose quotient is exactly 0.5, and steps up
    one ulp at a time; it takes one or two steps.
    """
    s = np.asarray(s, dtype=np.float32)
    t = s * np.float32(0.5)
    up = np.float32(np.inf)
    with np.errstate(invalid="ignore", over="ignore"):
        for _ in range(64):
            low = ~(np.divide(t, s) > np.float32(0.5)) & np.isfinite(t)
            if not low.any():
                break
            t = np.where(low, np.nextafter(t, up), t)
    return t


@dataclass
class _Sums:
    """What the quantizing pass accumulates for the statistics (float64, per group)."""

    sumsq: float = 0.0  # ‖W‖²
    wt: np.ndarray | None = None  # Σ W·t per group
    nnz: np.ndarray | None = None  # non-zeros per group


def ternarize(w: np.ndarray, group: GroupSize = "tensor", name: str = "tensor", *,
              bf16_bits: bool = False) -> Ternary:
    """Absmean-ternarize a float matrix [M, K]: s = mean|W| per group, t = clip(round(W/s)).

    `w` is float32, float16, or (with `bf16_bits`) the uint16 bits of bfloat16 weights, as
    a reader maps them from the file; half-precision values are widened to float32 exactly,
    in registers, never into a copy."""
    return _ternarize(w, group, name, bf16_bits)[0]


def ternarize_with_stats(w: np.ndarray, group: GroupSize = "tensor", name: str = "tensor", *,
                         bf16_bits: bool = False) -> tuple[Ternary, TensorStats]:
    """`ternarize` and the tensor's `TensorStats`, from the sums the quantizer accumulates:
    ‖W − s·t‖² = ‖W‖² − 2·Σ_g s_g·Σ W·t + Σ_g s_g²·nnz_g, no dequantized copy."""
    tern, sums = _ternarize(w, group, name, bf16_bits)
    s = tern.scales.reshape(-1).astype(np.float64)
    n = tern.values.size
    # np.sum, not np.dot: a dot product of more than 10,000 values runs on OpenBLAS's threads
    # (one per core), which then spin for nothing between tensors, and their partial sums
    # depend on the thread count (issue 23); these are one value per group, cheap either way
    err2 = sums.sumsq - 2.0 * float(np.sum(s * sums.wt)) + float(np.sum(s * s * sums.nnz))
    rel = (max(err2, 0.0) ** 0.5) / (sums.sumsq ** 0.5) if sums.sumsq > 0 else 0.0
    nnz = int(sums.nnz.sum())
    return tern, _stats(name, tern, (n - nnz) / max(n, 1), rel)


def kernel_view(w: np.ndarray, bf16_bits: bool, name: str) -> np.ndarray:
    """What the kernels read: float32 as it is (the source's own mapped bytes), bfloat16
    and float16 as their 16-bit patterns (uint16 / int16, `kernels.floats`), widened in
    registers; anything else (float64) converted to float32 once."""
    from .kernels.floats import as_bits16

    if bf16_bits:
        if w.dtype != np.uint16:
            raise UsageError(f"{name}: bfloat16 bits must be uint16, got {w.dtype}")
        return np.ascontiguousarray(w)
    if w.dtype == np.float16:
        return as_bits16(np.ascontiguousarray(w), bf16=False)
    return np.ascontiguousarray(w, dtype=np.float32)


def _ternarize(w: np.ndarray, group: GroupSize, name: str, bf16_bits: bool) -> tuple[Ternary, _Sums]:
    from .kernels.floats import count_nonfinite
    from .kernels.quant import abs_sums, quantize

    if w.ndim != 2:
        raise UsageError(f"{name}: expected a 2-D weight, got shape {list(w.shape)}")
    w = kernel_view(w, bf16_bits, name)
    view, scale_shape = _group_view(w, group, name)
    sums = abs_sums(view)
    s = _scales(sums, view.shape[1])
    if not np.all(np.isfinite(sums)):  # a NaN/Inf weight makes its group's sum non-finite
        bad = int(count_nonfinite(view.reshape(-1)))  # reads the view as the kernels do
        if bad:
            raise_nonfinite(name, bad, tuple(w.shape))
        # finite weights whose float32 block sums overflow (|w| near 3.4e38): the scale would
        # be inf and every code 0, a zero tensor written with exit 0 (issue 25's fuzzer found it)
        raise BadWeightsError(f"{name}: the absmean of its weights overflows float32 (a group's |w| sums past "
                              "3.4e38); no ternary scale can be computed",
                              hint="the checkpoint is damaged or diverged in training; fix the source")
    values = np.empty(w.shape, dtype=np.int8)
    g = view.shape[0]
    wt, nnz = np.empty(g, dtype=np.float64), np.empty(g, dtype=np.int64)
    sumsq = quantize(view, round_thresholds(s), values.reshape(view.shape), wt, nnz)
    return Ternary(values=values, scales=s.reshape(scale_shape), group=group), _Sums(sumsq, wt, nnz)


def _stats(name: str, tern: Ternary, zero_fraction: float, rel: float | None) -> TensorStats:
    s = tern.scales
    return TensorStats(name=name, shape=tern.shape, scale_min=float(s.min()), scale_mean=float(s.mean()),
                       scale_max=float(s.max()), zero_fraction=zero_fraction, rel_error=rel)


def _norm(x: np.ndarray, chunk: int = 1 << 20) -> float:
    """‖x‖₂ with float64 sums of float64 squares, chunk by chunk, in a fixed order, without
    BLAS (np.linalg.norm's dot product runs on OpenBLAS's threads, which spin afterwards and
    whose partial sums depend on the thread count)."""
    total = 0.0
    for a in range(0, x.size, chunk):
        c = x[a:a + chunk].astype(np.float64)
        total += float(np.sum(c * c))
    return total ** 0.5


def tensor_stats(name: str, tern: Ternary, source: np.ndarray | None) -> TensorStats:
    """Scale summary, zero share and ‖W − s·t‖/‖W‖ (None when there is no float source).

    Conversion gets these from `ternarize_with_stats`; this direct form serves tensors that
    were already ternary (no source) and callers holding both arrays.
    """
    rel = None
    if source is not None:
        w = np.asarray(source, dtype=np.float32)
        denom = _norm(w.reshape(-1))
        diff = _norm((w - tern.dequantize()).reshape(-1))
        rel = diff / denom if denom > 0 else 0.0
    zeros = tern.values.size - int(np.count_nonzero(tern.values))
    return _stats(name, tern, zeros / max(tern.values.size, 1), rel)
