"""Release mode (issue 6): several outputs from one read, manifest, check, model card, upload."""

from __future__ import annotations

import json
import os
from pathlib import Path

import jsonschema
import pytest
from typer.testing import CliRunner

from bitconv.cli import app
from bitconv.convert import convert
from bitconv.readers.safetensors_files import ShardSet
from bitconv.release import MANIFEST_NAME, MANIFEST_SCHEMA, check_manifest, release
from bitconv.synth import make_checkpoint

runner = CliRunner()


@pytest.fixture(scope="module")
def silu(tmp_path_factory) -> Path:
    return make_checkpoint(tmp_path_factory.mktemp("rel") / "silu", family="silu", seed=3)


@pytest.fixture(scope="module")
def relu2_odd(tmp_path_factory) -> Path:
    # ffn_down has K=384: no TQ layout can hold it, I2_S (K % 128) can.
    return make_checkpoint(tmp_path_factory.mktemp("rel") / "relu2", family="relu2", intermediate=384, seed=4)


def test_outputs_equal_single_converts_and_source_read_once(silu, tmp_path, monkeypatch):
    reads: dict[str, int] = {}
    original = ShardSet.get

    def counting_get(self, name, *a, **k):
        reads[name] = reads.get(name, 0) + 1
        return original(self, name, *a, **k)

    monkeypatch.setattr(ShardSet, "get", counting_get)
    res = release(silu, tmp_path / "out", layouts=["tq2_0", "tq1_0"])
    assert res.ok and res.exit_code == 0
    assert reads and max(reads.values()) == 1, f"a tensor was read more than once: {reads}"
    monkeypatch.setattr(ShardSet, "get", original)
    for layout in ("tq2_0", "tq1_0"):
        multi = tmp_path / "out" / f"silu-{layout}.gguf"
        single = tmp_path / f"single-{layout}.gguf"
        convert(silu, single, layout=layout)
        assert multi.read_bytes() == single.read_bytes()


def test_manifest_deterministic_valid_and_checkable(silu, tmp_path):
    a = release(silu, tmp_path / "a", layouts=["tq2_0"])
    b = release(silu, tmp_path / "b", layouts=["tq2_0"])
    ma, mb = (tmp_path / d / MANIFEST_NAME for d in ("a", "b"))
    assert ma.read_bytes() == mb.read_bytes()
    manifest = json.loads(ma.read_text())
    schema = json.loads(MANIFEST_SCHEMA.read_text())
    jsonschema.validate(manifest, schema)
    assert manifest["schema"] == schema["$id"]  # the id the manifest names is the schema's own
    assert "created" not in manifest
    art = manifest["artifacts"][0]
    assert art["layout"] == "tq2_0" and art["tensor_count"] > 0
    import hashlib

    assert art["sha256"] == hashlib.sha256((tmp_path / "a" / art["path"]).read_bytes()).hexdigest()
    assert {f["path"] for f in manifest["source"]["files"]} >= {"config.json", "model.safetensors", "tokenizer.json"}
    assert check_manifest(ma)["ok"]
    stamped = release(silu, tmp_path / "c", layouts=["tq2_0"], timestamp=True)
    assert "created" in stamped.manifest


def test_check_names_each_mismatch(silu, tmp_path):
    release(silu, tmp_path, layouts=["tq2_0", "tq1_0"])
    m = tmp_path / MANIFEST_NAME
    r = runner.invoke(app, ["check", str(m), "--json"])
    assert r.exit_code == 0, r.output
    (tmp_path / "silu-tq1_0.gguf").write_bytes(b"tampered")
    (tmp_path / "silu-tq2_0.gguf").unlink()
    r = runner.invoke(app, ["check", str(m), "--json"])
    assert r.exit_code == 1
    report = json.loads(r.stdout)
    assert any("silu-tq1_0.gguf" in p and "changed" in p for p in report["problems"])
    assert any("silu-tq2_0.gguf" in p and "missing" in p for p in report["problems"])


def test_failing_layout_fails_alone_with_keep_going(relu2_odd, tmp_path):
    out = tmp_path / "rel"
    r = runner.invoke(app, ["convert", str(relu2_odd), str(out), "--layout", "tq2_0,i2_s", "--json"])
    assert r.exit_code == 2
    assert "tq2_0" in r.output and "--keep-going" in r.output
    assert not any(p.suffix == ".gguf" for p in out.glob("*")) if out.exists() else True
    r = runner.invoke(app, ["convert", str(relu2_odd), str(out), "--layout", "tq2_0,i2_s", "--keep-going", "--json"])
    assert r.exit_code == 2, r.output
    data = json.loads(r.stdout)
    by = {a["label"]: a for a in data["artifacts"]}
    assert by["i2_s"]["ok"] and (out / "relu2-i2_s.gguf").exists()
    assert not by["tq2_0"]["ok"] and "SiLU" in by["tq2_0"]["error"]
    assert not (out / "relu2-tq2_0.gguf").exists()
    manifest = json.loads((out / MANIFEST_NAME).read_text())
    assert [a["ok"] for a in manifest["artifacts"]] == [False, True]
    # --quiet is "errors only": the failed output is one error line naming it (it printed
    # nothing at all, exit 2, before), and nothing else is printed
    r = runner.invoke(app, ["convert", str(relu2_odd), str(tmp_path / "q"), "--layout", "tq2_0,i2_s", "--keep-going",
                            "--quiet"])
    assert r.exit_code == 2 and r.stdout == ""
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: relu2-tq2_0.gguf: ") and "SiLU" in lines[0], r.stderr


