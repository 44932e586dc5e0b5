"""The MLX affine 2-bit and compressed-tensors int2 layouts (issue 20, items 1-2), byte for
byte against the engines' own code where it is installed (compressed_tensors'
`pack_to_int32`, mlx's `dequantize`), and against the numpy formula the kernel replaces."""

from __future__ import annotations

import numpy as np
import pytest

from bitconv.errors import BadWeightsError, LayoutError
from bitconv.pack.ct_int2 import CTInt2, strategy_of
from bitconv.pack.mlx_affine import MLXAffine2, choose_group_size
from bitconv.pack.words2 import coarsest
from bitconv.quant import Ternary

SHAPES = [(8, 128), (5, 96), (3, 16), (7, 40), (1, 1), (4, 33)]  # K % 16 != 0 pads (compressed-tensors)


def _values(shape, seed=0) -> np.ndarray:
    return np.random.default_rng(seed).integers(-1, 2, shape).astype(np.int8)


def reference_words(values: np.ndarray, offset: int) -> np.ndarray:
    """The numpy formula: code t + offset of value 16w + i in bits 2i of word w; K padded with 0 bits."""
    m, k = values.shape
    pad = -k % 16
    codes = np.pad(values.astype(np.uint32) + offset, ((0, 0), (0, pad)))  # padding becomes offset...
    if pad:
        codes[:, k:] = 0  # ...but padded fields are zero bits
    codes = codes.reshape(m, -1, 16) << (2 * np.arange(16, dtype=np.uint32))
    return np.bitwise_or.reduce(codes, axis=2).astype(np.uint32)


