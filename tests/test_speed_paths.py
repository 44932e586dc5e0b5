"""The fast conversion paths give exactly what the plain formulas give (issue 14), and the
bytes do not depend on the thread count (issue 10 item 5).

* The fused quantizer compares W with exact float32 thresholds instead of dividing,
  rounding and clipping; it must agree with `clip(rint(W/s), -1, 1)` bit for bit,
  including values placed exactly on and one ulp beside every rounding boundary.
* Statistics come from sums the quantizer accumulates (‖W‖², Σ W·t, nnz) instead of a
  dequantized copy; they must equal the direct computation.
* Absmean runs on one intra-op thread; a conversion under OMP_NUM_THREADS=1 and with torch
  on 2 threads and 1, 2 or 3 pipeline workers must write the same bytes.
* `--help` and `inspect` do not import torch (the start-up budget of issue 14 item 2).
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from bitconv.convert import convert
from bitconv.errors import BadWeightsError
from bitconv.pipeline import ordered_map
from bitconv.quant import (SCALE_EPS, _group_view, round_thresholds, serial_torch, tensor_stats, ternarize,
                           ternarize_with_stats)

REPO = Path(__file__).resolve().parents[1]


def reference_abs_sum(row: np.ndarray) -> float:
    """Σ|x| in the documented order (bitconv.kernels.quant): element i in block i // 128 and
    lane i % 16; in a block each lane adds its values in float32 in index order (cumsum is
    sequential); each lane adds its block partials into a float64 total in block order;
    the group's sum adds the 16 lane totals in lane order."""
    a = np.abs(row.astype(np.float32))
    lanes = [0.0] * 16
    for b in range(0, a.size, 128):
        block = a[b:b + 128]
        for j in range(16):
            part = block[j::16]
            lanes[j] += float(np.cumsum(part, dtype=np.float32)[-1]) if part.size else 0.0
    total = 0.0
    for lane in lanes:
        total += lane
    return total


def reference_ternarize(w: np.ndarray, group) -> tuple[np.ndarray, np.ndarray]:
    """The textbook formula: s = mean|W| per group (summed in the documented order, float32
    mean, clamped), t = clip(rint(W / s), -1, 1)."""
    view, scale_shape = _group_view(w, group, "w")
    sums = np.array([reference_abs_sum(r) for r in view])
    s = np.maximum((sums / view.shape[1]).astype(np.float32), np.float32(SCALE_EPS))
    q = np.clip(np.rint(np.divide(view, s[:, None])), -1, 1)
    return q.astype(np.int8).reshape(w.shape), s.reshape(scale_shape)


def boundary_weights(rng: np.random.Generator, shape: tuple[int, int], group) -> np.ndarray:
    """Gaussian weights with, in every group, values exactly on ±T, one ulp inside, 0.5·s
    and 1.5·s (ties of rint) - computed from the scales the weights themselves give."""
    w = (rng.standard_normal(shape) * 0.02).astype(np.float32)
    view, _ = _group_view(w, group, "w")
    for _ in range(3):  # planting values moves the scale a little; re-plant on the new scale
        _, s = reference_ternarize(w, group)
        s = s.reshape(-1)
        t = round_thresholds(s)
        inside = np.nextafter(t, np.float32(0))
        cols = [t, inside, -t, -inside, np.float32(0.5) * s, np.float32(-0.5) * s, np.float32(1.5) * s, -t * 0]
        for j, c in enumerate(cols):
            view[:, j] = c
    return w


def test_round_thresholds_are_the_exact_boundary():
    rng = np.random.default_rng(0)
    s = np.concatenate([rng.random(50_000).astype(np.float32) * 3, np.float32([SCALE_EPS, 1.0, 0.75, 1e3])])
    s = np.maximum(s, np.float32(SCALE_EPS)).astype(np.float32)
    t = round_thresholds(s)
    assert np.all(np.rint(np.divide(t, s)) >= 1)
    below = np.nextafter(t, np.float32(0))
    assert np.all(np.rint(np.divide(below, s)) == 0)
    assert np.all(np.rint(np.divide(-t, s)) <= -1) and np.all(np.rint(np.divide(-below, s)) == 0)


