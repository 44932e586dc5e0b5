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

The helpers at the bottom (`int8_values`, `bad_values`, `scale_tail`, `read_scale`) are
shared by the TL1/TL2 packers, which store their scale the same way.

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
from .inspect_bytes import CodeCount, count_code3, tail_scale

TAIL = 32  # bytes after the codes: float32 scale, then zeros
VARIANTS: dict[str, int] = {"x86-act": 128, "arm": 64, "x86-1x4": 4}  # block size / rows per byte



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

    def stored_scales(self, data: np.ndarray, shape: tuple[int, int]) -> np.ndarray | None:
        return tail_scale(data, self.nbytes(shape) - TAIL)

    def invalid_codes(self, data: np.ndarray, shape: tuple[int, int]) -> CodeCount | None:
        return CodeCount(count_code3(np.asarray(data)[:shape[0] * shape[1] // 4]), "2-bit code 3 (no ternary value)")

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
        self._check_scales(tern, name)  # a float32 scale: only NaN/inf (e.g. 1/1e-39) fails
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
