"""The Hugging Face `quant_method: bitnet` packing (FORMATS.md §7): four rows per byte.

Codes `q = t + 1`; packed shape [ceil(M/4), K]; row block i (rows i·R … i·R+R−1 with
R = ceil(M/4)) sits in bits 2i, as transformers' `pack_weights` writes it. Rows past M
(when M % 4 != 0) are left as zero bits, exactly like transformers.
The scale lives in a separate `weight_scale` tensor, so this layout only moves codes.
"""

from __future__ import annotations

import numpy as np

from ..quant import GroupSize, Ternary
from .base import Layout


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

    def pack_codes(self, values: np.ndarray) -> np.ndarray:
        """Ternary [M, K] int8 -> packed uint8 [ceil(M/4), K]."""
        m, k = values.shape
        r = (m + 3) // 4
        q = np.zeros((4 * r, k), dtype=np.uint8)  # padding rows stay 0, as transformers leaves them
        q[:m] = (values + 1).astype(np.uint8)
        q = q.reshape(4, r, k)
        return q[0] | (q[1] << 2) | (q[2] << 4) | (q[3] << 6)

    def unpack_codes(self, packed: np.ndarray, m: int) -> np.ndarray:
        """Packed uint8 [R, K] -> codes uint8 [M, K] in 0..3 (3 is not a valid code)."""
        p = np.asarray(packed, dtype=np.uint8)
        parts = [(p >> (2 * i)) & 3 for i in range(4)]
        return np.concatenate(parts, axis=0)[:m]

    def pack(self, tern: Ternary, name: str = "tensor") -> np.ndarray:
        return self.pack_codes(tern.values).reshape(-1)

    def unpack(self, data: np.ndarray, shape: tuple[int, int], name: str = "tensor") -> Ternary:
        data = self._check_data(data, shape, name)
        codes = self.unpack_codes(data.reshape(self.packed_shape(shape)), shape[0])
        return Ternary(codes.astype(np.int8) - 1, np.float32(1.0), "tensor")
