"""The Hugging Face `quant_method: bitnet` packing (FORMATS.md §7): four rows per byte.

Codes `q = t + 1`; packed shape [ceil(M/4), K]; row block i (rows i·R … i·R+R−1 with
R = ceil(M/4)) sits in bits 2i, as transformers' `pack_weights` writes it. Rows past M
(when M % 4 != 0) are left as zero bits, exactly like transformers.
The scale lives in a separate `weight_scale` tensor, so this layout only moves codes.
Packing and unpacking are numba kernels (bitconv/kernels/hf2bit.py, one call per tensor);
the numpy formulas they replaced are the reference in tests/reference_packing_tq.py.
"""

from __future__ import annotations

import numpy as np

from ..quant import GroupSize, Ternary
from ..errors import LayoutError
from .base import Layout
from .kernel_args import bad_values_error, ternary_bytes


class HF2Bit(Layout, name="hf2bit"):
    ggml_type = None
    bits_per_weight = 2.0
    tensor_scale_only = False
    engine = "transformers"
    description = "Hugging Face transformers packed uint8 (quant_method bitnet)"

    def check(self, name: str, shape: tuple[int, int], group: GroupSize) -> None:
        return None

    @staticmethod
    def packed_shape(shape: tuple[int, int]) -> tuple[int, int]:
        m, k = shape
        return ((m + 3) // 4, k)

    def nbytes(self, shape: tuple[int, int]) -> int:
        r, k = self.packed_shape(shape)
        return r * k

    def pack_codes(self, values: np.ndarray, name: str = "tensor") -> np.ndarray:
        """Ternary [M, K] int8 -> packed uint8 [ceil(M/4), K]; padding rows stay 0, as
        transformers leaves them. Values outside {-1, 0, 1} raise BadWeightsError."""
        from ..kernels.hf2bit import hf2bit_pack

        u = ternary_bytes(values, name)
        if u.ndim != 2:
            raise LayoutError(f"{name}: the Hugging Face packing takes a 2-D weight, got shape {list(u.shape)}")
        out = np.empty(self.packed_shape(u.shape), dtype=np.uint8)
        if hf2bit_pack(u, out) > 2:
            raise bad_values_error(name)
        return out

    def unpack_values(self, packed: np.ndarray, m: int, name: str = "tensor") -> tuple[np.ndarray, int]:
        """Packed uint8 [R, K] -> (int8 values t = q - 1 [M, K], number of code-3 weights).

        Code 3 is not a ternary code; it decodes to +2 and is counted, so callers refuse it
        with a count and no second pass."""
        from ..kernels.hf2bit import hf2bit_unpack

        p = np.ascontiguousarray(packed, dtype=np.uint8)
        if p.ndim != 2 or p.shape[0] != (m + 3) // 4:
            raise LayoutError(f"{name}: packed shape {list(p.shape)} does not hold {m} rows "
                              f"(expected [{(m + 3) // 4}, K])", hint="the file is corrupt or its config disagrees")
        values = np.empty((m, p.shape[1]), dtype=np.int8)
        threes = hf2bit_unpack(p, values.view(np.uint8))
        return values, int(threes)

    def unpack_codes(self, packed: np.ndarray, m: int) -> np.ndarray:
        """Packed uint8 [R, K] -> codes uint8 [M, K] in 0..3 (3 is not a valid code)."""
        values, _ = self.unpack_values(packed, m)
        values += 1
        return values.view(np.uint8)

    def pack(self, tern: Ternary, name: str = "tensor") -> np.ndarray:
        return self.pack_codes(tern.values, name).reshape(-1)

    def unpack(self, data: np.ndarray, shape: tuple[int, int], name: str = "tensor") -> Ternary:
        data = self._check_data(data, shape, name)
        values, _ = self.unpack_values(data.reshape(self.packed_shape(shape)), shape[0], name)
        return Ternary(values, np.float32(1.0), "tensor")
