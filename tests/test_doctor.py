"""`bitconv doctor` (issue 13, item 2): one test per finding, each on a file that has exactly
that defect (built the way the foreign tool writes it, then damaged), and clean files that
yield no finding. Exit codes: 0 clean, 1 would miscompute, 2 unreadable."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import gguf
import numpy as np
import pytest
from foreign_gguf import (i2s_bytes, offset_field, patch_bytes, q2_0_bytes, random_model, write_bitnetcpp_i2s,
                          write_llamacpp_tq)
from typer.testing import CliRunner

from bitconv.cli import app
from bitconv.doctor import doctor

Q = "blk.0.attn_q.weight"


@pytest.fixture(scope="module")
def silu():
    return random_model(act="silu", seed=1)


@pytest.fixture(scope="module")
def relu2():
    return random_model(act="relu2", seed=2)


def codes(report) -> list[str]:
    return sorted(f.code for f in report.findings)


def only(report, code: str, severity: str):
    assert codes(report) == [code] or set(codes(report)) == {code}, [f.line() for f in report.findings]
    assert all(f.severity == severity for f in report.findings)
    return report.findings[0]


# -- clean files --------------------------------------------------------------------------
def test_clean_llamacpp_tq2_0_file_has_no_finding(tmp_path, silu):
    p = write_llamacpp_tq(tmp_path / "clean.gguf", silu)
    for engine in (None, "llama.cpp", "bitnet.cpp"):
        r = doctor(p, engine=engine)
        assert r.findings == [] and r.exit_code == 0, [f.line() for f in r.findings]
    assert doctor(p).engine == "llama.cpp"


def test_clean_bitconv_files_have_no_finding(tmp_path, silu_ckpt, relu2_ckpt):
    from bitconv.convert import convert

    convert(silu_ckpt, tmp_path / "a.gguf", layout="tq2_0")
    assert doctor(tmp_path / "a.gguf").findings == []
    convert(relu2_ckpt, tmp_path / "b.gguf", layout="i2_s")
    r = doctor(tmp_path / "b.gguf")
    assert r.engine == "bitnet.cpp" and r.findings == [], [f.line() for f in r.findings]


def test_clean_bitnetcpp_i2s_file_only_says_what_bytes_cannot(tmp_path, relu2):
    p = write_bitnetcpp_i2s(tmp_path / "i2s.gguf", relu2, drop_kv=())
    r = doctor(p)
    assert r.engine == "bitnet.cpp" and r.exit_code == 0
    assert codes(r) == ["i2s-order-unknown"] and r.findings[0].severity == "info"


# -- type ids -----------------------------------------------------------------------------
def _tl2_file(tmp_path, m) -> Path:
    """A TL2 (type 39) file as bitnet.cpp's converter writes it (scale in the hidden tail)."""
    from bitconv.pack.tl2 import TL2
    from bitconv.quant import Ternary

    lay = TL2()
    types = {name: (39, lay.pack(Ternary(t, np.float32(s)), name)) for name, (t, s) in m.linears.items()}
    return write_bitnetcpp_i2s(tmp_path / "tl2.gguf", m, types=types, file_type=39, arch="bitnet", drop_kv=())


def test_type_39_read_as_mxfp4_by_llamacpp(tmp_path, silu):
    p = _tl2_file(tmp_path, silu)
    f = only(doctor(p, engine="llama.cpp"), "type-id-ambiguous", "error")
    assert "MXFP4" in f.message and "the bytes fit TL2" in f.message
    r = doctor(p)  # no engine: bitnet.cpp inferred from the bytes, the clash is a warning
    assert r.engine == "bitnet.cpp" and r.exit_code == 0
    assert only(r, "type-id-ambiguous", "warning")
    assert r.readings == {"39": ["TL2 of bitnet.cpp's 2024 release"]}
    assert doctor(p, engine="bitnet.cpp").findings == []


