"""Each source tensor's kind is decided once and obeyed (issue 11, items 1, 4, 6, 7).

Held-out-style cases: an exact-ternary fp16 Llama converts with its true scales (0 error
against the source), a bf16 one with group scales too (the group found is reported), a
float Llama that is not ternary is refused unless --ternarize, and a BitNet latent model
still gets absmean.
"""

from __future__ import annotations

import json
from pathlib import Path

import gguf
import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

from bitconv.cli import app
from bitconv.convert import convert
from bitconv.errors import InputError, LayoutError
from bitconv.readers import open_source
from bitconv.readers.gguf_file import GGUFFile
from bitconv.source_kind import SourceKind, decide_source_kinds, ternary_embeddings
from bitconv.synth import make_checkpoint

DIMS = dict(hidden=256, intermediate=512, layers=2, heads=4, kv_heads=2, vocab=512, embed_std=0.05)
LINEARS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def _times_constant_ternary(folder: Path, scale: float, dtype: torch.dtype, seed: int = 0) -> Path:
    """Every linear becomes scale·t (t uniform over {-1, 0, 1}): TriLM 'unpacked' style."""
    g = torch.Generator().manual_seed(seed)
    path = folder / "model.safetensors"
    w = load_file(str(path))
    for k, v in w.items():
        if any(f".{n}." in k for n in LINEARS):
            w[k] = (torch.randint(-1, 2, v.shape, generator=g).to(torch.float32) * scale).to(dtype)
    save_file(w, str(path), metadata={"format": "pt"})
    return folder


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    root = tmp_path_factory.mktemp("kinds")
    fp16 = make_checkpoint(root / "trilm-f16", family="llama", weights="float", dtype="f16", tie=False, seed=3,
                           **DIMS)
    _times_constant_ternary(fp16, 0.05, torch.float16)
    return {
        "root": root,
        "fp16": fp16,
        "bf16_g256": make_checkpoint(root / "bf16-g256", family="llama", weights="exact", ternary_group=256,
                                     dtype="bf16", seed=4, **{**DIMS, "hidden": 512, "intermediate": 1024}),
        "row": make_checkpoint(root / "row", family="llama", weights="exact", ternary_group="row", seed=5, **DIMS),
        "g128": make_checkpoint(root / "g128", family="llama", weights="exact", ternary_group=128, seed=6, **DIMS),
        "float": make_checkpoint(root / "float", family="llama", weights="float", seed=7, **DIMS),
        "emb": make_checkpoint(root / "emb", family="qwen3", weights="exact", ternary_group="row",
                               ternary_embeddings=128, tie=False, seed=8, **DIMS),
    }


def _source_weights(folder: Path) -> dict[str, np.ndarray]:
    return {k: v.to(torch.float32).numpy() for k, v in load_file(str(folder / "model.safetensors")).items()}


def test_exact_fp16_llama_converts_with_its_true_scales(ckpts, tmp_path):
    """W = 0.05·t in fp16: every TQ2_0 block scale is 0.05 (absmean would write ~0.033),
    and the file dequantizes (by gguf.quants, the reference) to the source weights exactly."""
    out = tmp_path / "m.gguf"
    res = convert(ckpts["fp16"], out, layout="tq2_0")
    assert res.summary()["max_rel_error"] == 0.0
    assert {tp.source_kind for tp in res.plan.tensors if tp.role == "linear"} == {"exact_ternary"}
    f = GGUFFile(out)
    src = _source_weights(ckpts["fp16"])
    for i in range(2):
        for kind, hf in (("attn_v", "self_attn.v_proj"), ("ffn_down", "mlp.down_proj"), ("ffn_up", "mlp.up_proj")):
            name = f"blk.{i}.{kind}.weight"
            info = f.tensors[name]
            raw = np.asarray(f.raw(name)).reshape(-1, 66)
            d = raw[:, 64:].copy().view(np.float16).reshape(-1)
            assert set(d[d != 0].tolist()) == {float(np.float16(0.05))}
            deq = gguf.quants.dequantize(np.asarray(f.raw(name)), gguf.GGMLQuantizationType.TQ2_0)
            assert np.array_equal(deq.reshape(info.shape), src[f"model.layers.{i}.{hf}.weight"])
    # q/k are permuted for the llama arch; bitconv's reader undoes that: still exact
    art = open_source(out)
    q = art.get("blk.1.attn_q.weight").load_ternary().dequantize()
    assert np.array_equal(q, src["model.layers.1.self_attn.q_proj.weight"])
    kinds = json.loads(f.get("bitconv.source.kinds"))
    assert kinds["counts"]["exact_ternary"] == 14 and kinds["groups"]["exact_ternary"] == {"tensor": 14}


