"""Foreign GGUFs as sources (issue 13, items 1 and 3): files written the way bitnet.cpp and
llama.cpp write them are read back with their own ternary values and scales, whatever the
target layout, with q/k rows un-permuted and re-permuted, hparams and tokenizer carried over."""

from __future__ import annotations

import gguf
import numpy as np
import pytest
from foreign_gguf import llama_permute, model_from_checkpoint, random_model, write_bitnetcpp_i2s, write_llamacpp_tq

from bitconv.convert import convert
from bitconv.errors import InputError
from bitconv.model import LINEAR
from bitconv.readers import GGUFReadOptions, open_source
from bitconv.readers.gguf_file import GGUFFile


def linears(path, **opts) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    ck = open_source(path, gguf_options=GGUFReadOptions(**opts) if opts else None)
    out = {}
    for t in ck.tensors:
        if t.role == LINEAR:
            assert t.is_ternary, f"{t.name} must be read as ternary, not re-quantized"
            tern = t.load_ternary()
            out[t.name] = (tern.values, tern.scales)
    return out


def assert_same_model(got, model, *, fp16_scales: bool = False) -> None:
    assert got.keys() == model.linears.keys()
    for name, (t, s) in model.linears.items():
        gt, gs = got[name]
        assert np.array_equal(gt, t), f"{name}: ternary values differ"
        expect = np.float32(np.float16(s)) if fp16_scales else np.float32(s)
        assert np.all(gs == expect), f"{name}: scale {gs} != {expect}"


@pytest.fixture(scope="module")
def relu2_model():
    return random_model(act="relu2", hidden=256, intermediate=512, layers=2, seed=7)


def assert_nothing_lost(res) -> None:
    """Never re-ternarized: a packed linear has no weight error to report, and an exact-ternary
    float linear is recovered with a relative error of exactly 0 against its floats."""
    kinds = {t["name"]: t["source_kind"] for t in res.plan.to_dict()["tensors"]}
    for st in res.stats:
        if kinds[st.name] == "exact_ternary":
            assert st.rel_error == 0.0, (st.name, st.rel_error)
        else:
            assert kinds[st.name] == "packed_ternary" and st.rel_error is None, (st.name, kinds[st.name], st.rel_error)


@pytest.mark.parametrize("arch", ["bitnet-b1.58", "bitnet-25"])
def test_bitnetcpp_i2s_with_garbage_tails_is_a_source(tmp_path, relu2_model, arch):
    src = write_bitnetcpp_i2s(tmp_path / "official.gguf", relu2_model, arch=arch, seed=3)
    f = GGUFFile(src)
    tail = f.raw("blk.0.attn_q.weight")[-28:]
    assert np.any(tail != 0), "the fixture must carry garbage after the scale, as bitnet.cpp writes it"
    ck = open_source(src)
    assert ck.spec.family == "BitNetForCausalLM" and ck.spec.hparams.hidden_act == "relu2"
    assert ck.spec.hparams.tie_embeddings
    assert_same_model(linears(src), relu2_model)
    for layout in ("i2_s", "tl2"):
        out = tmp_path / f"re-{layout}.gguf"
        res = convert(src, out, layout=layout)
        assert res.plan.arch == "bitnet-b1.58"
        assert all(s.rel_error is None for s in res.stats), "never re-ternarized"
        assert_same_model(linears(out), relu2_model)


def test_arm_order_needs_its_variant(tmp_path, relu2_model):
    src = write_bitnetcpp_i2s(tmp_path / "arm.gguf", relu2_model, variant="arm")
    assert_same_model(linears(src, i2s_variant="arm"), relu2_model)
    scrambled = linears(src)  # read as x86-act: the same codes in another order
    assert not np.array_equal(scrambled["blk.0.attn_q.weight"][0], relu2_model.linears["blk.0.attn_q.weight"][0])
    out = tmp_path / "x86.gguf"
    convert(src, out, layout="i2_s", source_i2s_variant="arm")
    assert_same_model(linears(out), relu2_model)
    assert GGUFFile(out).get("bitconv.i2s_variant") == "x86-act"


def test_silu_bitnet_i2s_to_tq2_0(tmp_path):
    m = random_model(act="silu", seed=8)
    src = write_bitnetcpp_i2s(tmp_path / "b.gguf", m, arch="bitnet")
    out = tmp_path / "tq.gguf"
    convert(src, out, layout="tq2_0")
    assert_same_model(linears(out), m, fp16_scales=True)