def test_type_42_q2_0_bytes_under_bitnetcpp(tmp_path, silu):
    types = {n: (42, q2_0_bytes(t, s)) for n, (t, s) in silu.linears.items()}
    p = write_bitnetcpp_i2s(tmp_path / "q2.gguf", silu, types=types, file_type=41, arch="bitnet", drop_kv=())
    r = doctor(p, engine="bitnet.cpp")
    f = only(r, "type-id-ambiguous", "error")
    assert "TL2 of bitnet.cpp's 2026 fork" in f.message and "the bytes fit Q2_0" in f.message
    r = doctor(p, engine="llama.cpp")
    assert r.findings == [] and r.readings == {"42": ["Q2_0 of upstream llama.cpp"]}


def test_file_type_40_means_q1_0_upstream(tmp_path, silu):
    p = write_llamacpp_tq(tmp_path / "ft.gguf", silu)
    with open(p, "r+b") as fh:  # general.file_type 37 -> 40 (I2_S in the fork, Q1_0 upstream)
        blob = fh.read()
        key = b"general.file_type"
        pos = blob.index(key) + len(key) + 4
        fh.seek(pos)
        fh.write(struct.pack("<I", 40))
    f = only(doctor(p), "file-type-mismatch", "warning")
    assert f.subject == "general.file_type" and "MOSTLY_Q1_0" in f.message


def test_bitnet_types_under_llamacpp(tmp_path, relu2):
    p = write_bitnetcpp_i2s(tmp_path / "i2s.gguf", relu2, arch="bitnet-b1.58", drop_kv=())
    r = doctor(p, engine="llama.cpp")
    assert {"engine-lacks-type", "engine-lacks-arch"} <= set(codes(r)) and r.exit_code == 1
    # a relu² model has no llama.cpp graph: the advice is bitnet.cpp, not a repack that would not run
    f = next(x for x in r.findings if x.code == "engine-lacks-type")
    assert "run it in bitnet.cpp" in f.action and "--layout" not in f.action


def test_bitnet_types_under_llamacpp_silu_model_is_told_to_repack(tmp_path, silu):
    p = write_bitnetcpp_i2s(tmp_path / "i2s.gguf", silu, arch="bitnet", drop_kv=())
    f = next(x for x in doctor(p, engine="llama.cpp").findings if x.code == "engine-lacks-type")
    assert f.action == "repack for llama.cpp: bitconv convert FILE out.gguf --layout tq2_0"


def test_a_folder_is_refused_with_what_to_pass_instead(tmp_path, silu):
    from bitconv.errors import InputError

    folder = tmp_path / "out"
    folder.mkdir()
    (folder / "model.safetensors").write_bytes(b"")
    with pytest.raises(InputError, match="is a folder, not a GGUF file") as e:
        doctor(folder)
    assert e.value.hint == f"it holds no .gguf file; a safetensors, MLX or compressed-tensors folder is read by " \
                           f"bitconv inspect {folder}"
    write_llamacpp_tq(folder / "m.gguf", silu)
    with pytest.raises(InputError) as e:
        doctor(folder)
    assert e.value.hint == f"name the .gguf file inside it: {folder / 'm.gguf'}"


# -- model-level findings -----------------------------------------------------------------
def test_float_linears_under_ternary_file_type(tmp_path, relu2):
    types = {"blk.0.ffn_down.weight": (1, relu2.dense("blk.0.ffn_down.weight").astype(np.float16).view(np.uint8)
                                       .reshape(-1))}
    p = write_bitnetcpp_i2s(tmp_path / "f16.gguf", relu2, types=types, drop_kv=())
    r = doctor(p)
    f = next(x for x in r.findings if x.code == "float-linears")
    assert f.severity == "warning" and "1 of 7 linears are stored as F16" in f.message
    assert "blk.0.ffn_down.weight" in f.subject
    assert set(codes(r)) == {"float-linears", "i2s-order-unknown"}


