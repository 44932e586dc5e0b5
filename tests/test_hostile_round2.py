"""Issue 25 items 4, 6 and 7: foreign GGUF metadata checked against the tensors, typed
errors (never a traceback) for hostile data, and the smaller cases.

GGUF sources are bitconv's own files with their key/values or tensor index rewritten by
the fuzzer's serializer (bench/fuzz.py), the way another tool's file would differ.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import sys
from pathlib import Path

import pytest

from bitconv.convert import convert
from hostile_helpers import assert_refused, one_error_line, run_cli, temp_leftovers

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import fuzz  # noqa: E402

TINY = dict(hidden=256, intermediate=256, layers=1, heads=2, kv_heads=1, vocab=320)


@pytest.fixture(scope="module")
def seed_gguf(tmp_path_factory, ckpt_factory):
    """A silu (arch bitnet) TQ2_0 GGUF and a llama one, with their parts for rewriting."""
    root = tmp_path_factory.mktemp("r2")
    out = {}
    for fam, arch in (("silu", "bitnet"), ("llama", "llama")):
        p = root / f"{fam}.gguf"
        convert(ckpt_factory(fam, **TINY), p, layout="tq2_0")
        out[arch] = (p, fuzz.gguf_parts(p))
    return out


def _rewrite(parts, dst: Path, *, kv_edit=None, tensor_edit=None) -> Path:
    kv, tensors, data, align = copy.deepcopy(parts)
    if kv_edit:
        kv = kv_edit(kv)
    if tensor_edit:
        tensor_edit(tensors)
    dst.write_bytes(fuzz.gguf_bytes(kv, tensors, data, align))
    return dst


def _set(kv, key, vtype, value, sub=None):
    return [k for k in kv if k[0] != key] + [(key, vtype, value, sub)]


# -- item 4: foreign GGUF metadata ---------------------------------------------------------
@pytest.mark.parametrize("key,value,why", [
    ("bitnet.attention.value_length", 7, "attn_v rows per kv head: 128"),
    # (key_length is the head size the reader takes: a wrong one already fails the shape check)
    ("bitnet.expert_count", 8, "no expert tensors"),
    ("bitnet.expert_used_count", 2, "no expert tensors"),
])
def test_carried_key_that_contradicts_the_tensors_is_refused(seed_gguf, tmp_path, key, value, why):
    """main carried them into the output with exit 0 (and doctor called the file clean)."""
    src = _rewrite(seed_gguf["bitnet"][1], tmp_path / "src.gguf", kv_edit=lambda kv: _set(kv, key, 4, value))
    out = tmp_path / "out"
    out.mkdir()
    r = run_cli("convert", src, out / "m.gguf")
    assert_refused(r, outdir=out, keep=set(), contains=(key, f"= {value}", "contradicts the tensors", why))


def test_partial_rotary_source_is_refused(seed_gguf, tmp_path):
    """key_length 128 with rope.dimension_count 64 rotates half of each head; bitconv writes
    rope.dimension_count = head size, so main wrote a full-rotary model with exit 0."""
    src = _rewrite(seed_gguf["bitnet"][1], tmp_path / "src.gguf", kv_edit=lambda kv: _set(
        _set(kv, "bitnet.attention.key_length", 4, 128), "bitnet.rope.dimension_count", 4, 64))
    out = tmp_path / "out"
    out.mkdir()
    assert_refused(run_cli("convert", src, out / "m.gguf"), outdir=out, keep=set(),
                   contains=("bitnet.rope.dimension_count = 64", "rotate the whole head"))


def test_carried_keys_that_agree_are_kept(seed_gguf, tmp_path):
    from bitconv.readers.gguf_file import GGUFFile

    src = _rewrite(seed_gguf["bitnet"][1], tmp_path / "src.gguf",
                   kv_edit=lambda kv: _set(_set(kv, "bitnet.attention.value_length", 4, 128),
                                           "bitnet.expert_count", 4, 0))
    r = run_cli("convert", src, tmp_path / "m.gguf", "--layout", "i2_s")
    assert r.exit_code == 0, r.output
    f = GGUFFile(tmp_path / "m.gguf")
    assert f.get("bitnet-b1.58.attention.value_length", f.get("bitnet.attention.value_length")) == 128


def test_gguf_source_without_tokenizer_says_so(seed_gguf, tmp_path):
    """main converted it without a word into a file bitconv's own doctor rejects."""
    src = _rewrite(seed_gguf["bitnet"][1], tmp_path / "src.gguf",
                   kv_edit=lambda kv: [k for k in kv if not k[0].startswith("tokenizer.")])
    r = run_cli("convert", src, tmp_path / "m.gguf")
    assert r.exit_code == 0, r.output
    assert "no tokenizer" in r.stderr and "will not load it" in r.stderr


