"""Float formats inside kernels: a weight is read as float32 from float32, bfloat16 or
float16 storage, exactly, in registers, so no widened copy of a tensor is ever made.

Half-precision weights reach a kernel as their 16-bit patterns, and the pattern's integer
type says which format it is: **uint16 = bfloat16, int16 = float16** (numba has no
float16 arithmetic). `as_bits16` makes those views; `to_f32(x[i])` inside a kernel
compiles to the matching conversion for each array type (bfloat16: shift into the high
half; float16: LLVM's `fpext half`, vcvtph2ps on x86), nothing for float32.
"""

from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import types
from numba.extending import intrinsic, overload

from . import jit


def as_bits16(raw: np.ndarray, bf16: bool) -> np.ndarray:
    """The view a kernel takes for 16-bit floats: bfloat16 bits as uint16, float16 as int16."""
    return raw.view(np.uint16 if bf16 else np.int16)


@intrinsic
def _u32_as_f32(typingctx, u):
    if u != types.uint32:
        return None

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.FloatType())

    return types.float32(types.uint32), codegen


f32_from_bits = _u32_as_f32  # inside kernels: the float32 whose bit pattern is a uint32


@intrinsic
def _i16_half_to_f32(typingctx, h):
    if h != types.int16:
        return None

    def codegen(context, builder, signature, args):
        return builder.fpext(builder.bitcast(args[0], ir.HalfType()), ir.FloatType())

    return types.float32(types.int16), codegen


def to_f32(v):  # pragma: no cover - replaced inside kernels by the overload below
    raise NotImplementedError("to_f32 is only callable inside numba kernels")


@overload(to_f32, inline="always")
def _to_f32(v):
    if v == types.float32:
        return lambda v: v
    if v == types.uint16:  # bfloat16 bits
        return lambda v: _u32_as_f32(np.uint32(np.uint32(v) << np.uint32(16)))
    if v == types.int16:  # float16 bits
        return lambda v: _i16_half_to_f32(v)
    return None


@jit
def widen(u, out):
    """1-D float32 / bfloat16 bits (uint16) / float16 bits (int16) -> float32 `out`, exactly."""
    for i in range(u.size):
        out[np.uint64(i)] = to_f32(u[np.uint64(i)])


def widened(raw: np.ndarray, bf16: bool) -> np.ndarray:
    """16-bit float bytes or bits (any shape) -> a new float32 array of the same shape, by
    `widen`: the package's one fp16/bf16 -> float32 routine, outside kernels as inside them
    (numpy's float16 conversion also costs ~3 ns a value, the token embedding alone 0.15 s+)."""
    flat = np.ascontiguousarray(raw).reshape(-1).view(np.uint8)
    if flat.ctypes.data % 2:  # a 16-bit view needs even alignment
        flat = flat.copy()
    out = np.empty(flat.size // 2, dtype=np.float32)
    widen(as_bits16(flat.view(np.uint16), bf16), out)
    return out.reshape(raw.shape if raw.dtype.itemsize == 2 else (-1,))


@intrinsic
def _f32_to_f16_bits(typingctx, x):
    if x != types.float32:
        return None

    def codegen(context, builder, signature, args):  # IEEE round to nearest even (vcvtps2ph)
        return builder.bitcast(builder.fptrunc(args[0], ir.HalfType()), ir.IntType(16))

    return types.int16(types.float32), codegen


@jit
def narrow_f16(x, out):
    """1-D weights as `widen` reads them -> float16 bits in int16 `out`, rounded to nearest
    even as numpy's `astype(np.float16)` does.

    Returns (bad, over, first_over, amax, umax, first_under): how many inputs were not
    finite; how many finite ones overflow to inf and the first of them (-1: none); the
    largest finite |x|; the largest |x| of the non-zero inputs that round to 0 and the
    first input of that size (-1: none). `float_range` judges these (a value that rounds to
    0 is lost only when it is not negligible next to the tensor's largest). Counting them
    here costs nothing next to the conversion itself.
    """
    bad = 0
    over = 0
    amax = np.float32(0)
    umax = np.float32(0)
    for i in range(x.size):  # branch-free, so the loop still vectorizes
        v = to_f32(x[np.uint64(i)])
        h = _f32_to_f16_bits(v)
        out[np.uint64(i)] = h
        fin = np.isfinite(v)
        mag = np.int32(h) & np.int32(0x7FFF)
        a = abs(v) if fin else np.float32(0)
        bad += not fin
        over += fin and mag == np.int32(0x7C00)
        amax = max(amax, a)
        umax = max(umax, a if mag == np.int32(0) else np.float32(0))
    first_over = -1
    first_under = -1
    if over or umax > 0:
        for i in range(x.size):
            v = to_f32(x[np.uint64(i)])
            if not np.isfinite(v):
                continue
            mag = np.int32(out[np.uint64(i)]) & np.int32(0x7FFF)
            if first_over < 0 and mag == np.int32(0x7C00):
                first_over = i
            if first_under < 0 and umax > 0 and abs(v) == umax:
                first_under = i
            if (first_over >= 0 or not over) and (first_under >= 0 or umax == 0):
                break
    return bad, over, first_over, amax, umax, first_under


@jit
def count_nonfinite(x):
    """How many of the 1-D weights (as `widen` reads them) are NaN or infinite."""
    bad = 0
    for i in range(x.size):
        bad += not np.isfinite(to_f32(x[np.uint64(i)]))
    return bad
