"""Exact ternary floats: find the group of weights already stored as `s·t` and recover them.

TriLM "unpacked", Ternary-Bonsai "-unpacked" and other dequantized exports ship float
weights whose every group (the whole tensor, a row, or a block of 32/64/128/256 values
along K) holds only `{-a, 0, +a}`. Absmean on them is wrong (it returns `a` times the
non-zero share), so these tensors are detected and `t = sign(w)` and the group scales are
recovered instead (FORMATS.md §1). llama.cpp's TQ/Q2_0 quantizers do the same by taking
the block maximum.

Detection works on per-block statistics (largest and smallest non-zero magnitude of each
block of the finest candidate group), computed a bounded chunk of rows at a time, so a
large embedding never needs more than a few temporaries of one chunk. A tensor that is not
ternary is usually rejected on its first chunk.

Rounding: a group's non-zero magnitudes are normally bit-identical (rounding `a·t` to any
float type is sign-symmetric). The detector still accepts groups whose magnitudes differ by
at most one unit in the last place of the source dtype (`RTOL`), for exports that rounded
per element. Among the groups that hold a tensor it takes the coarsest *exact* one, and only
if none is exact the coarsest within the tolerance, so scales that merely lie close are
never merged into one.
"""

from __future__ import annotations

from dataclasses import dataclass

from typing import TYPE_CHECKING

import numpy as np

from .quant import GroupSize, Ternary

if TYPE_CHECKING:  # pragma: no cover - torch is imported where it is used (start-up time)
    import torch

# Block sizes along K tried after "tensor" and "row", coarsest first.
CANDIDATE_BLOCKS = (256, 128, 64, 32)
# Largest accepted relative spread of a group's non-zero magnitudes, per source dtype:
# one unit in the last place at the bottom of a binade.
RTOL = {"f32": 2.0**-22, "f16": 2.0**-10, "bf16": 2.0**-7}
CHUNK_ELEMENTS = 1 << 22  # values per chunk of rows (16 MiB of float32)


@dataclass(frozen=True)
class Detection:
    """What `detect` found: the group that holds the tensor and how exactly it holds it."""

    group: GroupSize
    exact: bool  # every group's non-zero magnitudes are bit-identical
    spread: float  # largest (max - min) / max of a group's non-zero magnitudes (0.0 when exact)

    def describe(self) -> str:
        g = f"group {self.group}" if isinstance(self.group, int) else f"per-{self.group} scales"
        how = "exact" if self.exact else f"within rounding (spread {self.spread:.2g})"
        return f"exact ternary, {g}, {how}"


def candidate_groups(k: int) -> list[GroupSize]:
    """Groups tried for a K-wide matrix, coarsest first (blocks only when they divide K)."""
    return ["tensor", "row"] + [g for g in CANDIDATE_BLOCKS if g < k and k % g == 0]


def _unit(k: int) -> int:
    """Width of the finest statistics block: 32 when it divides K, else the whole row."""
    blocks = [g for g in CANDIDATE_BLOCKS if g < k and k % g == 0]
    return min(blocks) if blocks else k


_ABS = 0x7FFFFFFF  # float32 bits without the sign
_INF_BITS = 0x7F800000


def _as_torch(w) -> "torch.Tensor":
    import torch

    t = w if isinstance(w, torch.Tensor) else torch.from_numpy(np.asarray(w))
    return (t if t.dtype == torch.float32 else t.to(torch.float32)).contiguous()


