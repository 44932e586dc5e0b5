"""MLX and compressed-tensors folders as sources (issue 20, item 4): codes and scales kept
through MLX <-> GGUF <-> safetensors <-> compressed-tensors; a stock lossy folder is read as
what it computes and `inspect` says it is not exactly ternary."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
from hostile_helpers import read_tensors
from safetensors.numpy import save_file

from bitconv.convert import convert
from bitconv.errors import InputError
from bitconv.inspect_file import inspect_path
from bitconv.readers import open_source


@pytest.fixture(scope="module")
def bonsai(ckpt_factory):
    """f16: its scales are f16 values, which GGUF Q2_0's fp16 block scales hold exactly too."""
    return ckpt_factory("qwen3", seed=13, weights="exact", dtype="f16", tie=False, ternary_group=64,
                        ternary_embeddings=128)


def _gguf_tensors(path):
    from bitconv.readers.gguf_file import GGUFFile

    f = GGUFFile(path)  # bitconv's reader: the gguf package does not know Q2_0's type id
    return {name: (info.type_name, f.raw(name).tobytes()) for name, info in f.tensors.items()}


@pytest.mark.parametrize("fmt", ["mlx", "compressed-tensors"])
def test_engine_folder_reads_back_the_source_codes_and_scales(bonsai, tmp_path, fmt):
    mid = tmp_path / fmt
    convert(bonsai, mid, format=fmt)
    ckpt, src = open_source(mid), open_source(bonsai)
    from bitconv.source_kind import decide_source_kinds

    decide_source_kinds(src)
    for t in ckpt.tensors:
        s = src.get(t.name)
        if t.is_ternary:
            a, b = t.load_ternary(), s.load_ternary()
            assert np.array_equal(a.values, b.values) and np.array_equal(a.dequantize(), b.dequantize()), t.name
            assert str(a.group) == str(b.group), (t.name, a.group, b.group)
        else:
            assert np.array_equal(t.load(), s.load()), t.name
    assert sum(t.is_ternary for t in ckpt.tensors) == 14 + (2 if fmt == "mlx" else 1)  # + embedding / head
    note = " ".join(inspect_path(mid)["notes"])
    assert "exactly ternary" in note and "NOT" not in note


@pytest.mark.parametrize("fmt", ["mlx", "compressed-tensors"])
def test_repack_through_an_engine_folder_gives_the_same_files(bonsai, tmp_path, fmt):
    """source -> fmt -> X equals source -> X for X in GGUF q2_0, safetensors and the other format."""
    mid = tmp_path / fmt
    convert(bonsai, mid, format=fmt)
    convert(bonsai, tmp_path / "direct.gguf", layout="q2_0")
    convert(mid, tmp_path / "via.gguf", layout="q2_0")
    direct, via = _gguf_tensors(tmp_path / "direct.gguf"), _gguf_tensors(tmp_path / "via.gguf")
    assert direct.keys() == via.keys() and all(direct[k] == via[k] for k in direct)
    for other in ("safetensors", "mlx", "compressed-tensors"):
        if other == fmt:
            continue
        convert(bonsai, tmp_path / f"d-{other}", format=other)
        convert(mid, tmp_path / f"v-{other}", format=other)
        d, v = read_tensors(tmp_path / f"d-{other}"), read_tensors(tmp_path / f"v-{other}")
        assert d.keys() == v.keys() and all(np.array_equal(d[k], v[k]) for k in d), other
    # and the GGUF back into the format holds the same codes and scales again (a GGUF source has no
    # config dtype, so scales may be stored wider, and Q2_0 reads back in its 64-blocks: same values)
    convert(tmp_path / "direct.gguf", tmp_path / "back", format=fmt)
    a, b = open_source(mid), open_source(tmp_path / "back")
    assert [t.name for t in a.tensors] == [t.name for t in b.tensors]
    for x, y in zip(a.tensors, b.tensors):
        assert x.is_ternary == y.is_ternary, x.name
        if x.is_ternary:
            tx, ty = x.load_ternary(), y.load_ternary()
            assert np.array_equal(tx.values, ty.values) and np.array_equal(tx.dequantize(), ty.dequantize()), x.name
        else:
            assert np.array_equal(x.load(), y.load()), x.name


def _copy_of_our_mlx(bonsai, tmp_path, name):
    """mlx.core (skip without it), and a copy of bitconv's exact MLX folder of BONSAI with its
    tensors, for a test to re-quantize the way a stock `mlx_lm.convert` would."""
    mx = pytest.importorskip("mlx.core", reason="mlx[cpu] is a [test] extra (its own quantizer makes the stock file)")
    ours = tmp_path / "ours"
    convert(bonsai, ours, format="mlx")
    stock = tmp_path / name
    shutil.copytree(ours, stock)
    return mx, stock, read_tensors(stock)


