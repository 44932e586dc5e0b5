"""The compiled packers (bitconv/kernels/i2s.py, tl.py) equal the numpy reference byte for byte.

tests/reference_packing.py holds the numpy formulas bitconv shipped before the kernels
(themselves pinned to the golden vectors and the loop transcriptions in
test_pack_bitnet.py). Here the layouts, now running the kernels, are compared with that
reference on many shapes, every variant and tile configuration kind, random and
adversarial values, and corrupt inputs, which must still raise the same typed errors.
"""

from __future__ import annotations

import numpy as np
import pytest

import reference_packing as ref
from bitconv.errors import BadWeightsError, CorruptFileError
from bitconv.pack.i2s import I2S
from bitconv.pack.tiles import TL1_PRESETS, TL2_PRESETS, TileConfig, tl2_padded_size, tl2_real_size, validate_tiles
from bitconv.pack.tl1 import TL1
from bitconv.pack.tl2 import TL2
from bitconv.quant import Ternary

SCALE = np.float32(0.0421875)


def tail_of(scale: float) -> np.ndarray:
    t = np.zeros(32, np.uint8)
    t[:4] = np.array([scale], "<f4").view(np.uint8)
    return t


def value_patterns(rng: np.random.Generator, m: int, k: int) -> list[np.ndarray]:
    """Random values, the constant matrices, and random values with constant rows and columns."""
    rand = rng.integers(-1, 2, size=(m, k), dtype=np.int8)
    mixed = rand.copy()
    if m >= 3:
        mixed[0], mixed[m // 2], mixed[-1] = -1, 0, 1
    if k >= 3:
        mixed[:, 0], mixed[:, k // 2], mixed[:, -1] = 1, -1, 0
    alternating = np.resize(np.array([-1, 1, 0, 1, -1, -1, 0], np.int8), (m, k))
    return [rand, mixed, alternating] + [np.full((m, k), v, np.int8) for v in (-1, 0, 1)]


BAD_VALUES = (2, -2, 127, -128, 3, 64)


def bad_positions(rng: np.random.Generator, m: int, k: int) -> list[tuple[int, int]]:
    return [(0, 0), (m - 1, k - 1), (int(rng.integers(m)), int(rng.integers(k)))]


# -- I2_S ----------------------------------------------------------------------------------------

def i2s_shapes(variant: str) -> list[tuple[int, int]]:
    if variant == "x86-1x4":  # M % 4, any K (odd widths included)
        return [(4, 1), (4, 3), (8, 12), (12, 37), (64, 256), (256, 1536), (1536, 4096 + 4), (4, 4096)]
    block = 128 if variant == "x86-act" else 64
    return [(1, block), (3, 2 * block), (5, 64 * 3 if variant == "arm" else 128), (7, 5 * block),
            (64, 256), (256, 1536), (1536, 4096), (33, 17 * block)]


@pytest.mark.parametrize("variant", ["x86-act", "arm", "x86-1x4"])
def test_i2s_kernels_equal_reference(variant: str) -> None:
    rng = np.random.default_rng(len(variant))
    layout = I2S(variant)
    for m, k in i2s_shapes(variant):
        for t in value_patterns(rng, m, k):
            data = layout.pack(Ternary(t, SCALE), "w")
            n4 = m * k // 4
            assert data.shape == (layout.nbytes((m, k)),) and data.dtype == np.uint8
            np.testing.assert_array_equal(data[:n4], ref.i2s_pack(t, variant))
            np.testing.assert_array_equal(data[n4:], tail_of(SCALE))
            back = layout.unpack(data, (m, k), "w")
            assert back.values.dtype == np.int8 and back.values.flags.c_contiguous
            np.testing.assert_array_equal(back.values, t)
            assert back.scales == SCALE


@pytest.mark.parametrize("variant", ["x86-act", "arm", "x86-1x4"])
def test_i2s_unpack_equals_reference_on_arbitrary_bytes(variant: str) -> None:
    """Any byte stream: valid ones decode like the reference; the code 3 anywhere is refused."""
    rng = np.random.default_rng(7)
    layout = I2S(variant)
    m, k = (8, 12) if variant == "x86-1x4" else (6, 256)
    n4 = m * k // 4
    every_valid = np.array([b for b in range(256) if not (b & (b >> 1) & 0x55)], np.uint8)
    codes = rng.choice(every_valid, size=n4)
    data = np.concatenate([codes, tail_of(SCALE)])
    np.testing.assert_array_equal(layout.unpack(data, (m, k), "w").values, ref.i2s_unpack(codes, (m, k), variant))
    for b in sorted(set(range(256)) - set(every_valid.tolist())):
        bad = data.copy()
        bad[int(rng.integers(n4))] = b
        assert ref.i2s_unpack(bad[:n4], (m, k), variant) is None
        with pytest.raises(CorruptFileError, match="code 3"):
            layout.unpack(bad, (m, k), "w")


@pytest.mark.parametrize("variant", ["x86-act", "arm", "x86-1x4"])
def test_i2s_pack_refuses_values_outside_ternary(variant: str) -> None:
    rng = np.random.default_rng(3)
    m, k = (8, 12) if variant == "x86-1x4" else (4, 256)
    for bad in BAD_VALUES:
        for pos in bad_positions(rng, m, k):
            t = rng.integers(-1, 2, size=(m, k), dtype=np.int8)
            t[pos] = bad
            with pytest.raises(BadWeightsError, match="w: ternary values"):
                I2S(variant).pack(Ternary(t, SCALE), "w")
    # wider integer and float inputs are range-checked before the cast
    with pytest.raises(BadWeightsError):
        I2S(variant).pack(Ternary(np.full((m, k), 300, np.int16), SCALE), "w")
    t = rng.integers(-1, 2, size=(m, k), dtype=np.int8)
    for dtype in (np.int16, np.int32, np.float32):
        np.testing.assert_array_equal(I2S(variant).pack(Ternary(t.astype(dtype), SCALE), "w"),
                                      I2S(variant).pack(Ternary(t, SCALE), "w"))



# -- TL2 -----------------------------------------------------------------------------------------

def tl2_cases() -> list[tuple[int, int, TileConfig]]:
    """Every stock tile config on small shapes with and without a two-weight tail, the stock
    shapes that are cheap to check, and odd configs: BK 24/48 (a byte-loop path), BK 144 and
    240, several tail tiles, one tile."""
    cases = []
    for c in sorted(set(TL2_PRESETS.values()), key=TileConfig.as_list):
        cases += [(c.BM, 2 * c.BK, c), (2 * c.BM, 2 * c.BK + 64, c)]
    cases += [(m, k, TL2_PRESETS[(m, k)]) for m, k in [(1536, 4096), (1536, 1536), (4096, 1536)]]
    cases += [(m, k, TileConfig(bm_, bk, 32)) for m, k, bm_, bk in [
        (32, 96, 32, 96), (64, 128, 32, 96), (64, 160, 64, 96), (32, 192, 32, 192), (64, 224, 32, 192),
        (32, 352, 32, 192), (96, 288, 32, 96), (32, 72, 32, 24), (64, 80, 32, 48), (128, 256, 64, 96),
        (64, 144 * 3 + 128, 64, 144), (32, 240 + 224, 32, 240), (96, 48 * 5 + 32, 96, 48), (32, 24, 32, 24)]]
    rng = np.random.default_rng(6)
    for _ in range(12):
        bk = int(rng.choice([24, 48, 96, 144, 192, 240]))
        bm_ = 32 * int(rng.integers(1, 5))
        k2 = 32 * int(rng.integers(0, (bk - 1) // 32 + 1))
        cases.append((bm_ * int(rng.integers(1, 4)), bk * int(rng.integers(1, 4)) + k2, TileConfig(bm_, bk, 32)))
    for m, k, c in cases:
        validate_tiles("tl2", "w", (m, k), c)
    return cases


@pytest.mark.parametrize("m,k,cfg", tl2_cases(), ids=lambda x: str(getattr(x, "as_list", lambda: x)()))
def test_tl2_kernels_equal_reference(m: int, k: int, cfg: TileConfig) -> None:
    rng = np.random.default_rng(m * 7 + k)
    layout = TL2(tiles={(m, k): cfg})
    real = tl2_real_size((m, k), cfg.BK)
    body = -(-tl2_padded_size((m, k)) // 32) * 32
    patterns = value_patterns(rng, m, k) if m * k <= 1 << 20 else value_patterns(rng, m, k)[:2]
    for t in patterns:
        data = layout.pack(Ternary(t, SCALE), "w")
        assert data.shape == (layout.nbytes((m, k)),) and data.dtype == np.uint8
        np.testing.assert_array_equal(data[:real], ref.tl2_pack(t, cfg.BM, cfg.BK))
        assert not data[real:body].any()
        np.testing.assert_array_equal(data[body:], tail_of(SCALE))
        back = layout.unpack(data, (m, k), "w")
        assert back.values.dtype == np.int8 and back.values.flags.c_contiguous
        np.testing.assert_array_equal(back.values, t)
        assert back.scales == SCALE


@pytest.mark.parametrize("m,k,cfg", [(64, 288 + 64, TileConfig(64, 96, 32)), (32, 192 + 160, TileConfig(32, 192, 32)),
                                     (32, 48 + 32, TileConfig(32, 48, 32))])
def test_tl2_unpack_equals_reference_on_arbitrary_bytes(m: int, k: int, cfg: TileConfig) -> None:
    """Any signs (negative zeros included) and valid magnitudes/pair codes decode like the
    reference; a magnitude above 13 or a tail pair code above 8 is refused with its own message."""
    rng = np.random.default_rng(9)
    layout = TL2(tiles={(m, k): cfg})
    k3, k2, nmag, nsgn = ref.tl2_parts((m, k), cfg.BK)
    real = tl2_real_size((m, k), cfg.BK)
    valid_mag = np.array([b for b in range(256) if b >> 4 <= 13 and b & 15 <= 13], np.uint8)
    valid_pair = np.array([b for b in range(256) if b >> 4 <= 8 and b & 15 <= 8], np.uint8)
    raw = np.concatenate([rng.choice(valid_mag, size=nmag), rng.integers(0, 256, size=nsgn, dtype=np.uint8),
                          rng.choice(valid_pair, size=real - nmag - nsgn)])
    raw[nmag:nmag + 8] = 0xFF  # signs set on zero magnitudes too
    raw[:4] = 0
    data = np.zeros(layout.nbytes((m, k)), np.uint8)
    data[:real] = raw
    data[-32:] = tail_of(SCALE)
    expect = ref.tl2_unpack(raw, (m, k), cfg.BM, cfg.BK)
    np.testing.assert_array_equal(layout.unpack(data, (m, k), "w").values, expect)
    bad_mags = sorted(set(range(256)) - set(valid_mag.tolist()))
    bad_pairs = sorted(set(range(256)) - set(valid_pair.tolist()))
    for b in bad_mags:
        bad = data.copy()
        bad[int(rng.integers(nmag))] = b
        assert ref.tl2_unpack(bad[:real], (m, k), cfg.BM, cfg.BK) is None
        with pytest.raises(CorruptFileError, match="magnitude above 13"):
            layout.unpack(bad, (m, k), "w")
    for b in bad_pairs:
        bad = data.copy()
        bad[nmag + nsgn + int(rng.integers(real - nmag - nsgn))] = b
        assert ref.tl2_unpack(bad[:real], (m, k), cfg.BM, cfg.BK) is None
        with pytest.raises(CorruptFileError, match="pair code above 8"):
            layout.unpack(bad, (m, k), "w")
    bad = data.copy()
    bad[0], bad[real - 1] = 0xEE, 0xFF  # both: the magnitude is reported, as before
    with pytest.raises(CorruptFileError, match="magnitude above 13"):
        layout.unpack(bad, (m, k), "w")


def test_tl2_pack_refuses_values_outside_ternary() -> None:
    rng = np.random.default_rng(10)
    for m, k, cfg in [(64, 288 + 64, TileConfig(64, 96, 32)), (32, 48 + 32, TileConfig(32, 48, 32))]:
        k3 = k - k % cfg.BK
        for bad in BAD_VALUES:
            for pos in bad_positions(rng, m, k) + [(1, k3 - 1), (2, k3)]:  # last triple, first tail value
                t = rng.integers(-1, 2, size=(m, k), dtype=np.int8)
                t[pos] = bad
                with pytest.raises(BadWeightsError, match="w: ternary values"):
                    TL2(tiles={(m, k): cfg}).pack(Ternary(t, SCALE), "w")


def unaligned(data: np.ndarray) -> np.ndarray:
    """The same bytes at an odd address (a tensor's data inside a file need not be aligned)."""
    buf = np.zeros(data.size + 1, np.uint8)
    buf[1:] = data
    return buf[1:]


def test_i2s_accepts_strided_and_read_only_inputs() -> None:
    rng = np.random.default_rng(11)
    t = rng.integers(-1, 2, size=(8, 512), dtype=np.int8)
    view = t[:, ::2]  # not contiguous
    layout = I2S("x86-act")
    data = layout.pack(Ternary(view, SCALE), "w")
    np.testing.assert_array_equal(data[: 8 * 256 // 4], ref.i2s_pack(np.ascontiguousarray(view), "x86-act"))
    ro = data.copy()
    ro.flags.writeable = False
    np.testing.assert_array_equal(layout.unpack(ro, (8, 256), "w").values, view)
    # a strided byte view of the data (every second byte of a wider buffer)
    wide = np.zeros(2 * data.size, np.uint8)
    wide[::2] = data
    np.testing.assert_array_equal(layout.unpack(wide[::2], (8, 256), "w").values, view)
    np.testing.assert_array_equal(layout.unpack(unaligned(data), (8, 256), "w").values, view)


@pytest.mark.parametrize("name", ["tl1", "tl2"])
def test_tl_accept_strided_read_only_and_unaligned_inputs(name: str) -> None:
    from bitconv.pack import get_layout

    rng = np.random.default_rng(12)
    t = rng.integers(-1, 2, size=(64, 512), dtype=np.int8)
    view = t[:, ::2]
    layout = get_layout(name)
    data = layout.pack(Ternary(view, SCALE), "w")
    np.testing.assert_array_equal(data, layout.pack(Ternary(np.ascontiguousarray(view), SCALE), "w"))
    ro = data.copy()
    ro.flags.writeable = False
    for d in (ro, unaligned(data)):
        np.testing.assert_array_equal(layout.unpack(d, (64, 256), "w").values, view)



# -- TL1 -----------------------------------------------------------------------------------------

def tl1_cases() -> list[tuple[int, int, TileConfig]]:
    """Every stock tile config on a small shape, the stock shapes that are cheap to check,
    and odd configs: tiny BK (a byte-loop path), bm 64 with BK 16, one tile, many tiles."""
    cases = [(2 * c.BM, 3 * c.BK, c) for c in sorted(set(TL1_PRESETS.values()), key=TileConfig.as_list)]
    cases += [(m, k, TL1_PRESETS[(m, k)]) for m, k in [(1536, 4096), (1536, 1536), (4096, 1536)]]
    cases += [(m, k, TileConfig(bm_, bk, bmm)) for m, k, bm_, bk, bmm in [
        (64, 64, 32, 64, 32), (64, 128, 64, 64, 64), (96, 192, 32, 64, 32), (128, 256, 128, 128, 64),
        (64, 48, 32, 16, 32), (192, 128, 64, 32, 64), (32, 8, 32, 8, 32), (64, 4, 64, 4, 64),
        (32, 256, 32, 256, 32), (320, 96, 160, 32, 32), (128, 8 * 36, 64, 8 * 36, 32)]]
    rng = np.random.default_rng(5)
    for _ in range(12):
        bmm = int(rng.choice([32, 64]))
        bm_ = bmm * int(rng.integers(1, 5))
        bk = 256 // bmm * int(rng.integers(1, 9))
        cases.append((bm_ * int(rng.integers(1, 4)), bk * int(rng.integers(1, 5)), TileConfig(bm_, bk, bmm)))
    return cases


@pytest.mark.parametrize("m,k,cfg", tl1_cases(), ids=lambda x: str(getattr(x, "as_list", lambda: x)()))
def test_tl1_kernels_equal_reference(m: int, k: int, cfg: TileConfig) -> None:
    rng = np.random.default_rng(m * 7 + k)
    layout = TL1(tiles={(m, k): cfg})
    patterns = value_patterns(rng, m, k) if m * k <= 1 << 20 else value_patterns(rng, m, k)[:2]
    for t in patterns:
        data = layout.pack(Ternary(t, SCALE), "w")
        n = m * k // 4
        assert data.shape == (layout.nbytes((m, k)),) and data.dtype == np.uint8
        np.testing.assert_array_equal(data[:n], ref.tl1_pack(t, cfg.BM, cfg.BK, cfg.bm))
        np.testing.assert_array_equal(data[n:], tail_of(SCALE))
        back = layout.unpack(data, (m, k), "w")
        assert back.values.dtype == np.int8 and back.values.flags.c_contiguous
        np.testing.assert_array_equal(back.values, t)
        assert back.scales == SCALE


@pytest.mark.parametrize("m,k,cfg", [(64, 256, TileConfig(64, 128, 32)), (64, 128, TileConfig(64, 64, 64)),
                                     (32, 48, TileConfig(32, 16, 32))])
def test_tl1_unpack_equals_reference_on_arbitrary_bytes(m: int, k: int, cfg: TileConfig) -> None:
    """Valid pair-code bytes at random decode like the reference; a nibble above 8 is refused."""
    rng = np.random.default_rng(8)
    layout = TL1(tiles={(m, k): cfg})
    n = m * k // 4
    every_valid = np.array([b for b in range(256) if b >> 4 <= 8 and b & 15 <= 8], np.uint8)
    raw = rng.choice(every_valid, size=n)
    data = np.concatenate([raw, tail_of(SCALE)])
    expect = ref.tl1_unpack(raw, (m, k), cfg.BM, cfg.BK, cfg.bm)
    np.testing.assert_array_equal(layout.unpack(data, (m, k), "w").values, expect)
    np.testing.assert_array_equal(ref.tl1_pack(expect, cfg.BM, cfg.BK, cfg.bm), raw)
    for b in sorted(set(range(256)) - set(every_valid.tolist())):
        bad = data.copy()
        bad[int(rng.integers(n))] = b
        assert ref.tl1_unpack(bad[:n], (m, k), cfg.BM, cfg.BK, cfg.bm) is None
        with pytest.raises(CorruptFileError, match="pair code above 8"):
            layout.unpack(bad, (m, k), "w")


def test_tl1_pack_refuses_values_outside_ternary() -> None:
    rng = np.random.default_rng(4)
    for m, k, cfg in [(64, 256, TileConfig(64, 128, 32)), (32, 48, TileConfig(32, 16, 32))]:
        for bad in BAD_VALUES:
            for pos in bad_positions(rng, m, k):
                t = rng.integers(-1, 2, size=(m, k), dtype=np.int8)
                t[pos] = bad
                with pytest.raises(BadWeightsError, match="w: ternary values"):
                    TL1(tiles={(m, k): cfg}).pack(Ternary(t, SCALE), "w")


def test_layouts_import_numba_only_when_packing() -> None:
    """`bitconv --help` / `inspect` import the layout registry; numba must wait for pack()."""
    import subprocess
    import sys

    code = ("import sys; from bitconv.pack import get_layout, layout_names; layout_names(); "
            "[get_layout(n) for n in ('i2_s', 'tl1', 'tl2')]; "
            "assert 'numba' not in sys.modules, 'numba imported early'; "
            "import numpy as np; from bitconv.quant import Ternary; "
            "get_layout('i2_s').pack(Ternary(np.zeros((1, 128), np.int8), np.float32(1)), 'w'); "
            "assert 'numba' in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)
