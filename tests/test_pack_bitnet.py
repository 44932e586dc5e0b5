"""The bitnet.cpp packers (I2_S, TL1, TL2) and their tile tables, against byte-exact facts.

Three kinds of evidence, strongest first:
1. golden vectors emitted by the reference implementation (tests/data/golden holds the
   small ones, always run; the large ones are read from ../shared/golden when present);
2. literal, loop-by-loop transcriptions of FORMATS.md §2-4 (`ref_*` below), checked against
   the same golden vectors and then used to pin the vectorized packers on many more shapes
   and tile parameters than the vectors cover;
3. seeded round trips (pack then unpack) over random matrices with degenerate rows.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bitconv.errors import BadWeightsError, CorruptFileError, LayoutError, UsageError
from bitconv.pack import get_layout, layout_class, layout_for_ggml_type
from bitconv.pack.i2s import I2S
from bitconv.pack.tiles import (
    TL1_PRESETS,
    TL2_PRESETS,
    TileConfig,
    choose_tiles,
    codegen_args,
    read_kernel_config,
    tiles_from_metadata,
    tl2_padded_size,
    validate_tiles,
    write_kernel_config,
)
from bitconv.pack.tl1 import TL1
from bitconv.pack.tl2 import TL2
from bitconv.quant import Ternary

REPO = Path(__file__).resolve().parents[1]
LOCAL_GOLDEN = REPO / "tests" / "data" / "golden"
SHARED_GOLDEN = REPO / ".." / "shared" / "golden"
MANIFEST = json.loads((LOCAL_GOLDEN / "manifest.json").read_text())


def roundup32(n: int) -> int:
    return (n + 31) // 32 * 32


def tail_of(scale: float) -> np.ndarray:
    t = np.zeros(32, np.uint8)
    t[:4] = np.array([scale], "<f4").view(np.uint8)
    return t


# -- literal transcriptions of FORMATS.md (slow loops, small shapes only) ----------------------

def ref_i2s(t: np.ndarray, variant: str) -> np.ndarray:
    m, k = t.shape
    q = (t.astype(np.int64) + 1)
    out = np.zeros(m * k // 4, np.uint8)
    if variant == "x86-1x4":
        for r in range(m // 4):
            for c in range(k):
                out[r * k + c] = q[4 * r, c] << 6 | q[4 * r + 1, c] << 4 | q[4 * r + 2, c] << 2 | q[4 * r + 3, c]
        return out
    block, nb = (128, 32) if variant == "x86-act" else (64, 16)
    flat = q.reshape(-1)
    for i, code in enumerate(flat):
        b, j = divmod(i, block)
        out[b * nb + j % nb] |= code << (6 - 2 * (j // nb))
    return out


def ref_tl1(t: np.ndarray, BM: int, BK: int, bm: int) -> np.ndarray:
    m, k = t.shape
    by = 256 // bm
    a = 3 * t[:, 0::2].astype(np.int64) + t[:, 1::2] + 4
    out = []
    for i0 in range(m // BM):
        for i1 in range(k // BK):
            for i2 in range(BM // bm):
                for i3 in range(BK // by):
                    for i4 in range(bm // 16):
                        for i5 in range(by // 4):
                            for i7 in range(16):
                                row = i0 * BM + i2 * bm + i4 * 16 + i7
                                p = i1 * (BK // 2) + i3 * (by // 2) + i5 * 2
                                out.append(a[row, p] << 4 | a[row, p + 1])
    return np.array(out, np.uint8)


PERM = list(range(0, 8)) + list(range(16, 24)) + list(range(8, 16)) + list(range(24, 32))


def ref_tl2(t: np.ndarray, BM: int, BK: int) -> np.ndarray:
    """FORMATS.md §4, loop by loop; returns the L data bytes (without the scale tail)."""
    m, k = t.shape
    k2 = k % BK
    k3 = k - k2
    t = t.astype(np.int64)
    v = 9 * t[:, 0:k3:3] + 3 * t[:, 1:k3:3] + t[:, 2:k3:3]
    mag, sgn = np.abs(v), (v < 0).astype(np.int64)
    mags, signs, tail = [], [], []
    for i0 in range(m // BM):
        for i1 in range(k3 // BK):
            for i2 in range(BM // 32):
                for i3 in range(BK // 6):
                    run = []
                    for i4 in range(32):
                        row = i0 * BM + i2 * 32 + i4
                        j = i1 * (BK // 3) + i3 * 2
                        run.append(mag[row, j] << 4 | mag[row, j + 1])
                    mags += [run[r] for r in PERM]
                for i3 in range(BK // 24):
                    words = [0] * 16
                    for jj in range(8):
                        for r in range(32):
                            p = jj * 32 + r
                            s = sgn[i0 * BM + i2 * 32 + r, i1 * (BK // 3) + i3 * 8 + jj]
                            words[p % 16] |= int(s) << (15 - p // 16)
                    for w in words:
                        signs += [w & 0xFF, w >> 8]
    if k2:
        a = 3 * t[:, k3::2] + t[:, k3 + 1::2] + 4
        for i0 in range(m // BM):
            for i1 in range(k2 // 32):
                for i2 in range(BM // 32):
                    for i3 in range(8):
                        run = []
                        for i4 in range(32):
                            row = i0 * BM + i2 * 32 + i4
                            p = i1 * 16 + i3 * 2
                            run.append(a[row, p] << 4 | a[row, p + 1])
                        tail += [run[r] for r in PERM]
    data = np.array(mags + signs + tail, np.uint8)
    n_l = tl2_padded_size((m, k))
    assert data.size <= n_l
    return np.concatenate([data, np.zeros(n_l - data.size, np.uint8)])


# -- golden vectors ----------------------------------------------------------------------------

def _case_id(case: dict) -> str:
    return case["file"].removesuffix(".npz")


def _load(case: dict) -> dict[str, np.ndarray]:
    local = LOCAL_GOLDEN / case["file"]
    if local.is_file():
        path = local
    elif SHARED_GOLDEN.is_dir():
        path = SHARED_GOLDEN / case["file"]
        if not path.is_file():
            pytest.skip(f"{case['file']} is listed in the manifest but missing from {SHARED_GOLDEN.resolve()}")
    else:
        pytest.skip(f"large golden vector {case['file']} lives in ../shared/golden, which is absent here")
    with np.load(path) as z:
        return {k: z[k] for k in z.files}


def _layout_for(case: dict):
    m, k = case["shape"]
    if case["layout"] == "i2_s":
        return get_layout("i2_s", variant=case["variant"])
    return get_layout(case["layout"], tiles={(m, k): TileConfig(case["BM"], case["BK"], case["bm"])})


def _with_tail(case: dict, packed: np.ndarray, scale: float) -> np.ndarray:
    """The whole tensor data the engine reads, built from the vector alone (not from pack)."""
    if case["layout"] == "i2_s":
        return packed
    pad = np.zeros(roundup32(packed.size) - packed.size, np.uint8)
    return np.concatenate([packed, pad, tail_of(scale)])


@pytest.mark.parametrize("case", MANIFEST, ids=_case_id)
def test_golden_bytes_and_roundtrip(case: dict) -> None:
    z = _load(case)
    m, k = case["shape"]
    tern, scale, packed = z["ternary"], np.float32(z["scale"]), z["packed"]
    assert tern.shape == (m, k) and packed.size == case["packed_bytes"]
    layout = _layout_for(case)
    out = layout.pack(Ternary(tern, scale, "tensor"), "golden")
    assert out.dtype == np.uint8 and out.ndim == 1 and out.size == layout.nbytes((m, k))

    n = packed.size
    np.testing.assert_array_equal(out[:n], packed)
    if case["layout"] == "i2_s":
        n = m * k // 4  # packed holds the tail already; check it separately too
    # zero padding up to a multiple of 32, then the scale tail (FORMATS.md §5)
    assert not out[n:roundup32(n)].any()
    np.testing.assert_array_equal(out[roundup32(n):], tail_of(float(scale)))

    back = layout.unpack(_with_tail(case, packed, float(scale)), (m, k), "golden")
    np.testing.assert_array_equal(back.values, tern)
    assert back.values.dtype == np.int8 and back.group == "tensor"
    assert back.scales.shape == () and back.scales == scale


@pytest.mark.parametrize("case", MANIFEST, ids=_case_id)
def test_nbytes_matches_manifest_and_formula(case: dict) -> None:
    m, k = case["shape"]
    layout = _layout_for(case)
    if case["layout"] == "i2_s":
        assert layout.nbytes((m, k)) == case["packed_bytes"] == m * k // 4 + 32
    elif case["layout"] == "tl1":
        assert case["packed_bytes"] == m * k // 4
        assert layout.nbytes((m, k)) == m * k // 4 + 32
    else:
        n_l = (k - 256) * m // 3 * 5 // 8 + 256 * m // 2 * 4 // 8
        assert case["packed_bytes"] == n_l == tl2_padded_size((m, k))
        assert layout.nbytes((m, k)) == roundup32(n_l) + 32


SMALL_CASES = [c for c in MANIFEST if (LOCAL_GOLDEN / c["file"]).is_file()]


def test_small_golden_vectors_are_present() -> None:
    """The always-run subset covers every layout and variant, including a TL2 two-weight tail."""
    kinds = {(c["layout"], c.get("variant")) for c in SMALL_CASES}
    assert kinds == {("i2_s", "x86-act"), ("i2_s", "arm"), ("i2_s", "x86-1x4"), ("tl1", None), ("tl2", None)}
    assert any(c["layout"] == "tl2" and c["shape"][1] % c["BK"] for c in SMALL_CASES)


@pytest.mark.parametrize("case", SMALL_CASES, ids=_case_id)
def test_reference_transcription_matches_golden(case: dict) -> None:
    """The loop transcriptions below are faithful, so they can judge shapes the vectors lack."""
    z = _load(case)
    t, packed = z["ternary"], z["packed"]
    m, k = t.shape
    if case["layout"] == "i2_s":
        np.testing.assert_array_equal(ref_i2s(t, case["variant"]), packed[: m * k // 4])
    elif case["layout"] == "tl1":
        np.testing.assert_array_equal(ref_tl1(t, case["BM"], case["BK"], case["bm"]), packed)
    else:
        np.testing.assert_array_equal(ref_tl2(t, case["BM"], case["BK"]), packed)


# -- vectorized packers == literal transcription, over many tile parameters ----------------------

def random_ternary(rng: np.random.Generator, m: int, k: int) -> np.ndarray:
    """Random values with the degenerate rows a real model has: all zero, all +1, all -1."""
    t = rng.integers(-1, 2, size=(m, k), dtype=np.int8)
    if m >= 4:
        rows = rng.choice(m, size=3, replace=False)
        t[rows[0]] = 0
        t[rows[1]] = 1
        t[rows[2]] = -1
    return t


EXTREME_SCALES = [np.float32(x) for x in (1e-5, 0.0421875, 3.0e38, 1.4e-45, -2.5)]

TL1_CONFIGS = [  # (M, K, BM, BK, bm)
    (64, 64, 32, 64, 32), (64, 128, 64, 64, 64), (96, 192, 32, 64, 32), (128, 256, 128, 128, 64),
    (64, 48, 32, 16, 32), (192, 128, 64, 32, 64), (32, 8, 32, 8, 32),
]
TL2_CONFIGS = [  # (M, K, BM, BK) ; K % BK is the two-weight tail
    (32, 96, 32, 96), (64, 128, 32, 96), (64, 160, 64, 96), (32, 192, 32, 192), (64, 224, 32, 192),
    (32, 352, 32, 192), (96, 288, 32, 96), (32, 72, 32, 24), (64, 80, 32, 48), (128, 256, 64, 96),
]


@pytest.mark.parametrize("m,k,BM,BK,bm", TL1_CONFIGS)
def test_tl1_matches_transcription(m: int, k: int, BM: int, BK: int, bm: int) -> None:
    rng = np.random.default_rng(m * 1000 + k)
    t = random_ternary(rng, m, k)
    layout = TL1(tiles={(m, k): TileConfig(BM, BK, bm)})
    out = layout.pack(Ternary(t, np.float32(0.5)), "w")
    np.testing.assert_array_equal(out[: m * k // 4], ref_tl1(t, BM, BK, bm))


@pytest.mark.parametrize("m,k,BM,BK", TL2_CONFIGS)
def test_tl2_matches_transcription(m: int, k: int, BM: int, BK: int) -> None:
    rng = np.random.default_rng(m * 1000 + k)
    t = random_ternary(rng, m, k)
    layout = TL2(tiles={(m, k): TileConfig(BM, BK, 32)})
    out = layout.pack(Ternary(t, np.float32(0.5)), "w")
    n_l = tl2_padded_size((m, k))
    np.testing.assert_array_equal(out[:n_l], ref_tl2(t, BM, BK))
    assert not out[n_l:roundup32(n_l)].any()


@pytest.mark.parametrize("variant,m,k",
                         [("x86-act", 3, 256), ("arm", 5, 64), ("x86-1x4", 8, 12), ("x86-1x4", 4, 40)])
def test_i2s_matches_transcription(variant: str, m: int, k: int) -> None:
    t = random_ternary(np.random.default_rng(k), m, k)
    out = I2S(variant).pack(Ternary(t, np.float32(1.0)), "w")
    np.testing.assert_array_equal(out[: m * k // 4], ref_i2s(t, variant))


# -- seeded round trips --------------------------------------------------------------------------

def _roundtrip(layout, t: np.ndarray, scale: np.float32) -> None:
    m, k = t.shape
    data = layout.pack(Ternary(t, scale, "tensor"), "w")
    assert data.size == layout.nbytes((m, k))
    back = layout.unpack(data.copy(), (m, k), "w")
    np.testing.assert_array_equal(back.values, t)
    assert back.scales.dtype == np.float32 and back.scales.shape == ()
    assert back.scales.tobytes() == np.float32(scale).tobytes()


def test_roundtrip_i2s_seeded() -> None:
    rng = np.random.default_rng(1234)
    for i in range(60):
        variant = ["x86-act", "arm", "x86-1x4"][i % 3]
        if variant == "x86-1x4":
            m, k = 4 * int(rng.integers(1, 20)), int(rng.integers(1, 300))
        else:
            block = 128 if variant == "x86-act" else 64
            m, k = int(rng.integers(1, 40)), block * int(rng.integers(1, 6))
        _roundtrip(I2S(variant), random_ternary(rng, m, k), EXTREME_SCALES[i % len(EXTREME_SCALES)])


def test_roundtrip_tl1_seeded() -> None:
    rng = np.random.default_rng(99)
    for i in range(40):
        bm = [32, 64][i % 2]
        by = 256 // bm
        BM = bm * int(rng.integers(1, 4))
        BK = by * int(rng.integers(1, 5))
        m, k = BM * int(rng.integers(1, 4)), BK * int(rng.integers(1, 5))
        layout = TL1(tiles={(m, k): TileConfig(BM, BK, bm)})
        _roundtrip(layout, random_ternary(rng, m, k), EXTREME_SCALES[i % len(EXTREME_SCALES)])


def test_roundtrip_tl2_seeded_with_two_weight_tails() -> None:
    rng = np.random.default_rng(7)
    tails = set()
    for i in range(40):
        BK = [96, 192, 24, 48][i % 4]
        BM = 32 * int(rng.integers(1, 4))
        k2 = 32 * int(rng.integers(0, (BK - 1) // 32 + 1))
        m, k = BM * int(rng.integers(1, 4)), BK * int(rng.integers(1, 4)) + k2
        cfg = TileConfig(BM, BK, 32)
        validate_tiles("tl2", "w", (m, k), cfg)
        tails.add(k % BK)
        _roundtrip(TL2(tiles={(m, k): cfg}), random_ternary(rng, m, k), EXTREME_SCALES[i % len(EXTREME_SCALES)])
    assert {0, 32, 64} <= tails


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 12), st.integers(1, 70), st.integers(0, 2**32 - 1))
def test_roundtrip_i2s_1x4_any_width(rows4: int, k: int, seed: int) -> None:
    """x86-1x4 has no K rule: odd widths go through the byte-wise (not 8-byte) path."""
    t = random_ternary(np.random.default_rng(seed), 4 * rows4, k)
    _roundtrip(I2S("x86-1x4"), t, np.float32(0.25))


@pytest.mark.parametrize("shape", [(64, 256), (96, 320), (2560 // 8, 640), (160, 1536)])
def test_roundtrip_with_chosen_tiles(shape: tuple[int, int]) -> None:
    rng = np.random.default_rng(shape[0])
    t = random_ternary(rng, *shape)
    for name in ("tl1", "tl2"):
        layout = get_layout(name)
        _roundtrip(layout, t, np.float32(0.125))
        assert tuple(shape) in layout.chosen


# -- options, checks and refusals ------------------------------------------------------------------

def test_registration_and_type_ids() -> None:
    assert (layout_class("i2_s"), layout_class("tl1"), layout_class("tl2")) == (I2S, TL1, TL2)
    assert (I2S.ggml_type, I2S.file_type) == (36, 40)
    assert (TL1.ggml_type, TL1.file_type) == (38, 38)
    assert (TL2.ggml_type, TL2.file_type) == (39, 39)
    assert layout_for_ggml_type(39) is TL2


def test_i2s_variants_and_rules() -> None:
    with pytest.raises(UsageError) as e:
        I2S("avx9")
    assert all(v in str(e.value) for v in ("x86-act", "x86-1x4", "arm"))
    assert I2S("X86_ACT").variant == "x86-act" and I2S().metadata() == {"i2s_variant": "x86-act"}
    for variant, shape, rule in [("x86-act", (64, 8640), "K % 128"), ("arm", (64, 96), "K % 64"),
                                 ("x86-1x4", (6, 128), "M % 4")]:
        with pytest.raises(LayoutError) as e:
            I2S(variant).check("blk.0.ffn_down.weight", shape, "tensor")
        msg = str(e.value)
        assert "blk.0.ffn_down.weight" in msg and f"M={shape[0]}" in msg and rule in msg
    I2S("arm").check("w", (3, 192), "tensor")  # K % 64 is enough for arm
    with pytest.raises(UsageError):
        I2S().check("w", (4, 128), "row")


def test_tl_layouts_refuse_group_scales_and_bad_values() -> None:
    with pytest.raises(UsageError):
        TL2().check("w", (256, 288), 128)
    t = np.zeros((32, 96), np.int8)
    t[0, 0] = 2
    with pytest.raises(BadWeightsError):
        TL2().pack(Ternary(t, np.float32(1)), "w")
    with pytest.raises(BadWeightsError):
        I2S().pack(Ternary(np.full((1, 128), -2, np.int8), np.float32(1)), "w")


def test_unpack_refuses_corrupt_data() -> None:
    t = random_ternary(np.random.default_rng(0), 64, 128)
    for layout, poison in [(I2S(), 0xFF), (TL1(), 0x9F), (TL2(), 0xE0)]:
        data = layout.pack(Ternary(t, np.float32(1)), "w")
        data[0] = poison
        with pytest.raises(CorruptFileError):
            layout.unpack(data, (64, 128), "w")
        with pytest.raises(LayoutError):
            layout.unpack(data[:-1], (64, 128), "w")


# -- tile selection ------------------------------------------------------------------------------

# FORMATS.md §5 verbatim: (M, K): TL2 BM/BK/bm, TL1 BM/BK/bm
SECTION5 = {
    (1536, 4096): ((256, 96, 32), (256, 128, 32)),
    (1536, 1536): ((128, 192, 32), (128, 64, 64)),
    (4096, 1536): ((256, 96, 32), (256, 128, 32)),
    (3200, 8640): ((160, 96, 32), (160, 64, 32)),
    (3200, 3200): ((320, 96, 32), (320, 128, 64)),
    (8640, 3200): ((320, 96, 32), (320, 64, 32)),
    (14336, 4096): ((256, 96, 32), (256, 128, 32)),
    (4096, 14336): ((128, 96, 32), (128, 64, 64)),
    (1024, 4096): ((256, 96, 32), (256, 128, 32)),
    (4096, 4096): ((128, 96, 32), (128, 64, 64)),
}


@pytest.mark.parametrize("shape", list(SECTION5))
def test_presets_of_section5(shape: tuple[int, int]) -> None:
    tl2, tl1 = SECTION5[shape]
    assert choose_tiles("tl2", "w", shape) == TileConfig(*tl2)
    assert choose_tiles("tl1", "w", shape) == TileConfig(*tl1)
    validate_tiles("tl2", "w", shape, TileConfig(*tl2))
    validate_tiles("tl1", "w", shape, TileConfig(*tl1))
    assert set(TL1_PRESETS) == set(TL2_PRESETS) == set(SECTION5)


ODD_SHAPES = [(2560, 2560), (2560, 6912), (6912, 2560), (640, 2560), (2048, 5632), (5632, 2048),
              (4096, 11008), (11008, 4096), (5120, 13824), (96, 320), (288, 192), (3072, 8192)]


@pytest.mark.parametrize("shape", ODD_SHAPES)
def test_rule_tiles_validate(shape: tuple[int, int]) -> None:
    for name in ("tl1", "tl2"):
        cfg = choose_tiles(name, "w", shape)
        validate_tiles(name, "w", shape, cfg)
        assert cfg.BM <= 256 and shape[0] % cfg.BM == 0
    tl2 = choose_tiles("tl2", "w", shape)
    assert tl2.bm == 32 and tl2.BK in (96, 192)
    tl1 = choose_tiles("tl1", "w", shape)
    assert tl1.BK in (64, 128) and tl1.bm in (32, 64)


def test_rule_details() -> None:
    # 2B-4T widths: BM 256, BK 96 (K % 96 <= K % 192 always, so 96 is never beaten)
    assert choose_tiles("tl2", "w", (2560, 6912)) == TileConfig(256, 96, 32)
    assert choose_tiles("tl2", "w", (6912, 2560)) == TileConfig(256, 96, 32)  # 2560 % 96 == 2560 % 192 == 64
    assert choose_tiles("tl2", "w", (96, 224)) == TileConfig(96, 96, 32)  # tail 32 either way: tie -> 96
    assert choose_tiles("tl1", "w", (2560, 6912)) == TileConfig(256, 128, 32)
    assert choose_tiles("tl1", "w", (2560, 640)) == TileConfig(256, 128, 32)
    assert choose_tiles("tl1", "w", (2560, 576)) == TileConfig(256, 64, 64)  # 576 % 128 != 0: BK 64 pairs with bm 64
    assert choose_tiles("tl1", "w", (96, 320)) == TileConfig(96, 64, 32)  # no multiple-of-64 divisor of 96: bm 32


@pytest.mark.parametrize("layout,shape,needle", [
    ("tl2", (100, 4096), "multiple of 32"),
    ("tl2", (256, 4100), "K must be"),
    ("tl2", (256, 64), "K must be"),
    ("tl1", (48, 4096), "multiple of 32"),
    ("tl1", (256, 96), "multiple of 64"),
])
def test_untileable_shapes_raise(layout: str, shape: tuple[int, int], needle: str) -> None:
    name = "blk.3.ffn_down.weight"
    for call in (lambda: choose_tiles(layout, name, shape), lambda: get_layout(layout).check(name, shape, "tensor")):
        with pytest.raises(LayoutError) as e:
            call()
        msg = str(e.value)
        assert name in msg and f"M={shape[0]}" in msg and f"K={shape[1]}" in msg
        assert needle in msg and "--layout i2_s" in msg


@pytest.mark.parametrize("layout,shape,cfg,needle", [
    ("tl2", (256, 4096), TileConfig(256, 96, 64), "bm == 32"),
    ("tl2", (256, 4096), TileConfig(192, 96, 32), "multiple of BM"),
    ("tl2", (256, 4096), TileConfig(256, 100, 32), "multiple of 24"),
    ("tl2", (256, 4112), TileConfig(256, 96, 32), "multiple of 32"),
    ("tl2", (256, 4096 + 288), TileConfig(256, 576, 32), "too long"),
    ("tl1", (256, 4096), TileConfig(256, 128, 48), "bm in"),
    ("tl1", (256, 4096), TileConfig(256, 4, 32), "multiple of by"),
    ("tl1", (256, 4096), TileConfig(256, 96, 32), "multiple of BK"),
])
def test_validate_rejects_bad_tiles(layout: str, shape, cfg: TileConfig, needle: str) -> None:
    with pytest.raises(LayoutError) as e:
        validate_tiles(layout, "blk.0.attn_q.weight", shape, cfg)
    msg = str(e.value)
    assert needle in msg and "blk.0.attn_q.weight" in msg and f"K={shape[1]}" in msg and "i2_s" in msg


def test_tl2_size_formula_truncates_like_c() -> None:
    # ggml.c evaluates L in int64 (truncation toward zero); only K < 256 tells the difference
    assert tl2_padded_size((32, 96)) == 982  # Python floor division would give 981
    # FORMATS-NOTES §2.5 quotes 3 801 088 (1.8125 bpw) for this shape; the formula (and the
    # golden 1536x4096 vector, 1 327 104 bytes) give 3 538 944 (1.6875 bpw)
    assert tl2_padded_size((4096, 4096)) == 3538944
    assert tl2_padded_size((1536, 4096)) == 1327104


# -- kernel_config.ini ------------------------------------------------------------------------------

LARGE = {(1536, 4096): TileConfig(256, 96, 32), (1536, 1536): TileConfig(128, 192, 32),
         (4096, 1536): TileConfig(256, 96, 32)}


def test_kernel_config_roundtrip_and_codegen_args(tmp_path: Path) -> None:
    path = tmp_path / "kernel_config.ini"
    write_kernel_config(path, LARGE)
    text = path.read_text()
    assert text.startswith("[Kernels_0]\nm = 1536\nk = 4096\nbm = 256\nbk = 96\nbmm = 32\n")
    back = read_kernel_config(path)
    assert back == LARGE and list(back) == list(LARGE)  # order kept
    assert codegen_args(back) == "--BM 256,128,256 --BK 96,192,96 --bm 32,32,32"


def test_read_codegen_style_ini(tmp_path: Path) -> None:
    """codegen sets keys 'M', 'BM', ...; ConfigParser lowercases them; accept either."""
    path = tmp_path / "k.ini"
    path.write_text("[Kernels_0]\nM = 3200\nK = 8640\nBM = 160\nBK = 64\nbmm = 32\n\n"
                    "[Kernels_1]\nm = 3200\nk = 3200\nbm = 320\nbk = 128\nbmm = 64\n")
    assert read_kernel_config(path) == {(3200, 8640): TileConfig(160, 64, 32), (3200, 3200): TileConfig(320, 128, 64)}
    (tmp_path / "bad.ini").write_text("[Kernels_0]\nm = 1\n")
    with pytest.raises(CorruptFileError):
        read_kernel_config(tmp_path / "bad.ini")


def test_forced_kernel_config(tmp_path: Path) -> None:
    path = tmp_path / "kernel_config.ini"
    write_kernel_config(path, {(256, 288): TileConfig(128, 96, 32)})
    forced = TL2(kernel_config=read_kernel_config(path))
    forced.check("w", (256, 288), "tensor")
    assert forced.chosen == {(256, 288): TileConfig(128, 96, 32)}  # not the rule's BM=256
    # before any tensor is seen, metadata already names the forced table (a reader needs it)
    assert TL2(kernel_config=read_kernel_config(path)).metadata() == {"tiles": {"256x288": [128, 96, 32]}}
    with pytest.raises(LayoutError) as e:
        forced.check("blk.0.ffn_up.weight", (1536, 4096), "tensor")  # a preset shape, but not in the file
    msg = str(e.value)
    assert "does not cover shape [1536, 4096]" in msg and "--kernel-config" in msg and "blk.0.ffn_up.weight" in msg
    by_path = TL1(kernel_config=str(path))
    with pytest.raises(LayoutError, match="kernel_config.ini does not cover"):
        by_path.check("w", (512, 256), "tensor")
    # a forced table that does not fit its own shape is refused too
    bad = TL1(kernel_config={(256, 288): TileConfig(128, 128, 32)})
    with pytest.raises(LayoutError, match="multiple of BK"):
        bad.check("w", (256, 288), "tensor")


def test_metadata_records_tiles_and_rebuilds_layout() -> None:
    layout = TL2()
    shapes = [(4096, 1536), (256, 320), (1536, 1536)]
    for s in shapes:
        layout.check("w", s, "tensor")
    meta = layout.metadata()
    assert json.loads(json.dumps(meta)) == meta
    assert list(meta["tiles"]) == ["256x320", "1536x1536", "4096x1536"]  # sorted by (M, K)
    assert meta["tiles"]["1536x1536"] == [128, 192, 32]
    table = tiles_from_metadata(meta)
    assert table[(256, 320)] == choose_tiles("tl2", "w", (256, 320))

    t = random_ternary(np.random.default_rng(3), 256, 320)
    forced = TL2(tiles={(256, 320): TileConfig(128, 96, 32)})
    data = forced.pack(Ternary(t, np.float32(2.0)), "w")
    stored = {"tiles": json.dumps(forced.metadata()["tiles"], sort_keys=True)}  # as GGUF keeps it
    rebuilt = TL2.from_metadata(stored)
    back = rebuilt.unpack(data, (256, 320), "w")
    np.testing.assert_array_equal(back.values, t)
    assert TL1.from_metadata({}).metadata() == {"tiles": {}}
