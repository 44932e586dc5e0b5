"""convert(): readers, ternarization, TQ packing, GGUF metadata, safe output (issue 2).

Each test checks a file bitconv wrote against an independent reading of it: the `gguf`
package's GGUFReader and `gguf.quants` (the reference TQ1_0/TQ2_0 codec), and bitconv's
own GGUF reader, compared with the source checkpoint read straight from safetensors.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import gguf
import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from typer.testing import CliRunner

from bitconv import __version__
from bitconv.cli import app
from bitconv.convert import convert
from bitconv.errors import LayoutError, UsageError
from bitconv.pack import get_layout
from bitconv.pack.hf2bit import HF2Bit
from bitconv.quant import Ternary, ternarize
from bitconv.readers import open_source
from bitconv.readers.gguf_file import GGUFFile

runner = CliRunner()

QTYPE = {"tq1_0": gguf.GGMLQuantizationType.TQ1_0, "tq2_0": gguf.GGMLQuantizationType.TQ2_0}
LINEARS = {
    "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
}
BITNET_BLOCK = ("attn_norm", "attn_q", "attn_k", "attn_v", "attn_output", "attn_sub_norm",
                "ffn_norm", "ffn_gate", "ffn_up", "ffn_down", "ffn_sub_norm")


def linear_names(layers: int = 2):
    """(HF name, GGUF name) of every projection."""
    for i in range(layers):
        for hf, kind in LINEARS.items():
            yield f"model.layers.{i}.{hf}.weight", f"blk.{i}.{kind}.weight"


def sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def reader_tensors(path: Path) -> dict[str, gguf.ReaderTensor]:
    return {t.name: t for t in gguf.GGUFReader(str(path)).tensors}


def field(reader: gguf.GGUFReader, key: str):
    f = reader.get_field(key)
    assert f is not None, f"missing GGUF key {key}"
    return f.contents()


def tq_block_scales(raw: np.ndarray, shape: tuple[int, int], layout: str) -> np.ndarray:
    """The fp16 `d` of every 256-block, [M, K/256], straight from the bytes."""
    m, k = shape
    per = {"tq1_0": 54, "tq2_0": 66}[layout]
    blocks = np.asarray(raw).reshape(m * (k // 256), per)
    return np.ascontiguousarray(blocks[:, -2:]).view(np.float16).astype(np.float32).reshape(m, k // 256)


def permute_rows(a: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp convert_hf_to_gguf's q/k permutation, written independently of bitconv."""
    if a.ndim == 0 or a.shape[0] == 1:
        return a
    return a.reshape(n_head, 2, a.shape[0] // n_head // 2, *a.shape[1:]).swapaxes(1, 2).reshape(a.shape)


# -- 4. TQ packing ------------------------------------------------------------------------
@pytest.mark.parametrize("layout", ["tq2_0", "tq1_0"])
@pytest.mark.parametrize("group", ["tensor", "row", 256])
def test_tq_bytes_identical_to_gguf_quants(silu_ckpt, hf_float_weights, tmp_path, layout, group):
    out = tmp_path / f"m-{layout}.gguf"
    res = convert(silu_ckpt, out, layout=layout, group_size=group)
    src = hf_float_weights(silu_ckpt)
    f = GGUFFile(out)
    rt = reader_tensors(out)
    for hf, name in linear_names():
        tern = ternarize(src[hf], group, name)
        info = f.tensors[name]
        assert info.ggml_type == QTYPE[layout] and info.shape == src[hf].shape
        expect = gguf.quants.quantize(tern.dequantize(), QTYPE[layout]).reshape(-1)
        got = np.asarray(f.raw(name))
        assert got.size == expect.size, name
        assert np.array_equal(got, expect), f"{name}: {np.count_nonzero(got != expect)} bytes differ from gguf.quants"
        # and what the gguf package dequantizes is exactly t · fp16(s)
        deq = gguf.quants.dequantize(rt[name].data, rt[name].tensor_type)
        want = tern.values * np.broadcast_to(tern.expanded_scales(), tern.shape).astype(np.float16).astype(np.float32)
        np.testing.assert_array_equal(deq, want)
    assert len(res.stats) == 14


@pytest.mark.parametrize("layout", ["tq2_0", "tq1_0"])
@pytest.mark.parametrize("group", ["tensor", "row", 256, 512])
def test_tq_round_trip(layout, group):
    rng = np.random.default_rng(7)
    m, k = 24, 1024
    values = rng.integers(-1, 2, size=(m, k)).astype(np.int8)
    values[3] = 0  # an all-zero row: every block stores d = 0
    values[5, 256:512] = 0  # one all-zero block inside a non-zero row
    if group == "tensor":
        scales = np.float32(0.0371)
    elif group == "row":
        scales = rng.uniform(0.01, 0.1, size=(m, 1)).astype(np.float32)
    else:
        scales = rng.uniform(0.01, 0.1, size=(m, k // group)).astype(np.float32)
    tern = Ternary(values, scales, group)
    lay = get_layout(layout)
    data = lay.pack(tern, "blk.0.test.weight")
    assert data.dtype == np.uint8 and data.size == lay.nbytes((m, k)) == m * k // 256 * {"tq1_0": 54, "tq2_0": 66}[layout]
    back = lay.unpack(data, (m, k), "blk.0.test.weight", group=group)
    np.testing.assert_array_equal(back.values, values)
    assert back.group == group
    want = np.asarray(scales).astype(np.float16).astype(np.float32)
    # an all-zero group stores d = 0 (as gguf.quants does): its scale is gone, its values are not
    if group == "row":
        want = np.where(np.any(values != 0, axis=1, keepdims=True), want, 0)
    elif group != "tensor":
        want = np.where(np.any(values.reshape(m, k // group, group) != 0, axis=2), want, 0)
    np.testing.assert_array_equal(back.scales, want)
    np.testing.assert_array_equal(back.dequantize(), Ternary(values, want, group).dequantize())
    # pack(unpack(x)) is the identity on bytes
    assert np.array_equal(lay.pack(back, "x"), data)


def test_tq_all_codes_and_reference_decoder():
    """Every code in every position: our bytes decode with gguf.quants to the same values."""
    rng = np.random.default_rng(0)
    values = rng.integers(-1, 2, size=(9, 512)).astype(np.int8)
    tern = Ternary(values, np.float32(0.5), "tensor")
    for layout, qt in QTYPE.items():
        data = get_layout(layout).pack(tern, "x").reshape(9, -1)
        np.testing.assert_array_equal(gguf.quants.dequantize(data, qt), values * np.float32(0.5))


def test_hf2bit_round_trip():
    rng = np.random.default_rng(1)
    for m in (4, 7, 130):  # M % 4 != 0 leaves zero padding rows, as transformers does
        values = rng.integers(-1, 2, size=(m, 64)).astype(np.int8)
        packed = HF2Bit().pack_codes(values)
        assert packed.shape == ((m + 3) // 4, 64) and packed.dtype == np.uint8
        np.testing.assert_array_equal(HF2Bit().unpack_codes(packed, m).astype(np.int8) - 1, values)


@pytest.mark.parametrize("layout", ["tq2_0", "tq1_0"])
def test_k_not_multiple_of_256_names_the_tensor(ckpt_factory, tmp_path, layout):
    tern = Ternary(np.zeros((8, 300), np.int8), np.float32(1.0))
    with pytest.raises(LayoutError, match=r"blk\.3\.attn_q\.weight.*K=300"):
        get_layout(layout).pack(tern, "blk.3.attn_q.weight")
    odd = ckpt_factory("silu", intermediate=384, seed=4)  # ffn_down has K = 384
    out = tmp_path / "odd.gguf"
    with pytest.raises(LayoutError) as ei:
        convert(odd, out, layout=layout)
    msg = str(ei.value)
    assert "blk.0.ffn_down.weight" in msg and "384" in msg and "256" in msg
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("group", ["100", "384"])
def test_tq_group_not_multiple_of_256_refused(silu_ckpt, tmp_path, group):
    with pytest.raises(LayoutError, match="multiple of 256"):
        convert(silu_ckpt, tmp_path / "g.gguf", group_size=group)
    assert list(tmp_path.iterdir()) == []


# -- 3. quantization, group sizes and statistics ---------------------------------------
@pytest.mark.parametrize("group", ["tensor", "row", 256])
def test_group_sizes_statistics_and_read_back(silu_ckpt, hf_float_weights, tmp_path, group):
    out = tmp_path / "g.gguf"
    res = convert(silu_ckpt, out, layout="tq2_0", group_size=group)
    src = hf_float_weights(silu_ckpt)
    stats = {s.name: s for s in res.stats}
    assert set(stats) == {n for _, n in linear_names()}
    ck = open_source(out)
    assert GGUFFile(out).get("bitconv.group_size") == str(group)
    for hf, name in linear_names():
        w = src[hf]
        tern = ternarize(w, group, name)
        s = stats[name]
        assert s.shape == w.shape
        assert s.scale_min == pytest.approx(float(tern.scales.min()), rel=1e-6)
        assert s.scale_max == pytest.approx(float(tern.scales.max()), rel=1e-6)
        assert s.scale_mean == pytest.approx(float(tern.scales.mean()), rel=1e-5)
        if group == "tensor":
            assert s.scale_min == s.scale_max == pytest.approx(float(np.abs(w).mean()), rel=1e-5)
        else:
            assert s.scale_min < s.scale_max
        assert s.zero_fraction == pytest.approx(float(np.mean(tern.values == 0)))
        rel = np.linalg.norm(w - tern.dequantize()) / np.linalg.norm(w)
        assert s.rel_error == pytest.approx(float(rel), rel=1e-4)
        assert 0.2 < s.rel_error < 0.8 and 0.2 < s.zero_fraction < 0.5  # Gaussian weights
        # read back: same values, same group, scales as stored (fp16)
        back = ck.get(name).load_ternary()
        np.testing.assert_array_equal(back.values, tern.values)
        assert back.group == group
        np.testing.assert_allclose(back.scales, tern.scales, rtol=1e-3)
    summ = res.summary()
    assert summ["linears"] == 14 and summ["max_rel_error"] >= summ["mean_rel_error"] > 0


def test_group_scales_in_tq_blocks(silu_ckpt, hf_float_weights, tmp_path):
    """Row scales: every block of row m holds fp16(s_m); 256-groups: one scale per block."""
    src = hf_float_weights(silu_ckpt)
    hf, name = "model.layers.0.mlp.down_proj.weight", "blk.0.ffn_down.weight"  # K = 512: 2 blocks per row
    w = src[hf]
    for group in ("row", 256):
        out = tmp_path / f"{group}.gguf"
        convert(silu_ckpt, out, group_size=group)
        d = tq_block_scales(GGUFFile(out).raw(name), w.shape, "tq2_0")
        tern = ternarize(w, group)
        want = np.broadcast_to(tern.scales, d.shape) if group == "row" else tern.scales
        np.testing.assert_array_equal(d, want.astype(np.float16).astype(np.float32))
        assert len(np.unique(d)) > 100


def test_json_output_has_quantization_stats(silu_ckpt, tmp_path):
    out = tmp_path / "j.gguf"
    r = runner.invoke(app, ["convert", str(silu_ckpt), str(out), "--json", "--group-size", "row"])
    assert r.exit_code == 0, r.output
    data = json.loads(r.stdout)
    assert data["ok"] is True and data["written"] is True
    tensors = {t["name"]: t for t in data["tensors"]}
    assert set(tensors) == {n for _, n in linear_names()}
    for t in tensors.values():
        assert 0 < t["scale_min"] < t["scale_max"] and t["scale"] is None  # row scales
        assert 0 < t["zero_fraction"] < 1 and 0 < t["rel_error"] < 1
    s = data["summary"]
    assert s["linears"] == 14
    assert s["mean_rel_error"] == pytest.approx(np.mean([t["rel_error"] for t in tensors.values()]))
    assert data["output_bytes"] == out.stat().st_size


# -- 2. readers ------------------------------------------------------------------------
def tensor_bytes(path: Path) -> dict[str, bytes]:
    f = GGUFFile(path)
    return {n: np.asarray(f.raw(n)).tobytes() for n in f.tensors}


def test_sharded_input_same_tensors_as_single_file(silu_ckpt, sharded_ckpt, tmp_path):
    assert (sharded_ckpt / "model.safetensors.index.json").exists()
    assert len(list(sharded_ckpt.glob("model-*.safetensors"))) == 3
    a, b = tmp_path / "single.gguf", tmp_path / "sharded.gguf"
    convert(silu_ckpt, a)
    convert(sharded_ckpt, b)
    ta, tb = tensor_bytes(a), tensor_bytes(b)
    assert list(ta) == list(tb)  # same canonical order whatever the shard order
    assert ta == tb
    files = {p.name for p in open_source(sharded_ckpt).files}
    assert "model.safetensors.index.json" in files and len([f for f in files if f.startswith("model-")]) == 3


@pytest.mark.parametrize("dtype", ["bf16", "f16", "f32"])
def test_float_dtypes(ckpt_factory, hf_float_weights, tmp_path, dtype):
    folder = ckpt_factory("silu", dtype=dtype, seed=0)
    st = {"bf16": "BF16", "f16": "F16", "f32": "F32"}[dtype]
    header_len = int.from_bytes((folder / "model.safetensors").read_bytes()[:8], "little")
    header = json.loads((folder / "model.safetensors").read_bytes()[8:8 + header_len])
    assert header["model.layers.0.self_attn.q_proj.weight"]["dtype"] == st
    out = tmp_path / "d.gguf"
    res = convert(folder, out, embedding_type="f32")
    assert {t.source.dtype for t in res.plan.tensors} == {dtype}
    src = hf_float_weights(folder)
    ck = open_source(out)
    for hf, name in linear_names():
        tern = ternarize(src[hf])
        back = ck.get(name).load_ternary()
        np.testing.assert_array_equal(back.values, tern.values)
        assert float(back.scales) == pytest.approx(float(tern.scales), rel=1e-3)
    # float tensors are carried exactly (f32 embedding asked for, norms always F32)
    np.testing.assert_array_equal(ck.get("token_embd.weight").load(), src["model.embed_tokens.weight"])
    np.testing.assert_array_equal(ck.get("blk.1.ffn_sub_norm.weight").load(), src["model.layers.1.mlp.ffn_layernorm.weight"])


def _packed_folder(base: Path, dst: Path, linear_class: str, row_scales: bool) -> tuple[Path, dict]:
    """A Hugging Face bitnet-packed copy of `base`: uint8 codes + weight_scale per linear.

    Returns the folder and, per GGUF name, (ternary values, the scale s a forward pass uses).
    """
    import shutil

    shutil.copytree(base, dst)
    from safetensors.torch import load_file

    weights = load_file(str(dst / "model.safetensors"))
    expected = {}
    for hf, name in linear_names():
        w = weights.pop(hf).to(torch.float32).numpy()
        tern = ternarize(w, "row" if row_scales else "tensor")
        s = torch.from_numpy(np.asarray(tern.scales, np.float32)).reshape(-1, 1) if row_scales else \
            torch.tensor([float(tern.scales)])
        stored = (1.0 / s if linear_class == "bitlinear" else s).to(torch.bfloat16)  # bf16, as released checkpoints
        s_used = (1.0 / stored.to(torch.float32)) if linear_class == "bitlinear" else stored.to(torch.float32)
        weights[hf] = torch.from_numpy(HF2Bit().pack_codes(tern.values))
        weights[hf.replace(".weight", ".weight_scale")] = stored
        expected[name] = (tern.values, s_used.numpy().reshape(-1 if row_scales else ()).astype(np.float32))
    (dst / "model.safetensors").unlink()
    save_file(weights, str(dst / "model.safetensors"), metadata={"format": "pt"})
    cfg = json.loads((dst / "config.json").read_text())
    cfg["quantization_config"] = {"quant_method": "bitnet", "linear_class": linear_class,
                                  "quantization_mode": "offline"}
    (dst / "config.json").write_text(json.dumps(cfg))
    return dst, expected


@pytest.mark.parametrize("linear_class,row_scales", [("bitlinear", False), ("autobitlinear", False),
                                                      ("bitlinear", True)])
@pytest.mark.parametrize("layout", ["tq2_0", "tq1_0"])
def test_packed_hf_input_is_unpacked_not_requantized(silu_ckpt, tmp_path, linear_class, row_scales, layout):
    folder, expected = _packed_folder(silu_ckpt, tmp_path / "packed", linear_class, row_scales)
    ck = open_source(folder)
    assert ck.spec.packed and ck.get("blk.0.attn_q.weight").dtype == "hf2bit"
    out = tmp_path / "p.gguf"
    res = convert(folder, out, layout=layout)
    assert all(s.rel_error is None for s in res.stats) and len(res.stats) == 14
    f = GGUFFile(out)
    rt = reader_tensors(out)
    for name, (values, s) in expected.items():
        shape = values.shape
        d = tq_block_scales(f.raw(name), shape, layout)
        row_s = np.broadcast_to(s.reshape(-1, 1) if row_scales else s, (shape[0], 1))
        want_d = np.where(np.any(values.reshape(shape[0], -1, 256) != 0, axis=2), row_s, 0)
        np.testing.assert_array_equal(d, want_d.astype(np.float16).astype(np.float32), err_msg=name)
        deq = gguf.quants.dequantize(rt[name].data, rt[name].tensor_type)
        np.testing.assert_array_equal(np.sign(deq), values, err_msg=name)
        # re-running absmean on s·t would have scaled by the share of non-zeros instead
        if not row_scales:
            requant = float(s) * np.mean(values != 0)
            assert abs(float(d.max()) - requant) > 0.1 * requant
    # and the result is what a forward pass of the packed checkpoint uses: s · t
    back = open_source(out).get("blk.1.ffn_down.weight").load_ternary()
    v, s = expected["blk.1.ffn_down.weight"]
    np.testing.assert_allclose(back.dequantize(), v * (s.reshape(-1, 1) if row_scales else s), rtol=1e-3)


# -- 5. GGUF metadata and tensor names -----------------------------------------------
def test_gguf_metadata_with_gguf_reader(silu_ckpt, tmp_path):
    out = tmp_path / "meta.gguf"
    convert(silu_ckpt, out, layout="tq1_0", name="tiny-silu")
    cfg = json.loads((silu_ckpt / "config.json").read_text())
    r = gguf.GGUFReader(str(out))
    assert field(r, "general.architecture") == "bitnet"
    assert field(r, "general.name") == "tiny-silu"
    assert field(r, "general.file_type") == 36  # MOSTLY_TQ1_0
    assert field(r, "general.quantization_version") == 2
    a = "bitnet."
    want = {
        "context_length": cfg["max_position_embeddings"], "embedding_length": cfg["hidden_size"],
        "feed_forward_length": cfg["intermediate_size"], "block_count": cfg["num_hidden_layers"],
        "attention.head_count": cfg["num_attention_heads"], "attention.head_count_kv": cfg["num_key_value_heads"],
        "rope.dimension_count": cfg["hidden_size"] // cfg["num_attention_heads"], "vocab_size": cfg["vocab_size"],
    }
    for key, value in want.items():
        assert field(r, a + key) == value, key
    assert field(r, a + "rope.freq_base") == pytest.approx(cfg["rope_theta"])
    assert field(r, a + "attention.layer_norm_rms_epsilon") == pytest.approx(cfg["rms_norm_eps"])
    assert field(r, a + "hidden_activation") == "silu"
    # provenance
    assert field(r, "bitconv.version") == __version__
    assert field(r, "bitconv.family") == "BitnetForCausalLM"
    assert field(r, "bitconv.layout") == "tq1_0"
    assert field(r, "bitconv.hidden_act") == "silu"
    assert field(r, "bitconv.source.kind") == "folder"
    assert field(r, "bitconv.source.location") == silu_ckpt.name  # the folder name, never a private path
    opts = json.loads(field(r, "bitconv.options"))
    assert opts["layout"] == "tq1_0" and opts["group_size"] == "tensor" and opts["embedding_type"] == "auto"
    # tokenizer, as the source tokenizer.json has it
    tj = json.loads((silu_ckpt / "tokenizer.json").read_text())
    tokens = field(r, "tokenizer.ggml.tokens")
    assert field(r, "tokenizer.ggml.model") == "gpt2"
    assert field(r, "tokenizer.ggml.pre") in ("gpt-2", "default")
    assert len(tokens) == cfg["vocab_size"] == len(field(r, "tokenizer.ggml.token_type"))
    for text, i in tj["model"]["vocab"].items():
        assert tokens[i] == text
    assert tokens[0] == "<|begin_of_text|>" and tokens[1] == "<|end_of_text|>"
    assert field(r, "tokenizer.ggml.merges")[:5] == [m if isinstance(m, str) else " ".join(m)
                                                     for m in tj["model"]["merges"][:5]]
    assert field(r, "tokenizer.ggml.bos_token_id") == 0 and field(r, "tokenizer.ggml.eos_token_id") == 1
    # tensor names per FORMATS.md §8: the `bitnet` graph, no output tensor
    names = [t.name for t in r.tensors]
    want_names = {"token_embd.weight", "output_norm.weight"} | {
        f"blk.{i}.{k}.weight" for i in range(2) for k in BITNET_BLOCK}
    assert set(names) == want_names and len(names) == len(want_names)
    types = {t.name: t.tensor_type for t in r.tensors}
    assert types["token_embd.weight"] == gguf.GGMLQuantizationType.F16
    for n, t in types.items():
        if n.endswith("norm.weight"):
            assert t == gguf.GGMLQuantizationType.F32, n
        elif n.startswith("blk."):
            assert t == gguf.GGMLQuantizationType.TQ1_0, n


def test_gguf_metadata_with_bitconv_reader(silu_ckpt, tmp_path):
    out = tmp_path / "meta.gguf"
    convert(silu_ckpt, out, layout="tq2_0")
    f = GGUFFile(out)
    assert f.get("general.architecture") == "bitnet" and f.get("general.file_type") == 37
    meta = f.bitconv_metadata()
    assert meta["version"] == __version__ and meta["layout"] == "tq2_0" and meta["tie_embeddings"] is True
    assert meta["options"]["layout"] == "tq2_0"
    # bitconv's reader rebuilds the same hyperparameters from the file
    src_hp = open_source(silu_ckpt).spec.hparams.to_dict()
    back_hp = open_source(out).spec.hparams.to_dict()
    for k in src_hp:
        if isinstance(src_hp[k], float):
            assert back_hp[k] == pytest.approx(src_hp[k]), k
        else:
            assert back_hp[k] == src_hp[k], k
    assert f.tensors["blk.0.ffn_down.weight"].shape == (256, 512)
    assert f.tensors["blk.0.ffn_down.weight"].type_name == "TQ2_0"
    assert "output.weight" not in f.tensors


# -- 6 (policy). engine mismatches ---------------------------------------------------
@pytest.mark.parametrize("layout", ["tq2_0", "tq1_0"])
def test_relu2_to_tq_refused_with_reason_and_alternative(relu2_ckpt, tmp_path, layout):
    out = tmp_path / "r.gguf"
    with pytest.raises(LayoutError) as ei:
        convert(relu2_ckpt, out, layout=layout)
    msg = str(ei.value)
    assert "SiLU" in msg and "relu2" in msg and "llama.cpp" in msg  # why
    assert "i2_s" in msg and "bitnet.cpp" in msg  # what to use instead
    assert "--allow-engine-mismatch" in msg
    assert list(tmp_path.iterdir()) == []
    r = runner.invoke(app, ["convert", str(relu2_ckpt), str(out), "--layout", layout])
    assert r.exit_code == 2 and "relu2" in r.stderr and "Traceback" not in r.output
    assert not out.exists()


def test_relu2_allowed_with_override_warns(relu2_ckpt, tmp_path):
    out = tmp_path / "r.gguf"
    r = runner.invoke(app, ["convert", str(relu2_ckpt), str(out), "--layout", "tq2_0", "--allow-engine-mismatch"])
    assert r.exit_code == 0, r.output
    assert "warning:" in r.stderr and "relu2" in r.stderr
    f = GGUFFile(out)
    assert f.get("bitnet.hidden_activation") == "relu2" and f.get("bitconv.hidden_act") == "relu2"
    assert json.loads(f.get("bitconv.options"))["allow_engine_mismatch"] is True
    res = convert(relu2_ckpt, tmp_path / "r2.gguf", layout="tq2_0", allow_engine_mismatch=True)
    assert any("relu2" in w for w in res.plan.warnings)


def test_untied_lm_head_to_tq_refused(untied_silu_ckpt, tmp_path):
    out = tmp_path / "u.gguf"
    with pytest.raises(LayoutError) as ei:
        convert(untied_silu_ckpt, out, layout="tq2_0")
    msg = str(ei.value)
    assert "lm_head" in msg and "token_embd" in msg and "--allow-engine-mismatch" in msg
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(LayoutError, match="no GGUF engine runs"):  # nor does a default layout guess one
        convert(untied_silu_ckpt, out)
    res = convert(untied_silu_ckpt, out, layout="tq2_0", allow_engine_mismatch=True)
    assert any("lm_head" in w for w in res.plan.warnings)
    assert any("output.weight" in w for w in res.plan.warnings)  # dropped: the graph cannot hold it
    assert "output.weight" not in GGUFFile(out).tensors


# -- llama family --------------------------------------------------------------------
@pytest.mark.parametrize("group", ["tensor", "row"])
def test_llama_arch_permutes_q_k(llama_ckpt, hf_float_weights, tmp_path, group):
    out = tmp_path / "l.gguf"
    res = convert(llama_ckpt, out, layout="tq2_0", group_size=group)
    assert res.plan.arch == "llama" and not res.plan.warnings
    cfg = json.loads((llama_ckpt / "config.json").read_text())
    heads, kv = cfg["num_attention_heads"], cfg["num_key_value_heads"]
    f = GGUFFile(out)
    assert f.get("general.architecture") == "llama"
    assert f.get("llama.attention.head_count_kv") == kv and f.get("llama.rope.dimension_count") == 64
    assert "output.weight" in f.tensors and f.tensors["output.weight"].type_name == "F16"
    assert not any("sub_norm" in n for n in f.tensors)
    src = hf_float_weights(llama_ckpt)
    lay = get_layout("tq2_0")
    ck = open_source(out)
    for hf, name in linear_names():
        tern = ternarize(src[hf], group, name)
        raw = lay.unpack(np.asarray(f.raw(name)), f.tensors[name].shape, name, group=group)
        kind = name.split(".")[2]
        n = {"attn_q": heads, "attn_k": kv}.get(kind)
        if n:
            assert not np.array_equal(raw.values, tern.values), name
            np.testing.assert_array_equal(raw.values, permute_rows(tern.values, n))
            np.testing.assert_allclose(raw.scales, permute_rows(tern.scales, n), rtol=1e-3)
        else:
            np.testing.assert_array_equal(raw.values, tern.values)
        # bitconv's reader undoes the permutation: the source ternarization comes back
        back = ck.get(name).load_ternary()
        np.testing.assert_array_equal(back.values, tern.values)
        np.testing.assert_allclose(back.scales, tern.scales, rtol=1e-3)
    np.testing.assert_allclose(ck.get("output.weight").load(), src["lm_head.weight"], rtol=1e-3, atol=1e-3)


# -- 8. determinism and safe output ---------------------------------------------------
@pytest.mark.parametrize("layout", ["tq2_0", "tq1_0"])
def test_deterministic_output(silu_ckpt, tmp_path, layout):
    a, b = tmp_path / "a.gguf", tmp_path / "b.gguf"
    convert(silu_ckpt, a, layout=layout)
    convert(silu_ckpt, b, layout=layout)
    assert sha256(a) == sha256(b)
    convert(silu_ckpt, a, layout=layout, force=True)  # overwriting gives the same bytes again
    assert sha256(a) == sha256(b)


def test_written_through_temp_file_beside_target(silu_ckpt, tmp_path):
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    out = out_dir / "model.gguf"
    seen: list[list[str]] = []

    def progress(tp) -> None:
        seen.append(sorted(p.name for p in out_dir.iterdir()))

    convert(silu_ckpt, out, progress=progress)
    assert seen, "progress was never called"
    during = seen[len(seen) // 2]
    assert "model.gguf" not in during, "the final name appeared before the file was complete"
    assert len(during) == 1 and during[0].startswith(".model.gguf") and during[0].endswith(".tmp")
    assert sorted(p.name for p in out_dir.iterdir()) == ["model.gguf"]


def test_failure_mid_write_leaves_nothing(silu_ckpt, tmp_path):
    out = tmp_path / "model.gguf"
    calls = []

    def progress(tp) -> None:
        calls.append(tp.name)
        if len(calls) == 5:
            raise RuntimeError("simulated crash after 5 tensors")

    with pytest.raises(RuntimeError, match="simulated"):
        convert(silu_ckpt, out, progress=progress)
    assert list(tmp_path.iterdir()) == []


def test_failure_keeps_existing_output_with_force(silu_ckpt, tmp_path):
    out = tmp_path / "model.gguf"
    out.write_bytes(b"previous")

    def boom(tp) -> None:
        raise RuntimeError("simulated")

    with pytest.raises(RuntimeError):
        convert(silu_ckpt, out, force=True, progress=boom)
    assert out.read_bytes() == b"previous"
    assert [p.name for p in tmp_path.iterdir()] == ["model.gguf"]


def test_embedding_type_options(silu_ckpt, hf_float_weights, tmp_path):
    src = hf_float_weights(silu_ckpt)["model.embed_tokens.weight"]
    for et, gt in (("f16", "F16"), ("bf16", "BF16"), ("f32", "F32")):
        out = tmp_path / f"{et}.gguf"
        convert(silu_ckpt, out, embedding_type=et)
        f = GGUFFile(out)
        assert f.tensors["token_embd.weight"].type_name == gt
        back = open_source(out).get("token_embd.weight").load()
        np.testing.assert_allclose(back, src, rtol=1e-3 if et == "f16" else 0, atol=2e-3 if et == "f16" else 0)
    with pytest.raises(UsageError, match="embedding-type"):
        convert(silu_ckpt, tmp_path / "x.gguf", embedding_type="q8_0")
