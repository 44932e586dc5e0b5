"""`--format safetensors`: the packed Hugging Face folder (issue 4, FORMATS.md §7).

Checked here without transformers (tests/judges/test_transformers_packed.py runs it): the
safetensors container byte by byte (8-byte length, space-padded JSON, contiguous aligned
offsets), determinism, sharding, group scales, round trips through bitconv's own readers
(packed safetensors -> GGUF, GGUF -> safetensors) and bad packed input.
"""

from __future__ import annotations

import hashlib
import json
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

from bitconv.cli import app
from bitconv.convert import convert
from bitconv.errors import BadWeightsError, UsageError
from bitconv.quant import ternarize
from bitconv.readers import open_source
from bitconv.archs import architecture_for
from bitconv.writers.safetensors_writer import hf_name
from hostile_helpers import edited_copy

QCONFIG = {"quant_method": "bitnet", "linear_class": "bitlinear", "quantization_mode": "offline"}
LINEAR_SUFFIXES = ("q_proj.weight", "k_proj.weight", "v_proj.weight", "o_proj.weight",
                   "gate_proj.weight", "up_proj.weight", "down_proj.weight")


@pytest.fixture(scope="module")
def f32_ckpts(tmp_path_factory):
    """Float32 sources, so every scale round trip is exact up to float32 rounding of 1/(1/s)."""
    from bitconv.synth import make_checkpoint

    root = tmp_path_factory.mktemp("st-src")
    dims = dict(hidden=256, intermediate=512, layers=2, heads=4, kv_heads=2, vocab=512, dtype="f32")
    return {
        "silu": make_checkpoint(root / "silu", family="silu", seed=3, tie=True, **dims),
        "relu2": make_checkpoint(root / "relu2", family="relu2", seed=4, tie=False, **dims),
        "llama": make_checkpoint(root / "llama", family="llama", seed=6, tie=False, **dims),
    }


def header(path: Path) -> tuple[int, dict]:
    raw = path.read_bytes()
    n = struct.unpack("<Q", raw[:8])[0]
    return n, json.loads(raw[8:8 + n])