def _requantize(mx, t, name, g, bits, widen=False):
    """mlx's own affine quantizer (groups of G, BITS bits) on the values s·t the exact 2-bit
    tensor NAME holds (in float32 with WIDEN, else in the scales' dtype), stored back into T;
    returns mlx's (codes, scales, biases)."""
    w = mx.dequantize(mx.array(t[name + ".weight"]), mx.array(t[name + ".scales"]), mx.array(t[name + ".biases"]),
                      group_size=g, bits=2)
    q, s, b = mx.quantize(w.astype(mx.float32) if widen else w, group_size=g, bits=bits)
    t[name + ".weight"], t[name + ".scales"], t[name + ".biases"] = np.array(q), np.array(s), np.array(b)
    return q, s, b


def test_stock_lossy_mlx_folder_is_read_as_what_it_computes(bonsai, tmp_path):
    mx, stock, t = _copy_of_our_mlx(bonsai, tmp_path, "stock")
    g = json.loads((stock / "config.json").read_text())["quantization"]["group_size"]
    name = "model.layers.0.mlp.up_proj"
    q, s, b = _requantize(mx, t, name, g, bits=2)  # what mlx_lm.convert --q-bits 2 does to s·t
    save_file(t, str(stock / "model.safetensors"), metadata={"format": "mlx"})
    ckpt = open_source(stock)
    lossy = ckpt.get("blk.0.ffn_up.weight")
    assert not lossy.is_ternary and lossy.computed_from == "mlx"
    # what MLX computes, in float32 (bitconv widens the f16 scales; mlx in f16 rounds each value once more)
    want = mx.dequantize(q, s.astype(mx.float32), b.astype(mx.float32), group_size=g, bits=2)
    assert np.array_equal(lossy.load(), np.array(want))
    info = inspect_path(stock)
    assert any("NOT exactly ternary" in n and name in n for n in info["notes"])
    with pytest.raises(InputError, match="not ternary"):  # a plain Qwen3 with a float linear: --ternarize or nothing
        convert(stock, tmp_path / "x.gguf")
    r = subprocess.run([sys.executable, "-m", "bitconv.cli", "inspect", str(stock)], capture_output=True, text=True)
    assert r.returncode == 0 and "NOT exactly ternary" in r.stdout + r.stderr


def test_stock_lossy_int2_folder_is_read_as_what_it_computes(bonsai, tmp_path):
    """compressed-tensors' own int2 rule on s·t (scale = max|w| / 1.5) stores int2 -2: not ternary."""
    ct = pytest.importorskip("compressed_tensors.compressors.pack_quantized.helpers",
                             reason="compressed-tensors is a [test] extra")
    import torch

    ours = tmp_path / "ours"
    convert(bonsai, ours, format="compressed-tensors")
    stock = tmp_path / "stock"
    shutil.copytree(ours, stock)
    t = read_tensors(stock)
    name = "model.layers.1.self_attn.o_proj"
    src = open_source(bonsai).get("blk.1.attn_output.weight").load()
    scale = np.abs(src.reshape(src.shape[0], -1, 64)).max(-1) / 1.5  # its group-64 symmetric scale
    q = np.clip(np.rint(src.reshape(src.shape[0], -1, 64) / scale[:, :, None]), -2, 1).astype(np.int8)
    t[name + ".weight_packed"] = ct.pack_to_int32(torch.from_numpy(q.reshape(src.shape)), 2).numpy()
    t[name + ".weight_scale"] = scale.astype(np.float32)
    save_file(t, str(stock / "model.safetensors"), metadata={"format": "pt"})
    lossy = open_source(stock).get("blk.1.attn_output.weight")
    assert not lossy.is_ternary and lossy.computed_from == "compressed-tensors"
    assert np.array_equal(lossy.load(), (q * scale[:, :, None]).reshape(src.shape).astype(np.float32))
    assert not np.array_equal(lossy.load(), src)
    assert any("NOT exactly ternary" in n for n in inspect_path(stock)["notes"])


@pytest.mark.parametrize("fmt", ["mlx", "compressed-tensors"])
def test_engine_folders_are_verify_artifacts(bonsai, tmp_path, fmt):
    """`bitconv verify` reads both folders through the readers (no verify code of their own):
    every tensor's codes and scales equal the source's, and a flipped code is caught."""
    from bitconv.verify import verify

    out = tmp_path / fmt
    convert(bonsai, out, format=fmt)
    rep = verify(out, bonsai, tokens=256, ctx=128).to_dict()
    assert rep["passed"] and rep["artifact_layouts"] == [{"mlx": "mlx_affine2", "compressed-tensors": "ct_int2"}[fmt]]
    off = [t for t in rep["tensors"] if t["mismatched"] or t["max_error"]]
    assert not off, off
    t = read_tensors(out)
    key = "model.layers.0.mlp.down_proj." + ("weight" if fmt == "mlx" else "weight_packed")
    words = t[key].view(np.uint32).copy()
    words[0, 0] ^= np.uint32(0b11)  # first code: 0 <-> 3 (mlx) / 1 <-> 2 (int2): another value
    t[key] = words.view(t[key].dtype)
    save_file(t, str(out / "model.safetensors"), metadata={"format": "pt"})
    bad = verify(out, bonsai, tokens=256, ctx=128, max_weight_error=0.0).to_dict()
    changed = [x for x in bad["tensors"] if x["name"] == "blk.0.ffn_down.weight"]
    assert not bad["passed"] or (changed and (changed[0]["mismatched"] or changed[0]["problem"])), changed