def test_llama_i2s_qk_unpermuted_and_permuted_again(tmp_path):
    m = random_model(act="silu", tie=False, heads=4, kv_heads=2, seed=9, sub_norms=False)
    src = write_bitnetcpp_i2s(tmp_path / "llama.gguf", m, arch="llama")
    assert_same_model(linears(src), m)  # read in Hugging Face row order
    out = tmp_path / "llama-tq2.gguf"
    res = convert(src, out, layout="tq2_0")
    assert res.plan.arch == "llama"
    assert_same_model(linears(out), m, fp16_scales=True)
    # on disk, the target's q/k rows are in llama.cpp's rope order again, as its converter writes them
    r = gguf.GGUFReader(str(out))
    t = next(x for x in r.tensors if x.name == "blk.0.attn_k.weight")
    disk = gguf.quants.dequantize(np.asarray(t.data), gguf.GGMLQuantizationType.TQ2_0)
    tv, s = m.linears["blk.0.attn_k.weight"]
    assert np.array_equal(np.sign(disk).astype(np.int8), llama_permute(tv, m.hp["kv_heads"]))


@pytest.mark.parametrize("qtype", ["tq2_0", "tq1_0"])
@pytest.mark.parametrize("arch", ["bitnet", "llama"])
def test_llamacpp_tq_files_with_f16_rows(tmp_path, qtype, arch):
    # intermediate 384: ffn_down has K = 384, which llama.cpp's converter leaves in F16
    m = random_model(act="silu", intermediate=384, tie=arch == "bitnet", seed=10, sub_norms=arch == "bitnet")
    src = write_llamacpp_tq(tmp_path / "tq.gguf", m, qtype=qtype, arch=arch)
    f = GGUFFile(src)
    assert f.tensors["blk.0.ffn_down.weight"].type_name == "F16"
    assert f.tensors["blk.0.ffn_up.weight"].type_name == qtype.upper()
    got = linears(src)
    assert_same_model(got, m, fp16_scales=True)
    out = tmp_path / "i2s.gguf"
    res = convert(src, out, layout="i2_s", i2s_variant="arm", allow_engine_mismatch=arch == "llama")
    assert_nothing_lost(res)
    assert_same_model(linears(out), m, fp16_scales=True)


def test_hparams_and_tokenizer_carried_over(tmp_path):
    m = random_model(act="silu", seed=11)
    src = write_llamacpp_tq(tmp_path / "tq.gguf", m, extra_kv={"general.license": "mit"})
    out = tmp_path / "i2s.gguf"
    convert(src, out, layout="tq1_0")
    a, b = GGUFFile(src), GGUFFile(out)
    for key in a.kv:
        if key.startswith("tokenizer."):
            assert b.kv[key][0] == a.kv[key][0], key
    for suffix in ("context_length", "embedding_length", "feed_forward_length", "block_count",
                   "attention.head_count", "attention.head_count_kv", "rope.freq_base",
                   "attention.layer_norm_rms_epsilon", "rope.dimension_count", "vocab_size",
                   "rope.scaling.type", "rope.scaling.factor"):
        assert b.get(f"bitnet.{suffix}") == pytest.approx(a.get(f"bitnet.{suffix}")), suffix
    assert b.get("general.license") == "mit"


@pytest.mark.parametrize("layout", ["tl1", "tl2"])
def test_foreign_tl_needs_kernel_config(tmp_path, relu2_model, layout):
    from bitconv.pack import get_layout
    from bitconv.pack.tiles import read_kernel_config
    from bitconv.quant import Ternary

    # bitnet.cpp's converter: TL bytes for the tiles of its kernel_config.ini, scale in the tail
    first = tmp_path / "first.gguf"
    ini = tmp_path / "kernel_config.ini"
    convert(write_bitnetcpp_i2s(tmp_path / "i.gguf", relu2_model), first, layout=layout, emit_kernel_config=ini)
    lay = get_layout(layout, kernel_config=read_kernel_config(ini))
    types = {n: (lay.ggml_type, lay.pack(Ternary(t, np.float32(s)), n)) for n, (t, s) in relu2_model.linears.items()}
    src = write_bitnetcpp_i2s(tmp_path / "tl.gguf", relu2_model, types=types, file_type=lay.file_type)
    with pytest.raises(InputError, match="tile parameters the file does not store"):
        open_source(src)
    assert_same_model(linears(src, kernel_config=ini), relu2_model)
    out = tmp_path / "i2s.gguf"
    convert(src, out, layout="i2_s", kernel_config=ini)
    assert_same_model(linears(out), relu2_model)


