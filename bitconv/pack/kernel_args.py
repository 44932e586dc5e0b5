"""What the TQ, Q2_0 and Hugging Face packers hand their numba kernels, and the errors the
kernels' flags turn into.

Kept apart from the kernels (bitconv/kernels/*) so that importing a packer never imports
numba: the kernels are imported inside pack()/unpack() only. Both helpers are O(number of
scales) or free views; the one pass over the weights is the kernel's.
"""

from __future__ import annotations

import numpy as np

from ..errors import BadWeightsError, LayoutError
from ..quant import Ternary


def ternary_bytes(values: np.ndarray, name: str) -> np.ndarray:
    """Ternary values as a C-contiguous uint8 view of int8 (no copy for int8 C arrays).

    The kernels compute q = t + 1 in uint8 and flag any code above 2, so values outside
    {-1, 0, 1} are refused without a separate pass; other dtypes are range-checked first so
    that a cast cannot wrap a bad value into a good one.
    """
    v = np.asarray(values)
    if v.dtype != np.int8:
        if v.size and (v.min() < -1 or v.max() > 1):
            raise bad_values_error(name)
        v = v.astype(np.int8)
    return np.ascontiguousarray(v).view(np.uint8)


def bad_values_error(name: str) -> BadWeightsError:
    return BadWeightsError(f"{name}: ternary values must be -1, 0 or 1",
                           hint="a ternary tensor holds only -1, 0 and +1 before its scale")


def block_scale_bits(tern: Ternary, qk: int, name: str) -> tuple[np.ndarray, int]:
    """The fp16 bits of the tensor's group scales as a C [Ms, Gs] uint16 array, and the number
    of qk-blocks per group along K: block c of row r has scale sc[r if Ms > 1 else 0, c // per].

    Rounding each group scale to fp16 once gives the same bits as rounding every block's copy.
    """
    m, k = tern.shape
    nbr = k // qk
    s = np.asarray(tern.scales, dtype=np.float32)
    if s.ndim < 2:
        s = s.reshape(1, -1) if s.size == 1 else s.reshape(-1, 1)
    ms, gs = s.shape
    if ms not in (1, m) or gs == 0 or nbr % gs:
        raise LayoutError(f"{name}: scales of shape {list(s.shape)} do not fit a [{m}, {k}] tensor "
                          f"stored in {qk}-value blocks", hint="this is a bug in the caller; please report it")
    # An fp16 overflow here is the scale of an all-zero group, which the kernels store as d = 0:
    # Layout._check_scales, run first by every caller, refuses any other scale fp16 cannot hold
    with np.errstate(over="ignore"):
        bits = np.ascontiguousarray(s.astype(np.float16)).view(np.uint16)
    return bits, max(nbr // gs, 1)  # K = 0: no blocks, and no division by zero