def test_model_card(silu, tmp_path):
    res = release(silu, tmp_path, layouts=["tq2_0", "tq1_0"], model_card=True)
    card = res.card_path.read_text()
    header = card.split("---")[1]
    assert "quantized_by: bitconv" in header and "- ternary" in header and "- gguf" in header
    assert "library_name:" in header
    assert "| `silu-tq2_0.gguf` | tq2_0 |" in card and "llama.cpp" in card and "1.688" in card


def test_upload_only_after_every_artifact_passed(silu, relu2_odd, tmp_path, monkeypatch):
    import huggingface_hub

    calls = []
    monkeypatch.setattr(huggingface_hub.HfApi, "create_repo",
                        lambda self, repo_id, **kw: calls.append(("create", repo_id, kw)) or f"https://hub/{repo_id}")
    monkeypatch.setattr(huggingface_hub.HfApi, "upload_folder",
                        lambda self, **kw: calls.append(("upload", kw["repo_id"], kw["folder_path"])))
    res = release(silu, tmp_path / "ok", layouts=["tq2_0"], upload_repo="me/tiny", private=True)
    assert res.uploaded and calls[0] == ("create", "me/tiny", {"private": True, "exist_ok": True})
    assert calls[1] == ("upload", "me/tiny", str(tmp_path / "ok"))
    calls.clear()
    r = runner.invoke(app, ["convert", str(relu2_odd), str(tmp_path / "bad"), "--layout", "tq2_0,i2_s",
                            "--keep-going", "--upload-repo", "me/tiny"])
    assert r.exit_code != 0 and calls == []


def test_verify_inside_release_gates_exit_code_and_keeps_files(silu, tmp_path):
    # random models have enormous perplexities that fp16 TQ scales move by ~1%: a looser gate
    gate = {"tokens": 256, "ctx": 128, "max_ppl_increase": 0.05}
    ok = release(silu, tmp_path / "ok", layouts=["tq2_0"], verify=True, model_card=True, verify_options=gate)
    v = ok.targets[0].verify
    assert ok.ok and ok.exit_code == 0 and v["passed"] is True
    assert json.loads(ok.manifest_path.read_text())["artifacts"][0]["verify"]["top1_agreement"] == v["top1_agreement"]
    assert "## Verification" in ok.card_path.read_text()
    # a gate TQ cannot meet (its fp16 scales move every weight a little): the release fails with exit code 1 but keeps the files for inspection
    bad = release(silu, tmp_path / "bad", layouts=["tq2_0"], verify=True,
                  verify_options={**gate, "max_weight_error": 0.0})
    assert not bad.ok and bad.exit_code == 1
    assert bad.targets[0].verify["passed"] is False and (tmp_path / "bad" / "silu-tq2_0.gguf").exists()
    r = runner.invoke(app, ["convert", str(silu), str(tmp_path / "cli"), "--layout", "i2_s,tl2", "--verify",
                            "--json"])
    assert r.exit_code == 0, r.output
    assert all(a["verify"]["passed"] for a in json.loads(r.stdout)["artifacts"])


def test_dry_run_of_several_outputs_plans_each_and_writes_nothing(silu, tmp_path):
    out = tmp_path / "rel"
    r = runner.invoke(app, ["convert", str(silu), str(out), "--layout", "tq2_0,i2_s", "--format", "gguf,safetensors",
                            "--dry-run", "--json"])
    assert r.exit_code == 0, r.output
    plans = json.loads(r.stdout)["plans"]
    assert [(p["format"], p["options"].get("layout")) for p in plans] == [
        ("gguf", "tq2_0"), ("gguf", "i2_s"), ("safetensors", None)]
    assert all(p["tensors"] and p["tensor_bytes"] > 0 for p in plans)
    assert not out.exists()


def test_plan_failure_without_keep_going_keeps_its_error_type(silu, tmp_path):
    from bitconv.errors import OutputExistsError

    release(silu, tmp_path, layouts=["tq2_0"])
    with pytest.raises(OutputExistsError, match="tq2_0"):
        release(silu, tmp_path, layouts=["tq2_0", "tq1_0"])


def test_folder_artifact_lists_each_file_sha256(silu, tmp_path):
    import hashlib

    res = release(silu, tmp_path, layouts=[], formats=["safetensors"])
    art = res.manifest["artifacts"][0]
    folder = tmp_path / art["path"]
    assert art["files"] and art["files"] == {
        p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*")) if p.is_file()}
    assert res.to_dict()["artifacts"][0]["files"] == art["files"]