@pytest.mark.parametrize("ggml_type", [0, 1, 30])
def test_float_gguf_of_exact_ternary_model(tmp_path, ggml_type):
    """An F32/F16/BF16 export of a ternary model: values s·t are recovered, never absmean'd again."""
    from bitconv.ggml_types import bytes_to_float, float_to_bytes

    m = random_model(act="silu", seed=12)
    types = {n: (ggml_type, float_to_bytes(m.dense(n), ggml_type)) for n in m.linears}
    src = write_bitnetcpp_i2s(tmp_path / "float.gguf", m, arch="bitnet", types=types, file_type={0: 0, 1: 1, 30: 32}[ggml_type])
    got = linears(src)
    for name, (t, s) in m.linears.items():  # the scale as the float type stored it
        stored = bytes_to_float(float_to_bytes(np.array([s], np.float32), ggml_type), ggml_type, (1,))[0]
        assert np.array_equal(got[name][0], t) and got[name][1] == stored
    out = tmp_path / "i2s.gguf"
    res = convert(src, out, layout="i2_s")
    assert_nothing_lost(res)
    assert linears(out).keys() == got.keys()
    for name, (t, s) in linears(out).items():
        assert np.array_equal(t, got[name][0]) and s == got[name][1]


@pytest.mark.parametrize("group", [128, "row"])
def test_float_gguf_of_group_scaled_exact_ternary_keeps_its_group(tmp_path, group):
    """An F16 GGUF whose linears are s·t with group-128 (or per-row) scales: the reader finds
    the group (bitconv.exact_ternary), and Q2_0 keeps codes and every group's scale exactly."""
    from bitconv.ggml_types import float_to_bytes

    m = random_model(act="silu", seed=15)
    rng = np.random.default_rng(5)
    want, types = {}, {}
    for n, (t, _) in m.linears.items():
        rows, k = t.shape
        cols = 1 if group == "row" else k // group
        s = rng.uniform(0.01, 0.1, (rows, cols)).astype(np.float16).astype(np.float32)
        want[n] = (t, s)
        types[n] = (1, float_to_bytes(t * np.repeat(s, k // cols, axis=1), 1))
    src = write_bitnetcpp_i2s(tmp_path / "f16.gguf", m, arch="bitnet", types=types, file_type=1)
    ck = open_source(src)
    assert {t.group for t in ck.tensors if t.role == LINEAR} == {group}
    out = tmp_path / "q2.gguf"
    res = convert(src, out, layout="q2_0")
    assert_nothing_lost(res)
    kinds = {t["source_kind"] for t in res.plan.to_dict()["tensors"] if t["role"] == LINEAR}
    assert kinds == {"exact_ternary"}, kinds
    for path in (src, out):
        got = open_source(path)
        for n, (t, s) in want.items():
            tern = got.get(n).load_ternary()
            assert tern.group == group, f"{path.name} {n}: group {tern.group}"
            assert np.array_equal(tern.values, t), f"{path.name} {n}: codes differ"
            assert np.array_equal(np.asarray(tern.scales, np.float32).reshape(s.shape), s), f"{path.name} {n}: scales"


def test_float_gguf_of_latent_weights_is_ternarized(tmp_path):
    m = random_model(act="silu", seed=13)
    rng = np.random.default_rng(0)
    types = {n: (0, (rng.standard_normal(m.linears[n][0].shape) * 0.02).astype(np.float32).view(np.uint8)
                 .reshape(-1)) for n in m.linears}
    src = write_bitnetcpp_i2s(tmp_path / "f32.gguf", m, arch="bitnet", types=types, file_type=0)
    ck = open_source(src)
    assert not any(t.is_ternary for t in ck.tensors if t.role == LINEAR)
    res = convert(src, tmp_path / "tq.gguf", layout="tq2_0")
    assert all(s.rel_error is not None and s.rel_error > 0 for s in res.stats)


def test_quantized_embedding_is_dequantized(tmp_path):
    m = random_model(act="silu", seed=14)
    emb = m.floats["token_embd.weight"]
    q = gguf.quants.quantize(emb, gguf.GGMLQuantizationType.Q8_0)
    src = write_bitnetcpp_i2s(tmp_path / "q8.gguf", m, arch="bitnet", types={"token_embd.weight": (8, q.reshape(-1))})
    got = open_source(src).get("token_embd.weight").load()
    assert np.array_equal(got, gguf.quants.dequantize(q, gguf.GGMLQuantizationType.Q8_0))


def test_verify_repacked_against_foreign_source_codes_equal(tmp_path, ckpt_factory):
    from bitconv.verify import verify

    ckpt = ckpt_factory("llama", seed=2, tie=False)
    m = model_from_checkpoint(ckpt)
    src = write_bitnetcpp_i2s(tmp_path / "foreign.gguf", m, arch="llama", drop_kv=())
    out = tmp_path / "repacked.gguf"
    convert(src, out, layout="tq2_0")
    rep = verify(out, src, tokens=256, ctx=128)
    lin = [c for c in rep.tensors if c.role == LINEAR]
    assert len(lin) == len(m.linears) and all(c.mismatched == 0 for c in lin)
    assert rep.passed, rep.failures


def test_cli_source_i2s_variant(tmp_path, relu2_model):
    from typer.testing import CliRunner

    from bitconv.cli import app

    src = write_bitnetcpp_i2s(tmp_path / "arm.gguf", relu2_model, variant="arm")
    out = tmp_path / "x86.gguf"
    res = CliRunner().invoke(app, ["convert", str(src), str(out), "--layout", "i2_s", "--source-i2s-variant", "arm"])
    assert res.exit_code == 0, res.output
    assert_same_model(linears(out), relu2_model)
    res = CliRunner().invoke(app, ["convert", str(src), str(tmp_path / "y.gguf"), "--source-i2s-variant", "mips"])
    assert res.exit_code == 2 and "unknown I2_S variant" in res.output
    tl = tmp_path / "tl.gguf"
    from bitconv.pack.tl2 import TL2
    from bitconv.quant import Ternary

    types = {n: (39, TL2().pack(Ternary(t, np.float32(s)), n)) for n, (t, s) in relu2_model.linears.items()}
    write_bitnetcpp_i2s(tl, relu2_model, types=types, file_type=39)
    res = CliRunner().invoke(app, ["verify", str(out), "--source", str(tl), "--tokens", "32", "--ctx", "16"])
    assert res.exit_code == 2 and "--kernel-config" in res.output


def test_llamacpp_q2_0_file_is_a_source(tmp_path):
    """llama-quantize Q2_0 (type 42, 64-blocks): read through the Q2_0 layout, repacked exactly."""
    from foreign_gguf import q2_0_bytes

    m = random_model(act="silu", seed=15)
    types = {n: (42, q2_0_bytes(t, s)) for n, (t, s) in m.linears.items()}
    src = write_bitnetcpp_i2s(tmp_path / "q2.gguf", m, arch="bitnet", types=types, file_type=41, drop_kv=())
    assert_same_model(linears(src), m, fp16_scales=True)
    out = tmp_path / "i2s.gguf"
    res = convert(src, out, layout="i2_s")
    assert all(s.rel_error is None for s in res.stats)
    assert_same_model(linears(out), m, fp16_scales=True)


def test_prism_group_128_under_type_42_is_refused_and_diagnosed(tmp_path):
    from bitconv.doctor import doctor

    m = random_model(act="silu", seed=16)
    rng = np.random.default_rng(0)
    types = {n: (42, rng.integers(0, 255, t.size // 128 * 34, dtype=np.uint8)) for n, (t, s) in m.linears.items()}
    src = write_bitnetcpp_i2s(tmp_path / "prism.gguf", m, arch="bitnet", types=types, file_type=41, drop_kv=())
    with pytest.raises(InputError, match="group-128"):
        open_source(src)
    r = doctor(src)
    f = next(x for x in r.findings if x.code == "type-id-ambiguous")
    assert "the bytes fit PrismML's older group-128" in f.message


def test_foreign_tl_with_stock_shapes_needs_no_kernel_config(tmp_path):
    """Shapes the stock builds compile (bitnet_b1_58-large's) have known tiles: setup_env's presets."""
    from bitconv.pack.tiles import PRESETS
    from bitconv.pack.tl2 import TL2
    from bitconv.quant import Ternary

    m = random_model(act="silu", hidden=1536, intermediate=4096, heads=12, kv_heads=12, layers=1, seed=17)
    preset = PRESETS["tl2"]
    assert all(t.shape in preset for t, _ in m.linears.values())
    lay = TL2(kernel_config=preset)
    types = {n: (39, lay.pack(Ternary(t, np.float32(s)), n)) for n, (t, s) in m.linears.items()}
    src = write_bitnetcpp_i2s(tmp_path / "large-tl2.gguf", m, arch="bitnet", types=types, file_type=39)
    assert_same_model(linears(src), m)
