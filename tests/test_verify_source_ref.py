"""Issue 22 item 2: verify's source side cannot share a bug with the conversion.

The source model's float latent linears are ternarized by `verify/source_ref.py` (torch ops,
the model's own absmean rule), not by the conversion's quantizer (`bitconv.quant`). A
defect planted in the conversion's quantizer — one tensor's scale × 1.3 — stays planted while
verify runs, and verify still fails the file, for a per-tensor and a group-scale model."""

from __future__ import annotations

import os

os.environ.setdefault("TORCHDYNAMO_DISABLE", "1")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

import bitconv.quant as quant  # noqa: E402
from bitconv.convert import convert  # noqa: E402
from bitconv.verify import verify  # noqa: E402
from bitconv.verify.source_ref import absmean_ternary  # noqa: E402

DIMS = dict(vocab=512, hidden=512, intermediate=768, layers=2, heads=4, kv_heads=2)
# random models flip ~3% of top-1 under 8-bit activations (tests/test_verify.py FAST); the
# gates under test here are the default weight and perplexity gates
GATES = dict(tokens=256, ctx=64, min_top1=0.9)
TARGET = "blk.1.ffn_up.weight"


@pytest.fixture
def planted(monkeypatch):
    """The conversion's quantizer with TARGET's scales × 1.3, left in place for verify too."""
    orig = quant._ternarize
    hits = []

    def bad(w, group, name, bf16_bits):
        tern, sums = orig(w, group, name, bf16_bits)
        if name == TARGET or name.endswith("layers.1.mlp.up_proj.weight"):
            hits.append(name)
            tern = quant.Ternary(tern.values, tern.scales * np.float32(1.3), tern.group)
        return tern, sums

    monkeypatch.setattr(quant, "_ternarize", bad)
    return hits


@pytest.mark.parametrize("group", ["tensor", 256])
def test_a_scale_30_percent_off_fails_verify(ckpt_factory, tmp_path, planted, group):
    src = ckpt_factory("silu", **DIMS)
    out = tmp_path / f"bad-{group}.gguf"
    convert(src, out, layout="tq2_0", group_size=group)
    assert planted, "the planted defect was never reached: the conversion no longer calls quant._ternarize"
    rep = verify(out, src, **GATES)
    assert not rep.passed
    bad = [c for c in rep.tensors if c.problem]
    assert [c.name for c in bad] == [TARGET], rep.failures
    assert bad[0].max_error == pytest.approx(0.3 / 1.3, rel=1e-2) or bad[0].max_error > 0.2
    assert bad[0].mismatched == 0  # the codes are right: only the scale is off


@pytest.mark.parametrize("group", ["tensor", 256])
def test_the_same_file_without_the_defect_passes(ckpt_factory, tmp_path, group):
    src = ckpt_factory("silu", **DIMS)
    out = tmp_path / f"good-{group}.gguf"
    convert(src, out, layout="tq2_0", group_size=group)
    rep = verify(out, src, **GATES)
    assert all(c.problem is None for c in rep.tensors), rep.failures


@pytest.mark.parametrize("group", ["tensor", "row", 4])
def test_absmean_reference_by_hand(group):
    """The rule on a matrix small enough to check by hand (half to even at 0.5·s)."""
    w = torch.tensor([[0.0, 1.0, -2.0, 0.5], [4.0, -0.25, 0.0, 0.0]])
    t = absmean_ternary(w, group)
    if group == "tensor":  # s = 7.75 / 8 = 0.96875
        assert float(t.scales) == 0.96875
        assert t.values.tolist() == [[0, 1, -1, 1], [1, 0, 0, 0]]
    else:  # s = 0.875 and 1.0625 per row (a group of 4 is the row here)
        assert t.scales.reshape(-1).tolist() == [0.875, 1.0625]
        assert t.values.tolist() == [[0, 1, -1, 1], [1, 0, 0, 0]]


def test_absmean_reference_agrees_with_the_converter_on_random_weights():
    """On a correct conversion both compute the same codes; the float32 scales agree to the
    last bit or one ulp (the converter sums in float32 blocks, this file in float64)."""
    rng = np.random.default_rng(0)
    for trial in range(6):
        w = (rng.standard_normal((64, 256)) * rng.uniform(1e-3, 1.0)).astype(np.float32)
        for group in ("tensor", "row", 128):
            a, b = quant.ternarize(w, group), absmean_ternary(w, group)
            assert np.array_equal(a.values, b.values.numpy())
            sa, sb = np.asarray(a.scales).reshape(-1), b.scales.numpy().reshape(-1)
            assert np.all(np.abs(sa.view(np.int32) - sb.view(np.int32)) <= 1)
