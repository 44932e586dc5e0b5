"""Bad input (issue 2 item 9): one test each, through the CLI.

Every case must exit 2 (1 for a failure on valid input), print one clear line that names
the file or tensor at fault (no traceback), and leave nothing in the output folder: no
final file and no temporary file.
"""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
from pathlib import Path

import gguf
import pytest
import torch
from typer.testing import CliRunner

from hostile_helpers import rewrite_weights

from bitconv.cli import app
from bitconv.convert import convert
from bitconv.errors import ConversionError
import waiting

runner = CliRunner()


def run_cli(*args: str):
    return runner.invoke(app, [str(a) for a in args])


def error_line(result) -> str:
    """The single error line on stderr (and assert it is single and traceback-free)."""
    # a `note:` line may come first on a cold numba cache (issue 21 item 18: a first run says it compiles)
    lines = [ln for ln in result.stderr.splitlines() if ln.strip() and not ln.startswith("note: compiling")]
    assert "Traceback" not in result.output, result.output
    errors = [ln for ln in lines if ln.startswith("error:")]
    assert len(errors) == 1 and len(lines) == 1, f"expected one error line, got:\n{result.stderr}"
    return errors[0]


def assert_bad_input(result, outdir: Path, *must_contain: str, code: int = 2, keep: set[str] = frozenset()) -> str:
    assert result.exit_code == code, f"exit {result.exit_code}:\n{result.output}"
    line = error_line(result)
    for text in must_contain:
        assert text in line, f"{text!r} not in {line!r}"
    left = {p.name for p in outdir.iterdir()}
    assert left == set(keep), f"left behind in the output folder: {sorted(left - set(keep))}"
    return line


def test_missing_config_json(silu_ckpt, copy_ckpt, outdir):
    src = copy_ckpt(silu_ckpt)
    (src / "config.json").unlink()
    r = run_cli("convert", src, outdir / "m.gguf")
    assert_bad_input(r, outdir, str(src), "config.json")


def test_unknown_architecture_lists_supported(silu_ckpt, copy_ckpt, outdir):
    src = copy_ckpt(silu_ckpt)
    cfg = json.loads((src / "config.json").read_text())
    cfg["architectures"] = ["GPT2LMHeadModel"]
    (src / "config.json").write_text(json.dumps(cfg))
    r = run_cli("convert", src, outdir / "m.gguf")
    assert_bad_input(r, outdir, "GPT2LMHeadModel", "config.json", "BitNetForCausalLM", "BitnetForCausalLM",
                     "LlamaForCausalLM")