def test_relu2_model_under_silu_arch_by_metadata(tmp_path, relu2):
    p = write_llamacpp_tq(tmp_path / "r.gguf", relu2, extra_kv={"bitnet.hidden_activation": "relu2"})
    f = only(doctor(p), "relu2-under-silu", "error")
    assert "bitnet.hidden_activation" in f.message
    assert doctor(p).exit_code == 1


def test_relu2_model_under_silu_arch_by_tensors(tmp_path, relu2):
    m = random_model(act="relu2", seed=2)
    m.floats["blk.0.attn_q.bias"] = np.zeros(m.hp["hidden"], np.float32)
    p = write_llamacpp_tq(tmp_path / "b.gguf", m)
    f = only(doctor(p), "relu2-under-silu", "error")
    assert "blk.0.attn_q.bias" in f.message


def test_untied_head_under_bitnet(tmp_path):
    m = random_model(tie=False, seed=3)
    p = write_llamacpp_tq(tmp_path / "u.gguf", m)
    f = only(doctor(p), "untied-head-under-bitnet", "error")
    assert f.subject == "output.weight"


def test_quantized_norm(tmp_path, silu):
    norm = silu.floats["blk.0.ffn_norm.weight"]
    types = {"blk.0.ffn_norm.weight": (8, gguf.quants.quantize(norm, gguf.GGMLQuantizationType.Q8_0).reshape(-1))}
    p = write_bitnetcpp_i2s(tmp_path / "n.gguf", silu, types=types, arch="bitnet", drop_kv=())
    r = doctor(p)
    f = next(x for x in r.findings if x.code == "quantized-norm")
    assert f.subject == "blk.0.ffn_norm.weight" and "Q8_0" in f.message
    assert set(codes(r)) == {"quantized-norm", "i2s-order-unknown"} and r.exit_code == 1


@pytest.mark.parametrize("kind,value", [("scale-zero", 0.0), ("scale-negative", -0.02),
                                        ("scale-not-finite", float("nan")), ("scale-inverted", 1 / 0.02)])
def test_bad_scale(tmp_path, relu2, kind, value):
    t, s = relu2.linears[Q]
    p = write_bitnetcpp_i2s(tmp_path / "s.gguf", relu2, patch={Q: i2s_bytes(t, value)}, drop_kv=())
    r = doctor(p)
    f = next(x for x in r.findings if x.code == kind)
    assert f.subject == Q and f.severity == "error"
    assert set(codes(r)) == {kind, "i2s-order-unknown"}, [x.line() for x in r.findings]


def test_all_scales_inverted(tmp_path, relu2):
    patch = {n: i2s_bytes(t, 1 / s) for n, (t, s) in relu2.linears.items()}
    p = write_bitnetcpp_i2s(tmp_path / "inv.gguf", relu2, patch=patch, drop_kv=())
    r = doctor(p)
    assert set(codes(r)) == {"scales-inverted", "i2s-order-unknown"}
    assert "1/s" in next(x for x in r.findings if x.code == "scales-inverted").message


def test_tq_block_scale_negative(tmp_path, silu):
    p = write_llamacpp_tq(tmp_path / "tq.gguf", silu)
    info = next(i for i in __import__("bitconv.readers.gguf_file", fromlist=["GGUFFile"]).GGUFFile(p).index
                if i.name == Q)
    patch_bytes(p, info.offset + 64, np.array([-0.02], np.float16).tobytes())  # first block's d
    f = only(doctor(p), "scale-negative", "error")
    assert f.subject == Q


def test_code_3_in_i2s(tmp_path, relu2):
    t, s = relu2.linears[Q]
    raw = i2s_bytes(t, s)
    raw[5] = 0xFF  # four fields of code 3
    p = write_bitnetcpp_i2s(tmp_path / "c3.gguf", relu2, patch={Q: raw}, drop_kv=())
    r = doctor(p)
    f = next(x for x in r.findings if x.code == "non-ternary-codes")
    assert f.subject == Q and f.message.startswith("4 weight(s)") and f.severity == "error"
    assert set(codes(r)) == {"non-ternary-codes", "i2s-order-unknown"}


