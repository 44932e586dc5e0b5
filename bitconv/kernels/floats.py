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

    Returns (bad, lost, first): how many inputs were not finite, how many finite inputs
    float16 cannot hold, and the index of the first of those (-1 when none). A value is lost
    when it overflows to inf, or when the tensor has non-zero values and every one of them
    rounds to 0 (the tensor would be zeroed). A lone tiny weight (|w| < 3e-8) that rounds to
    0 is ordinary rounding, below float16's resolution there, as in every converter: real
    embeddings of 500M values hold hundreds of them. Writing a lost value would store a
    tensor the source does not have.
    """
    bad = 0
    over = 0
    nz_in = 0
    nz_out = 0
    for i in range(x.size):  # branch-free, so the loop still vectorizes
        v = to_f32(x[np.uint64(i)])
        h = _f32_to_f16_bits(v)
        out[np.uint64(i)] = h
        fin = np.isfinite(v)
        mag = np.int32(h) & np.int32(0x7FFF)
        bad += not fin
        over += fin and mag == np.int32(0x7C00)
        nz_in += fin and v != np.float32(0)
        nz_out += fin and mag != np.int32(0)
    lost = over
    zeroed = nz_in > 0 and nz_out == 0
    if zeroed:
        lost = nz_in
    first = -1
    if lost:
        for i in range(x.size):
            v = to_f32(x[np.uint64(i)])
            mag = np.int32(out[np.uint64(i)]) & np.int32(0x7FFF)
            if np.isfinite(v) and (mag == np.int32(0x7C00) or (zeroed and v != np.float32(0))):
                first = i
                break
    return bad, lost, first


@jit
def count_nonfinite(x):
    """How many of the 1-D weights (as `widen` reads them) are NaN or infinite."""
    bad = 0
    for i in range(x.size):
        bad += not np.isfinite(to_f32(x[np.uint64(i)]))
    return bad