def test_truncated_safetensors(silu_ckpt, copy_ckpt, outdir):
    src = copy_ckpt(silu_ckpt)
    p = src / "model.safetensors"
    data = p.read_bytes()
    p.write_bytes(data[: len(data) * 2 // 3])
    r = run_cli("convert", src, outdir / "m.gguf")
    line = assert_bad_input(r, outdir, str(p))
    assert "truncated" in line or "corrupt" in line


def test_truncated_shard_of_sharded_checkpoint(sharded_ckpt, copy_ckpt, outdir):
    src = copy_ckpt(sharded_ckpt)
    p = sorted(src.glob("model-*.safetensors"))[-1]
    data = p.read_bytes()
    p.write_bytes(data[: len(data) - 100])
    r = run_cli("convert", src, outdir / "m.gguf")
    assert_bad_input(r, outdir, str(p))


def test_corrupt_safetensors_header(silu_ckpt, copy_ckpt, outdir):
    src = copy_ckpt(silu_ckpt)
    p = src / "model.safetensors"
    data = bytearray(p.read_bytes())
    data[8:24] = b"{not json at all"
    p.write_bytes(bytes(data))
    r = run_cli("convert", src, outdir / "m.gguf")
    assert_bad_input(r, outdir, str(p), "header")


def test_safetensors_header_length_absurd(silu_ckpt, copy_ckpt, outdir):
    src = copy_ckpt(silu_ckpt)
    p = src / "model.safetensors"
    data = bytearray(p.read_bytes())
    data[:8] = (2**62).to_bytes(8, "little")
    p.write_bytes(bytes(data))
    r = run_cli("convert", src, outdir / "m.gguf")
    assert_bad_input(r, outdir, str(p))


@pytest.mark.parametrize("where", ["parent", "absolute"])
def test_index_pointing_outside_model_folder_refused(sharded_ckpt, copy_ckpt, outdir, tmp_path, where):
    src = copy_ckpt(sharded_ckpt)
    shard = sorted(src.glob("model-*.safetensors"))[0]
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    target = elsewhere / shard.name
    shard.rename(target)  # the file exists, outside: it must be refused, not followed
    rel = f"../elsewhere/{shard.name}" if where == "parent" else str(target)
    index = src / "model.safetensors.index.json"
    doc = json.loads(index.read_text())
    doc["weight_map"] = {k: (rel if v == shard.name else v) for k, v in doc["weight_map"].items()}
    index.write_text(json.dumps(doc))
    r = run_cli("convert", src, outdir / "m.gguf")
    assert_bad_input(r, outdir, str(index), "outside the model folder", shard.name)


def test_index_listing_missing_shard(sharded_ckpt, copy_ckpt, outdir):
    src = copy_ckpt(sharded_ckpt)
    shard = sorted(src.glob("model-*.safetensors"))[1]
    shard.unlink()
    r = run_cli("convert", src, outdir / "m.gguf")
    assert_bad_input(r, outdir, "model.safetensors.index.json", shard.name, "missing")


def test_nan_weight_names_tensor(silu_ckpt, copy_ckpt, outdir):
    src = copy_ckpt(silu_ckpt)

    def edit(w):
        w["model.layers.1.mlp.down_proj.weight"][3, 7] = float("nan")

    rewrite_weights(src, edit)
    r = run_cli("convert", src, outdir / "m.gguf")
    assert_bad_input(r, outdir, "blk.1.ffn_down.weight", "NaN")


def test_inf_weight_names_tensor(silu_ckpt, copy_ckpt, outdir):
    src = copy_ckpt(silu_ckpt)

    def edit(w):
        w["model.layers.0.self_attn.k_proj.weight"][0, 0] = float("inf")

    rewrite_weights(src, edit)
    r = run_cli("convert", src, outdir / "m.gguf")
    assert_bad_input(r, outdir, "blk.0.attn_k.weight", "Inf")


def test_inf_in_norm_names_tensor(silu_ckpt, copy_ckpt, outdir):
    src = copy_ckpt(silu_ckpt)

    def edit(w):
        w["model.norm.weight"][5] = float("-inf")

    rewrite_weights(src, edit)
    r = run_cli("convert", src, outdir / "m.gguf", "--layout", "tq1_0")
    assert_bad_input(r, outdir, "output_norm.weight", "Inf")


def _clean_hf_env(hf_home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    env.update(HF_HOME=str(hf_home), HF_HUB_OFFLINE="1", HF_HUB_DISABLE_TELEMETRY="1", NO_COLOR="1",
               TORCHDYNAMO_DISABLE="1")
    return env


def test_repo_not_in_cache_while_offline(outdir, tmp_path):
    hf_home = tmp_path / "hf-home"
    hf_home.mkdir()
    out = outdir / "m.gguf"
    p = waiting.run([sys.executable, "-m", "bitconv.cli", "convert", "someorg/some-model", str(out)], 120,
                    env=_clean_hf_env(hf_home), capture_output=True, text=True)
    assert p.returncode == 2, p.stdout + p.stderr
    lines = [ln for ln in p.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and "Traceback" not in p.stderr, p.stderr
    assert "someorg/some-model" in lines[0] and "cache" in lines[0]
    assert list(outdir.iterdir()) == []


def test_existing_output_without_force_untouched(silu_ckpt, outdir):
    out = outdir / "m.gguf"
    out.write_bytes(b"precious")
    before = out.stat().st_mtime_ns
    r = run_cli("convert", silu_ckpt, out)
    assert_bad_input(r, outdir, str(out), "--force", keep={"m.gguf"})
    assert out.read_bytes() == b"precious" and out.stat().st_mtime_ns == before
    r = run_cli("convert", silu_ckpt, out, "--force")  # and --force does overwrite it
    assert r.exit_code == 0, r.output
    assert out.read_bytes()[:4] == b"GGUF"


def test_output_folder_missing(silu_ckpt, tmp_path):
    r = run_cli("convert", silu_ckpt, tmp_path / "no" / "such" / "dir" / "m.gguf")
    assert r.exit_code == 2
    assert "does not exist" in error_line(r)
    assert not (tmp_path / "no").exists()


def test_unknown_layout_lists_layouts(silu_ckpt, outdir):
    r = run_cli("convert", silu_ckpt, outdir / "m.gguf", "--layout", "q4_0")
    # the hint names every folder format (it named safetensors only once MLX and
    # compressed-tensors existed) and that they take no --layout
    assert_bad_input(r, outdir, "q4_0", "tq1_0", "tq2_0", "safetensors, mlx, compressed-tensors", "no --layout")


def test_unknown_layout_reported_before_reading_the_source(outdir, monkeypatch):
    """A typo in --layout must not cost a download: it is checked before the source is opened."""
    import bitconv.convert as conv

    def no_open(*a, **k):
        raise AssertionError("the source was opened before the options were checked")

    monkeypatch.setattr(conv, "open_source", no_open)
    r = run_cli("convert", "someorg/some-model", outdir / "m.gguf", "--layout", "q4_0")
    assert_bad_input(r, outdir, "q4_0", "tq2_0")


@pytest.mark.parametrize("value,expect", [("abc", "--group-size"), ("0", "--group-size"), ("-3", "--group-size"),
                                          ("100", "multiple of 256"), ("512", "blk.0.attn_q.weight")])
def test_bad_group_size(silu_ckpt, outdir, value, expect):
    r = run_cli("convert", silu_ckpt, outdir / "m.gguf", f"--group-size={value}")
    assert_bad_input(r, outdir, expect)


def test_disk_full_exits_1_and_leaves_nothing(silu_ckpt, outdir, monkeypatch):
    calls = []
    original = gguf.GGUFWriter.write_tensor_data

    def full(self, *a, **k):
        calls.append(1)
        if len(calls) == 4:
            raise OSError(errno.ENOSPC, "No space left on device")
        return original(self, *a, **k)

    monkeypatch.setattr(gguf.GGUFWriter, "write_tensor_data", full)
    out = outdir / "m.gguf"
    with pytest.raises(ConversionError) as ei:
        convert(silu_ckpt, out)
    assert ei.value.exit_code == 1 and "disk full" in str(ei.value) and str(out) in str(ei.value)
    assert list(outdir.iterdir()) == []
    calls.clear()
    r = run_cli("convert", silu_ckpt, out)
    assert_bad_input(r, outdir, "disk full", code=1)


def test_unexpected_error_is_exit_1_one_line(silu_ckpt, outdir, monkeypatch):
    """A bug (not a typed error) still gives one line and exit 1; --debug shows the traceback."""
    import bitconv.writers.gguf_writer as gw

    def broken(*a, **k):
        raise ZeroDivisionError("boom")

    monkeypatch.setattr(gw, "float_to_bytes", broken)
    r = run_cli("convert", silu_ckpt, outdir / "m.gguf")
    assert_bad_input(r, outdir, "internal error", "boom", code=1)
    r = run_cli("convert", silu_ckpt, outdir / "m.gguf", "--debug")
    assert r.exit_code == 1 and "Traceback" in r.stderr
    assert list(outdir.iterdir()) == []


def test_unknown_tensor_in_checkpoint(silu_ckpt, copy_ckpt, outdir):
    """A checkpoint with a tensor the architecture does not know is refused by name."""
    src = copy_ckpt(silu_ckpt)

    def edit(w):
        w["model.layers.0.self_attn.q_proj.bias"] = torch.zeros(256, dtype=torch.bfloat16)

    rewrite_weights(src, edit)
    r = run_cli("convert", src, outdir / "m.gguf")
    assert_bad_input(r, outdir, "model.layers.0.self_attn.q_proj.bias")