@pytest.mark.parametrize("group", ["tensor", "row", 64])
@pytest.mark.parametrize("shape", [(96, 256), (300, 512), (17, 320), (13, 1001)])
def test_fused_quantizer_matches_the_formula_bit_for_bit(group, shape):
    if group == 64 and shape[1] % 64:
        pytest.skip("K not a multiple of the group")
    rng = np.random.default_rng(hash((str(group), shape)) % 2**32)
    w = boundary_weights(rng, shape, group)
    want_t, want_s = reference_ternarize(w, group)
    got = ternarize(w, group)
    np.testing.assert_array_equal(got.values, want_t)
    np.testing.assert_array_equal(got.scales, want_s)
    assert got.values.dtype == np.int8 and got.scales.dtype == np.float32


@pytest.mark.parametrize("group", ["tensor", "row", 128])
def test_statistics_from_the_quantizer_equal_the_direct_ones(group):
    rng = np.random.default_rng(3)
    w = (rng.standard_normal((384, 1024)) * 0.05).astype(np.float32)
    w[::7] *= 4  # rows of different scale, so group scales differ
    tern, st = ternarize_with_stats(w, group, "blk.0.ffn_up.weight")
    direct = tensor_stats("blk.0.ffn_up.weight", tern, w)
    np.testing.assert_array_equal(tern.values, ternarize(w, group).values)
    assert st.rel_error == pytest.approx(direct.rel_error, rel=1e-6)
    assert st.zero_fraction == direct.zero_fraction
    assert (st.scale_min, st.scale_mean, st.scale_max) == (direct.scale_min, direct.scale_mean, direct.scale_max)
    assert st.shape == (384, 1024) and 0.2 < st.rel_error < 0.8


def test_all_zero_and_tiny_weights():
    w = np.zeros((8, 256), dtype=np.float32)
    tern, st = ternarize_with_stats(w)
    assert not tern.values.any() and float(tern.scales) == np.float32(SCALE_EPS)
    assert st.zero_fraction == 1.0 and st.rel_error == 0.0
    w[0, 0] = 1e-30  # far below the clamped scale: still zero
    assert not ternarize(w).values.any()


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("group", ["tensor", "row"])
def test_non_finite_weights_are_refused_by_name(bad, group):
    w = np.ones((4, 256), dtype=np.float32)
    w[2, 17] = bad
    with pytest.raises(BadWeightsError, match="blk.1.attn_q.weight: 1 NaN/Inf"):
        ternarize_with_stats(w, group, "blk.1.attn_q.weight")


def test_scale_is_within_an_ulp_of_the_exact_mean_and_ignores_torch_threads():
    """The fixed-order sum is within an ulp of the exact mean (as torch's own float32 mean
    is, in its order), and torch's thread setting has nothing to do with it."""
    rng = np.random.default_rng(5)
    w = (rng.standard_normal((1024, 1536)) * 0.02).astype(np.float32)
    w[::3] *= 7
    s = ternarize(w, "row").scales.reshape(-1)
    exact = (np.abs(w).astype(np.float64).sum(axis=1) / w.shape[1]).astype(np.float32)
    assert np.all(np.abs(s.view(np.int32) - exact.view(np.int32)) <= 1)
    before = torch.get_num_threads()
    scales = []
    try:
        for n in (1, 2, 4):
            torch.set_num_threads(n)
            scales.append(ternarize(w).scales.tobytes())
            assert torch.get_num_threads() == n
    finally:
        torch.set_num_threads(before)
    assert len(set(scales)) == 1


@pytest.mark.parametrize("dtype", ["f16", "bf16"])
@pytest.mark.parametrize("group", ["tensor", "row", 128])
def test_half_precision_sources_give_what_their_float32_widening_gives(dtype, group):
    """float16 and bfloat16 weights are widened exactly, once (bf16 inside the first pass):
    the result must equal ternarizing the float32 widening."""
    rng = np.random.default_rng(11)
    w = (rng.standard_normal((257, 384)) * 0.03).astype(np.float32)
    if dtype == "f16":
        raw = w.astype(np.float16)
        wide = raw.astype(np.float32)
        got, st = ternarize_with_stats(raw, group, "w")
    else:
        raw = (w.view(np.uint32) >> 16).astype(np.uint16)
        wide = (raw.astype(np.uint32) << 16).view(np.float32)
        got, st = ternarize_with_stats(raw, group, "w", bf16_bits=True)
    want, want_st = ternarize_with_stats(wide, group, "w")
    np.testing.assert_array_equal(got.values, want.values)
    np.testing.assert_array_equal(got.scales, want.scales)
    assert st == want_st


