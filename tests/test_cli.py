"""The `bitconv` command line: --json, --dry-run, inspect, --help, exit codes 0/1/2."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from bitconv import __version__
from bitconv.cli import app
from bitconv.readers.gguf_file import GGUFFile
import waiting

runner = CliRunner(env={"COLUMNS": "250", "NO_COLOR": "1"})


def run(*args) -> "object":
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def tq2_file(silu_ckpt, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("cli") / "tiny-tq2_0.gguf"
    r = run("convert", silu_ckpt, out, "--quiet")
    assert r.exit_code == 0, r.output
    return out


def test_convert_json_document(silu_ckpt, tmp_path):
    out = tmp_path / "m.gguf"
    r = run("convert", silu_ckpt, out, "--layout", "tq1_0", "--json")
    assert r.exit_code == 0, r.output
    data = json.loads(r.stdout)  # stdout is exactly one JSON document
    assert data["ok"] is True and data["written"] is True and data["output_bytes"] == out.stat().st_size
    plan = data["plan"]
    assert plan["arch"] == "bitnet" and plan["engine"] == "llama.cpp" and plan["format"] == "gguf"
    assert plan["options"]["layout"] == "tq1_0" and plan["source"]["kind"] == "folder"
    assert plan["hparams"]["num_layers"] == 2 and plan["hparams"]["hidden_act"] == "silu"
    assert len(plan["tensors"]) == 24 and plan["tensor_bytes"] == sum(t["bytes"] for t in plan["tensors"])
    stats = data["tensors"]
    assert len(stats) == 14
    for s in stats:
        assert set(s) >= {"name", "shape", "scale", "scale_min", "scale_max", "zero_fraction", "rel_error"}
        assert s["scale"] == s["scale_min"] == s["scale_max"] > 0  # one scale per tensor by default
        assert 0 < s["rel_error"] < 1
    summary = data["summary"]
    assert summary["linears"] == 14
    assert summary["max_rel_error"] == max(s["rel_error"] for s in stats)
    assert 0 < summary["mean_zero_fraction"] < 1
    assert data["seconds"] >= 0


def test_convert_human_output(silu_ckpt, tmp_path):
    out = tmp_path / "m.gguf"
    r = run("convert", silu_ckpt, out)
    assert r.exit_code == 0, r.output
    assert "wrote" in r.stdout and "mean relative error" in r.stdout and "blk.0.attn_q.weight" in r.stdout
    assert "bitnet" in r.stdout


def test_convert_quiet_prints_nothing(silu_ckpt, tmp_path):
    r = run("convert", silu_ckpt, tmp_path / "m.gguf", "--quiet")
    assert r.exit_code == 0 and r.output.strip() == ""


def test_dry_run_writes_nothing_and_lists_plan(silu_ckpt, tmp_path, tq2_file):
    out = tmp_path / "plan.gguf"
    r = run("convert", silu_ckpt, out, "--dry-run", "--json")
    assert r.exit_code == 0, r.output
    assert list(tmp_path.iterdir()) == []
    data = json.loads(r.stdout)
    assert data["written"] is False and data["tensors"] == [] and data["output_bytes"] == 0
    planned = {t["name"]: t for t in data["plan"]["tensors"]}
    # the plan's tensors, types and byte counts are exactly what a real conversion writes
    real = GGUFFile(tq2_file)
    assert list(planned) == list(real.tensors)
    for name, info in real.tensors.items():
        assert planned[name]["bytes"] == info.nbytes, name
        assert planned[name]["type"].upper() == info.type_name, name
        assert tuple(planned[name]["shape"]) == info.shape, name
    r = run("convert", silu_ckpt, out, "--dry-run")
    assert r.exit_code == 0 and "nothing written" in r.stdout
    for text in ("blk.1.ffn_down.weight", "tq2_0", "f32", "33,792", "tensor data"):
        assert text in r.stdout, text
    assert list(tmp_path.iterdir()) == []


def test_dry_run_reports_refusals_too(relu2_ckpt, tmp_path):
    r = run("convert", relu2_ckpt, tmp_path / "x.gguf", "--layout", "tq2_0", "--dry-run")
    assert r.exit_code == 2 and "relu2" in r.stderr
    assert list(tmp_path.iterdir()) == []


def test_inspect_gguf(tq2_file):
    r = run("inspect", tq2_file, "--json")
    assert r.exit_code == 0, r.output
    info = json.loads(r.stdout)
    assert info["format"] == "gguf" and info["arch"] == "bitnet"
    assert info["hparams"]["block_count"] == 2 and info["hparams"]["attention.head_count_kv"] == 2
    assert info["tokenizer"] == {"model": "gpt2", "pre": info["tokenizer"]["pre"], "size": 512}
    assert info["bitconv"]["layout"] == "tq2_0" and info["general"]["general.file_type"] == 37
    assert info["file_bytes"] == tq2_file.stat().st_size
    tensors = {t["name"]: t for t in info["tensors"]}
    assert tensors["blk.0.ffn_down.weight"] == {"name": "blk.0.ffn_down.weight", "shape": [256, 512],
                                                "type": "TQ2_0", "bytes": 256 * 2 * 66}
    assert tensors["token_embd.weight"]["type"] == "F16"
    r = run("inspect", tq2_file)
    assert r.exit_code == 0
    for text in ("arch bitnet", "24 tensors", "embedding_length=256", "TQ2_0", "blk.0.ffn_down.weight", "tokenizer"):
        assert text in r.stdout, text


@pytest.mark.parametrize("target", ["folder", "file"])
def test_inspect_safetensors(silu_ckpt, target):
    path = silu_ckpt if target == "folder" else silu_ckpt / "model.safetensors"
    r = run("inspect", path, "--json")
    assert r.exit_code == 0, r.output
    info = json.loads(r.stdout)
    assert info["format"] == "safetensors" and info["arch"] == "BitnetForCausalLM"
    assert info["hparams"]["hidden_size"] == 256 and info["tokenizer"]["size"] > 0
    tensors = {t["name"]: t for t in info["tensors"]}
    assert tensors["model.layers.0.mlp.down_proj.weight"] == {
        "name": "model.layers.0.mlp.down_proj.weight", "shape": [256, 512], "type": "BF16", "bytes": 256 * 512 * 2}
    assert len(tensors) == 24
    r = run("inspect", path)
    assert r.exit_code == 0 and "model.layers.1.self_attn.q_proj.weight" in r.stdout and "BF16" in r.stdout


def test_inspect_bad_files_exit_2(tmp_path, tq2_file):
    trunc = tmp_path / "trunc.gguf"
    trunc.write_bytes(tq2_file.read_bytes()[:5000])
    garbage = tmp_path / "garbage.gguf"
    garbage.write_bytes(b"NOTGGUF" * 100)
    for path in (trunc, garbage, tmp_path / "missing.gguf", tmp_path / "notes.txt"):
        if path.name == "notes.txt":
            path.write_text("hello")
        r = run("inspect", path)
        assert r.exit_code == 2, (path, r.output)
        lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
        assert len(lines) == 1 and str(path) in lines[0] and "Traceback" not in r.output, r.stderr


@pytest.mark.parametrize("command", [[], ["convert"], ["inspect"], ["verify"], ["check"]])
def test_help(command):
    r = run(*command, "--help")
    assert r.exit_code == 0, r.output
    assert "Usage" in r.stdout
    if command == ["convert"]:
        for opt in ("--layout", "--group-size", "--json", "--dry-run", "--force", "--revision",
                    "--allow-engine-mismatch", "--debug"):
            assert opt in r.stdout, opt


def test_version():
    r = run("--version")
    assert r.exit_code == 0 and __version__ in r.stdout


def test_exit_codes(silu_ckpt, tmp_path):
    assert run("convert", silu_ckpt, tmp_path / "ok.gguf", "-q").exit_code == 0
    assert run("convert", silu_ckpt, tmp_path / "ok.gguf", "-q").exit_code == 2  # exists, no --force
    assert run("convert", tmp_path / "nope", tmp_path / "x.gguf").exit_code == 2  # no such source
    assert run("convert").exit_code == 2  # usage: missing arguments
    assert run("convert", silu_ckpt, tmp_path / "y.gguf", "--no-such-flag").exit_code == 2
    assert run("frobnicate").exit_code == 2


def test_console_script_json_error(tmp_path):
    """The installed entry point: --json errors are one JSON document on stdout, exit 2."""
    p = waiting.run([sys.executable, "-m", "bitconv.cli", "convert", str(tmp_path / "nope"),
                     str(tmp_path / "x.gguf"), "--json"], 120, capture_output=True, text=True)
    assert p.returncode == 2
    doc = json.loads(p.stdout)
    assert doc["ok"] is False and str(tmp_path / "nope") in doc["error"]