def test_missing_pre_tokenizer(tmp_path, silu):
    p = write_llamacpp_tq(tmp_path / "pre.gguf", silu, drop_kv=("tokenizer.ggml.pre",))
    r = doctor(p)
    f = only(r, "no-pre-tokenizer", "warning")
    assert f.subject == "tokenizer.ggml.pre" and r.exit_code == 0


def test_vocab_disagrees_with_embedding(tmp_path):
    m = random_model(seed=4)
    m.tokenizer["tokenizer.ggml.tokens"] = m.tokenizer["tokenizer.ggml.tokens"][:-1]
    m.tokenizer["tokenizer.ggml.token_type"] = m.tokenizer["tokenizer.ggml.token_type"][:-1]
    m.hp["vocab"] = len(m.tokenizer["tokenizer.ggml.tokens"]) + 1
    p = write_llamacpp_tq(tmp_path / "v.gguf", m)
    f = only(doctor(p), "vocab-mismatch", "error")
    assert "63 tokens but token_embd.weight has 64 rows" in f.message


def test_no_tokenizer(tmp_path, silu):
    keys = tuple(k for k in silu.tokenizer)
    p = write_llamacpp_tq(tmp_path / "nt.gguf", silu, drop_kv=keys)
    only(doctor(p), "no-tokenizer", "error")


# -- container ----------------------------------------------------------------------------
def test_truncated_data(tmp_path, silu):
    p = write_llamacpp_tq(tmp_path / "t.gguf", silu)
    size = p.stat().st_size
    with open(p, "r+b") as fh:
        fh.truncate(size - 100)
    r = doctor(p)
    f = only(r, "truncated", "error")
    assert f.subject == "blk.0.ffn_sub_norm.weight" or "ends at" in f.message


def test_overlapping_data(tmp_path, silu):
    from bitconv.readers.gguf_file import GGUFFile

    p = write_llamacpp_tq(tmp_path / "o.gguf", silu)
    f0 = GGUFFile(p)
    a, b = f0.tensors["blk.0.attn_k.weight"], f0.tensors["blk.0.attn_v.weight"]
    assert a.nbytes == b.nbytes
    patch_bytes(p, offset_field(p, b.name), struct.pack("<Q", a.offset - f0.data_start))  # v reads k's bytes
    r = doctor(p)
    f = only(r, "overlapping-data", "error")
    assert f.subject == b.name and "blk.0.attn_k.weight" in f.message


def test_duplicate_names(tmp_path, silu):
    p = write_llamacpp_tq(tmp_path / "d.gguf", silu)
    name = "blk.0.ffn_up.weight"
    pos = offset_field(p, name) - 4 - 8 * 2 - 4 - len(name)
    patch_bytes(p, pos, Q.encode())  # same length: ffn_up becomes a second attn_q
    f = only(doctor(p), "duplicate-tensor", "error")
    assert f.subject == Q


@pytest.mark.parametrize("content", [b"", b"GGUF", b"not a gguf at all" * 10, b"GGUF\x03\x00\x00\x00" + b"\xff" * 40])
def test_unreadable_file_exits_2(tmp_path, content):
    p = tmp_path / "bad.gguf"
    p.write_bytes(content)
    res = CliRunner().invoke(app, ["doctor", str(p), "--json"])
    assert res.exit_code == 2
    assert json.loads(res.stdout)["ok"] is False


