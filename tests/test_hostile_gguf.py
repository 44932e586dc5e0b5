"""Hostile GGUF sources and options (issue 10 items 2-3).

A GGUF source's metadata of the wrong type or missing, its offsets misaligned, out of range
or overlapping, its names duplicated: each is exit 2 with one line naming the key or tensor
(llama.cpp refuses the same files). Options that name impossible things (a folder as --text,
--device banana) are usage errors, not internal ones.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from bitconv.convert import convert
from hostile_helpers import assert_refused, run_cli, tree_digest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
from fuzz import gguf_bytes, gguf_parts  # noqa: E402


@pytest.fixture(scope="module")
def seed_gguf(tmp_path_factory, ckpt_factory) -> Path:
    p = tmp_path_factory.mktemp("g") / "seed.gguf"
    convert(ckpt_factory("silu", seed=0), p, layout="i2_s")
    return p


@pytest.fixture(scope="module")
def parts(seed_gguf):
    return gguf_parts(seed_gguf)


def _kv(kv, key, vtype, value, sub=None):
    out = [x for x in kv if x[0] != key]
    if vtype is not None:
        out.append((key, vtype, value, sub))
    return out


def _write(tmp_path: Path, kv, tensors, data, align=32, name="bad.gguf") -> Path:
    p = tmp_path / name
    p.write_bytes(gguf_bytes(kv, tensors, data, align))
    return p


def _refused(src: Path, outdir: Path, *contains):
    before = tree_digest(src)
    r = run_cli("convert", src, outdir / "m.gguf", "--layout", "tq2_0")
    line = assert_refused(r, outdir=outdir, src=src, before=before, contains=contains, keep=set())
    assert str(src) in line
    return line


UINT32, INT32, FLOAT32, BOOL, STRING, ARRAY, UINT64 = 4, 5, 6, 7, 8, 9, 10


@pytest.mark.parametrize("vtype,value,sub", [(UINT32, 0, None), (STRING, "abc", None), (UINT32, 48, None),
                                             (FLOAT32, 32.0, None), (ARRAY, [32], UINT32)])
def test_alignment_invalid(parts, tmp_path, outdir, vtype, value, sub):
    kv, tensors, data, align = parts
    src = _write(tmp_path, _kv(kv, "general.alignment", vtype, value, sub), tensors, data, align)
    _refused(src, outdir, "general.alignment")


@pytest.mark.parametrize("key,vtype,value,sub,expect", [
    ("general.architecture", UINT32, 7, None, "general.architecture"),
    ("general.architecture", ARRAY, ["bitnet"], STRING, "general.architecture"),
    ("general.architecture", None, None, None, "general.architecture"),
    ("tokenizer.ggml.tokens", UINT32, 5, None, "tokenizer.ggml.tokens"),
    ("tokenizer.ggml.tokens", ARRAY, [1, 2, 3], INT32, "tokenizer.ggml.tokens"),
    ("bitnet.block_count", None, None, None, "bitnet.block_count"),
    ("bitnet.block_count", STRING, "2", None, "bitnet.block_count"),
    ("bitnet.attention.head_count", UINT32, 0, None, "bitnet.attention.head_count"),
    ("bitnet.embedding_length", UINT64, 2**40, None, "bitnet.embedding_length"),
    ("bitnet.attention.layer_norm_rms_epsilon", STRING, "tiny", None, "layer_norm_rms_epsilon"),
    ("bitnet.block_count", UINT32, 3, None, "num_hidden_layers is 3"),
    ("bitnet.feed_forward_length", UINT32, 1024, None, "intermediate 1024"),
    ("general.name", UINT32, 1, None, "general.name"),
    ("bitconv.group_size", UINT32, 1, None, "bitconv.group_size"),
])
def test_metadata_of_wrong_type_or_missing(parts, tmp_path, outdir, key, vtype, value, sub, expect):
    kv, tensors, data, align = parts
    src = _write(tmp_path, _kv(kv, key, vtype, value, sub), tensors, data, align)
    _refused(src, outdir, expect)


def test_duplicate_metadata_key(parts, tmp_path, outdir):
    kv, tensors, data, align = parts
    src = _write(tmp_path, kv + [kv[0]], tensors, data, align)
    _refused(src, outdir, "appears twice", kv[0][0])


def test_misaligned_offset(parts, tmp_path, outdir):
    kv, tensors, data, align = parts
    tensors = [list(t) for t in tensors]
    tensors[1][3] += 1
    src = _write(tmp_path, kv, tensors, data + b"\0" * 64, align)
    _refused(src, outdir, tensors[1][0], "alignment")


def test_overlapping_tensors(parts, tmp_path, outdir):
    kv, tensors, data, align = parts
    tensors = [list(t) for t in tensors]
    tensors[2][3] = tensors[1][3]
    src = _write(tmp_path, kv, tensors, data, align)
    _refused(src, outdir, "overlap")


def test_duplicate_tensor_name(parts, tmp_path, outdir):
    kv, tensors, data, align = parts
    tensors = [list(t) for t in tensors]
    tensors[2][0] = tensors[1][0]
    src = _write(tmp_path, kv, tensors, data, align)
    _refused(src, outdir, "appears twice", tensors[1][0])


def test_tensor_past_end_of_file(parts, tmp_path, outdir):
    kv, tensors, data, align = parts
    src = _write(tmp_path, kv, tensors, data[: len(data) // 2], align)
    _refused(src, outdir, "ends at byte")


def test_offset_beyond_any_file(parts, tmp_path, outdir):
    kv, tensors, data, align = parts
    tensors = [list(t) for t in tensors]
    tensors[0][3] = 2**63 - 32
    src = _write(tmp_path, kv, tensors, data, align)
    _refused(src, outdir, tensors[0][0])


@pytest.mark.parametrize("ne", [[], [1, 1, 1, 1, 1], [2**63, 2], [2**40, 2**40]])
def test_absurd_dimensions(parts, tmp_path, outdir, ne):
    kv, tensors, data, align = parts
    tensors = [list(t) for t in tensors]
    tensors[0][1] = ne
    src = _write(tmp_path, kv, tensors, data, align)
    _refused(src, outdir, tensors[0][0])


def test_dimensions_swapped_disagree_with_config(parts, tmp_path, outdir):
    kv, tensors, data, align = parts
    tensors = [list(t) for t in tensors]
    i = next(i for i, t in enumerate(tensors) if t[0] == "blk.0.ffn_norm.weight")
    tensors[i][1] = [tensors[i][1][0] // 2, 2]
    src = _write(tmp_path, kv, tensors, data, align)
    _refused(src, outdir, "blk.0.ffn_norm.weight", "shape")


def test_unknown_ggml_type(parts, tmp_path, outdir):
    kv, tensors, data, align = parts
    tensors = [list(t) for t in tensors]
    tensors[0][2] = 1000
    src = _write(tmp_path, kv, tensors, data, align)
    _refused(src, outdir, "type 1000")


def test_deeply_nested_arrays(parts, tmp_path, outdir):
    kv, tensors, data, align = parts
    import struct

    nested = b""
    for _ in range(2000):  # array of array of array ... (would overflow the recursion limit)
        nested = struct.pack("<IQ", ARRAY, 1) + nested
    key = b"evil.nested"
    raw = gguf_bytes(kv, tensors, data, align)
    # splice one extra key/value right after the header, bumping the kv count
    n_kv = struct.unpack_from("<Q", raw, 16)[0]
    head = raw[:16] + struct.pack("<Q", n_kv + 1)
    extra = struct.pack("<Q", len(key)) + key + struct.pack("<I", ARRAY) + nested + struct.pack("<IQ", UINT32, 0)
    src = tmp_path / "nested.gguf"
    src.write_bytes(head + extra + raw[24:])
    _refused(src, outdir, "nested")


def test_missing_layer_tensor(parts, tmp_path, outdir):
    kv, tensors, data, align = parts
    tensors = [list(t) for t in tensors if t[0] != "blk.1.attn_v.weight"]
    src = _write(tmp_path, kv, tensors, data, align)
    _refused(src, outdir, "blk.1.attn_v.weight", "missing")


@pytest.mark.parametrize("edit", ["arch_int", "tokens_int"])
def test_inspect_of_hostile_gguf(parts, tmp_path, edit):
    kv, tensors, data, align = parts
    kv = _kv(kv, "general.architecture", UINT32, 3) if edit == "arch_int" else _kv(
        kv, "tokenizer.ggml.tokens", UINT32, 9)
    src = _write(tmp_path, kv, tensors, data, align)
    r = run_cli("inspect", src)
    if edit == "arch_int":
        assert_refused(r, contains=("general.architecture",))
    else:  # inspect shows what is there; a wrong-typed token list is simply not counted
        assert r.exit_code == 0, r.output


# -- inspect of bad folders -------------------------------------------------------------
@pytest.mark.parametrize("name,text", [("config.json", "{oops"), ("config.json", "[1]"),
                                       ("tokenizer.json", "{oops"), ("tokenizer.json", "[]")])
def test_inspect_folder_with_bad_json(silu_ckpt, copy_ckpt, name, text):
    src = copy_ckpt(silu_ckpt)
    (src / name).write_text(text)
    r = run_cli("inspect", src)
    assert_refused(r, contains=(name,))


def test_inspect_missing_path(tmp_path):
    assert_refused(run_cli("inspect", tmp_path / "nope.gguf"), contains=("nope.gguf",))


# -- options ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def artifact(tmp_path_factory, ckpt_factory) -> tuple[Path, Path]:
    src = ckpt_factory("silu", seed=0)
    p = tmp_path_factory.mktemp("art") / "a.gguf"
    convert(src, p, layout="i2_s")
    return p, src


def test_verify_text_is_a_folder(artifact, tmp_path):
    art, src = artifact
    r = run_cli("verify", art, "--source", src, "--text", tmp_path)
    assert_refused(r, contains=("--text", str(tmp_path)))


def test_verify_device_banana(artifact):
    art, src = artifact
    r = run_cli("verify", art, "--source", src, "--device", "banana")
    assert_refused(r, contains=("--device", "banana"))


def test_verify_with_unreadable_tokenizer_json(artifact, copy_ckpt, tmp_path):
    art, src = artifact
    bad = copy_ckpt(src)
    tok = json.loads((bad / "tokenizer.json").read_text())
    tok["model"]["merges"] = [["zz", "qq"]]  # merges of tokens not in the vocabulary
    (bad / "tokenizer.json").write_text(json.dumps(tok))
    r = run_cli("verify", art, "--source", bad)
    assert_refused(r, contains=("tokenizer.json",))


@pytest.mark.parametrize("args,expect", [(["--max-shard-size", "lots"], "lots"), (["--group-size", "-1"], "group"),
                                         (["--embedding-type", "q9"], "--embedding-type"),
                                         (["--layout", "tq2_0", "--format", "onnx"], "onnx")])
def test_bad_options(silu_ckpt, outdir, args, expect):
    r = run_cli("convert", silu_ckpt, outdir / "m.gguf", *args)
    assert_refused(r, outdir=outdir, contains=(expect,), keep=set())


def test_norm_in_a_type_gguf_py_cannot_dequantize(parts, tmp_path, outdir):
    """Found by bench/fuzz.py (seed 1, case 5496): gguf.quants raised NotImplementedError."""
    import gguf

    kv, tensors, data, align = parts
    tensors = [list(t) for t in tensors]
    i = next(i for i, t in enumerate(tensors) if t[0] == "blk.0.attn_norm.weight")
    tensors[i][2] = int(gguf.GGMLQuantizationType.Q1_0)
    src = _write(tmp_path, kv, tensors, data, align)
    _refused(src, outdir, "blk.0.attn_norm.weight", "Q1_0")
