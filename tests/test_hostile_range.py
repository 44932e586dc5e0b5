"""Issue 25 item 2: no value float16 (or bfloat16, float32) cannot hold is written with exit 0.

Every narrowing point is covered: the fp16 block scales of TQ1_0/TQ2_0/Q2_0 (overflow to inf,
underflow to 0, a denormal that loses bits), F16/BF16 float tensors in a GGUF (direct and
float32 paths), the safetensors `weight_scale` (1/s) in the source's dtype, and float32 GGUF
metadata. Each refusal names the tensor, the value and what would hold it; a value the type
holds exactly (a subnormal fp16 scale a source really has) is kept.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from bitconv import float_range
from hostile_helpers import assert_refused, edited_copy as _edited, run_cli, tree_digest

TINY = dict(hidden=256, intermediate=256, layers=1, heads=2, kv_heads=1, vocab=320)
Q = "model.layers.0.self_attn.q_proj.weight"


@pytest.fixture(scope="module")
def exact_f32(ckpt_factory):
    return ckpt_factory("llama", weights="exact", dtype="f32", **TINY)


@pytest.fixture(scope="module")
def latent_f32(ckpt_factory):
    return ckpt_factory("llama", dtype="f32", **TINY)


def _with_scale(src: Path, dst: Path, s: float) -> Path:
    def edit(w):
        w[Q] = (np.sign(w[Q]) * np.float32(s)).astype(np.float32)  # still exact ternary, scale s
    return _edited(src, dst, edit)


@pytest.mark.parametrize("scale,stored", [(1e5, "inf"), (1e-9, "0"), (1e-6, "1.01328e-06")])
@pytest.mark.parametrize("layout", ["tq2_0", "tq1_0", "q2_0"])
def test_fp16_block_scale_out_of_range_is_refused(exact_f32, tmp_path, scale, stored, layout):
    """Main wrote inf (1e5), 0 (1e-9: the tensor zeroed) or a denormal that moved every
    weight by 1.3% (1e-6) with exit 0."""
    src = _with_scale(exact_f32, tmp_path / "src", scale)
    before = tree_digest(src)
    out = tmp_path / "out"
    out.mkdir()
    r = run_cli("convert", src, out / "m.gguf", "--layout", layout)
    assert_refused(r, outdir=out, src=src, before=before, keep=set(),
                   contains=("blk.0.attn_q.weight", f"scale {scale:.6g}", f"stored as {stored}", "i2_s"))


def test_fp16_scale_float32_layouts_keep_it(exact_f32, tmp_path):
    """The layouts the refusal names do hold the value: i2_s writes scale 1e5 exactly."""
    from bitconv.readers import open_source

    src = _with_scale(exact_f32, tmp_path / "src", 1e5)
    r = run_cli("convert", src, tmp_path / "m.gguf", "--layout", "i2_s")
    assert r.exit_code == 0, r.output
    t = open_source(tmp_path / "m.gguf").get("blk.0.attn_q.weight").load_ternary()
    assert float(t.scale) == 1e5


def test_subnormal_fp16_scale_held_exactly_is_kept(exact_f32, tmp_path):
    """2^-20 is an fp16 subnormal stored without loss: refusing it would refuse a real source."""
    from bitconv.readers import open_source

    src = _with_scale(exact_f32, tmp_path / "src", 2.0 ** -20)
    r = run_cli("convert", src, tmp_path / "m.gguf", "--layout", "tq2_0")
    assert r.exit_code == 0, r.output
    assert float(open_source(tmp_path / "m.gguf").get("blk.0.attn_q.weight").load_ternary().scale) == 2.0 ** -20


def test_huge_latent_weights_scale_refused(latent_f32, tmp_path):
    """Ternarized latent weights whose absmean overflows fp16 (the second way to a huge scale)."""
    src = _edited(latent_f32, tmp_path / "src", lambda w: w.__setitem__(Q, w[Q] * np.float32(1e7)))
    out = tmp_path / "out"
    out.mkdir()
    r = run_cli("convert", src, out / "m.gguf", "--layout", "tq2_0")
    assert_refused(r, outdir=out, keep=set(), contains=("blk.0.attn_q.weight", "stored as inf"))


@pytest.mark.parametrize("value,etype,stored", [(1e5, "auto", "inf"), (3.4e38, "bf16", "inf")])
@pytest.mark.parametrize("family,dtype", [("llama", "f32"), ("silu", "bf16")])
def test_float_embedding_value_out_of_range_is_refused(ckpt_factory, tmp_path, value, etype, stored, family, dtype):
    """A finite embedding value of 1e5 became inf in an F16 token_embd with exit 0 (the
    direct bf16/f32 -> F16 pass and the float32 path both); BF16 the same at its own range.
    Underflow: an embedding whose every value is that small was written as all zeros."""
    if dtype == "bf16" and etype == "bf16":
        pytest.skip("a bf16 source's own values always fit bf16")
    held = []

    def edit(w):
        e = w["model.embed_tokens.weight"]
        if stored == "0":  # the whole table that small, as a model trained at another scale
            e.copy_((e.float().sign() * value).to(e.dtype))
        e.view(-1)[773] = value
        held.append(float(e.view(-1)[773]))  # as the source stores it

    src = _edited(ckpt_factory(family, dtype=dtype, **TINY), tmp_path / "src", edit, tensors="torch")
    out = tmp_path / "out"
    out.mkdir()
    r = run_cli("convert", src, out / "m.gguf", "--embedding-type", etype)
    assert_refused(r, outdir=out, keep=set(),
                   contains=("token_embd.weight", f"{abs(held[0]):.6g} (element", f"stored as {stored}", "--embedding-type"))


def test_negligible_underflow_is_rounding_not_loss(latent_f32, tmp_path):
    """One 2e-8 among values of order 1 rounds to 0 in F16 within the type's resolution (every
    real embedding has such values): written, as any converter writes it; its neighbours kept."""
    from bitconv.readers import open_source

    def edit(w):
        w["model.embed_tokens.weight"].reshape(-1)[773] = 2e-8
    src = _edited(latent_f32, tmp_path / "src", edit)
    r = run_cli("convert", src, tmp_path / "m.gguf")
    assert r.exit_code == 0, r.output
    got = open_source(tmp_path / "m.gguf").get("token_embd.weight").load().reshape(-1)
    assert got[773] == 0 and np.count_nonzero(got) == got.size - 1


def test_float_embedding_in_range_type_is_written(latent_f32, tmp_path):
    """The type the refusal names holds the value, exactly as the source has it."""
    from bitconv.readers import open_source

    def edit(w):
        w["model.embed_tokens.weight"].reshape(-1)[773] = 1e5
    src = _edited(latent_f32, tmp_path / "src", edit)
    r = run_cli("convert", src, tmp_path / "m.gguf", "--embedding-type", "bf16")
    assert r.exit_code == 0, r.output
    assert float(open_source(tmp_path / "m.gguf").get("token_embd.weight").load().reshape(-1)[773]) == 99840.0


@pytest.mark.parametrize("factor,stored", [(1e-4, "inf"), (np.float16(60000), "0.0000166")])
def test_safetensors_reciprocal_scale_out_of_f16_is_refused(ckpt_factory, tmp_path, factor, stored):
    """weight_scale holds 1/s in the source's dtype: an f16 source with tiny latent weights had
    1/s overflow (exit 1, an untyped 'conversion failed'); huge ones a denormal 1/s that lost
    bits (exit 0). Both are bad input now, named."""
    base = ckpt_factory("llama", dtype="f16", **TINY)
    if factor == 1e-4:
        edit = lambda w: w.__setitem__(Q, (w[Q] * np.float16(1e-4)).astype(np.float16))  # noqa: E731
    else:
        edit = lambda w: w.__setitem__(Q, (np.sign(w[Q]) * np.float16(60000)).astype(np.float16))  # noqa: E731
    src = _edited(base, tmp_path / "src", edit)
    out = tmp_path / "out"
    out.mkdir()
    r = run_cli("convert", src, out / "st", "--format", "safetensors")
    assert_refused(r, outdir=out, keep=set(), contains=("q_proj.weight", "weight_scale 1/s", "f16"))


def test_float32_metadata_out_of_range_is_refused(tmp_path, ckpt_factory):
    """rope_theta = 1e39 is a finite JSON number float32 cannot hold: main crashed packing it
    (struct OverflowError, exit 1); 1e-50 for rms_norm_eps was written as 0."""
    import json

    base = ckpt_factory("llama", **TINY)
    for key, value, stored in (("rope_theta", 1e39, "inf"), ("rms_norm_eps", 1e-50, "0")):
        src = tmp_path / key
        shutil.copytree(base, src)
        cfg = json.loads((src / "config.json").read_text())
        cfg[key] = value
        (src / "config.json").write_text(json.dumps(cfg))
        out = tmp_path / f"out-{key}"
        out.mkdir()
        r = run_cli("convert", src, out / "m.gguf")
        assert_refused(r, outdir=out, keep=set(), contains=(key, f"stored as {stored}"))


def test_float_range_rules():
    """The two rules, on the edges: class changes always fail; scales also keep precision."""
    assert float_range.holds(65504.0, "f16", scale=True)
    assert not float_range.holds(65520.0, "f16", scale=False)  # rounds to inf
    assert float_range.holds(1e-7, "f16", scale=False)  # a subnormal value: rounding is the type's cost
    assert not float_range.holds(1e-7, "f16", scale=True)  # the same as a block scale: 16% off
    assert not float_range.holds(1e-8, "f16", scale=False)  # non-zero -> 0
    assert float_range.holds(2.0 ** -24, "f16", scale=True)  # held exactly
    assert float_range.holders(1e5, scale=True) == ["bf16", "f32"]
    assert float_range.describe(1e5, "f16") == "inf" and float_range.describe(1e-9, "f16") == "0"


@pytest.mark.parametrize("value,etype", [(1e-9, "f16"), (1e-41, "bf16")])
def test_lone_tiny_embedding_value_rounds_to_zero_like_any_converter(ckpt_factory, tmp_path, value, etype):
    """A lone weight below the type's smallest value is ordinary rounding (a real 500M-value
    embedding holds hundreds of |w| < 3e-8): written as 0, exit 0. Refusing it refused every
    seeded model whose head held one such weight."""
    from bitconv.readers import open_source

    def edit(w):
        w["model.embed_tokens.weight"].view(-1)[773] = value

    src = _edited(ckpt_factory("llama", dtype="f32", **TINY), tmp_path / "src", edit, tensors="torch")
    r = run_cli("convert", src, tmp_path / "m.gguf", "--embedding-type", etype)
    assert r.exit_code == 0, r.output
    emb = open_source(tmp_path / "m.gguf").get("token_embd.weight").load().reshape(-1)
    assert float(emb[773]) == 0.0 and float(np.abs(emb).max()) > 0


@pytest.mark.parametrize("value,etype", [(1e-9, "f16"), (1e-41, "bf16")])
def test_float_tensor_zeroed_by_narrowing_is_refused(ckpt_factory, tmp_path, value, etype):
    """An embedding whose every non-zero value rounds to 0 in the chosen type would be written
    as a zero tensor: refused, naming the tensor and the value."""
    def edit(w):
        w["model.embed_tokens.weight"] = (w["model.embed_tokens.weight"].sign() * value).contiguous()

    src = _edited(ckpt_factory("llama", dtype="f32", **TINY), tmp_path / "src", edit, tensors="torch")
    out = tmp_path / "out"
    out.mkdir()
    r = run_cli("convert", src, out / "m.gguf", "--embedding-type", etype)
    assert_refused(r, outdir=out, keep=set(), contains=("token_embd.weight", "stored as 0"))


@pytest.mark.parametrize("fmt", ["mlx", "compressed-tensors"])
def test_engine_folder_scales_out_of_f16_are_refused(ckpt_factory, tmp_path, fmt):
    """MLX and compressed-tensors store scales in the source's dtype: an f16 source with tiny
    latent weights has s ~ 5e-6, an fp16 subnormal that loses bits (written with exit 0 before;
    only an overflow to inf was checked, as exit 1)."""
    base = ckpt_factory("llama", dtype="f16", **TINY)
    src = _edited(base, tmp_path / "src", lambda w: w.__setitem__(Q, (w[Q] * np.float16(1e-4)).astype(np.float16)))
    out = tmp_path / "out"
    out.mkdir()
    r = run_cli("convert", src, out / "m", "--format", fmt)
    assert_refused(r, outdir=out, keep=set(), contains=("q_proj", "does not fit", "f16 scale"))


@pytest.mark.parametrize("fmt", ["gguf", "safetensors"])
def test_latent_weights_whose_absmean_overflows_float32_are_refused(latent_f32, tmp_path, fmt):
    """Found by the self-check fuzzer: finite weights near 3.3e38 overflowed absmean's float32
    block sums, giving scale inf and every code 0 — an all-zero tensor written with exit 0."""
    src = _edited(latent_f32, tmp_path / "src",
                  lambda w: w.__setitem__(Q, (np.sign(w[Q]) * np.float32(3.3e38)).astype(np.float32)))
    out = tmp_path / "out"
    out.mkdir()
    r = run_cli("convert", src, out / "m", "--format", fmt)
    assert_refused(r, outdir=out, keep=set(), contains=("blk.0.attn_q.weight" if fmt == "gguf" else "q_proj",
                                                        "absmean", "overflows float32"))