def sha256_tree(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def ternaries(folder_or_file: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """{canonical name: (ternary values, float32 scales)} for linears; floats for the rest."""
    ck = open_source(folder_or_file)
    out = {}
    for t in ck.tensors:
        if t.is_ternary:
            tern = t.load_ternary()
            out[t.name] = (tern.values, np.asarray(tern.scales, np.float32))
        else:
            out[t.name] = (t.load(), None)
    return out


def assert_same_model(a: dict, b: dict, scale_rtol: float = 1e-6) -> None:
    assert sorted(a) == sorted(b)
    for name in a:
        va, sa = a[name]
        vb, sb = b[name]
        np.testing.assert_array_equal(va, vb, err_msg=name)
        if sa is not None or sb is not None:
            np.testing.assert_allclose(np.asarray(sa).reshape(-1), np.asarray(sb).reshape(-1), rtol=scale_rtol,
                                       atol=0, err_msg=name)


# --- the container -------------------------------------------------------------------
def test_folder_layout_header_and_config(f32_ckpts, tmp_path):
    src = f32_ckpts["silu"]
    out = tmp_path / "out"
    result = convert(src, out, format="safetensors")
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors", "tokenizer.json",
                                                     "tokenizer_config.json"]
    assert result.plan.engine == "transformers" and result.plan.arch == "BitNetForCausalLM"

    path = out / "model.safetensors"
    n, hdr = header(path)
    raw = path.read_bytes()
    assert n % 8 == 0 and raw[8:9] == b"{" and raw[8:8 + n].decode().rstrip(" ").endswith("}")
    md = hdr.pop("__metadata__")
    assert md["format"] == "pt" and md["bitconv.version"] and md["bitconv.source.location"] == src.name
    assert json.loads(md["bitconv.options"])["format"] == "safetensors"
    # offsets cover the data buffer exactly, in order, each tensor aligned to its element size
    spans = sorted((v["data_offsets"], v["dtype"]) for v in hdr.values())
    pos = 0
    for (start, end), dtype in spans:
        assert start == pos and start % {"F32": 4, "BF16": 2, "F16": 2, "U8": 1}[dtype] == 0
        pos = end
    assert 8 + n + pos == len(raw)

    # names: HF names, the 1bitLLM sub-norms renamed to transformers' BitNet names
    names = set(hdr)
    assert {"model.layers.0.self_attn.attn_sub_norm.weight", "model.layers.1.mlp.ffn_sub_norm.weight"} <= names
    assert not any("inner_attn_ln" in k or "ffn_layernorm" in k for k in names)
    assert "lm_head.weight" not in names  # tied
    q = hdr["model.layers.0.self_attn.q_proj.weight"]
    assert q["dtype"] == "U8" and q["shape"] == [64, 256]
    scale = hdr["model.layers.0.self_attn.q_proj.weight_scale"]
    assert scale["dtype"] == "F32" and scale["shape"] == [1]
    assert hdr["model.embed_tokens.weight"]["dtype"] == "F32"

    cfg = json.loads((out / "config.json").read_text())
    src_cfg = json.loads((src / "config.json").read_text())
    assert cfg["quantization_config"] == QCONFIG
    assert cfg["architectures"] == ["BitNetForCausalLM"] and cfg["model_type"] == "bitnet"
    assert cfg["hidden_act"] == "silu" and cfg["tie_word_embeddings"] is True
    assert cfg["bitconv_source_architectures"] == ["BitnetForCausalLM"]
    assert {k: v for k, v in cfg.items() if k in src_cfg and k not in ("architectures", "model_type")} == \
        {k: v for k, v in src_cfg.items() if k not in ("architectures", "model_type")}
    assert (out / "tokenizer.json").read_bytes() == (src / "tokenizer.json").read_bytes()

    # safetensors itself reads every tensor back
    with safe_open(str(path), framework="pt") as f:
        assert set(f.keys()) == names and f.metadata() == md
        for k in f.keys():
            f.get_tensor(k)


def test_values_scales_and_dtypes_round_trip(f32_ckpts, tmp_path, hf_float_weights):
    src = f32_ckpts["relu2"]
    out = tmp_path / "out"
    convert(src, out, format="safetensors")
    w = hf_float_weights(src)
    got = load_file(str(out / "model.safetensors"))
    assert sorted(got) == sorted(list(w) + [k + "_scale" for k in w if k.endswith(LINEAR_SUFFIXES)])
    for name, arr in w.items():
        if name.endswith(LINEAR_SUFFIXES):
            tern = ternarize(arr, "tensor", name)
            codes = got[name].numpy()
            assert codes.dtype == np.uint8 and codes.shape == ((arr.shape[0] + 3) // 4, arr.shape[1])
            # transformers' own packer gives the same bytes
            from transformers.integrations.bitnet import pack_weights

            theirs = pack_weights(torch.from_numpy(tern.values.astype(np.int8)).clone()).numpy()
            assert np.array_equal(codes, theirs)
            scale = got[name + "_scale"]
            assert scale.dtype == torch.float32 and scale.shape == (1,)
            assert scale.item() == np.float32(1.0 / np.float64(tern.scale))  # reciprocal (bitlinear)
        else:
            assert got[name].dtype == torch.float32 and np.array_equal(got[name].numpy(), arr), name
    # bitconv reads it back as the same ternary model
    direct = {t.name: t for t in open_source(src).tensors}
    for name, (values, scales) in ternaries(out).items():
        if scales is not None:
            ref = ternarize(direct[name].load(), "tensor", name)
            assert np.array_equal(values, ref.values), name
            np.testing.assert_allclose(scales, ref.scales, rtol=1e-6)
    # and packed safetensors -> safetensors writes the same tensors again
    again = tmp_path / "again"
    convert(out, again, format="safetensors")
    got2 = load_file(str(again / "model.safetensors"))
    assert sorted(got2) == sorted(got) and all(torch.equal(got[k], got2[k]) for k in got)


def test_bf16_source_keeps_bf16(tmp_path, ckpt_factory):
    src = ckpt_factory("relu2", seed=1)  # bf16 latent weights
    out = tmp_path / "out"
    convert(src, out, format="safetensors")
    got = load_file(str(out / "model.safetensors"))
    raw = load_file(str(src / "model.safetensors"))
    name = "model.layers.1.mlp.down_proj.weight"
    tern = ternarize(raw[name].float().numpy(), "tensor", name)
    # 1/s rounded to bf16: the stored scale loses up to 2^-9 relative (kept, as the released checkpoints)
    assert got[name + "_scale"].dtype == torch.bfloat16
    assert got[name + "_scale"].item() == torch.tensor(1.0 / tern.scale, dtype=torch.float32).bfloat16().item()
    assert torch.equal(got["model.norm.weight"], raw["model.norm.weight"])
    assert got["model.embed_tokens.weight"].dtype == torch.bfloat16


def test_generation_config_and_tokenizer_copied(silu_ckpt, copy_ckpt, tmp_path):
    src = copy_ckpt(silu_ckpt)
    (src / "generation_config.json").write_text('{"bos_token_id": 0, "eos_token_id": 1}')
    (src / "special_tokens_map.json").write_text('{"eos_token": "<|end_of_text|>"}')
    out = tmp_path / "out"
    convert(src, out, format="safetensors")
    for name in ("generation_config.json", "special_tokens_map.json", "tokenizer.json", "tokenizer_config.json"):
        assert (out / name).read_bytes() == (src / name).read_bytes(), name


def test_bytes_identical_across_runs(silu_ckpt, tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    convert(silu_ckpt, a, format="safetensors", max_shard_size=300_000)
    convert(silu_ckpt, b, format="safetensors", max_shard_size=300_000)
    ha, hb = sha256_tree(a), sha256_tree(b)
    assert ha == hb and len(ha) > 4


def test_dry_run_plans_the_folder(silu_ckpt, tmp_path):
    out = tmp_path / "out"
    result = convert(silu_ckpt, out, format="safetensors", dry_run=True)
    assert not result.written and not out.exists()
    plan = result.plan.to_dict()
    assert plan["format"] == "safetensors" and plan["layout_metadata"]["files"][0] == "config.json"
    names = {t["name"] for t in plan["tensors"]}
    assert {"model.layers.0.self_attn.q_proj.weight", "model.layers.0.self_attn.attn_sub_norm.weight"} <= names


# --- sharding ------------------------------------------------------------------------
def test_sharding_index_and_read_back(f32_ckpts, tmp_path):
    src = f32_ckpts["llama"]
    whole, sharded = tmp_path / "whole", tmp_path / "sharded"
    convert(src, whole, format="safetensors")
    convert(src, sharded, format="safetensors", max_shard_size=400_000)
    shards = sorted(sharded.glob("model-*.safetensors"))
    n = len(shards)
    assert n > 2 and [p.name for p in shards] == [f"model-{i:05d}-of-{n:05d}.safetensors" for i in range(1, n + 1)]
    assert not (sharded / "model.safetensors").exists()
    index = json.loads((sharded / "model.safetensors.index.json").read_text())
    total = 0
    listed = {}
    for p in shards:
        _, hdr = header(p)
        md = hdr.pop("__metadata__")
        assert md["format"] == "pt"
        data = sum(v["data_offsets"][1] - v["data_offsets"][0] for v in hdr.values())
        total += data
        assert data <= 400_000 or len(hdr) <= 2  # only a single oversized linear may exceed it
        listed.update({k: p.name for k in hdr})
    assert index["weight_map"] == listed and index["metadata"]["total_size"] == total
    for k in listed:  # a linear and its scale share a shard
        if k.endswith("_scale"):
            assert listed[k] == listed[k[: -len("_scale")]]
    assert_same_model(ternaries(sharded), ternaries(whole), scale_rtol=0)


def test_cli_max_shard_size(silu_ckpt, tmp_path):
    out = tmp_path / "out"
    r = CliRunner().invoke(app, ["convert", str(silu_ckpt), str(out), "--format", "safetensors",
                                 "--max-shard-size", "300KB", "--quiet"])
    assert r.exit_code == 0, r.output
    assert (out / "model.safetensors.index.json").exists() and len(list(out.glob("model-*-of-*.safetensors"))) > 1


# --- group scales --------------------------------------------------------------------
@pytest.mark.parametrize("group,shape", [("row", (256, 1)), (64, (256, 4))])
def test_group_scales_written_and_read_back(f32_ckpts, tmp_path, group, shape):
    src = f32_ckpts["silu"]
    out = tmp_path / "out"
    result = convert(src, out, format="safetensors", group_size=group)
    assert any("per-tensor scales" in w and "transformers" in w for w in result.plan.warnings)
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["quantization_config"] == {**QCONFIG, "bitconv_group_size": group}
    with safe_open(str(out / "model.safetensors"), framework="pt") as f:
        assert tuple(f.get_slice("model.layers.0.self_attn.q_proj.weight_scale").get_shape()) == shape
        assert f.metadata()["bitconv.group_size"] == str(group)
    direct = {t.name: t for t in open_source(src).tensors}
    ck = open_source(out)
    for t in ck.tensors:
        if t.is_ternary:
            assert t.group == group
            got = t.load_ternary()
            ref = ternarize(direct[t.name].load(), group, t.name)
            assert np.array_equal(got.values, ref.values), t.name
            assert got.scales.shape == ref.scales.shape
            np.testing.assert_allclose(got.scales, ref.scales, rtol=1e-6)


@pytest.mark.parametrize("group", ["tensor", "row"])
def test_verify_reads_the_folder(relu2_ckpt, tmp_path, group):
    from bitconv.verify import verify

    out = tmp_path / "out"
    convert(relu2_ckpt, out, format="safetensors", group_size=group)
    report = verify(out, relu2_ckpt, tokens=128, ctx=64).to_dict()
    assert report["passed"], report["failures"]


def test_group_size_must_divide_k(silu_ckpt, tmp_path):
    out = tmp_path / "out"
    with pytest.raises(UsageError, match="q_proj.*not a multiple of --group-size 96"):
        convert(silu_ckpt, out, format="safetensors", group_size=96)
    assert list(tmp_path.iterdir()) == []


# --- round trips ---------------------------------------------------------------------
@pytest.mark.parametrize("family,layout", [("silu", "tq2_0"), ("relu2", "i2_s"), ("llama", "tq2_0")])
def test_packed_safetensors_as_source_to_gguf(f32_ckpts, tmp_path, family, layout):
    src = f32_ckpts[family]
    packed = tmp_path / "packed"
    convert(src, packed, format="safetensors")
    from_packed, direct = tmp_path / "a.gguf", tmp_path / "b.gguf"
    convert(packed, from_packed, layout=layout)
    convert(src, direct, layout=layout)
    # TQ2_0 stores each block scale as f16: s and 1/(1/s) may straddle an f16 rounding step
    assert_same_model(ternaries(from_packed), ternaries(direct), scale_rtol=1e-6 if layout == "i2_s" else 2**-10)


@pytest.mark.parametrize("family,layout", [("silu", "tq2_0"), ("llama", "tq2_0"), ("relu2", "i2_s")])
def test_gguf_to_safetensors(f32_ckpts, tmp_path, family, layout):
    src = f32_ckpts[family]
    gguf_path = tmp_path / "m.gguf"
    convert(src, gguf_path, layout=layout)
    out = tmp_path / "out"
    result = convert(gguf_path, out, format="safetensors")
    assert any("no tokenizer files" in w for w in result.plan.warnings)
    cfg = json.loads((out / "config.json").read_text())
    arch = "LlamaForCausalLM" if family == "llama" else "BitNetForCausalLM"
    assert cfg["architectures"] == [arch] and cfg["quantization_config"] == QCONFIG
    assert cfg["hidden_act"] == ("relu2" if family == "relu2" else "silu")
    # GGUF linears keep their ternary values and scales (q/k back in Hugging Face row order)
    g, s = ternaries(gguf_path), ternaries(out)
    if family == "relu2":  # the f16 embedding / output of the GGUF stay f16
        assert load_file(str(out / "model.safetensors"))["lm_head.weight"].dtype == torch.float16
    for name in g:
        vg, sg = g[name]
        vs, ss = s[name]
        np.testing.assert_array_equal(vg, vs, err_msg=name)
        if sg is not None:
            np.testing.assert_allclose(ss.reshape(-1), sg.reshape(-1), rtol=1e-6)
    # and the same ternary values as converting the float source straight to safetensors
    straight = tmp_path / "straight"
    convert(src, straight, format="safetensors")
    st = ternaries(straight)
    for name, (values, scales) in s.items():
        if scales is not None:
            np.testing.assert_array_equal(values, st[name][0], err_msg=name)


def test_hf_names_invert_the_family_map():
    arch = architecture_for({"architectures": ["BitNetForCausalLM"]})
    assert hf_name("blk.3.attn_sub_norm.weight", arch) == "model.layers.3.self_attn.attn_sub_norm.weight"
    assert hf_name("output.weight", arch) == "lm_head.weight"
    assert hf_name("token_embd.weight", arch) == "model.embed_tokens.weight"
    llama = architecture_for({"architectures": ["LlamaForCausalLM"]})
    with pytest.raises(Exception, match="attn_sub_norm"):
        hf_name("blk.0.attn_sub_norm.weight", llama)


# --- bad packed input ----------------------------------------------------------------
@pytest.fixture(scope="module")
def packed_src(f32_ckpts, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("packed") / "packed"
    convert(f32_ckpts["silu"], out, format="safetensors")
    return out


def _damage(packed: Path, dst: Path, edit) -> Path:
    return edited_copy(packed, dst, edit, tensors="torch")


TARGET = "model.layers.1.mlp.up_proj.weight"


def _code3(w):
    t = w[TARGET].clone()
    t[2, 5] = 0b11  # row 2, low bits: code 3
    w[TARGET] = t


def _scale(value):
    def edit(w):
        w[TARGET + "_scale"] = torch.full_like(w[TARGET + "_scale"], value)
    return edit


def _drop_scale(w):
    del w[TARGET + "_scale"]


@pytest.mark.parametrize("edit,expect", [
    (_code3, "equal 3"), (_drop_scale, "has no"), (_scale(0.0), "finite and positive"),
    (_scale(-2.0), "finite and positive"), (_scale(float("nan")), "finite and positive"),
    (_scale(float("inf")), "finite and positive"),
], ids=["code3", "missing", "zero", "negative", "nan", "inf"])
@pytest.mark.parametrize("fmt", ["safetensors", "gguf"])
def test_bad_packed_input(packed_src, tmp_path, edit, expect, fmt):
    src = _damage(packed_src, tmp_path / "bad", edit)
    outdir = tmp_path / "outdir"
    outdir.mkdir()
    out = outdir / ("out" if fmt == "safetensors" else "out.gguf")
    with pytest.raises(BadWeightsError, match=expect) as err:
        convert(src, out, format=fmt)
    assert "mlp.up_proj.weight" in str(err.value)
    assert list(outdir.iterdir()) == []  # no output, no temporary folder left


def test_release_writes_the_same_folder(silu_ckpt, tmp_path):
    """`release` feeds one prepared tensor stream to several writers at once."""
    from bitconv.release import release

    result = release(silu_ckpt, tmp_path / "rel", layouts=["tq2_0"], formats=["gguf", "safetensors"])
    assert result.ok
    folder = next(p for p in (tmp_path / "rel").iterdir() if p.name.endswith("-safetensors"))
    single = tmp_path / "single"
    convert(silu_ckpt, single, format="safetensors")
    assert sha256_tree(folder) == sha256_tree(single)