def test_empty_and_nested_arrays(seed_gguf, tmp_path):
    """An empty array crashed gguf-py's writer (ValueError after the temp file was half
    written); an array of arrays is something ggml's reader refuses, so it is not carried."""
    from bitconv.readers.gguf_file import GGUFFile

    src = _rewrite(seed_gguf["bitnet"][1], tmp_path / "e.gguf", kv_edit=lambda kv: _set(kv, "general.tags", 9, [], 8))
    r = run_cli("convert", src, tmp_path / "m.gguf")
    assert r.exit_code == 0, r.output
    assert GGUFFile(tmp_path / "m.gguf").get("general.tags") == []
    src = _rewrite(seed_gguf["bitnet"][1], tmp_path / "n.gguf",
                   kv_edit=lambda kv: _set(kv, "general.tags", 9, [[1, 2]], 9))
    out = tmp_path / "out"
    out.mkdir()
    assert_refused(run_cli("convert", src, out / "m.gguf"), outdir=out, keep=set(),
                   contains=("general.tags", "array of arrays"))


# -- item 6: typed errors, never a traceback ---------------------------------------------
def test_complete_output_with_markup_in_its_name_exits_0(ckpt_factory, tmp_path):
    """main: the file was written, then the printer raised MarkupError: exit 1, traceback."""
    (tmp_path / "o[").mkdir()  # the name is the folder o[ and the file x].gguf
    out = tmp_path / "o[/x].gguf"
    r = run_cli("convert", ckpt_factory("silu", **TINY), out)
    assert r.exit_code == 0, r.output
    assert out.is_file() and "o[/x].gguf" in r.output.replace("\n", "")


def test_markup_in_an_architecture_name_is_printed_as_is(seed_gguf, tmp_path):
    src = _rewrite(seed_gguf["bitnet"][1], tmp_path / "src.gguf",
                   kv_edit=lambda kv: _set(kv, "general.architecture", 8, "[/x][bold]evil"))
    out = tmp_path / "out"
    out.mkdir()
    line = assert_refused(run_cli("convert", src, out / "m.gguf"), outdir=out, keep=set())
    assert "[/x][bold]evil" in line
    r = run_cli("inspect", src)  # (a bitconv style name in data, like [bold], still styles a human info line)
    assert r.exit_code == 0 and "Traceback" not in r.output and "[/x]" in r.output.replace("\n", "")


@pytest.mark.parametrize("what", ["config.json", "tokenizer.json", "tokenizer_config.json", "index", "manifest"])
def test_100k_deep_json_is_a_typed_error(ckpt_factory, tmp_path, what):
    """main: RecursionError (an internal error, exit 1)."""
    deep = "[" * 100_000 + "]" * 100_000
    if what == "manifest":
        from bitconv.release import MANIFEST_NAME

        rel = tmp_path / "rel"
        rel.mkdir()
        (rel / MANIFEST_NAME).write_text(deep)
        r = run_cli("check", rel / MANIFEST_NAME)
        assert_refused(r, contains=("nested too deeply",))
        return
    src = tmp_path / "src"
    shutil.copytree(ckpt_factory("llama", shards=2, **TINY) if what == "index" else ckpt_factory("silu", **TINY), src)
    target = src / ("model.safetensors.index.json" if what == "index" else what)
    target.write_text('{"a": ' + deep + "}")
    out = tmp_path / "out"
    out.mkdir()
    assert_refused(run_cli("convert", src, out / "m.gguf"), outdir=out, keep=set(), contains=(target.name,))


def test_context_length_beyond_uint32_is_refused_when_read(ckpt_factory, tmp_path):
    """main: 2^32 passed the range check and failed packing the GGUF's uint32 (exit 1)."""
    src = tmp_path / "src"
    shutil.copytree(ckpt_factory("silu", **TINY), src)
    cfg = json.loads((src / "config.json").read_text())
    cfg["max_position_embeddings"] = 2 ** 32
    (src / "config.json").write_text(json.dumps(cfg))
    out = tmp_path / "out"
    out.mkdir()
    assert_refused(run_cli("convert", src, out / "m.gguf"), outdir=out, keep=set(),
                   contains=("max_position_embeddings", "4294967295"))


def test_block_type_with_k_below_its_block_is_refused_on_read(seed_gguf, tmp_path):
    """A TQ2_0 tensor with K = 128 has no whole block: main unpacked it into uninitialized
    values (or crashed reducing an empty scale array)."""
    import numpy as np

    from bitconv.errors import CorruptFileError
    from bitconv.pack import get_layout
    from bitconv.readers.gguf_file import GGUFFile

    for name in ("tq2_0", "tq1_0", "q2_0"):
        lay = get_layout(name)
        with pytest.raises(CorruptFileError, match="K is not a multiple"):
            lay.unpack(np.zeros(lay.nbytes((4, 32)), np.uint8), (4, 32), "w", group="row")

    def shrink(tensors):
        for t in tensors:
            if t[0] == "blk.0.attn_q.weight":
                t[1] = [128, 512]
    src = _rewrite(seed_gguf["bitnet"][1], tmp_path / "k.gguf", tensor_edit=shrink)
    with pytest.raises(CorruptFileError, match="ne.0. = 128 is not a multiple of the TQ2_0 block size 256"):
        GGUFFile(src)


