"""What a layout's bytes say without unpacking them, for `bitconv doctor`: the stored scales
and the code fields that decode to no ternary value. Each layout answers for itself
(`Layout.stored_scales`, `Layout.invalid_codes`); this file holds the bit counting they
share, so no other module keeps a table of block fields."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

_B55 = np.uint64(0x5555555555555555)


@dataclass(frozen=True)
class CodeCount:
    """Code fields that are not a ternary value: how many, what they are, and whether the
    format itself forbids them (`corrupt`) or defines them as something non-ternary (Q2_0's
    code 3 is +2·d: a valid Q2_0 tensor that is not a ternary model)."""

    count: int
    what: str
    corrupt: bool = True


def count_code3(raw: np.ndarray) -> int:
    """How many 2-bit fields of `raw` (uint8) hold 3 (both bits set)."""
    raw = np.ascontiguousarray(raw).reshape(-1)
    n8 = raw.size // 8 * 8
    total = 0
    if n8:
        w = raw[:n8].view("<u8")
        hits = w & (w >> np.uint64(1)) & _B55
        total += int(np.unpackbits(hits.view(np.uint8)).sum())
    rest = raw[n8:]
    if rest.size:
        total += int(np.unpackbits((rest & (rest >> 1) & 0x55).astype(np.uint8)).sum())
    return total


def count_nibbles_above(raw: np.ndarray, top: int) -> int:
    """How many 4-bit fields of `raw` (uint8) hold a value above `top`."""
    raw = np.ascontiguousarray(raw).reshape(-1)
    return int(np.count_nonzero((raw >> 4) > top) + np.count_nonzero((raw & 15) > top))


def block_scales_f16(data: np.ndarray, block_bytes: int, offset: int) -> np.ndarray:
    """The fp16 scale at `offset` of every `block_bytes`-byte block, as float32 (widened by
    kernels.floats.widened, the package's one fp16 routine)."""
    from ..kernels.floats import widened

    blocks = np.asarray(data).reshape(-1, block_bytes)
    return widened(blocks[:, offset:offset + 2], bf16=False)


def block_codes(data: np.ndarray, block_bytes: int, offset: int, n: int) -> np.ndarray:
    """The `n` code bytes at `offset` of every block (a strided view, [blocks, n])."""
    return np.asarray(data).reshape(-1, block_bytes)[:, offset:offset + n]


def tail_scale(data: np.ndarray, tail_offset: int) -> np.ndarray:
    """bitnet.cpp's per-tensor float32 scale at the start of a tensor's 32-byte tail."""
    return np.ascontiguousarray(np.asarray(data)[tail_offset:tail_offset + 4]).view("<f4").astype(np.float32)
