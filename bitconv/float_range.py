"""What the narrow float types bitconv writes can hold, and the refusal when they cannot.

Why: narrowing a finite value into a type too small for it silently writes a different
model with exit 0. A TQ2_0/Q2_0 block scale of 1e5 is stored in fp16 as inf; 1e-9 as 0,
zeroing its blocks; a denormal fp16 scale keeps a few bits, so every weight of its block
moves; an embedding value of 1e5 becomes inf in an F16 `token_embd`. Every narrowing point
(fp16 block scales of the TQ/Q2_0 packers, F16/BF16 float tensors, safetensors
`weight_scale` in f16/bf16/f32, float32 GGUF metadata) asks here, and refuses by tensor,
value and the types that would hold it.

Two rules, because the two kinds of value fail differently:

* a **value** (a weight of a float tensor) must stay finite, and must not vanish where it
  matters: a non-zero value that rounds to 0 is refused when it is larger than the
  tensor's largest magnitude times the type's precision (2^-11 for fp16), so a tensor whose
  values all underflow (an embedding scaled by 1e-9 is written as zeros) is refused, while
  the odd 2e-8 among values of order 1 (every real embedding has some) rounds to 0 within
  the type's resolution, as any converter writes it. Ordinary rounding and a tiny value's
  subnormal precision are the cost of the type the user chose;
* a **scale** multiplies a whole block, so it must also keep the relative precision of a
  normal number of its type (2^-11 for fp16): a subnormal fp16 scale that loses bits is
  refused, one the type holds exactly (a source that stored it that way) is kept.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .errors import BadWeightsError


@dataclass(frozen=True)
class FloatFormat:
    name: str
    largest: float  # largest finite value
    bits: int  # significand bits, implicit bit included: a normal value rounds within 2^-bits


FORMATS = {
    "f16": FloatFormat("f16", 65504.0, 11),
    "bf16": FloatFormat("bf16", 3.3895313892515355e38, 8),
    "f32": FloatFormat("f32", 3.4028234663852886e38, 24),
}


def bf16_round(bits: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """float32 bits (uint32) -> (their bfloat16 bits, rounded to nearest even, as uint32; the
    mask of the finite inputs). In uint32 the rounding is exact for every finite value and
    inf; a NaN, whose rounding could carry into inf, -0 or wrap to +0, keeps its sign and top
    bits, made quiet: a NaN stays a NaN."""
    top = (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16
    fin = (bits & 0x7F800000) != 0x7F800000
    if not fin.all():
        nan = ~fin & ((bits & 0x007FFFFF) != 0)
        top[nan] = (bits[nan] >> 16) | 0x0040
    return top, fin


def stored(values: np.ndarray | float, fmt: str) -> np.ndarray:
    """The values as FMT stores them (round to nearest even), as float64."""
    v = np.asarray(values, dtype=np.float64)
    with np.errstate(over="ignore", under="ignore", invalid="ignore"):
        if fmt == "f16":
            return v.astype(np.float16).astype(np.float64)
        f = v.astype(np.float32)
        if fmt == "f32":
            return f.astype(np.float64)
        if fmt == "bf16":
            top, _ = bf16_round(np.atleast_1d(f).view(np.uint32))
            return (top << 16).view(np.float32).astype(np.float64).reshape(v.shape)
    raise ValueError(f"not a float format: {fmt}")


def lost(values: np.ndarray | float, fmt: str, *, scale: bool) -> np.ndarray:
    """Mask of the finite values FMT does not hold (see the module's two rules)."""
    v = np.asarray(values, dtype=np.float64)
    s = stored(v, fmt)
    fin = np.isfinite(v)
    bad = fin & (~np.isfinite(s) | ((s == 0) & (v != 0)))
    if scale:
        with np.errstate(invalid="ignore"):
            bad |= fin & (np.abs(s - v) > np.abs(v) * 2.0 ** -FORMATS[fmt].bits)
    return bad


def bad_scales(scales: np.ndarray, fmt: str) -> np.ndarray:
    """Mask of the scales FMT cannot hold: lost by the scale rule, or not finite at all."""
    return lost(scales, fmt, scale=True) | ~np.isfinite(scales)


def holds(value: float, fmt: str, *, scale: bool) -> bool:
    return bool(np.isfinite(value)) and not bool(lost(value, fmt, scale=scale))


def holders(value: float, *, scale: bool, among: tuple[str, ...] = ("f16", "bf16", "f32")) -> list[str]:
    """The formats (of AMONG) that hold VALUE."""
    return [f for f in among if holds(value, f, scale=scale)]


def describe(value: float, fmt: str) -> str:
    """What FMT would make of VALUE, for a message: 'inf', '0' or the rounded value."""
    s = float(stored(value, fmt))
    if np.isnan(s):
        return "nan"
    if not np.isfinite(s):
        return "inf" if s > 0 else "-inf"
    return "0" if s == 0 else f"{s:.6g}"


def first_lost(values: np.ndarray, fmt: str, *, scale: bool) -> tuple[int, float] | None:
    """(flat index, value) of the first finite value FMT does not hold, or None."""
    bad = lost(np.asarray(values).reshape(-1), fmt, scale=scale)
    if not bad.any():
        return None
    i = int(np.argmax(bad))
    return i, float(np.asarray(values).reshape(-1)[i])


def scale_error(name: str, value: float, where: str, fmt: str, alternatives: list[str]) -> BadWeightsError:
    """The refusal of a scale that FMT (the scale type of WHERE) cannot hold."""
    alt = ", ".join(alternatives) if alternatives else "none of bitconv's layouts; fix the source"
    return BadWeightsError(
        f"{name}: scale {value:.6g} does not fit {where}'s {fmt} scale (it would be stored as "
        f"{describe(value, fmt)})",
        hint=f"outputs whose scales hold it: {alt}",
    )


def tensor_loss(fmt: str, over: int, first_over: int, amax: float, umax: float,
                first_under: int) -> tuple[int, int] | None:
    """(index of the first value lost, how many) by the value rule, from a narrowing pass's
    counts (`kernels.floats.narrow_f16`): every overflow, or the largest underflow when it
    is not negligible next to the tensor's largest magnitude AMAX. None: nothing lost."""
    if over:
        return first_over, over
    if umax > 0 and umax > amax * 2.0 ** -FORMATS[fmt].bits:
        return first_under, 1
    return None


def check_scales(name: str, scales: np.ndarray, fmt: str, where: str) -> None:
    """Refuse the first scale (per-group, as written) FMT cannot hold by the scale rule
    (overflow, 0, or a subnormal that loses bits), naming the formats that would hold it."""
    s = np.asarray(scales, dtype=np.float64).reshape(-1)
    bad = bad_scales(s, fmt)
    if bad.any():
        v = float(s[int(np.argmax(bad))])
        others = [f for f in holders(v, scale=True) if f != fmt]
        raise scale_error(name, v, where, fmt, [f"a {f} source (the scales take its dtype)" for f in others])


def value_error(name: str, value: float, index: int, count: int, fmt: str, hint: str,
                amax: float | None = None) -> BadWeightsError:
    """The refusal of a float tensor that FMT cannot hold (COUNT values, the first at INDEX;
    AMAX, the tensor's largest magnitude, is named when a value would vanish)."""
    stored_as = describe(value, fmt)
    if stored_as == "0" and amax is not None:
        stored_as += f", in a tensor whose largest magnitude is only {amax:.6g}"
    return BadWeightsError(
        f"{name}: value {value:.6g} (element {index}{f', one of {count}' if count > 1 else ''}) does not fit "
        f"{fmt} (it would be stored as {stored_as})",
        hint=hint,
    )