def block_stats(w, rtol: float = 0.0) -> tuple[torch.Tensor, torch.Tensor, int] | None:
    """(max |w|, min non-zero |w| (inf for all-zero blocks), unit width) per block of the
    finest unit, [M, K // unit] each; None as soon as a chunk shows a block whose
    magnitudes spread more than `rtol` (not ternary at any group)."""
    import torch

    t = _as_torch(w)
    if t.dim() != 2 or t.numel() == 0:
        return None
    m, k = t.shape
    unit = _unit(k)
    rows = max(1, CHUNK_ELEMENTS // k)
    mx = torch.empty((m, k // unit), dtype=torch.float32)
    mn = torch.empty((m, k // unit), dtype=torch.float32)
    for r in range(0, m, rows):
        # On the bits: |w| of a float32 is its bits with the sign cleared, and for values
        # >= 0 the integer order is the float order (inf and NaN sort above every finite
        # value). `(bits - 1) & 0x7fffffff` sends 0 to the largest int: its minimum is the
        # smallest non-zero magnitude. Twice as fast as masking floats.
        bits = t[r:r + rows].view(torch.int32).bitwise_and(_ABS).reshape(-1, k // unit, unit)
        bmax = bits.amax(dim=-1)
        if bool((bmax >= _INF_BITS).any()):  # inf or NaN: not a weight bitconv converts
            return None
        low = bits.sub_(1).bitwise_and_(_ABS).amin(dim=-1)
        bmin = torch.where(low == _ABS, torch.tensor(float("inf")), (low + 1).view(torch.float32))
        bmax = bmax.view(torch.float32)
        if bool((bmax > bmin * (1.0 + rtol)).any()):
            return None
        mx[r:r + rows], mn[r:r + rows] = bmax, bmin
    return mx, mn, unit


def _reduce(stat: np.ndarray, group: GroupSize, unit: int, largest: bool) -> np.ndarray:
    """Per-unit statistics -> per-group ones ([1, 1], [M, 1] or [M, K // g]); numpy, as
    these arrays are 1/unit of the tensor and small ops run faster without thread pools."""
    op = np.max if largest else np.min
    if group == "tensor":
        return op(stat).reshape(1, 1)
    if group == "row":
        return op(stat, axis=1, keepdims=True)
    per = int(group) // unit
    m, n = stat.shape
    return op(stat.reshape(m, n // per, per), axis=2)


def detect(w, dtype: str = "f32") -> Detection | None:
    """The coarsest group in which W [M, K] is exactly ternary (see the module docstring);
    None when no candidate group holds only {-a, 0, +a}."""
    rtol = RTOL.get(dtype, RTOL["f32"])
    stats = block_stats(w, rtol)
    if stats is None:
        return None
    mx, mn, unit = stats[0].numpy(), stats[1].numpy(), stats[2]
    k = mx.shape[1] * unit
    if not np.isfinite(mn).any():  # an all-zero tensor: one (arbitrary) scale holds it
        return Detection("tensor", True, 0.0)
    tolerant: Detection | None = None
    for g in candidate_groups(k):
        if isinstance(g, int) and g % unit:
            continue
        gmax, gmin = _reduce(mx, g, unit, True), _reduce(mn, g, unit, False)
        gmin = np.where(np.isinf(gmin), gmax, gmin)  # all-zero groups: nothing to disagree
        if np.array_equal(gmax, gmin):
            return Detection(g, True, 0.0)
        if tolerant is None:
            with np.errstate(invalid="ignore", divide="ignore"):
                spread = float(np.max(np.where(gmax > 0, (gmax - gmin) / gmax, 0.0)))
            if spread <= rtol:
                tolerant = Detection(g, False, spread)
    return tolerant


def recover(w, group: GroupSize, exact: bool = False) -> Ternary:
    """`t = sign(W)` and each group's scale. `exact` (every group's non-zero magnitudes are
    bit-identical, as `detect` found): the group maximum, which is that common value.
    Otherwise the mean non-zero magnitude (float64 sums: exact, so independent of order and
    thread count). All-zero groups get the tensor's mean scale, so every scale stays finite
    and positive."""
    import torch

    t = _as_torch(w)
    m, k = t.shape
    values = np.empty((m, k), dtype=np.int8)
    if group == "tensor":
        shape = (1, 1)
    elif group == "row":
        shape = (m, 1)
    else:
        shape = (m, k // int(group))
    acc = torch.zeros(shape, dtype=torch.float32 if exact else torch.float64)
    counts = None if exact else torch.zeros(shape, dtype=torch.float64)
    rows = max(1, CHUNK_ELEMENTS // k)
    for r in range(0, m, rows):
        c = t[r:r + rows]
        values[r:r + rows] = torch.sign(c).to(torch.int8).numpy()
        a = c.abs()
        if group not in ("tensor", "row"):
            g = int(group)
            a = a.reshape(-1, k // g, g)
        if exact:
            if group == "tensor":
                acc = torch.maximum(acc, a.amax().reshape(1, 1))
            else:
                acc[r:r + rows] = a.amax(-1).reshape(-1, shape[1])
            continue
        nz = (a != 0).to(torch.float64)
        a = a.to(torch.float64)
        if group == "tensor":
            acc += a.sum()
            counts += nz.sum()
        else:
            acc[r:r + rows] = a.sum(-1).reshape(-1, shape[1])
            counts[r:r + rows] = nz.sum(-1).reshape(-1, shape[1])
    if exact:
        have = acc > 0
        scales = acc.to(torch.float64)
    else:
        have = counts > 0
        scales = torch.where(have, acc / counts.clamp(min=1), torch.zeros_like(acc))
    fill = float(scales[have].mean()) if bool(have.any()) else 1.0
    scales = torch.where(have, scales, torch.full_like(scales, fill)).to(torch.float32)
    if group == "tensor":
        scales = scales.reshape(())
    return Ternary(values, scales.numpy(), group)


def detect_and_recover(w, dtype: str = "f32") -> tuple[Detection, Ternary] | None:
    """Both steps for one array already in memory (tests and small tensors)."""
    found = detect(w, dtype)
    if found is None:
        return None
    return found, recover(w, found.group, found.exact)
