"""A GGUF bitconv wrote is a valid SOURCE: repacking keeps the ternary values and scales
for every pair of layouts (issue 5, item 5), and the read side unpacks every layout."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest

from bitconv.convert import convert
from bitconv.model import LINEAR
from bitconv.readers import open_source
from bitconv.synth import make_checkpoint

LAYOUTS = ["q2_0", "tq2_0", "tq1_0", "i2_s", "i2_s:arm", "i2_s:x86-1x4", "tl1", "tl2"]
FP16_SCALES = ("tq", "q2_0")  # layouts whose block scale is fp16


def _convert(src, out: Path, layout: str) -> Path:
    name, _, variant = layout.partition(":")
    kw = {"i2s_variant": variant} if variant else {}
    convert(src, out, layout=name, **kw)
    return out


def _linears(path: Path) -> dict[str, tuple[np.ndarray, float]]:
    ckpt = open_source(path)
    return {t.name: (t.load_ternary().values, t.load_ternary().scale) for t in ckpt.tensors if t.role == LINEAR}


@pytest.fixture(scope="module")
def firsts(tmp_path_factory):
    d = tmp_path_factory.mktemp("repack")
    src = make_checkpoint(d / "src", family="silu", seed=11)
    return d, {lay: _convert(src, d / f"first-{lay.replace(':', '-')}.gguf", lay) for lay in LAYOUTS}


@pytest.mark.parametrize("a,b", list(itertools.permutations(LAYOUTS, 2)))
def test_repack_keeps_values_and_scales(firsts, a, b):
    d, files = firsts
    first = files[a]
    second = _convert(first, d / f"{a}-to-{b}.gguf".replace(":", "-"), b)
    before, after = _linears(first), _linears(second)
    assert before.keys() == after.keys() and before
    for name, (t0, s0) in before.items():
        t1, s1 = after[name]
        assert np.array_equal(t0, t1), f"{a}->{b}: {name} ternary values changed"
        # TQ/Q2_0 store fp16 block scales: a scale entering one is rounded to fp16, nothing else moves
        expect = float(np.float16(s0)) if b.startswith(FP16_SCALES) else s0
        assert s1 == pytest.approx(expect, rel=0, abs=0), f"{a}->{b}: {name} scale {s0} -> {s1}"


def test_repack_records_source_and_never_requantizes(firsts):
    d, files = firsts
    out = d / "again.gguf"
    res = convert(files["i2_s"], out, layout="tl2")
    assert all(s.rel_error is None for s in res.stats), "already-ternary tensors must be kept, not re-quantized"
    assert res.plan.spec.source.kind == "gguf"


@pytest.mark.parametrize("layout", LAYOUTS)
def test_inspect_shows_every_layout(firsts, layout):
    from bitconv.inspect_file import inspect_path

    d, files = firsts
    info = inspect_path(files[layout])
    linear_types = {t["type"] for t in info["tensors"] if t["name"].endswith(("attn_q.weight", "ffn_down.weight"))}
    assert linear_types == {layout.partition(":")[0].upper()}
    assert info["bitconv"]["layout"] == layout.partition(":")[0]
    if layout.startswith("tl"):
        assert info["bitconv"]["tiles"], "TL files record their tile parameters"


@pytest.mark.parametrize("group", ["row", 256])
def test_tq2_0_and_q2_0_repack_exactly_with_group_scales(tmp_path, group):
    """Both store an fp16 scale per block (TQ: 256 values, Q2_0: 64): TQ2_0 -> Q2_0 -> TQ2_0
    gives back the same bytes, and the Q2_0 file holds the same values and group scales."""
    from bitconv.readers.gguf_file import GGUFFile

    src = make_checkpoint(tmp_path / "src", family="silu", seed=12)
    tq = tmp_path / "a-tq2_0.gguf"
    convert(src, tq, layout="tq2_0", group_size=group)
    q2 = _convert(tq, tmp_path / "b-q2_0.gguf", "q2_0")
    tq_again = _convert(q2, tmp_path / "c-tq2_0.gguf", "tq2_0")
    f0, f2 = GGUFFile(tq), GGUFFile(tq_again)
    lin = [n for n, t in f0.tensors.items() if t.ggml_type == 35]
    assert lin and all(np.array_equal(f0.raw(n), f2.raw(n)) for n in lin)
    t_tq = {t.name: t.load_ternary() for t in open_source(tq).tensors if t.role == LINEAR}
    t_q2 = {t.name: t.load_ternary() for t in open_source(q2).tensors if t.role == LINEAR}
    for name, a in t_tq.items():
        b = t_q2[name]
        # same values and scales; a group that spans a whole row may come back as "row"
        assert b.group in (group, "row") and a.group in (group, "row"), name
        assert np.array_equal(a.values, b.values) and np.array_equal(a.dequantize(), b.dequantize()), name
