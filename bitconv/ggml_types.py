"""GGML tensor types bitconv reads and writes: the one place that knows their ids and sizes.

The `gguf` package (PyPI) knows the float types and TQ1_0/TQ2_0, but not bitnet.cpp's
I2_S (36), TL1 (38) and TL2 (39): its enum rejects them and upstream reuses some of those
ids for other types. bitconv never patches `gguf`; instead it writes these ids as raw
integers and sizes every packed type through its own layout classes.
"""

from __future__ import annotations

import math

import numpy as np

F32, F16, BF16 = 0, 1, 30

FLOAT_TYPES: dict[int, tuple[str, np.dtype | None, int]] = {
    F32: ("F32", np.dtype(np.float32), 4),
    F16: ("F16", np.dtype(np.float16), 2),
    BF16: ("BF16", None, 2),  # numpy has no bfloat16: handled as uint16 bit patterns
}
FLOAT_BY_NAME = {"f32": F32, "f16": F16, "bf16": BF16}


def type_name(ggml_type: int) -> str:
    if ggml_type in FLOAT_TYPES:
        return FLOAT_TYPES[ggml_type][0]
    from .pack import layout_for_ggml_type

    cls = layout_for_ggml_type(ggml_type)
    if cls is not None:
        return cls.name.upper()
    other = upstream_type(ggml_type)
    return other[0] if other is not None else f"type{ggml_type}"


def upstream_type(ggml_type: int) -> tuple[str, int, int] | None:
    """(name, block size, block bytes) of a type upstream llama.cpp defines and no bitconv
    layout claims (Q8_0, Q6_K, ... as foreign files use for embeddings), else None.

    Ids a bitconv layout claims (I2_S 36, TL1 38, TL2 39) keep bitconv's meaning here;
    `bitconv doctor` reports the ids whose meaning depends on the engine.
    """
    from .pack import layout_for_ggml_type

    if ggml_type in FLOAT_TYPES or layout_for_ggml_type(ggml_type) is not None:
        return None
    import gguf

    try:
        t = gguf.GGMLQuantizationType(ggml_type)
    except ValueError:
        return None
    size = gguf.GGML_QUANT_SIZES.get(t)
    return (t.name, size[0], size[1]) if size else None


def tensor_nbytes(ggml_type: int, shape: tuple[int, ...]) -> int:
    """Bytes of a tensor's data in the file. `shape` is bitconv's [M, K] (or [N] for vectors)."""
    if ggml_type in FLOAT_TYPES:
        return math.prod(int(d) for d in shape) * FLOAT_TYPES[ggml_type][2]
    from .pack import layout_for_ggml_type

    cls = layout_for_ggml_type(ggml_type)
    if cls is None:
        other = upstream_type(ggml_type)
        n = math.prod(int(d) for d in shape)
        if other is not None and shape and int(shape[-1]) % other[1] == 0:
            return n // other[1] * other[2]
    if cls is None or len(shape) != 2:
        raise ValueError(f"unsupported GGML type {ggml_type} for shape {list(shape)}")
    if cls.block_k and int(shape[1]) % cls.block_k:  # as ggml's gguf reader: ne[0] whole blocks
        raise ValueError(f"ne[0] = {int(shape[1])} is not a multiple of the {cls.name.upper()} block size "
                         f"{cls.block_k}")
    return cls().nbytes((int(shape[0]), int(shape[1])))


_BLOCK = 1 << 20


