"""Q2_0: mainline llama.cpp's 2-bit type (GGML type 42, FORMATS.md §6b), byte-identical to ggml.

Blocks of 64 values along K, 18 bytes each: the fp16 scale `d` first, then 16 bytes of
2-bit codes, value `j` at byte `j // 4`, bits `2·(j % 4)` (least significant first); a code
`q` means `(q − 1)·d`. A ternary model only uses codes 0..2; code 3 (`+2d`) is a 2-bit
model that is not ternary, and unpacking refuses it rather than clipping it.

`d` is the block's group scale (0 for an all-zero block, as ggml's quantizer writes it,
since it takes the block maximum), so per-tensor, per-row and K-groups that are multiples
of 64 are stored exactly: a group-128 model is two 64-blocks with the same `d`.

Packing and unpacking are numba kernels (bitconv/kernels/q2_0.py, one call per tensor);
the numpy formulas they replaced are the reference in tests/reference_packing_tq.py.
"""

from __future__ import annotations

import numpy as np

from ..errors import BadWeightsError
from ..quant import GroupSize, Ternary
from .base import Layout
from .inspect_bytes import CodeCount, block_codes, block_scales_f16, count_code3
from .kernel_args import bad_values_error, block_scale_bits, ternary_bytes
from .tq import collapse_block_scales

QK = 64
BLOCK_BYTES = 2 + QK // 4  # fp16 d, then 16 code bytes


class Q2_0(Layout, name="q2_0"):
    """2.25 bits per weight; runs in stock llama.cpp on CPU, CUDA, Metal and Vulkan."""

    ggml_type = 42
    file_type = 41  # LLAMA_FTYPE_MOSTLY_Q2_0 in llama.h (40 is MOSTLY_Q1_0)
    bits_per_weight = 2.25
    tensor_scale_only = False
    scale_type = "f16"  # each block's d
    block_k = QK
    engine = "llama.cpp"
    description = "llama.cpp mainline 2-bit, 2.25 bpw (CPU, CUDA, Metal, Vulkan in stock llama.cpp)"

    def check(self, name: str, shape: tuple[int, int], group: GroupSize) -> None:
        self._check_blocks(name, shape, group, QK, "Q2_0")

    def nbytes(self, shape: tuple[int, int]) -> int:
        m, k = shape
        return m * (k // QK) * BLOCK_BYTES

    def stored_scales(self, data: np.ndarray, shape: tuple[int, int]) -> np.ndarray | None:
        return None if shape[1] % QK else block_scales_f16(data, BLOCK_BYTES, 0)  # d starts each block

    def invalid_codes(self, data: np.ndarray, shape: tuple[int, int]) -> CodeCount | None:
        if shape[1] % QK:
            return None
        return CodeCount(count_code3(block_codes(data, BLOCK_BYTES, 2, QK // 4)),
                         "2-bit code 3: Q2_0 reads it as +2d, so the tensor is not ternary", corrupt=False)

    def pack(self, tern: Ternary, name: str = "tensor") -> np.ndarray:
        from ..kernels.q2_0 import q2_0_pack

        m, k = tern.shape
        self.check(name, (m, k), tern.group)
        u = ternary_bytes(tern.values, name)
        self._check_scales(tern, name)
        sc, per = block_scale_bits(tern, QK, name)
        out = np.empty(m * (k // QK) * BLOCK_BYTES, dtype=np.uint8)
        if q2_0_pack(u.reshape(-1), m, k, sc, per, out) > 2:  # as ggml: an all-zero block stores d = 0
            raise bad_values_error(name)
        return out

    def unpack(self, data: np.ndarray, shape: tuple[int, int], name: str = "tensor",
               group: GroupSize = "tensor") -> Ternary:
        """Bytes -> Ternary; `group` is the group the file was written with (bitconv metadata):
        the 64-block scales are collapsed back into it when they agree."""
        from ..kernels.q2_0 import q2_0_unpack

        self._check_whole_blocks(name, shape)  # K not whole 64-blocks: no block holds these values
        data = self._check_data(data, shape, name)
        m, k = shape
        values = np.empty((m, k), dtype=np.int8)
        d = np.empty((m, k // QK), dtype=np.float32)
        if not data.flags.c_contiguous or data.ctypes.data % 2:  # the kernel reads 16-bit words
            data = data.copy()
        bad = q2_0_unpack(data, m, k, values.reshape(-1).view(np.uint8), d.reshape(-1))
        if bad >= 0:
            raise BadWeightsError(
                f"{name}: Q2_0 block {bad} holds code 3 (+2·d): a 2-bit model, not ternary",
                hint="bitconv reads ternary Q2_0 only (codes 0, 1, 2); requantize from the float model",
            )
        return collapse_block_scales(values, d, group, name, qk=QK)