@pytest.mark.parametrize("shape", SHAPES)
def test_words_match_the_numpy_formula_and_round_trip(shape):
    t = _values(shape, seed=sum(shape))
    ct = CTInt2().pack_codes(t)
    assert ct.dtype == np.int32 and np.array_equal(ct.view(np.uint32), reference_words(t, 2))
    back = CTInt2().read(ct, np.ones((shape[0], 1), np.float32), shape)
    assert np.array_equal(back.values, t)
    if shape[1] % 32 == 0:
        mw = MLXAffine2(32).pack_codes(t)
        assert mw.dtype == np.uint32 and np.array_equal(mw, reference_words(t, 1))
        s = np.full((shape[0], shape[1] // 32), 0.5, np.float32)
        back = MLXAffine2(32).read(mw, s, -s, shape[1])
        assert isinstance(back, Ternary) and np.array_equal(back.values, t) and back.group == "tensor"


@pytest.mark.parametrize("shape", SHAPES)
def test_int2_bytes_equal_compressed_tensors_pack_to_int32(shape):
    ct = pytest.importorskip("compressed_tensors.compressors.pack_quantized.helpers",
                             reason="compressed-tensors is a [test] extra")
    import torch

    t = _values(shape, seed=7 + shape[0])
    theirs = ct.pack_to_int32(torch.from_numpy(t), 2).numpy()
    ours = CTInt2().pack_codes(t)
    assert theirs.dtype == np.int32 and ours.tobytes() == theirs.tobytes()
    # and their unpacker gives back t
    assert np.array_equal(ct.unpack_from_int32(torch.from_numpy(ours), 2, torch.Size(shape)).numpy(), t)


def test_compressed_tensors_decompression_is_s_times_t_bit_for_bit():
    """compressed-tensors' own decompressor on our weight_packed / weight_scale (channel and group)."""
    pytest.importorskip("compressed_tensors", reason="compressed-tensors is a [test] extra")
    import torch
    from compressed_tensors.compressors.pack_quantized.base import PackedQuantizationCompressor
    from compressed_tensors.quantization import QuantizationArgs, QuantizationScheme

    rng = np.random.default_rng(3)
    t = _values((12, 256), seed=3)
    for group, s in (("row", rng.uniform(0.01, 2, (12, 1)).astype(np.float32)),
                     (64, rng.uniform(0.01, 2, (12, 4)).astype(np.float32)),
                     ("tensor", np.float32(0.037))):
        tern = Ternary(t, s, group)
        strategy, g = strategy_of(group)
        scheme = QuantizationScheme(targets=["Linear"], weights=QuantizationArgs(
            num_bits=2, type="int", symmetric=True, strategy=strategy, group_size=g))
        state = {"weight_packed": torch.from_numpy(CTInt2().pack_codes(t)),
                 "weight_scale": torch.from_numpy(CTInt2().weight_scale(tern)),
                 "weight_shape": torch.tensor(t.shape)}
        w = PackedQuantizationCompressor.decompress(state, scheme)["weight"].numpy()
        assert w.dtype == np.float32 and np.array_equal(w, tern.dequantize()), group


def test_mlx_dequantize_and_matmul_are_exact():
    mx = pytest.importorskip("mlx.core", reason="mlx[cpu] is a [test] extra")
    rng = np.random.default_rng(5)
    t = _values((16, 256), seed=5)
    tern = Ternary(t, rng.uniform(0.01, 2, (16, 2)).astype(np.float32), 128)
    for g in (128, 64, 32):
        lay = MLXAffine2(g)
        words = lay.pack_codes(t)
        s, b = lay.scales_biases(tern)
        w = np.array(mx.dequantize(mx.array(words), mx.array(s), mx.array(b), group_size=g, bits=2))
        assert np.array_equal(w, tern.dequantize()), g
        x = rng.standard_normal((3, 256)).astype(np.float32)
        y = np.array(mx.quantized_matmul(mx.array(x), mx.array(words), mx.array(s), mx.array(b),
                                         transpose=True, group_size=g, bits=2))
        ref = x.astype(np.float64) @ tern.dequantize().astype(np.float64).T
        assert np.abs(y - ref).max() <= 1e-5 * np.abs(ref).max()  # float32 accumulation; measured ~1e-7


def test_stock_mlx_quantize_is_read_as_what_it_computes():
    """mlx's own 2-bit quantizer on s·t is lossy (bias -s, scale 2s/3): read as floats, not ternary."""
    mx = pytest.importorskip("mlx.core", reason="mlx[cpu] is a [test] extra")
    t = _values((4, 128), seed=9)
    w = t.astype(np.float32) * 0.25
    q, s, b = mx.quantize(mx.array(w), group_size=64, bits=2)
    got = MLXAffine2(64).read(np.array(q), np.array(s), np.array(b), 128)
    assert not isinstance(got, Ternary)
    assert np.array_equal(got, np.array(mx.dequantize(q, s, b, group_size=64, bits=2)))
    assert not np.array_equal(got, w)  # what the stock tool loses


def test_bad_values_and_codes_are_refused():
    bad = np.array([[0, 2] + [0] * 30], dtype=np.int8)
    with pytest.raises(BadWeightsError, match="-1, 0 or 1"):
        CTInt2().pack_codes(bad)
    with pytest.raises(BadWeightsError, match="-1, 0 or 1"):
        MLXAffine2(32).pack_codes(bad)
    words = np.full((1, 2), 0xFFFFFFFF, np.uint32)  # code 3 everywhere
    with pytest.raises(BadWeightsError, match="code"):
        MLXAffine2(32).unpack(words.view(np.uint8).reshape(-1), (1, 32))
    zeros = np.zeros((1, 2), np.int32)  # int2 value -2 everywhere
    with pytest.raises(BadWeightsError, match="-2"):
        CTInt2().unpack(zeros.view(np.uint8).reshape(-1), (1, 32))


def test_group_size_choice_and_refusals():
    assert choose_group_size([("a", (8, 256), "tensor"), ("b", (8, 512), "row")]) == 128
    assert choose_group_size([("a", (8, 256), 64), ("b", (8, 192), "tensor")]) == 64
    assert choose_group_size([("a", (8, 96), "tensor")]) == 32
    with pytest.raises(LayoutError, match="K=40 is not a multiple of 32"):
        choose_group_size([("a", (8, 40), "tensor")])
    with pytest.raises(LayoutError, match="group-48"):
        choose_group_size([("a", (8, 96), 48)])
    with pytest.raises(LayoutError, match="not a multiple of the MLX group size 64"):
        MLXAffine2(64).check("a", (8, 96), "tensor")


def test_coarsest_group_read_back():
    t = _values((3, 64))
    assert coarsest(t, np.full((3, 2), 0.5, np.float32), 32).group == "tensor"
    r = coarsest(t, np.array([[1, 1], [2, 2], [3, 3]], np.float32), 32)
    assert r.group == "row" and r.scales.shape == (3, 1)
    assert coarsest(t, np.array([[1, 2], [2, 2], [3, 3]], np.float32), 32).group == 32
