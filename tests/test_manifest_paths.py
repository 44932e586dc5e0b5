"""A published manifest holds no private paths (issue 9).

`--upload-repo` publishes bitconv-manifest.json and the model card, so neither may name
`/home/<user>/...`: the source is recorded as the user named it when it is a Hub id or a
builtin, a local folder or file by its name (plus the sha256 of every file), artifacts and
other outputs relative to the manifest, tokens redacted. `bitconv check --source PATH`
finds the local source again.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from bitconv.cli import app
from bitconv.release import MANIFEST_NAME, PublicPaths, check_manifest, release
from bitconv.synth import make_checkpoint

runner = CliRunner()


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    return make_checkpoint(tmp_path_factory.mktemp("m") / "tiny", family="silu", seed=7)


def _strings(obj):
    if isinstance(obj, str):
        yield obj
    elif isinstance(obj, dict):
        for k, v in obj.items():
            yield k
            yield from _strings(v)
    elif isinstance(obj, list):
        for v in obj:
            yield from _strings(v)


def _release_under_home(home: Path, model: Path, monkeypatch) -> tuple[Path, Path, dict]:
    """The user's model in ~/models/tiny, released into ~/work/release with absolute paths."""
    monkeypatch.setenv("HOME", str(home))
    src = home / "models" / "tiny"
    if not src.exists():
        shutil.copytree(model, src)
    out = home / "work" / "release"
    kcfg = out / "kernel_config.ini"
    command = ["convert", str(src), str(out), "--layout", "tq2_0,tl2", "--model-card", "--verify",
               "--emit-kernel-config", str(kcfg), "--token", "hf_secret", "--upload-repo", "me/tiny"]
    res = release(str(src), out, layouts=["tq2_0", "tl2"], model_card=True, verify=True,
                  verify_options={"tokens": 96, "ctx": 32, "max_ppl_increase": 1.0, "min_top1": 0.0}, command=command, emit_kernel_config=kcfg,
                  force=True)
    assert res.ok, [t.error for t in res.targets]
    return src, out, json.loads((out / MANIFEST_NAME).read_text())


def test_manifest_from_a_home_folder_names_no_absolute_path(model, tmp_path, monkeypatch):
    home = tmp_path / "home" / "alice"
    src, out, m = _release_under_home(home, model, monkeypatch)
    text = (out / MANIFEST_NAME).read_text() + (out / "README.md").read_text()
    assert str(tmp_path) not in text and "alice" not in text and "hf_secret" not in text
    for s in _strings(m):
        assert not s.startswith(("/", "~")), f"absolute path in the manifest: {s!r}"
    assert m["source"]["kind"] == "folder" and m["source"]["location"] == "tiny"
    assert {f["path"] for f in m["source"]["files"]} >= {"config.json", "model.safetensors"}
    assert all(len(f["sha256"]) == 64 for f in m["source"]["files"])
    assert [a["path"] for a in m["artifacts"]] == ["tiny-tq2_0.gguf", "tiny-tl2.gguf"]
    assert m["options"]["emit_kernel_config"] == "kernel_config.ini"
    assert m["command"] == ["convert", "tiny", ".", "--layout", "tq2_0,tl2", "--model-card", "--verify",
                            "--emit-kernel-config", "kernel_config.ini", "--token", "***",
                            "--upload-repo", "me/tiny"]
    v = m["artifacts"][0]["verify"]
    assert v["artifact"] == "tiny-tq2_0.gguf" and v["source"] == "tiny"
    assert v["text"] == "eval.txt" and v["tokenizer"] == "tokenizer.json"
    assert "Converted from `tiny`" in (out / "README.md").read_text()


def test_same_command_elsewhere_gives_the_same_manifest(model, tmp_path, monkeypatch):
    """Deterministic for the same command: another user's home gives identical bytes
    (verify's timings aside, which this release leaves out)."""
    manifests = []
    for user in ("alice", "bob"):
        home = tmp_path / user
        monkeypatch.setenv("HOME", str(home))
        src, out = home / "models" / "tiny", home / "rel"
        shutil.copytree(model, src)
        release(str(src), out, layouts=["tq2_0"], command=["convert", str(src), str(out), "--layout", "tq2_0"])
        manifests.append((out / MANIFEST_NAME).read_bytes())
    assert manifests[0] == manifests[1]
    assert json.loads(manifests[0])["command"] == ["convert", "tiny", ".", "--layout", "tq2_0"]


def test_check_finds_a_local_source_through_source_option(model, tmp_path, monkeypatch):
    src, out, _ = _release_under_home(tmp_path / "home" / "carol", model, monkeypatch)
    m = out / MANIFEST_NAME
    plain = check_manifest(m)  # artifacts checked; the local source is named only by name
    assert plain["ok"] and not plain["source_checked"] and "--source" in plain["notes"][0]
    full = check_manifest(m, source=src)
    assert full["ok"] and full["source_checked"] and full["checked"] == plain["checked"] + len(
        json.loads(m.read_text())["source"]["files"])
    r = runner.invoke(app, ["check", str(m), "--source", str(src), "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["source_checked"] is True
    (src / "config.json").write_text("{}")
    r = runner.invoke(app, ["check", str(m), "--source", str(src), "--json"])
    assert r.exit_code == 1 and any("config.json" in p and "changed" in p for p in json.loads(r.stdout)["problems"])
    r = runner.invoke(app, ["check", str(m), "--source", str(tmp_path / "nowhere")])
    assert r.exit_code == 2 and "nowhere" in r.output


def test_hub_and_builtin_sources_keep_their_names(tmp_path):
    res = release("builtin:tiny-bitnet", tmp_path / "rel", layouts=["i2_s"],
                  command=["convert", "builtin:tiny-bitnet", str(tmp_path / "rel"), "--layout", "i2_s"])
    m = res.manifest
    assert m["source"]["location"] == "builtin:tiny-bitnet" and m["command"][1:3] == ["builtin:tiny-bitnet", "."]
    report = check_manifest(res.manifest_path)
    assert report["ok"] and report["source_checked"]
    # `--source` given the SOURCE the release was converted from (a newcomer repeats it) finds
    # it as without --source; it used to exit 2 "builtin:tiny-bitnet: no such source folder"
    r = runner.invoke(app, ["check", str(res.manifest_path), "--source", "builtin:tiny-bitnet", "--json"])
    assert r.exit_code == 0, r.output
    again = json.loads(r.stdout)
    assert again["source_checked"] and again["checked"] == report["checked"]
    r = runner.invoke(app, ["check", str(res.manifest_path), "--source", "builtin:other"])
    assert r.exit_code == 2 and "no such source" in r.output


def test_public_paths_leave_names_and_hub_ids_alone(model, tmp_path):
    from bitconv.readers import open_source

    pub = PublicPaths(tmp_path / "out", open_source(model).spec.source, str(model))
    assert pub.command(["convert", "org/model", "--upload-repo", "org/x", "--name", "n", "--token=abc",
                        "--emit-kernel-config=" + str(tmp_path / "k.ini")]) == [
        "convert", "org/model", "--upload-repo", "org/x", "--name", "n", "--token=***", "--emit-kernel-config=k.ini"]
    assert pub.text(f"{model}/config.json: bad") == "tiny/config.json: bad"
    assert pub.path(tmp_path / "out" / "sub" / "a.gguf") == "sub/a.gguf"