@pytest.mark.parametrize("fmt,drop", [("mlx", ".biases"), ("mlx", ".scales"), ("compressed-tensors", ".weight_shape"),
                                      ("compressed-tensors", ".weight_scale")])
def test_damaged_engine_folder_is_a_clear_error(bonsai, tmp_path, fmt, drop):
    out = tmp_path / fmt
    convert(bonsai, out, format=fmt)
    t = read_tensors(out)
    del t["model.layers.0.self_attn.q_proj" + drop]
    save_file(t, str(out / "model.safetensors"), metadata={"format": "pt"})
    r = subprocess.run([sys.executable, "-m", "bitconv.cli", "convert", str(out), str(tmp_path / "x.gguf")],
                       capture_output=True, text=True)
    assert r.returncode == 2 and "Traceback" not in r.stderr and "q_proj" in r.stdout + r.stderr


def test_compressed_tensors_weight_shape_with_no_rows_is_a_corrupt_file(bonsai, tmp_path):
    """weight_shape [0, K] beside a non-empty weight_scale: a typed one-line refusal (it was an
    untyped numpy reshape error)."""
    from bitconv.errors import CorruptFileError

    out = tmp_path / "ct"
    convert(bonsai, out, format="compressed-tensors")
    t = read_tensors(out)
    base = "model.layers.0.self_attn.q_proj"
    t[base + ".weight_packed"] = t[base + ".weight_packed"][:0]
    t[base + ".weight_shape"] = t[base + ".weight_shape"] * np.array([0, 1], t[base + ".weight_shape"].dtype)
    t[base + ".weight_scale"] = t[base + ".weight_scale"][:1]  # one row of K/g scales: its size divides K
    save_file(t, str(out / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(CorruptFileError, match="q_proj.*do not fit weight_shape \\[0, "):
        open_source(out)


def test_stock_4bit_mlx_folder_is_read_as_what_it_computes(bonsai, tmp_path):
    """`mlx_lm.convert -q` (4-bit affine, its default) on a ternary model: every quantized
    tensor is read as the floats mlx computes; inspect says NOT exactly ternary."""
    mx, stock, t = _copy_of_our_mlx(bonsai, tmp_path, "stock4")
    g = 64
    for name in [k[: -len(".scales")] for k in t if k.endswith(".scales")]:
        _requantize(mx, t, name, g, bits=4, widen=True)
    save_file(t, str(stock / "model.safetensors"), metadata={"format": "mlx"})
    cfg = json.loads((stock / "config.json").read_text())
    cfg["quantization"] = {"group_size": g, "bits": 4, "mode": "affine"}
    (stock / "config.json").write_text(json.dumps(cfg))
    lossy = open_source(stock).get("blk.1.ffn_down.weight")
    assert not lossy.is_ternary and lossy.computed_from == "mlx"
    name = "model.layers.1.mlp.down_proj"
    want = mx.dequantize(mx.array(t[name + ".weight"]), mx.array(t[name + ".scales"]),
                         mx.array(t[name + ".biases"]), group_size=g, bits=4)
    assert np.array_equal(lossy.load(), np.array(want))
    assert any("NOT exactly ternary" in n for n in inspect_path(stock)["notes"])


def test_w2a8_folder_read_back_keeps_its_activation_scheme(llama_ckpt, tmp_path):
    """A BitNet model's W2A8 compressed-tensors folder, read as a source: its model quantizes
    activations (verify runs it that way) and written again it still declares W2A8; an MLX
    source's own quantization block never reaches another format's config."""
    from bitconv.source_kind import source_act_quant

    ct = tmp_path / "ct"
    convert(llama_ckpt, ct, format="compressed-tensors")
    ckpt = open_source(ct)
    assert source_act_quant(ckpt)
    again = convert(ct, tmp_path / "ct2", format="compressed-tensors")
    assert again.plan.layout_metadata["scheme"] == "W2A8"
    mlx = tmp_path / "mlx"
    convert(ct, mlx, format="mlx")
    assert not source_act_quant(open_source(mlx))  # mlx-lm runs activations in float (the plan said so)
    convert(mlx, tmp_path / "st", format="safetensors")
    assert "quantization" not in json.loads((tmp_path / "st" / "config.json").read_text())