def test_ordered_map_keeps_order_bounds_work_and_raises_in_place():
    import threading
    import time

    running, peak = [0], [0]
    lock = threading.Lock()

    def job(i: int) -> int:
        with lock:
            running[0] += 1
            peak[0] = max(peak[0], running[0])
        time.sleep(0.002 * ((i * 7) % 5))  # finish out of order
        with lock:
            running[0] -= 1
        return i * i

    assert list(ordered_map(job, range(40), workers=3, max_pending=3)) == [i * i for i in range(40)]
    assert peak[0] <= 3
    # a budget of 10 with cost 6 each: never two jobs at once
    running[0] = peak[0] = 0
    assert list(ordered_map(job, range(10), workers=3, cost=lambda i: 6, budget=10)) == [i * i for i in range(10)]
    assert peak[0] == 1

    def failing(i: int) -> int:
        if i == 5:
            raise ValueError("tensor 5")
        return i

    got = []
    with pytest.raises(ValueError, match="tensor 5"):
        for x in ordered_map(failing, range(20), workers=2):
            got.append(x)
    assert got == [0, 1, 2, 3, 4]


def _sha(path: Path) -> str:
    if path.is_dir():
        return hashlib.sha256(b"".join(_sha(p).encode() + p.name.encode() for p in sorted(path.iterdir()))).hexdigest()
    return hashlib.sha256(path.read_bytes()).hexdigest()


CONVERT = """
import sys
from bitconv.convert import convert
if sys.argv[4] != "default":
    import torch
    torch.set_num_threads(int(sys.argv[4]))
convert(sys.argv[1], sys.argv[2], layout=sys.argv[3], format="safetensors" if sys.argv[3] == "st" else "gguf")
"""


@pytest.mark.slow
@pytest.mark.parametrize("layout,dtype", [("i2_s", "f32"), ("tl2", "f32"), ("st", "f32"), ("i2_s", "bf16")])
def test_output_bytes_do_not_depend_on_thread_count(ckpt_factory, tmp_path, layout, dtype):
    """Issue 10 item 5: the same conversion with OMP_NUM_THREADS=1 and one pipeline worker,
    with torch on 2 threads and 2 workers, and with 3 workers that import torch concurrently,
    writes identical bytes. The f32 source has
    per-tensor absmeans over > 32768 values, which torch splits over threads when allowed;
    i2_s, tl2 and safetensors store float32 scales, so one ulp would show. The bf16 source
    goes through the kernels' in-register widening."""
    src = ckpt_factory("relu2", dtype=dtype, seed=11)
    runs = [({"OMP_NUM_THREADS": "1", "BITCONV_THREADS": "1"}, "default"),
            ({"BITCONV_THREADS": "2"}, "2"),
            ({"BITCONV_THREADS": "3"}, "default")]  # torch first imported by three workers at once
    digests = []
    for i, (env_extra, torch_threads) in enumerate(runs):
        out = tmp_path / (f"out{i}" + ("" if layout == "st" else ".gguf"))
        env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "BITCONV_THREADS")}
        env.update(env_extra, PYTHONPATH=str(REPO) + os.pathsep + env.get("PYTHONPATH", ""))
        subprocess.run([sys.executable, "-c", CONVERT, str(src), str(out), layout, torch_threads],
                       env=env, check=True, capture_output=True)
        digests.append(_sha(out))
    assert len(set(digests)) == 1, digests
    # and in this process, inline (no workers) equals the pipelined default
    a, b = tmp_path / "inline.gguf", tmp_path / "piped.gguf"
    if layout != "st":
        from bitconv.convert import prepare_tensors  # noqa: F401 - the path both use
        os.environ["BITCONV_THREADS"] = "1"
        try:
            convert(src, a, layout=layout)
        finally:
            del os.environ["BITCONV_THREADS"]
        convert(src, b, layout=layout)
        assert _sha(a) == _sha(b) == digests[0]


NO_TORCH = """
import sys
from typer.testing import CliRunner
from bitconv.cli import app
r = CliRunner().invoke(app, sys.argv[1:])
assert r.exit_code == 0, r.output
heavy = sorted(m for m in ("torch", "transformers", "huggingface_hub", "numba") if m in sys.modules)
print(",".join(heavy))
"""