def test_bf16_group_scales_are_found_and_kept(ckpts, tmp_path):
    res = convert(ckpts["bf16_g256"], tmp_path / "m.gguf", layout="tq2_0")
    assert res.summary()["max_rel_error"] == 0.0
    d = res.plan.to_dict()
    lin = [t for t in d["tensors"] if t["role"] == "linear"]
    assert all(t["source_kind"] == "exact_ternary" and t["source_group"] == 256 and t["group"] == 256 for t in lin)
    assert any("group 256: 14" in n for n in d["notes"])
    art = open_source(tmp_path / "m.gguf")
    src = _source_weights(ckpts["bf16_g256"])
    got = art.get("blk.0.ffn_down.weight").load_ternary()
    assert got.group == 256 and np.array_equal(got.dequantize(), src["model.layers.0.mlp.down_proj.weight"])


def test_row_scales_refused_by_a_tensor_scale_layout_naming_those_that_hold_them(ckpts, tmp_path):
    with pytest.raises(LayoutError) as e:
        convert(ckpts["row"], tmp_path / "m.gguf", layout="i2_s")
    msg = str(e.value)
    assert "blk.0.attn_q.weight" in msg and "per-row" in msg and "tq1_0, tq2_0" in msg
    assert "never averages" in msg and e.value.exit_code == 2
    assert not (tmp_path / "m.gguf").exists()
    res = convert(ckpts["row"], tmp_path / "ok.gguf", layout="tq1_0")  # TQ blocks hold row scales
    assert res.summary()["max_rel_error"] == 0.0


def test_group_128_is_refused_by_tq_and_kept_in_safetensors(ckpts, tmp_path):
    with pytest.raises(LayoutError, match=r"group-128 scales, which tq2_0 cannot hold"):
        convert(ckpts["g128"], tmp_path / "m.gguf", layout="tq2_0")
    res = convert(ckpts["g128"], tmp_path / "st", format="safetensors")
    cfg = json.loads((tmp_path / "st" / "config.json").read_text())
    assert cfg["quantization_config"]["bitconv_group_size"] == 128
    back = open_source(tmp_path / "st")
    src = _source_weights(ckpts["g128"])
    got = back.get("blk.0.attn_v.weight").load_ternary()
    want = src["model.layers.0.self_attn.v_proj.weight"]
    assert got.group == 128 and np.array_equal(got.values, np.sign(want).astype(np.int8))
    # 1/s goes through bf16 in the folder: within bf16 rounding of the true scales
    assert np.allclose(got.dequantize(), want, rtol=2**-7, atol=0)
    assert res.plan.source_kinds()["groups"]["exact_ternary"] == {"128": 14}


