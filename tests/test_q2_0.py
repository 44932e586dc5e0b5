"""Q2_0 (issue 12 items 1-2): bitconv's bytes equal ggml's own quantizer, its unpacker equals
ggml's `to_float`, group scales are exact, bad shapes are refused at plan time and a code 3
in a file is refused as not ternary.

The byte reference is the C library the llama.cpp judge ships: `llama_cpp/lib/libggml-base.so`
from llama-cpp-python 0.3.36, called through ctypes (`ggml_quantize_chunk`, `ggml_row_size`,
`ggml_quantize_init`, and the type traits' `to_float`), as `gguf.quants` is for TQ.
"""

from __future__ import annotations

import ctypes
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bitconv.errors import BadWeightsError, LayoutError
from bitconv.pack import get_layout, layout_for_ggml_type
from bitconv.quant import Ternary

GGML_TYPE_Q2_0 = 42
LAYOUT = get_layout("q2_0")


class _Traits(ctypes.Structure):
    _fields_ = [("type_name", ctypes.c_char_p), ("blck_size", ctypes.c_int64),
                ("blck_size_interleave", ctypes.c_int64), ("type_size", ctypes.c_size_t),
                ("is_quantized", ctypes.c_bool), ("to_float", ctypes.c_void_p),
                ("from_float_ref", ctypes.c_void_p)]


_TO_FLOAT = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.POINTER(ctypes.c_float), ctypes.c_int64)


