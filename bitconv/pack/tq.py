"""TQ1_0 and TQ2_0: llama.cpp's ternary types (FORMATS.md §6), byte-identical to gguf.quants.

Both use blocks of 256 values along K with an fp16 scale `d` at the end of each block.
`d` is the group scale of the block (0 for an all-zero block, as gguf.quants writes it),
so per-tensor, per-row and K-groups that are whole multiples of 256 can all be stored.
"""

from __future__ import annotations

import numpy as np

from ..quant import GroupSize, Ternary
from .base import Layout

QK = 256


class _TQ(Layout):
    tensor_scale_only = False
    engine = "llama.cpp"
    codes_bytes: int  # bytes of codes per 256-value block

    def check(self, name: str, shape: tuple[int, int], group: GroupSize) -> None:
        self._check_blocks(name, shape, group, QK, "TQ")

    def nbytes(self, shape: tuple[int, int]) -> int:
        m, k = shape
        return m * (k // QK) * (self.codes_bytes + 2)

    # block-level codec, implemented per type on [n_blocks, 256] uint8 codes (0, 1, 2)
    def _encode(self, q: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def _decode(self, qs: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def pack(self, tern: Ternary, name: str = "tensor") -> np.ndarray:
        m, k = tern.shape
        self.check(name, (m, k), tern.group)
        nb = m * (k // QK)
        t = tern.values.reshape(nb, QK)
        q = (t + 1).astype(np.uint8)
        d = np.broadcast_to(block_scales(tern), (m, k // QK)).reshape(nb).astype(np.float16)
        d = np.where(np.any(t != 0, axis=1), d, np.float16(0))
        out = np.empty((nb, self.codes_bytes + 2), dtype=np.uint8)
        out[:, : self.codes_bytes] = self._encode(q)
        out[:, self.codes_bytes :] = d.view(np.uint8).reshape(nb, 2)
        return out.reshape(-1)

    def unpack(self, data: np.ndarray, shape: tuple[int, int], name: str = "tensor",
               group: GroupSize = "tensor") -> Ternary:
        data = self._check_data(data, shape, name)
        m, k = shape
        blocks = data.reshape(m * (k // QK), self.codes_bytes + 2)
        t = self._decode(np.ascontiguousarray(blocks[:, : self.codes_bytes])).astype(np.int8) - 1
        d = np.ascontiguousarray(blocks[:, self.codes_bytes :]).view(np.float16).astype(np.float32)
        return collapse_block_scales(t.reshape(m, k), d.reshape(m, k // QK), group, name)


def block_scales(tern: Ternary, qk: int = QK) -> np.ndarray:
    """The scale of every qk-block (256 for TQ), shape broadcastable to [M, K/qk]."""
    m, k = tern.shape
    if tern.group == "tensor" or tern.group == "row":
        return tern.scales if tern.scales.ndim else tern.scales.reshape(1, 1)
    per = int(tern.group) // qk
    return np.repeat(tern.scales, per, axis=1)


def collapse_block_scales(values: np.ndarray, d: np.ndarray, group: GroupSize, name: str,
                          qk: int = QK) -> Ternary:
    """Turn per-block scales back into the group the tensor was written with.

    All-zero blocks store d = 0; they take the scale of their group so nothing is lost.
    When the blocks disagree with `group` (bitconv's metadata records the --group-size
    option, which a repack of an already-ternary source does not apply; or a file bitconv
    did not write), the coarsest group the scales agree on is taken: tensor, row, then the
    largest K-group; at worst the qk-blocks themselves (256 for TQ, 64 for Q2_0).
    """
    m, nblk = d.shape
    candidates: list[GroupSize] = [group, "tensor", "row"]
    candidates += [qk * per for per in range(nblk // 2, 1, -1) if nblk % per == 0]
    for g in candidates:
        s = _group_scales(d, g, qk)
        if s is not None:
            return Ternary(values, s, g)
    return Ternary(values, d, qk)


def _group_scales(d: np.ndarray, group: GroupSize, qk: int) -> np.ndarray | None:
    """The scales of `group` when every non-zero block scale agrees with its group's, else None."""
    m, nblk = d.shape
    if group == "tensor":
        nz = d[d != 0]
        if nz.size == 0 or np.all(nz == nz[0]):
            return np.float32(nz[0] if nz.size else 0.0)
        return None
    if group == "row":
        s = d.max(axis=1, keepdims=True)
        return s if np.all((d == 0) | (d == s)) else None
    if int(group) % qk or nblk % (int(group) // qk):
        return None
    per = int(group) // qk
    g = d.reshape(m, nblk // per, per)
    s = g[:, :, 0].copy()  # max over the short last axis, one slice at a time (much faster)
    for j in range(1, per):
        np.maximum(s, g[:, :, j], out=s)
    if all(np.all((g[:, :, j] == 0) | (g[:, :, j] == s)) for j in range(per)):
        return s
    return None


class TQ2_0(_TQ, name="tq2_0"):
    """2.0625 bits per weight; value j of a block sits at byte 32·(j//128) + j%32, bits 2·((j%128)//32)."""

    ggml_type = 35
    file_type = 37
    bits_per_weight = 2.0625
    codes_bytes = 64
    description = "llama.cpp ternary, 2.06 bpw (runs in upstream llama.cpp)"

    def _encode(self, q: np.ndarray) -> np.ndarray:
        q = q.reshape(-1, 2, 4, 32)
        return (q[:, :, 0] | (q[:, :, 1] << 2) | (q[:, :, 2] << 4) | (q[:, :, 3] << 6)).reshape(-1, 64)

    def _decode(self, qs: np.ndarray) -> np.ndarray:
        b = qs.reshape(-1, 2, 1, 32)
        shifts = np.array([0, 2, 4, 6], dtype=np.uint8).reshape(1, 1, 4, 1)
        return ((b >> shifts) & 3).reshape(-1, QK)


_POW5 = np.array([81, 27, 9, 3, 1], dtype=np.uint16)
_POW4 = np.array([81, 27, 9, 3], dtype=np.uint16)
_MUL5 = np.array([1, 3, 9, 27, 81], dtype=np.uint8)
_MUL4 = np.array([1, 3, 9, 27], dtype=np.uint8)


class TQ1_0(_TQ, name="tq1_0"):
    """1.6875 bits per weight: five (then four) base-3 digits per byte, scaled to fill 0..255."""

    ggml_type = 34
    file_type = 36
    bits_per_weight = 1.6875
    codes_bytes = 52
    description = "llama.cpp ternary, 1.69 bpw (runs in upstream llama.cpp)"

    def _encode(self, q: np.ndarray) -> np.ndarray:
        n = q.shape[0]
        q = q.astype(np.uint16)
        qs0 = np.einsum("nfj,f->nj", q[:, :160].reshape(n, 5, 32), _POW5)
        qs1 = np.einsum("nfj,f->nj", q[:, 160:240].reshape(n, 5, 16), _POW5)
        qh = np.einsum("nfj,f->nj", q[:, 240:].reshape(n, 4, 4), _POW4)
        packed = np.concatenate([qs0, qs1, qh], axis=1).astype(np.uint16)
        return ((packed * 256 + 242) // 243).astype(np.uint8)

    def _decode(self, qs: np.ndarray) -> np.ndarray:
        n = qs.shape[0]

        def digits(b: np.ndarray, mul: np.ndarray) -> np.ndarray:
            x = (b[:, None, :] * mul[None, :, None]).astype(np.uint8)  # wraps mod 256 on purpose
            return ((x.astype(np.uint16) * 3) >> 8).reshape(n, -1)

        return np.concatenate(
            [digits(qs[:, :32], _MUL5), digits(qs[:, 32:48], _MUL5), digits(qs[:, 48:52], _MUL4)], axis=1
        ).astype(np.uint8)
