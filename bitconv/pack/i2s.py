"""I2_S: bitnet.cpp's 2-bit ternary type (GGML type 36, FORMATS.md §2), in its three code orders.

Codes `q = t + 1` (0, 1, 2), four per byte, high bits first. Which four values share a byte
depends on how the engine was built, so the variant is an option of the layout and is
recorded in the file's metadata:
- `x86-act`: blocks of 128 values of the row-major matrix, value j of a block at byte
  `j mod 32`, bits `6 - 2*(j div 32)` (the Nov-2024 release and today's default x86 build);
- `arm`: the same with blocks of 64 values and 16 bytes (NEON builds since 2025);
- `x86-1x4`: rows 4r..4r+3 share one byte per column (x86 without ACT_PARALLEL); no
  shipped kernel is known to read it, so it is never the default.
The codes are followed by a 32-byte tail whose first 4 bytes are the float32 LE scale: the
fork's ggml_nbytes is `M*K/4 + 32`, so the tail is part of the tensor data.

The helpers at the bottom (`ternary_codes`, `scale_tail`, `read_scale`, the pair-code
tables) are shared by the TL1/TL2 packers, which store their scale the same way.

Speed: pack and unpack are one compiled pass each (bitconv.kernels.i2s, byte-wide SIMD,
values validated on the fly); the numpy formulas they replace are kept as the reference in
tests/reference_packing.py and compared byte for byte.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..errors import CorruptFileError, UsageError
from ..quant import GroupSize, Ternary
from .base import Layout

TAIL = 32  # bytes after the codes: float32 scale, then zeros
VARIANTS: dict[str, int] = {"x86-act": 128, "arm": 64, "x86-1x4": 4}  # block size / rows per byte

_U64 = np.dtype("<u8")


class I2S(Layout, name="i2_s"):
    """2 bits per weight plus a 32-byte scale tail; code order chosen by `variant`."""

    ggml_type = 36
    file_type = 40  # LLAMA_FTYPE_MOSTLY_I2_S
    bits_per_weight = 2.0
    description = "bitnet.cpp I2_S, 2 bpw, one scale per tensor"

    def __init__(self, variant: str = "x86-act") -> None:
        key = str(variant).strip().lower().replace("_", "-")
        canon = {v.replace("-", ""): v for v in VARIANTS}
        key = canon.get(key.replace("-", ""), key)
        if key not in VARIANTS:
            raise UsageError(
                f"unknown I2_S variant {variant!r}; choose one of: {', '.join(VARIANTS)}",
                hint="x86-act matches default x86 builds, arm the NEON builds",
            )
        self.variant = key

    def check(self, name: str, shape: tuple[int, int], group: GroupSize) -> None:
        """Per-tensor scale, and rows that start on a kernel block (else row tails are misread)."""
        super().check(name, shape, group)
        m, k = shape
        if self.variant == "x86-act" and k % 128:
            raise self._fail(
                name, shape, f"K % 128 must be 0 for the x86-act code order (K % 128 = {k % 128}); "
                "the kernels walk each row in whole 128-value blocks",
                hint="use --i2s-variant arm (K % 64) or a layout without row blocks such as tq2_0",
            )
        if self.variant == "arm" and k % 64:
            raise self._fail(
                name, shape, f"K % 64 must be 0 for the arm code order (K % 64 = {k % 64})",
                hint="use a layout without row blocks such as tq2_0",
            )
        if self.variant == "x86-1x4" and m % 4:
            raise self._fail(
                name, shape, f"M % 4 must be 0 for the x86-1x4 code order (M % 4 = {m % 4})",
                hint="use --i2s-variant x86-act",
            )

    def nbytes(self, shape: tuple[int, int]) -> int:
        m, k = shape
        return m * k // 4 + TAIL

    def metadata(self) -> dict[str, Any]:
        return {"i2s_variant": self.variant}

    def _groups(self, shape: tuple[int, int]) -> tuple[int, int]:
        """(number of groups, lane bytes): byte b of group g combines 4 values 'lane' apart."""
        m, k = shape
        if self.variant == "x86-1x4":
            return m // 4, k
        g = VARIANTS[self.variant]
        return m * k // g, g // 4

    def pack(self, tern: Ternary, name: str = "tensor") -> np.ndarray:
        from ..kernels.i2s import i2s_pack

        m, k = tern.shape
        self.check(name, (m, k), tern.group)
        values = int8_values(tern.values, name)
        ngroups, lane = self._groups((m, k))
        n4 = m * k // 4
        out = np.empty(self.nbytes((m, k)), dtype=np.uint8)
        if not i2s_pack(values.reshape(-1).view(np.uint8), out[:n4], ngroups, lane):
            raise bad_values(name)
        out[n4:] = scale_tail(tern.scale)
        return out

    def unpack(self, data: np.ndarray, shape: tuple[int, int], name: str = "tensor") -> Ternary:
        from ..kernels.i2s import i2s_unpack

        self.check(name, shape, "tensor")  # the code order is only defined on whole blocks
        data = self._check_data(data, shape, name)
        m, k = shape
        n4 = m * k // 4
        ngroups, lane = self._groups((m, k))
        values = np.empty((m, k), dtype=np.int8)
        if not i2s_unpack(np.ascontiguousarray(data[:n4]), values.reshape(-1).view(np.uint8), ngroups, lane):
            raise CorruptFileError(f"{name}: I2_S data holds the invalid 2-bit code 3")
        return Ternary(values, np.float32(read_scale(data, n4, name)), "tensor")


# -- shared by the bitnet.cpp layouts ----------------------------------------------------------

def ternary_codes(values: np.ndarray, name: str) -> np.ndarray:
    """`q = t + 1` as a C-contiguous uint8 [M, K] array, refusing anything outside {-1, 0, 1}.

    Checked here because a stray value would otherwise become a valid-looking wrong code.
    """
    v = np.asarray(values)
    if v.dtype != np.int8:
        if v.size and (v.min() < -1 or v.max() > 1):
            raise bad_values(name)
        v = v.astype(np.int8)
    q = v.view(np.uint8) + np.uint8(1)  # -1 -> 0 (wraps), 0 -> 1, 1 -> 2; fresh C array
    if q.size and q.max() > 2:
        raise bad_values(name)
    return q


def int8_values(values: np.ndarray, name: str) -> np.ndarray:
    """The values as a C-contiguous int8 [M, K] array (no copy when they already are one).

    int8 input is validated by the kernels on the fly; any other dtype (rare: tests, foreign
    callers) is range-checked here before the narrowing cast.
    """
    v = np.asarray(values)
    if v.dtype != np.int8:
        if v.size and (v.min() < -1 or v.max() > 1):
            raise bad_values(name)
        v = v.astype(np.int8)
    return np.ascontiguousarray(v)


def bad_values(name: str) -> Exception:
    from ..errors import BadWeightsError

    return BadWeightsError(f"{name}: ternary values must be -1, 0 or 1")


def scale_tail(scale: float) -> np.ndarray:
    """The 32-byte tail that follows the codes: float32 LE scale, then 28 zero bytes."""
    tail = np.zeros(TAIL, dtype=np.uint8)
    tail[:4] = np.array([scale], dtype="<f4").view(np.uint8)
    return tail


def read_scale(data: np.ndarray, offset: int, name: str) -> float:
    """The float32 LE scale at `offset` (the start of the tail)."""
    s = float(np.ascontiguousarray(data[offset:offset + 4]).view("<f4")[0])
    if not np.isfinite(s):
        raise CorruptFileError(f"{name}: the scale in the tensor's tail is not finite ({s})")
    return s


# Pair codes (TL1 and TL2's two-weight tail): a byte holds the codes of two pairs,
# `(3*t0 + t1 + 4) << 4 | (3*t2 + t3 + 4)`, which for q = t + 1 is 48*q0 + 16*q1 + 3*q2 + q3.
# Multiplying the little-endian uint32 word q0 | q1<<8 | q2<<16 | q3<<24 by this constant
# puts exactly that sum in the top byte (the lower byte sums stay below 256, so no carries).
PAIR_MUL = np.uint32(48 << 24 | 16 << 16 | 3 << 8 | 1)


def pair_bytes(q: np.ndarray) -> np.ndarray:
    """Codes uint8 [M, K] (C-contiguous, K % 4 == 0) -> pair-code bytes uint8 [M, K/4]."""
    m, k = q.shape
    w = q.reshape(-1).view("<u4").reshape(m, k // 4)
    w = w * PAIR_MUL
    w >>= np.uint32(24)
    return w.astype(np.uint8)


def _pair_decode_table() -> np.ndarray:
    """byte -> its four ternary values as one little-endian uint32 of int8s (0 if invalid)."""
    lut = np.zeros(256, dtype="<u4")
    for b in range(256):
        hi, lo = b >> 4, b & 15
        if hi <= 8 and lo <= 8:
            vals = np.array([hi // 3 - 1, hi % 3 - 1, lo // 3 - 1, lo % 3 - 1], dtype=np.int8)
            lut[b] = vals.view("<u4")[0]
    return lut


PAIR_LUT = _pair_decode_table()


def lanes(raw: np.ndarray) -> np.ndarray:
    """A 1-D uint8 array seen as uint64 words when its length allows (8x fewer operations)."""
    raw = np.ascontiguousarray(raw).reshape(-1)
    return raw.view(_U64) if raw.size % 8 == 0 else raw


def nibbles_above(raw: np.ndarray, limit: int) -> bool:
    """Whether any 4-bit field of `raw` exceeds `limit` (8 for pair codes, 13 for TL2 magnitudes).

    Bitwise on whole words: for 8 a nibble is too big when bit 3 and any lower bit are set;
    for 13 when bits 3, 2 and 1 are all set (14 and 15).
    """
    x = lanes(raw)
    t = x.dtype.type
    high = t(0x8888888888888888 if x.dtype == _U64 else 0x88)
    if limit == 8:
        bad = x & ((x << t(1)) | (x << t(2)) | (x << t(3))) & high
    elif limit == 13:
        bad = x & (x << t(1)) & (x << t(2)) & high
    else:  # pragma: no cover - only the two limits above exist
        raise ValueError(limit)
    return bool(np.any(bad))


def pair_values(b: np.ndarray) -> np.ndarray:
    """Pair-code bytes uint8 [M, K/4] (validated by the caller) -> ternary int8 [M, K]."""
    m, k4 = b.shape
    return PAIR_LUT[np.ascontiguousarray(b)].reshape(-1).view(np.int8).reshape(m, 4 * k4)