def test_fuzzed_files_never_crash(tmp_path, relu2):
    """Random byte damage anywhere: always a report or exit 2, never a traceback."""
    base = write_bitnetcpp_i2s(tmp_path / "base.gguf", relu2, drop_kv=()).read_bytes()
    rng = np.random.default_rng(0)
    seen = set()
    for i in range(150):
        blob = bytearray(base)
        for _ in range(int(rng.integers(1, 4))):
            pos = int(rng.integers(0, 2000 if i % 2 else len(blob)))
            blob[pos] = int(rng.integers(0, 256))
        p = tmp_path / f"fz{i}.gguf"
        p.write_bytes(bytes(blob[: len(blob) if i % 5 else int(rng.integers(10, len(blob)))]))
        res = CliRunner().invoke(app, ["doctor", str(p), "--json"])
        assert res.exit_code in (0, 1, 2), res.output
        out = json.loads(res.stdout)
        assert "internal error" not in out.get("error", ""), out
        assert all(f["code"] != "check-failed" for f in out.get("findings", [])), out
        seen.add(res.exit_code)
        p.unlink()
    assert {1, 2} <= seen


# -- CLI ----------------------------------------------------------------------------------
def test_cli_human_and_json(tmp_path, relu2):
    t, s = relu2.linears[Q]
    p = write_bitnetcpp_i2s(tmp_path / "s.gguf", relu2, patch={Q: i2s_bytes(t, -s)}, drop_kv=())
    res = CliRunner().invoke(app, ["doctor", str(p)])
    assert res.exit_code == 1
    assert f"error {Q}: " in res.stdout.replace("  ", " ") and "negative" in res.stdout
    res = CliRunner().invoke(app, ["doctor", str(p), "--json", "--engine", "bitnet.cpp"])
    data = json.loads(res.stdout)
    assert res.exit_code == 1 and data["ok"] is False and data["engine"] == "bitnet.cpp"
    assert any(f["code"] == "scale-negative" and f["subject"] == Q for f in data["findings"])
    res = CliRunner().invoke(app, ["doctor", str(p), "--engine", "vllm"])
    assert res.exit_code == 2


# -- --kernel-config (bitconv.kernel_check) ------------------------------------------------
def test_kernel_config_matches_and_mismatches(tmp_path, silu_ckpt):
    from bitconv.convert import convert
    from bitconv.pack.tiles import TileConfig, read_kernel_config, write_kernel_config

    out, ini = tmp_path / "tl2.gguf", tmp_path / "kernel_config.ini"
    convert(silu_ckpt, out, layout="tl2", emit_kernel_config=ini)
    assert [f.code for f in doctor(out, kernel_config=ini).findings] == ["type-id-ambiguous"]  # a warning only
    build = read_kernel_config(ini)
    build[(512, 256)] = TileConfig(256, 192, 32)
    bad = tmp_path / "other.ini"
    write_kernel_config(bad, build)
    r = doctor(out, kernel_config=bad)
    bad_tiles = [f for f in r.findings if f.code == "kernel-config-mismatch"]
    assert {f.subject for f in bad_tiles} == {f"blk.{i}.{k}.weight" for i in (0, 1) for k in ("ffn_gate", "ffn_up")}
    assert all(f.severity == "error" and "BM=256 BK=192" in f.message for f in bad_tiles) and r.exit_code == 1
    res = CliRunner().invoke(app, ["doctor", str(out), "--kernel-config", str(bad), "--json"])
    assert res.exit_code == 1 and any(f["code"] == "kernel-config-mismatch" for f in json.loads(res.stdout)["findings"])


def test_kernel_config_on_foreign_tl_and_non_tl_files(tmp_path, silu, silu_ckpt):
    from bitconv.convert import convert

    ini = tmp_path / "kernel_config.ini"
    convert(silu_ckpt, tmp_path / "x.gguf", layout="tl2", emit_kernel_config=ini)
    r = doctor(_tl2_file(tmp_path, silu), kernel_config=ini)  # another tool's TL2: tiles unknown
    assert r.exit_code == 0 and {f.code for f in r.findings} >= {"tiles-unknown"}
    r = doctor(write_llamacpp_tq(tmp_path / "tq.gguf", silu), kernel_config=ini)
    assert [(f.code, f.severity) for f in r.findings] == [("kernel-config-not-applicable", "info")]