@pytest.mark.parametrize("what", ["help", "inspect-gguf", "inspect-safetensors"])
def test_help_and_inspect_do_not_import_heavy_libraries(silu_ckpt, tmp_path, what):
    """Start-up (issue 14 item 2): torch alone takes seconds to import; `--help` and
    `inspect` never need it."""
    if what == "help":
        args = ["--help"]
    elif what == "inspect-gguf":
        out = tmp_path / "m.gguf"
        convert(silu_ckpt, out, layout="tq2_0")
        args = ["inspect", str(out)]
    else:
        args = ["inspect", str(silu_ckpt)]
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    p = subprocess.run([sys.executable, "-c", NO_TORCH, *args], env=env, capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip() == "", f"{what} imported {p.stdout.strip()}"


def test_kernels_read_every_16_bit_float_pattern_exactly():
    """All 65536 bfloat16 and float16 bit patterns, widened in registers by the kernels'
    loader, equal numpy's widening (NaNs stay NaN; their payload bits are not a value)."""
    from bitconv.kernels.floats import as_bits16, widen

    bits = np.arange(65536, dtype=np.uint32).astype(np.uint16)
    out = np.empty(bits.size, dtype=np.float32)
    widen(as_bits16(bits, bf16=True), out)
    np.testing.assert_array_equal(out.view(np.uint32), (bits.astype(np.uint32) << 16))
    widen(as_bits16(bits.view(np.float16), bf16=False), out)
    want = bits.view(np.float16).astype(np.float32)
    nan = np.isnan(want)
    np.testing.assert_array_equal(np.isnan(out), nan)
    np.testing.assert_array_equal(out[~nan].view(np.uint32), want[~nan].view(np.uint32))


def test_float16_output_rounds_as_numpy_does():
    """F16 tensors are written by a compiled pass (`kernels.floats.narrow_f16`); it must give
    numpy's astype(float16) bits: every float16 value, every midpoint between neighbours and
    one float32 ulp either side (ties to even), overflow, subnormals and random patterns."""
    from bitconv.ggml_types import F16, float_to_bytes
    from bitconv.kernels.floats import count_nonfinite, narrow_f16

    rng = np.random.default_rng(0)
    h = np.arange(65536, dtype=np.uint32).astype(np.uint16).view(np.float16)
    f = h.astype(np.float32)
    fin = np.isfinite(f) & (np.abs(f) < np.float32(65504))
    with np.errstate(over="ignore"):
        nxt = np.nextafter(h[fin], np.float16(np.inf)).astype(np.float32)
    mid = ((f[fin].astype(np.float64) + nxt.astype(np.float64)) / 2).astype(np.float32)
    x = np.concatenate([f, mid, np.nextafter(mid, np.float32(np.inf)), np.nextafter(mid, np.float32(-np.inf)),
                        rng.integers(0, 2**32, size=2_000_000, dtype=np.uint64).astype(np.uint32).view(np.float32),
                        np.float32([65504, 65519.99, 65520, 1e-8, 2.98e-8, 5.96e-8, -0.0, np.inf, -np.inf, np.nan])])
    with np.errstate(over="ignore", invalid="ignore"):
        want = x.astype(np.float16)
    out = np.empty(x.size, dtype=np.int16)
    bad, over, first_over, amax, umax, first_under = narrow_f16(x, out)  # the kernel float_to_bytes runs
    got = out.view(np.float16)
    nan = np.isnan(want)
    np.testing.assert_array_equal(np.isnan(got), nan)
    np.testing.assert_array_equal(got[~nan].view(np.uint16), want[~nan].view(np.uint16))
    assert count_nonfinite(x) == int(np.count_nonzero(~np.isfinite(x))) == bad
    fin = np.isfinite(x)
    overflow = fin & np.isinf(want)
    under = fin & (want == 0) & (x != 0)
    assert over == int(np.count_nonzero(overflow)) and first_over == int(np.argmax(overflow))
    assert amax == np.abs(x[fin]).max() and umax == np.abs(x[under]).max()
    assert abs(x[first_under]) == umax and first_under == int(np.argmax(under & (np.abs(x) == umax)))
    held = x[fin & ~overflow]  # float_to_bytes writes these (its underflows are negligible next to 65504)
    np.testing.assert_array_equal(float_to_bytes(held, F16).view(np.uint16), held.astype(np.float16).view(np.uint16))


def test_metadata_arrays_pack_as_gguf_packs_them(silu_ckpt, tmp_path, monkeypatch):
    """Long metadata arrays (a vocabulary) are packed in one step; the bytes must be what
    gguf's own writer gives, element by element, and bad arrays must fail the same way."""
    import random

    import gguf

    import bitconv.writers.gguf_writer as gw

    rng = random.Random(0)
    T = gguf.GGUFValueType
    cases = [
        (["tok%d" % i for i in range(100)] + ["é漢字\n", ""], None),
        ([rng.uniform(-1e3, 1e3) for _ in range(100)] + [0.1, -0.0, 3.4e38, float("nan")], None),
        ([rng.randint(-2**31, 2**31 - 1) for _ in range(100)], None),
        ([rng.randint(0, 2**32 - 1) for _ in range(100)], T.UINT32),
        ([1, 2, 3] * 30, T.INT8),
        ([True, False] * 40, None),
        ([1.0] * 70 + [1e39], None),  # float32 overflow: struct.pack raises
        ([2**31] * 70, None),  # int32 overflow
        ([1, "a"] * 40, None),  # mixed: gguf refuses
    ]
    base, fast = gguf.GGUFWriter(path=None, arch="llama"), gw.ArrayPackingGGUFWriter(path=None, arch="llama")
    for val, sub in cases:
        for add_vtype in (True, False):
            def pack(w):
                try:
                    return w._pack_val(val, T.ARRAY, add_vtype, sub)
                except Exception as exc:  # the same exception type must come out
                    return type(exc)
            assert pack(fast) == pack(base), (val[:3], sub)
    # a whole file: identical bytes with gguf's stock writer
    a, b = tmp_path / "fast.gguf", tmp_path / "stock.gguf"
    hits = []
    orig = gw.ArrayPackingGGUFWriter._pack_array
    monkeypatch.setattr(gw.ArrayPackingGGUFWriter, "_pack_array",
                        lambda self, val, sub: hits.append(len(val)) or orig(self, val, sub))
    convert(silu_ckpt, a, layout="tq2_0")
    assert hits and max(hits) >= 256  # the vocabulary went through the fast path
    monkeypatch.setattr(gw, "ArrayPackingGGUFWriter", gguf.GGUFWriter)
    convert(silu_ckpt, b, layout="tq2_0")
    assert a.read_bytes() == b.read_bytes()


def _convert_direct_and_float32(monkeypatch, writer_cls, src, fast, slow, **kw) -> list[str]:
    """Convert `src` twice: into `fast` with `writer_cls.encode_source` (counting the tensors
    it takes) and into `slow` with the base class's, which takes none (every tensor goes
    through the float32 payload). Returns the names the direct path took."""
    from bitconv.writers.base import Writer

    calls: list[str] = []
    orig = writer_cls.encode_source

    def counting(self, plan, tp):
        direct = orig(self, plan, tp)
        if direct is not None:
            calls.append(tp.name)
        return direct

    monkeypatch.setattr(writer_cls, "encode_source", counting)
    convert(src, fast, **kw)
    monkeypatch.setattr(writer_cls, "encode_source", Writer.encode_source)
    convert(src, slow, **kw)
    monkeypatch.setattr(writer_cls, "encode_source", orig)
    return calls


def _copy_with_nan_in_embedding(src, dst):
    import shutil

    from hostile_helpers import rewrite_weights

    shutil.copytree(src, dst)

    def nan_in_embedding(w):
        w["model.embed_tokens.weight"][3, 7] = float("nan")

    rewrite_weights(dst, nan_in_embedding)
    return dst


@pytest.mark.parametrize("dtype", ["bf16", "f16", "f32"])
def test_f16_tensors_from_the_source_equal_the_float32_path(ckpt_factory, tmp_path, monkeypatch, dtype):
    """GGUF F16 tensors (the embedding) are narrowed straight from the mapped source values
    (`GGUFWriter.encode_source`); the file must equal the one written through the float32
    payload, and a NaN still stops the conversion naming the tensor."""
    from bitconv.writers.gguf_writer import GGUFWriter

    src = ckpt_factory("silu", dtype=dtype, seed=5)
    fast, slow = tmp_path / "fast.gguf", tmp_path / "slow.gguf"
    calls = _convert_direct_and_float32(monkeypatch, GGUFWriter, src, fast, slow, layout="i2_s")
    assert "token_embd.weight" in calls
    assert fast.read_bytes() == slow.read_bytes()
    bad = _copy_with_nan_in_embedding(src, tmp_path / "nan")
    with pytest.raises(BadWeightsError, match=r"token_embd.weight: 1 NaN/Inf"):
        convert(bad, tmp_path / "nan.gguf", layout="i2_s")
    assert not (tmp_path / "nan.gguf").exists()


@pytest.mark.parametrize("dtype", ["bf16", "f16", "f32"])
def test_safetensors_float_tensors_copied_from_the_source_equal_the_float32_path(ckpt_factory, tmp_path,
                                                                              monkeypatch, dtype):
    """A packed safetensors folder keeps float tensors (embedding, norms) in the source's
    dtype: `SafetensorsWriter.encode_source` copies their stored bytes; the folder must equal
    the one written through the float32 payload, and a NaN still stops the conversion."""
    from bitconv.writers.safetensors_writer import SafetensorsWriter

    src = ckpt_factory("silu", dtype=dtype, seed=6)
    fast, slow = tmp_path / "fast", tmp_path / "slow"
    calls = _convert_direct_and_float32(monkeypatch, SafetensorsWriter, src, fast, slow, format="safetensors")
    assert "model.embed_tokens.weight" in calls and any("norm" in c for c in calls)
    files = sorted(p.name for p in fast.iterdir())
    assert files == sorted(p.name for p in slow.iterdir())
    for name in files:
        assert (fast / name).read_bytes() == (slow / name).read_bytes(), name
    bad = _copy_with_nan_in_embedding(src, tmp_path / "nan")
    with pytest.raises(BadWeightsError, match=r"embed_tokens.weight: 1 NaN/Inf"):
        convert(bad, tmp_path / "nan-out", format="safetensors")
    assert not (tmp_path / "nan-out").exists()


def test_pipeline_budgets_direct_tensors_by_what_they_allocate(ckpt_factory, tmp_path, monkeypatch):
    """A tensor the writer encodes straight from the source is budgeted by the memory that
    allocates (the source's bytes as read, which source_files reads instead of mapping, plus
    GGUF F16 narrowing's 2 bytes a value), not by a float32 copy it never makes, so a big
    embedding does not run alone while the other worker waits. Linears keep the float32
    estimate."""
    import bitconv.convert as cv

    src = ckpt_factory("silu", dtype="bf16", seed=7)
    costs: dict[str, int] = {}
    orig = cv.ordered_map

    def spy(fn, items, **kw):
        items = list(items)
        costs.update({tp.name: kw["cost"](tp) for tp in items})
        return orig(fn, items, **kw)

    monkeypatch.setattr(cv, "ordered_map", spy)
    convert(src, tmp_path / "a.gguf", layout="i2_s")
    emb = costs["token_embd.weight"]
    lin = costs["blk.0.ffn_up.weight"]
    from bitconv.readers import open_source

    ckpt = open_source(src)
    shape = {t.name: t.shape for t in ckpt.tensors}
    assert emb == (2 + 2) * int(np.prod(shape["token_embd.weight"]))  # bf16 read + F16 written
    assert lin == 4 * int(np.prod(shape["blk.0.ffn_up.weight"]))
    costs.clear()
    convert(src, tmp_path / "b", format="safetensors")
    assert costs["model.embed_tokens.weight"] == 2 * int(np.prod(shape["token_embd.weight"]))  # bf16 read
    assert costs["model.layers.0.mlp.up_proj.weight"] == lin


def test_conversion_works_where_numba_cannot_cache(silu_ckpt, tmp_path):
    """A read-only install with no writable user cache dir: numba finds no cache location and
    would refuse `cache=True` at import; the kernels compile uncached instead, same bytes."""
    cached, uncached = tmp_path / "cached.gguf", tmp_path / "uncached.gguf"
    convert(silu_ckpt, cached, layout="i2_s")
    env = dict(os.environ, NUMBA_CACHE_LOCATOR_CLASSES="IPythonCacheLocator",  # applies to no file here
               PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    code = "import sys; from bitconv.convert import convert; convert(sys.argv[1], sys.argv[2], layout='i2_s')"
    p = subprocess.run([sys.executable, "-c", code, str(silu_ckpt), str(uncached)], env=env,
                       capture_output=True, text=True)
    assert p.returncode == 0, p.stderr[-2000:]
    assert uncached.read_bytes() == cached.read_bytes()
