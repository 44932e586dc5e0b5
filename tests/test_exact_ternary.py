"""Exact-ternary detection and recovery (bitconv.exact_ternary) on arrays."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bitconv.exact_ternary import candidate_groups, detect, detect_and_recover, recover

M, K = 48, 512


def _ternary(seed: int = 0, m: int = M, k: int = K) -> np.ndarray:
    return np.random.default_rng(seed).integers(-1, 2, (m, k)).astype(np.float32)


def _scales(group, seed: int = 1, m: int = M, k: int = K) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if group == "tensor":
        return np.float32(0.05)
    if group == "row":
        return rng.uniform(0.01, 0.1, (m, 1)).astype(np.float32)
    return np.repeat(rng.uniform(0.01, 0.1, (m, k // group)).astype(np.float32), group, axis=1)


def _as(w: np.ndarray, dtype: str) -> np.ndarray:
    t = {"bf16": torch.bfloat16, "f16": torch.float16, "f32": torch.float32}[dtype]
    return torch.from_numpy(w).to(t).to(torch.float32).numpy()


@pytest.mark.parametrize("dtype", ["bf16", "f16", "f32"])
@pytest.mark.parametrize("group", ["tensor", "row", 256, 128, 64, 32])
def test_every_group_is_found_and_recovered_exactly(group, dtype):
    w = _as(_ternary() * _scales(group), dtype)
    found, tern = detect_and_recover(w, dtype)
    assert found.group == group and found.exact and found.spread == 0.0
    assert np.array_equal(tern.dequantize(), w)  # 0 error: t and every scale recovered bit for bit
    assert np.array_equal(tern.values, np.sign(w).astype(np.int8))
    assert np.array_equal(recover(w, group).scales, tern.scales)  # the mean path agrees on exact groups


def test_absmean_would_shrink_what_recovery_keeps():
    """The issue's example: W = 0.05·t. Absmean gives 0.05·(1 - zero share); recovery 0.05."""
    from bitconv.quant import ternarize

    w = _as(_ternary() * np.float32(0.05), "f16")
    assert ternarize(w).scale == pytest.approx(0.05 * (1 - np.mean(w == 0)), rel=1e-3)
    found = detect(w, "f16")
    assert recover(w, found.group, found.exact).scale == np.float16(0.05).astype(np.float32)
    assert recover(w, found.group).scale == np.float16(0.05).astype(np.float32)  # the mean agrees


def test_float_weights_are_not_ternary():
    rng = np.random.default_rng(3)
    assert detect(rng.standard_normal((M, K)).astype(np.float32), "f32") is None
    # ternary except for one value off by 5%: not ternary in any group
    w = _ternary() * np.float32(0.05)
    w[7, 9] = 0.0525
    assert detect(w, "f32") is None
    # sign-asymmetric magnitudes are not ternary either
    w = _ternary() * np.float32(0.05)
    w[w < 0] = -0.04
    assert detect(w, "f32") is None
    w[0, 0] = np.nan
    assert detect(w, "f32") is None


def test_one_ulp_rounding_is_tolerated_and_reported():
    """An export that rounded per element: magnitudes one bf16 ulp apart inside a group."""
    rng = np.random.default_rng(5)
    wb = torch.from_numpy(_ternary() * _scales("row")).to(torch.bfloat16)
    bits = wb.view(torch.int16).clone()
    bump = torch.from_numpy(rng.random((M, K)) < 0.1) & (wb != 0)
    bits[bump] += 1
    w = bits.view(torch.bfloat16).to(torch.float32).numpy()
    found = detect(w, "bf16")
    assert found is not None and found.group == "row" and not found.exact
    assert 0 < found.spread <= 2**-7
    assert "row" in found.describe() and "rounding" in found.describe()
    tern = recover(w, found.group, found.exact)
    assert np.linalg.norm(tern.dequantize() - w) / np.linalg.norm(w) < 2**-8
    # the same spread is far beyond float16's rounding: not ternary there
    assert detect(w, "f16") is None


def test_coarsest_exact_group_wins_over_a_coarser_tolerant_one():
    """Row scales one ulp apart are *not* merged into one tensor scale when rows are exact."""
    s = np.full((M, 1), 0.05, np.float32)
    s[::2] = np.nextafter(np.float32(0.05), np.float32(1))
    w = _ternary() * s
    found = detect(w, "bf16")  # bf16's tolerance would accept one tensor scale
    assert found.group == "row" and found.exact


def test_zero_rows_blocks_and_tensors():
    w = _ternary() * _scales(64)
    w[3] = 0.0
    w[5, :64] = 0.0
    found, tern = detect_and_recover(w, "f32")
    assert found.group == 64 and np.array_equal(tern.dequantize(), w)
    assert np.all(tern.scales > 0)  # all-zero groups get a finite positive scale
    zero = np.zeros((8, 64), np.float32)
    found, tern = detect_and_recover(zero, "f32")
    assert found.group == "tensor" and np.all(tern.values == 0) and tern.scale > 0


def test_candidates_follow_k():
    assert candidate_groups(512) == ["tensor", "row", 256, 128, 64, 32]
    assert candidate_groups(96) == ["tensor", "row", 32]
    assert candidate_groups(100) == ["tensor", "row"]
    w = _ternary(k=100) * _scales("row", k=100)
    found, tern = detect_and_recover(w, "f32")
    assert found.group == "row" and np.array_equal(tern.dequantize(), w)


def test_large_tensor_is_chunked(monkeypatch):
    """Statistics are gathered a bounded chunk of rows at a time; results do not depend on it."""
    import bitconv.exact_ternary as et

    w = _ternary(m=200) * _scales(128, m=200)
    whole = detect_and_recover(w, "f32")
    monkeypatch.setattr(et, "CHUNK_ELEMENTS", 3 * K)
    chunked = detect_and_recover(w, "f32")
    assert whole[0] == chunked[0]
    assert np.array_equal(whole[1].scales, chunked[1].scales) and np.array_equal(whole[1].values, chunked[1].values)