def test_float_llama_is_refused_unless_ternarize(ckpts, tmp_path):
    with pytest.raises(InputError) as e:
        convert(ckpts["float"], tmp_path / "m.gguf", layout="tq2_0")
    assert e.value.exit_code == 2 and "not ternary" in str(e.value) and "--ternarize" in str(e.value)
    assert not (tmp_path / "m.gguf").exists()
    r = CliRunner().invoke(app, ["convert", str(ckpts["float"]), str(tmp_path / "c.gguf")])
    assert r.exit_code == 2
    lines = [ln for ln in r.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and "not ternary" in lines[0], r.output
    res = convert(ckpts["float"], tmp_path / "t.gguf", layout="tq2_0", ternarize=True)
    assert {tp.source_kind for tp in res.plan.tensors if tp.role == "linear"} == {"plain_float"}
    assert res.plan.options.recorded()["ternarize"] is True
    assert 0.3 < res.summary()["mean_rel_error"] < 0.8  # a real loss, reported
    assert json.loads(GGUFFile(tmp_path / "t.gguf").get("bitconv.options"))["ternarize"] is True


def test_bitnet_latent_model_still_gets_absmean(tmp_path):
    """A BitNet model's weights are latent even when they happen to be s·t: absmean, as the
    model computes at run time (scale = s·(1 - zero share), not s)."""
    src = make_checkpoint(tmp_path / "bn", family="relu2", seed=9, **DIMS)
    _times_constant_ternary(src, 0.05, torch.bfloat16)
    res = convert(src, tmp_path / "m.gguf", layout="i2_s")
    assert {tp.source_kind for tp in res.plan.tensors if tp.role == "linear"} == {"bitnet_latent"}
    s = res.stats[0]
    assert s.scale_mean == pytest.approx(float(np.float32(torch.tensor(0.05, dtype=torch.bfloat16).item()))
                                         * (1 - s.zero_fraction), rel=1e-5)
    # a plain Llama with a bitnet online quantization_config is a BitNet model too
    lat = make_checkpoint(tmp_path / "lat", family="llama", seed=10, **DIMS)
    assert json.loads((lat / "config.json").read_text())["quantization_config"]["quant_method"] == "bitnet"
    res = convert(lat, tmp_path / "l.gguf", layout="tq2_0")
    assert {tp.source_kind for tp in res.plan.tensors if tp.role == "linear"} == {"bitnet_latent"}


def test_dry_run_json_shows_every_source_kind(ckpts, tmp_path):
    r = CliRunner().invoke(app, ["convert", str(ckpts["fp16"]), str(tmp_path / "m.gguf"), "--dry-run", "--json"])
    assert r.exit_code == 0, r.output
    d = json.loads(r.stdout)
    kinds = {t["name"]: t["source_kind"] for t in d["plan"]["tensors"]}
    assert kinds["blk.0.attn_q.weight"] == "exact_ternary" and kinds["token_embd.weight"] == "float"
    assert d["plan"]["source_kinds"]["counts"] == {"exact_ternary": 14, "float": 7}
    r = CliRunner().invoke(app, ["convert", str(ckpts["fp16"]), str(tmp_path / "m.gguf"), "--dry-run"])
    assert r.exit_code == 0 and "exact_ternary (tensor)" in r.output and "14 exact_ternary" in r.output


def test_manifest_records_source_kinds(ckpts, tmp_path):
    from bitconv.release import release

    res = release(ckpts["row"], tmp_path / "rel", layouts=["tq2_0", "tq1_0"])
    m = json.loads(res.manifest_path.read_text())
    assert m["source"]["tensor_kinds"]["counts"]["exact_ternary"] == 14
    assert m["source"]["tensor_kinds"]["groups"]["exact_ternary"] == {"row": 14}


def test_ternary_embeddings_are_detected_and_never_silently_dequantized(ckpts, tmp_path):
    ck = open_source(ckpts["emb"])
    decide_source_kinds(ck)
    emb = ternary_embeddings(ck)
    assert [t.name for t in emb] == ["token_embd.weight", "output.weight"]
    assert all(t.group == 128 and t.kind == SourceKind.EXACT for t in emb)
    tern = emb[0].load_ternary()
    assert tern.group == 128 and np.array_equal(tern.dequantize(), emb[0].load())
    res = convert(ckpts["emb"], tmp_path / "m.gguf", layout="tq2_0")
    plan = res.plan.to_dict()
    noted = {t["name"]: t.get("note") for t in plan["tensors"]}
    assert "written as f16" in noted["token_embd.weight"] and "written as f16" in noted["output.weight"]
    assert sum("exact ternary in the source (group-128 scales)" in w for w in plan["warnings"]) == 2


def test_decided_once(ckpts, monkeypatch):
    """A second decision does not read the tensors again."""
    import bitconv.source_kind as sk

    ck = open_source(ckpts["row"])
    decide_source_kinds(ck)
    monkeypatch.setattr(sk, "detect_tensor", lambda st: pytest.fail("read again"))
    decide_source_kinds(ck)
    assert all(t.kind is not None for t in ck.tensors)


def test_verify_runs_a_plain_family_as_it_runs_and_reports_ternarize_cost(ckpts, tmp_path):
    """verify: exact-ternary weights as they are, no activation quantization on a plain
    family's source side; a --ternarize artifact against its float source reports the float
    model's perplexity with --reference fp."""
    from bitconv.verify import verify

    fast = dict(tokens=256, ctx=64)
    art = tmp_path / "row.gguf"
    convert(ckpts["row"], art, layout="tq2_0")
    rep = verify(art, ckpts["row"], **fast)  # default gates: the weights are carried over exactly
    assert rep.passed, rep.failures
    # both sides as the source model runs: only the conversion is measured
    assert rep.source_act_quant is False and rep.act_quant is False
    assert rep.top1_agreement == 1.0 and rep.artifact_perplexity == pytest.approx(rep.source_perplexity, rel=1e-4)
    assert all(c.mismatched == 0 and c.rel_error < 1e-3 for c in rep.tensors if c.role == "linear")
    assert any("without activation quantization" in n for n in rep.notes)

    tern = tmp_path / "t.gguf"
    convert(ckpts["float"], tern, layout="tq2_0", ternarize=True)
    rep = verify(tern, ckpts["float"], reference="fp", **fast)
    assert rep.passed, rep.failures  # the artifact is what --ternarize meant to write
    assert rep.fp_perplexity is not None and rep.fp_perplexity != pytest.approx(rep.source_perplexity, rel=1e-3)
    assert any("--reference fp reports the float model" in n for n in rep.notes)


def test_bonsai_style_qwen3_keeps_ternary_embeddings_in_q2_0(ckpts, tmp_path):
    """Exact-ternary Qwen3 with group-128 ternary embedding and head: with --layout q2_0
    everything stays ternary (the embedding type `auto` picks q2_0) and reads back bit-exact."""
    out = tmp_path / "m.gguf"
    res = convert(ckpts["emb"], out, layout="q2_0")
    types = {tp.name: tp.out_type for tp in res.plan.tensors}
    assert types["token_embd.weight"] == "q2_0" and types["output.weight"] == "q2_0"
    assert not res.plan.warnings and res.summary()["max_rel_error"] == 0.0
    art, src = open_source(out), open_source(ckpts["emb"])
    decide_source_kinds(src)
    for name in ("token_embd.weight", "output.weight", "blk.1.ffn_down.weight"):
        got = art.get(name).load_ternary().dequantize()
        assert np.array_equal(got, src.get(name).load()), name


def test_verify_bonsai_style_qwen3_q2_0_passes_default_gates(ckpts, tmp_path):
    """`bitconv verify` of a Bonsai-style Qwen3 Q2_0 file (exact-ternary source, weights carried
    over exactly) against its source passes the default gates: the artifact runs with the
    source's activation semantics (float for a plain family), so an 8-bit activation effect
    is not charged to the conversion. --act-quant quantizes both sides and still passes."""
    out = tmp_path / "bonsai-q2_0.gguf"
    convert(ckpts["emb"], out, layout="q2_0")
    r = CliRunner().invoke(app, ["verify", str(out), "--source", str(ckpts["emb"]), "--json"])
    assert r.exit_code == 0, r.output
    d = json.loads(r.stdout)
    assert d["passed"] and d["act_quant"] is False and d["source_act_quant"] is False
    assert d["top1_agreement"] == 1.0
    r = CliRunner().invoke(app, ["verify", str(out), "--source", str(ckpts["emb"]), "--act-quant", "--json"])
    assert r.exit_code == 0, r.output
    d = json.loads(r.stdout)
    assert d["passed"] and d["act_quant"] is True and d["source_act_quant"] is True
