"""TQ2_0's device-side decoding (`TQ2_0.torch_values` + `scales_from_bytes`, which verify's
GPU staging runs) gives what the format's CPU decoder (`unpack`, the numba kernel held to
gguf.quants) gives: every byte value in every code position, every group size, and blocks
stored with d = 0."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from bitconv.errors import BadWeightsError  # noqa: E402
from bitconv.pack import get_layout  # noqa: E402
from bitconv.quant import Ternary  # noqa: E402


def _random_tq2_0(m: int, k: int, group, seed: int = 0):
    rng = np.random.default_rng(seed)
    v = rng.integers(-1, 2, (m, k)).astype(np.int8)
    v[1, :256] = 0  # an all-zero block: stored d = 0
    if group == "tensor":
        s = np.float32(0.25)
    elif group == "row":
        s = rng.uniform(0.1, 1, (m, 1)).astype(np.float32)
    else:
        s = rng.uniform(0.1, 1, (m, k // int(group))).astype(np.float32)
    return get_layout("tq2_0").pack(Ternary(v, s, group), "w"), v


@pytest.mark.parametrize("group", ["tensor", "row", 256, 512])
def test_device_decoding_matches_unpack(group):
    lay = get_layout("tq2_0")
    m, k = 6, 1024
    data, v = _random_tq2_0(m, k, group)
    want = lay.unpack(data, (m, k), "w", group)
    got = lay.torch_values(torch.from_numpy(data.copy()), (m, k))
    assert got.dtype == torch.int8 and np.array_equal(got.numpy(), v)
    sc = lay.scales_from_bytes(data, (m, k), group, "w")
    assert sc.group == want.group and np.array_equal(np.asarray(sc.scales), np.asarray(want.scales))


def test_every_code_byte_in_every_position_decodes_as_unpack():
    lay = get_layout("tq2_0")
    nb = 256
    blocks = np.zeros((nb, 66), np.uint8)
    for i in range(nb):  # every byte value at every one of the 64 code positions, codes 0..2 only
        b = (np.arange(64) + i) % 256
        blocks[i, :64] = np.where((b & (b >> 1) & 0x55) != 0, 0x55, b)  # any code 3 -> four zeros
    blocks[:, 64:] = np.array([0.5], np.float16).view(np.uint8)
    shape = (nb // 4, 1024)
    want = lay.unpack(blocks.reshape(-1), shape, "w")
    got = lay.torch_values(torch.from_numpy(blocks), shape)
    assert np.array_equal(got.numpy(), want.values)


def test_live_block_with_zero_scale_and_code_3():
    lay = get_layout("tq2_0")
    data, _ = _random_tq2_0(4, 512, "tensor")
    blocks = data.reshape(-1, 66).copy()
    blocks[4, 64:] = 0  # a block holding codes, stored with d = 0: reads as zeros, so scales split
    want = lay.unpack(blocks.reshape(-1), (4, 512), "w", "tensor")
    sc = lay.scales_from_bytes(blocks.reshape(-1), (4, 512), "tensor", "w")
    assert sc.group == want.group != "tensor"
    assert np.array_equal(np.asarray(sc.scales), np.asarray(want.scales))
    blocks[3, 5] = 0xFF  # code 3: refused on the host, naming the block, as unpack does
    with pytest.raises(BadWeightsError, match="block 3 .*code 3"):
        lay.scales_from_bytes(blocks.reshape(-1), (4, 512), "tensor", "w")
