"""The numpy formulas of the TQ1_0, TQ2_0, Q2_0 and Hugging Face 2-bit packers, kept as the
readable reference the numba kernels (bitconv/kernels/tq.py, q2_0.py, hf2bit.py) are compared
with byte for byte (tests/test_pack_kernels_tq.py).

These are the packers as they shipped before issue 14 (themselves checked against
gguf.quants and ggml's C quantizer); they are deliberately plain and slow.
"""

from __future__ import annotations

import numpy as np

from bitconv.quant import Ternary

TQ_QK = 256
Q2_QK = 64


def block_scales(tern: Ternary, qk: int) -> np.ndarray:
    """The scale of every qk-block, shape broadcastable to [M, K/qk]."""
    if tern.group == "tensor" or tern.group == "row":
        return tern.scales if tern.scales.ndim else tern.scales.reshape(1, 1)
    return np.repeat(tern.scales, int(tern.group) // qk, axis=1)


# -- TQ1_0 / TQ2_0 ------------------------------------------------------------------------
def tq2_0_encode(q: np.ndarray) -> np.ndarray:
    """[nb, 256] uint8 codes (0, 1, 2) -> [nb, 64] bytes: value j at byte 32·(j//128) + j%32,
    bits 2·((j%128)//32)."""
    q = q.reshape(-1, 2, 4, 32)
    return (q[:, :, 0] | (q[:, :, 1] << 2) | (q[:, :, 2] << 4) | (q[:, :, 3] << 6)).reshape(-1, 64)


def tq2_0_decode(qs: np.ndarray) -> np.ndarray:
    b = qs.reshape(-1, 2, 1, 32)
    shifts = np.array([0, 2, 4, 6], dtype=np.uint8).reshape(1, 1, 4, 1)
    return ((b >> shifts) & 3).reshape(-1, TQ_QK)


_POW5 = np.array([81, 27, 9, 3, 1], dtype=np.uint16)
_POW4 = np.array([81, 27, 9, 3], dtype=np.uint16)
_MUL5 = np.array([1, 3, 9, 27, 81], dtype=np.uint8)
_MUL4 = np.array([1, 3, 9, 27], dtype=np.uint8)


def tq1_0_encode(q: np.ndarray) -> np.ndarray:
    """[nb, 256] codes -> [nb, 52] bytes: five (then four) base-3 digits per byte, scaled to 0..255."""
    n = q.shape[0]
    q = q.astype(np.uint16)
    qs0 = np.einsum("nfj,f->nj", q[:, :160].reshape(n, 5, 32), _POW5)
    qs1 = np.einsum("nfj,f->nj", q[:, 160:240].reshape(n, 5, 16), _POW5)
    qh = np.einsum("nfj,f->nj", q[:, 240:].reshape(n, 4, 4), _POW4)
    packed = np.concatenate([qs0, qs1, qh], axis=1).astype(np.uint16)
    return ((packed * 256 + 242) // 243).astype(np.uint8)


def tq1_0_decode(qs: np.ndarray) -> np.ndarray:
    n = qs.shape[0]

    def digits(b: np.ndarray, mul: np.ndarray) -> np.ndarray:
        x = (b[:, None, :] * mul[None, :, None]).astype(np.uint8)  # wraps mod 256 on purpose
        return ((x.astype(np.uint16) * 3) >> 8).reshape(n, -1)

    return np.concatenate(
        [digits(qs[:, :32], _MUL5), digits(qs[:, 32:48], _MUL5), digits(qs[:, 48:52], _MUL4)], axis=1
    ).astype(np.uint8)


TQ = {"tq1_0": (52, tq1_0_encode, tq1_0_decode), "tq2_0": (64, tq2_0_encode, tq2_0_decode)}


def tq_pack(layout: str, tern: Ternary) -> np.ndarray:
    codes_bytes, encode, _ = TQ[layout]
    m, k = tern.shape
    nb = m * (k // TQ_QK)
    t = tern.values.reshape(nb, TQ_QK)
    q = (t + 1).astype(np.uint8)
    d = np.broadcast_to(block_scales(tern, TQ_QK), (m, k // TQ_QK)).reshape(nb).astype(np.float16)
    d = np.where(np.any(t != 0, axis=1), d, np.float16(0))
    out = np.empty((nb, codes_bytes + 2), dtype=np.uint8)
    out[:, :codes_bytes] = encode(q)
    out[:, codes_bytes:] = d.view(np.uint8).reshape(nb, 2)
    return out.reshape(-1)


def tq_unpack(layout: str, data: np.ndarray, shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Bytes -> (int8 values [M, K], float32 block scales d [M, K/256])."""
    codes_bytes, _, decode = TQ[layout]
    m, k = shape
    blocks = data.reshape(m * (k // TQ_QK), codes_bytes + 2)
    t = decode(np.ascontiguousarray(blocks[:, :codes_bytes])).astype(np.int8) - 1
    d = np.ascontiguousarray(blocks[:, codes_bytes:]).view(np.float16).astype(np.float32)
    return t.reshape(m, k), d.reshape(m, k // TQ_QK)


# -- Q2_0 ---------------------------------------------------------------------------------
def q2_0_pack(tern: Ternary) -> np.ndarray:
    """18-byte blocks: fp16 d (0 for an all-zero block), then value j at byte j//4, bits 2·(j%4)."""
    m, k = tern.shape
    nb = m * (k // Q2_QK)
    t = tern.values.reshape(nb, Q2_QK)
    q = (t + 1).astype(np.uint8).reshape(nb, 16, 4)
    codes = q[:, :, 0] | (q[:, :, 1] << 2) | (q[:, :, 2] << 4) | (q[:, :, 3] << 6)
    d = np.broadcast_to(block_scales(tern, Q2_QK), (m, k // Q2_QK)).reshape(nb).astype(np.float16)
    d = np.where(np.any(t != 0, axis=1), d, np.float16(0))
    out = np.empty((nb, 18), dtype=np.uint8)
    out[:, :2] = d.view(np.uint8).reshape(nb, 2)
    out[:, 2:] = codes
    return out.reshape(-1)


def q2_0_unpack(data: np.ndarray, shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Bytes -> (int8 values q - 1 [M, K], code 3 giving +2; float32 d [M, K/64])."""
    m, k = shape
    nb = m * (k // Q2_QK)
    blocks = data.reshape(nb, 18)
    b = blocks[:, 2:]
    q = np.stack([(b >> (2 * i)) & 3 for i in range(4)], axis=2).reshape(nb, Q2_QK)
    d = np.ascontiguousarray(blocks[:, :2]).view(np.float16).astype(np.float32)
    return (q.astype(np.int8) - 1).reshape(m, k), d.reshape(m, k // Q2_QK)


# -- Hugging Face 2-bit (quant_method bitnet) ----------------------------------------------
def hf2bit_pack(values: np.ndarray) -> np.ndarray:
    """Ternary [M, K] int8 -> packed uint8 [ceil(M/4), K]: row block i in bits 2i, padding rows 0."""
    m, k = values.shape
    r = (m + 3) // 4
    q = np.zeros((4 * r, k), dtype=np.uint8)
    q[:m] = (values + 1).astype(np.uint8)
    q = q.reshape(4, r, k)
    return q[0] | (q[1] << 2) | (q[2] << 4) | (q[3] << 6)


def bitnetcpp_ternarize(w) -> tuple[np.float32, np.ndarray]:
    """bitnet.cpp's ternarization of the torch tensor W (its conversion pipeline, in torch):
    s = torch's float32 abs().mean(), clamped at 1e-5, reduced on one thread (the reduction
    order bitnet.cpp's results were pinned with); codes round(w·(1/s)) clamped to [-1, 1].
    Returns (s, int8 codes [M, K])."""
    import torch

    w = w.float()
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        s = w.abs().mean().clamp(min=1e-5)
    finally:
        torch.set_num_threads(n)
    codes = torch.clamp(torch.round(w * (1.0 / s)), -1, 1).to(torch.int8).numpy()
    return np.float32(s.item()), codes


def hf2bit_unpack_codes(packed: np.ndarray, m: int) -> np.ndarray:
    """Packed uint8 [R, K] -> codes uint8 [M, K] in 0..3 (3 is not a valid code)."""
    p = np.asarray(packed, dtype=np.uint8)
    return np.concatenate([(p >> (2 * i)) & 3 for i in range(4)], axis=0)[:m]