class GGML:
    """ggml's Q2_0 quantizer and dequantizer from the judge's shared library."""

    def __init__(self, path: Path) -> None:
        lib = ctypes.CDLL(str(path))
        lib.ggml_quantize_init.argtypes = [ctypes.c_int]
        lib.ggml_quantize_chunk.restype = ctypes.c_size_t
        lib.ggml_quantize_chunk.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64,
                                            ctypes.c_int64, ctypes.c_int64, ctypes.c_void_p]
        lib.ggml_row_size.restype = ctypes.c_size_t
        lib.ggml_row_size.argtypes = [ctypes.c_int, ctypes.c_int64]
        lib.ggml_get_type_traits.restype = ctypes.POINTER(_Traits)
        lib.ggml_get_type_traits.argtypes = [ctypes.c_int]
        self.lib = lib
        traits = lib.ggml_get_type_traits(GGML_TYPE_Q2_0).contents
        assert traits.type_name == b"q2_0" and traits.blck_size == 64 and traits.type_size == 18
        self._to_float = _TO_FLOAT(traits.to_float)
        lib.ggml_quantize_init(GGML_TYPE_Q2_0)

    def row_size(self, k: int) -> int:
        return int(self.lib.ggml_row_size(GGML_TYPE_Q2_0, k))

    def quantize(self, w: np.ndarray) -> np.ndarray:
        w = np.ascontiguousarray(w, dtype=np.float32)
        m, k = w.shape
        out = np.zeros(m * self.row_size(k), dtype=np.uint8)
        n = self.lib.ggml_quantize_chunk(GGML_TYPE_Q2_0, w.ctypes.data, out.ctypes.data, 0, m, k, None)
        assert n == out.size
        return out

    def to_float(self, data: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
        data = np.ascontiguousarray(data, dtype=np.uint8)
        y = np.empty(shape, dtype=np.float32)
        self._to_float(data.ctypes.data, y.ctypes.data_as(ctypes.POINTER(ctypes.c_float)), y.size)
        return y


@pytest.fixture(scope="module")
def ggml() -> GGML:
    llama_cpp = pytest.importorskip("llama_cpp")
    lib = Path(llama_cpp.__file__).parent / "lib" / "libggml-base.so"
    if not lib.exists():
        pytest.skip(f"{lib} not found (llama-cpp-python without its ggml library)")
    return GGML(lib)


def _ternary(rng: np.random.Generator, m: int, k: int, group, zero_share: float = 0.3) -> Ternary:
    t = rng.choice(np.array([-1, 0, 1], np.int8), size=(m, k), p=[(1 - zero_share) / 2, zero_share,
                                                                    (1 - zero_share) / 2])
    n = {"tensor": (), "row": (m, 1)}.get(group) if isinstance(group, str) else (m, k // group)
    s = rng.uniform(0.005, 2.0, size=n).astype(np.float32)
    return Ternary(t, s, group)


GROUPS = ["tensor", "row", 64, 128]


@pytest.mark.parametrize("group", GROUPS)
@pytest.mark.parametrize("fp16_scales", [True, False], ids=["fp16-scales", "fp32-scales"])
def test_bytes_equal_ggml_quantize_chunk(ggml, group, fp16_scales):
    rng = np.random.default_rng(hash((str(group), fp16_scales)) % 2**32)
    m, k = 24, 512
    tern = _ternary(rng, m, k, group)
    if fp16_scales:
        tern = Ternary(tern.values, tern.scales.astype(np.float16).astype(np.float32), group)
    tern.values[3, :64] = 0  # an all-zero block: ggml writes d = 0
    tern.values[5, :] = 0  # an all-zero row
    ours = LAYOUT.pack(tern)
    ref = ggml.quantize(tern.dequantize())
    assert ours.size == LAYOUT.nbytes((m, k)) == m * ggml.row_size(k)
    assert np.array_equal(ours, ref), f"first differing byte {int(np.argmax(ours != ref))}"
    # the unpacker equals ggml's to_float: same values, same fp16 scales
    back = LAYOUT.unpack(ours, (m, k), group=group)
    assert np.array_equal(back.dequantize(), ggml.to_float(ours, (m, k)))
    assert np.array_equal(back.values, tern.values)


def test_group_128_is_two_blocks_with_one_scale(ggml):
    rng = np.random.default_rng(5)
    tern = _ternary(rng, 4, 256, 128, zero_share=0.0)
    blocks = LAYOUT.pack(tern).reshape(4, 4, 18)
    d = blocks[:, :, :2].copy().view(np.float16).reshape(4, 4)
    assert np.array_equal(d[:, 0::2], d[:, 1::2])
    assert np.array_equal(d[:, 0::2], tern.scales.astype(np.float16))
    back = LAYOUT.unpack(blocks.reshape(-1), (4, 256), group=128)
    assert back.group == 128 and back.scales.shape == (4, 2)


@pytest.mark.parametrize("group", GROUPS)
def test_seeded_round_trip_keeps_values_and_scales(group):
    for seed in range(5):
        rng = np.random.default_rng(seed)
        m, k = int(rng.integers(1, 9)), 64 * int(rng.integers(1, 9)) * (2 if group == 128 else 1)
        tern = _ternary(rng, m, k, group, zero_share=float(rng.uniform(0, 0.9)))
        back = LAYOUT.unpack(LAYOUT.pack(tern), (m, k), group=group)
        assert np.array_equal(back.values, tern.values)
        nonzero = np.abs(tern.values).reshape(m, -1).any(axis=1)
        if group == "tensor" and not tern.values.any():
            continue
        if nonzero.all():
            assert back.group == group
            assert np.array_equal(back.scales, tern.scales.astype(np.float16).astype(np.float32))


@settings(max_examples=60, deadline=None)
@given(m=st.integers(1, 6), blocks=st.integers(1, 6), group=st.sampled_from(GROUPS),
       seed=st.integers(0, 2**32 - 1), zero_share=st.floats(0.0, 1.0))
def test_property_round_trip(m, blocks, group, seed, zero_share):
    k = 64 * blocks * (2 if group == 128 else 1)
    rng = np.random.default_rng(seed)
    tern = _ternary(rng, m, k, group, zero_share=zero_share)
    data = LAYOUT.pack(tern)
    assert data.dtype == np.uint8 and data.size == LAYOUT.nbytes((m, k))
    back = LAYOUT.unpack(data, (m, k), group=group)
    assert np.array_equal(back.values, tern.values)
    expect = (tern.values * tern.expanded_scales().astype(np.float16).astype(np.float32))
    assert np.array_equal(back.dequantize(), expect.astype(np.float32))
    assert np.array_equal(LAYOUT.pack(back), data), "pack(unpack(bytes)) is the identity on bytes"


@settings(max_examples=25, deadline=None)
@given(m=st.integers(1, 4), blocks=st.integers(1, 4), seed=st.integers(0, 2**32 - 1))
def test_property_bytes_equal_ggml(ggml, m, blocks, seed):
    rng = np.random.default_rng(seed)
    tern = _ternary(rng, m, 64 * blocks, 64)
    assert np.array_equal(LAYOUT.pack(tern), ggml.quantize(tern.dequantize()))


def test_code_3_is_refused_as_not_ternary():
    rng = np.random.default_rng(1)
    data = LAYOUT.pack(_ternary(rng, 2, 128, "tensor")).copy()
    data[18 + 2 + 5] |= 0b11 << 4  # block 1, byte 5, value 22: code 3 (+2d)
    with pytest.raises(BadWeightsError, match="code 3.*not ternary"):
        LAYOUT.unpack(data, (2, 128))


def test_code_3_in_a_file_is_refused(tmp_path, ckpt_factory):
    from bitconv.convert import convert
    from bitconv.readers import open_source
    from bitconv.readers.gguf_file import GGUFFile

    out = tmp_path / "m.gguf"
    convert(ckpt_factory("silu", seed=3), out, layout="q2_0")
    info = GGUFFile(out).tensors["blk.0.ffn_up.weight"]
    raw = bytearray(out.read_bytes())
    raw[info.offset + 2] |= 0b11  # first value of the first block -> code 3
    out.write_bytes(bytes(raw))
    tensor = next(t for t in open_source(out).tensors if t.name == "blk.0.ffn_up.weight")
    with pytest.raises(BadWeightsError, match="blk.0.ffn_up.weight.*not ternary"):
        tensor.load_ternary()


@pytest.mark.parametrize("shape,group,rule", [
    ((8, 96), "tensor", "K=96 is not a multiple of 64"),
    ((8, 256), 32, "not a multiple of 64"),
    ((8, 320), 128, "K=320 is not a multiple of --group-size 128"),
])
def test_check_refuses_at_plan_time(shape, group, rule):
    with pytest.raises(LayoutError, match=rule):
        LAYOUT.check("blk.0.ffn_down.weight", shape, group)


def test_convert_refuses_k_not_multiple_of_64_before_writing(tmp_path, ckpt_factory):
    from bitconv.convert import convert

    src = ckpt_factory("silu", hidden=96, intermediate=192, heads=2, kv_heads=2)
    out = tmp_path / "m.gguf"
    with pytest.raises(LayoutError, match="K=96 is not a multiple of 64"):
        convert(src, out, layout="q2_0")
    assert not out.exists()


def test_registered_with_llama_cpp_ids():
    assert layout_for_ggml_type(42) is type(LAYOUT)
    assert LAYOUT.file_type == 41  # LLAMA_FTYPE_MOSTLY_Q2_0, as llama-quantize writes it
    assert LAYOUT.nbytes((3, 128)) == 3 * 2 * 18
    assert not LAYOUT.tensor_scale_only and LAYOUT.engine == "llama.cpp"