def test_llama_qk_shape_checked_before_unpermuting(seed_gguf, tmp_path):
    """head_count 256 makes q rows not pairs per head: main reshaped them and raised ValueError."""
    def heads(kv):
        kv = _set(kv, "llama.attention.head_count", 4, 256)
        kv = _set(kv, "llama.attention.head_count_kv", 4, 128)
        return _set(kv, "llama.rope.dimension_count", 4, 1)
    src = _rewrite(seed_gguf["llama"][1], tmp_path / "qk.gguf", kv_edit=heads)
    out = tmp_path / "out"
    out.mkdir()
    assert_refused(run_cli("convert", src, out / "m.gguf"), outdir=out, keep=set(),
                   contains=("blk.0.attn_q.weight", "256 heads"))


# -- item 7 ----------------------------------------------------------------------------------
def test_doctor_non_string_architecture_is_an_error(seed_gguf, tmp_path):
    """main: exit 0 on general.architecture = 5."""
    src = _rewrite(seed_gguf["bitnet"][1], tmp_path / "a.gguf", kv_edit=lambda kv: _set(kv, "general.architecture", 4, 5))
    r = run_cli("doctor", src)
    assert r.exit_code == 1 and "not a string" in r.output, r.output


def test_inspect_names_a_non_string_token_array(seed_gguf, tmp_path):
    """main reported 'tokenizer size 0' for 320 u32 tokens."""
    from bitconv.inspect_file import inspect_path

    src = _rewrite(seed_gguf["bitnet"][1], tmp_path / "t.gguf",
                   kv_edit=lambda kv: _set(kv, "tokenizer.ggml.tokens", 9, list(range(320)), 4))
    tok = inspect_path(src)["tokenizer"]
    assert tok["size"] is None and "uint32" in tok["problem"]
    src = _rewrite(seed_gguf["bitnet"][1], tmp_path / "n.gguf",
                   kv_edit=lambda kv: [k for k in kv if k[0] != "tokenizer.ggml.tokens"])
    assert inspect_path(src)["tokenizer"]["size"] is None
    assert inspect_path(seed_gguf["bitnet"][0])["tokenizer"]["size"] == 320


def test_check_source_file_hashes_that_file(seed_gguf, tmp_path):
    """main hashed the recorded name in FILE's folder, not FILE: a renamed source checked
    'all match' against another file, and the real one went unchecked."""
    from bitconv.release import MANIFEST_NAME, check_manifest, release

    src = tmp_path / "model.gguf"
    shutil.copyfile(seed_gguf["bitnet"][0], src)
    release(src, tmp_path / "rel", layouts=["i2_s"])
    renamed = tmp_path / "moved" / "renamed.gguf"
    renamed.parent.mkdir()
    shutil.copyfile(src, renamed)
    assert check_manifest(tmp_path / "rel" / MANIFEST_NAME, source=renamed)["ok"]
    with open(renamed, "r+b") as f:  # the file given is now different
        f.seek(-1, os.SEEK_END)
        f.write(b"\x01")
    (renamed.parent / "model.gguf").write_bytes(src.read_bytes())  # a decoy under the recorded name
    rep = check_manifest(tmp_path / "rel" / MANIFEST_NAME, source=renamed)
    assert not rep["ok"] and "renamed.gguf" in rep["problems"][0]


def test_single_output_manifest_beside_the_source_folder(ckpt_factory, tmp_path, monkeypatch):
    """`convert src o.gguf --manifest` from the folder holding src/ was refused as
    'output contains the source'; only the files written there are checked now."""
    shutil.copytree(ckpt_factory("silu", **TINY), tmp_path / "src")
    monkeypatch.chdir(tmp_path)
    r = run_cli("convert", "src", "o.gguf", "--manifest")
    assert r.exit_code == 0, r.output
    assert Path("o.gguf").is_file() and Path("bitconv-manifest.json").is_file()
    r = run_cli("convert", "src", "src/o.gguf", "--manifest")  # inside the source: still refused
    assert r.exit_code == 2 and "source" in one_error_line(r)
    assert [p.name for p in tmp_path.rglob("*") if p.name.endswith(".tmp")] == []


@pytest.mark.parametrize("value,message", [("sliding_attention", "must be a list of strings"),
                                           (["full_attention", 3], "must be a list of strings"),
                                           (["full_attention", "chunked"], "'chunked' is not supported"),
                                           (["sliding_attention"], "sliding-window")])
def test_qwen3_layer_types_are_read_not_ignored(ckpt_factory, tmp_path, value, message):
    """main ignored a string ('sliding_attention') and wrote a full-attention model, exit 0."""
    src = tmp_path / "src"
    shutil.copytree(ckpt_factory("qwen3", **TINY), src)
    cfg = json.loads((src / "config.json").read_text())
    cfg["layer_types"] = value
    (src / "config.json").write_text(json.dumps(cfg))
    out = tmp_path / "out"
    out.mkdir()
    assert_refused(run_cli("convert", src, out / "m.gguf"), outdir=out, keep=set(), contains=(message,))
