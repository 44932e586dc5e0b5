"""verify's own ternarization of a source model's float latent linears, kept apart from the
conversion's quantizer (`bitconv.quant`, numba kernels) on purpose.

If verify ternarized the source with the code the conversion used, a bug in that code (every
scale × 1.3, say) would be on both sides of every comparison and invisible. This file
computes the model's own rule — BitNet b1.58's absmean, as transformers' BitNet
quantization runs it, FORMATS.md §1 — with plain numpy operations and nothing from the
converter:

    s = mean(|W|) over the group (≥ 1e-5),   t = clip(round(W / s), -1, 1)   (half to even)

for a group of the whole tensor, one row, or g consecutive values along K. The mean is
accumulated in float64 and rounded once to float32 (the correctly rounded mean; transformers
reduces in the weight's dtype, which moves the last bit of s in some tensors and no code on
trained models: issue 22 item 7), and `W / s` is a float32 division, so on a correct
conversion the codes are identical and the scales equal to the last bit.
"""

from __future__ import annotations

import numpy as np
import torch

from ..quant import GroupSize
from .weights import TTernary

SCALE_FLOOR = 1e-5  # BitNet's clamp of the mean


def absmean_ternary(w: np.ndarray | torch.Tensor, group: GroupSize = "tensor") -> TTernary:
    """Ternarize a float weight [M, K] with absmean over `group` ("tensor", "row" or g)."""
    w32 = np.ascontiguousarray(w.numpy() if isinstance(w, torch.Tensor) else np.asarray(w), dtype=np.float32)
    if w32.ndim != 2:
        raise ValueError(f"expected a 2-D weight, got shape {list(w32.shape)}")
    m, k = w32.shape
    if group == "tensor":
        view = w32.reshape(1, m * k)
    elif group == "row":
        view = w32
    else:
        g = int(group)
        if g <= 0 or k % g:
            raise ValueError(f"group size {g} does not divide K = {k}")
        view = w32.reshape(m * (k // g), g)
    # numpy's float64 accumulation (no float64 copy, one thread: the same sum at any thread
    # count), rounded once to float32
    mean = np.abs(view).sum(axis=1, keepdims=True, dtype=np.float64) / view.shape[1]
    s32 = np.maximum(mean.astype(np.float32), np.float32(SCALE_FLOOR))
    q = np.divide(view, s32)  # float32 W / s (a new array: `w` may be a read-only map of the file)
    np.rint(q, out=q)  # half to even, as torch.round
    t = torch.from_numpy(np.clip(q, -1, 1, out=q).astype(np.int8).reshape(m, k))
    s = torch.from_numpy(s32)
    if group == "tensor":
        scales = s.reshape(())
    elif group == "row":
        scales = s.reshape(m, 1)
    else:
        scales = s.reshape(m, k // int(group))
    return TTernary(t.contiguous(), scales.contiguous(), group)
