"""Float format conversions numpy has no single pass for."""

from __future__ import annotations

import numpy as np

from . import jit


@jit
def widen_bf16(u, out):
    """bfloat16 bits (uint16, 1-D) -> float32 `out` (1-D), exactly: the bits shifted up 16."""
    bits = out.view(np.uint32)
    for i in range(u.size):
        bits[i] = np.uint32(u[i]) << 16