def float_to_bytes(arr: np.ndarray, ggml_type: int, name: str = "tensor", flag: str | None = None) -> np.ndarray:
    """Float32 array -> the little-endian bytes of F32/F16/BF16 (BF16 rounds to nearest even).

    A tensor the type cannot hold (a finite value overflowing to inf, or values that vanish
    to 0 where they matter: `float_range`'s value rule) is refused by NAME, never written;
    FLAG is the option that picks the type, named in the hint with the types that hold it."""
    a = np.ascontiguousarray(arr, dtype=np.float32)
    if ggml_type == F32:
        return a.reshape(-1).view(np.uint8)
    flat = a.reshape(-1)
    if ggml_type == F16:  # one compiled pass; rounds exactly as numpy's astype(float16)
        from .kernels.floats import narrow_f16

        out = np.empty(a.size, dtype=np.int16)
        _, over, first_over, amax, umax, first_under = narrow_f16(flat, out)
        check_narrowed(name, "f16", flat, over, first_over, float(amax), float(umax), first_under, flag)
        return out.view(np.uint8)
    if ggml_type == BF16:  # in blocks: whole-array temporaries would be 4 float32-sized copies
        from .float_range import bf16_round

        out = np.empty(flat.size, dtype=np.uint16)
        over, first_over, amax, umax, first_under = 0, -1, 0.0, 0.0, -1
        for i in range(0, flat.size, _BLOCK):
            bits = flat[i:i + _BLOCK].view(np.uint32)
            top, fin = bf16_round(bits)
            out[i:i + _BLOCK] = top
            ov = fin & ((top & 0x7F80) == 0x7F80)
            un = ((top & 0x7FFF) == 0) & ((bits & 0x7FFFFFFF) != 0)  # finite by construction
            n = int(np.count_nonzero(ov))
            if n and first_over < 0:
                first_over = i + int(np.argmax(ov))
            over += n
            mag = np.abs(flat[i:i + _BLOCK])
            if fin.any():
                amax = max(amax, float(mag[fin].max()))
            if un.any():
                u = float(mag[un].max())
                if u > umax:
                    umax, first_under = u, i + int(np.argmax(un & (mag == np.float32(u))))
        check_narrowed(name, "bf16", flat, over, first_over, amax, umax, first_under, flag)
        return out.view(np.uint8)
    raise ValueError(f"not a float type: {ggml_type}")


def check_narrowed(name: str, fmt: str, values: np.ndarray, over: int, first_over: int, amax: float,
                   umax: float, first_under: int, flag: str | None, widen_one=None) -> None:
    """Refuse a narrowed tensor `float_range.tensor_loss` says lost values; VALUES (as the
    pass read them; WIDEN_ONE turns one raw item into float32) give the one to name."""
    from .float_range import tensor_loss

    loss = tensor_loss(fmt, over, first_over, amax, umax, first_under)
    if loss is None:
        return
    index, count = loss
    value = float(widen_one(values[index:index + 1])) if widen_one is not None else float(values[index])
    raise narrowing_error(name, value, int(index), int(count), fmt, flag, None if over else amax)


def narrowing_error(name: str, value: float, index: int, count: int, fmt: str, flag: str | None,
                    amax: float | None = None):
    """The refusal of a float tensor FMT cannot hold, naming the types (and FLAG) that would."""
    from .float_range import holders, value_error

    types = [t for t in holders(value, scale=False) if t != fmt]
    if flag and types:
        hint = f"write it with {flag} {' or '.join(types)}"
    elif types:
        hint = f"types that hold it: {', '.join(types)}"
    else:
        hint = "no float type bitconv writes holds it; fix the source"
    return value_error(name, value, index, count, fmt, hint, amax)


def bytes_to_float(data: np.ndarray, ggml_type: int, shape: tuple[int, ...]) -> np.ndarray:
    data = np.ascontiguousarray(data).reshape(-1).view(np.uint8)
    if ggml_type == F32:
        return data.view(np.float32).reshape(shape)
    if ggml_type in (F16, BF16):
        from .kernels.floats import widened

        return widened(data, bf16=ggml_type == BF16).reshape(shape)
    raise ValueError(f"not a float type: {ggml_type}")


def dequantize_upstream(data: np.ndarray, ggml_type: int, shape: tuple[int, ...]) -> np.ndarray:
    """Bytes of an upstream quantized type (`upstream_type`) -> float32 of `shape`, by
    gguf.quants, the reference implementation. Foreign files keep embeddings or the
    output layer in such types (llama-quantize --token-embedding-type q6_k)."""
    import gguf

    info = upstream_type(ggml_type)
    if info is None:
        raise ValueError(f"not an upstream quantized type: {ggml_type}")
    _, block, nbytes = info
    rows = np.ascontiguousarray(data).reshape(-1).view(np.uint8).reshape(-1, int(shape[-1]) // block * nbytes)
    return np.asarray(gguf.quants.dequantize(rows, gguf.GGMLQuantizationType(ggml_type)), dtype=np.float32).reshape(shape)


# Type ids that ternary forks of llama.cpp claim for types of their own, which neither upstream
# llama.cpp nor bitnet.cpp reads (doctor names them; FORMATS.md §6b, ANCHORS.md).
FORK_TYPE_IDS = {
    43: "the first id after upstream's Q2_0 (42), which ternary forks take for their own 2-bit types "
        "(the bytes alone cannot say whose)",
    142: "PrismML's PQ2_0 (2-bit, group-128 blocks; requested upstream in llama.cpp#29058, not merged)",
    143: "PrismML's PTQ1_0 (ternary, group-128 blocks; requested upstream in llama.cpp#29058, not merged)",
}
