"""`check` names each missing, changed or added file of a safetensors folder artifact (issue
21, 10), as the README promises, instead of only saying the folder changed."""

from __future__ import annotations

import json

from bitconv.release import MANIFEST_NAME, release

from hostile_helpers import run_cli


def test_check_names_each_file_of_a_folder_artifact(silu_ckpt, tmp_path):
    res = release(silu_ckpt, tmp_path, layouts=[], formats=["safetensors"])
    folder = res.targets[0].path
    rel = res.manifest["artifacts"][0]["path"]
    assert run_cli("check", tmp_path / MANIFEST_NAME).exit_code == 0
    (folder / "model.safetensors").unlink()
    (folder / "config.json").write_text("{}")
    (folder / "notes.txt").write_text("added")
    r = run_cli("check", tmp_path / MANIFEST_NAME, "--json")
    assert r.exit_code == 1, r.output
    problems = json.loads(r.stdout)["problems"]
    assert problems == [f"missing file of artifact {rel}: model.safetensors",
                        next(p for p in problems if p.startswith(f"file of artifact {rel} changed: config.json")),
                        f"file of artifact {rel} not in the manifest: notes.txt"]
    human = run_cli("check", tmp_path / MANIFEST_NAME)
    for name in ("model.safetensors", "config.json", "notes.txt"):
        assert name in human.stderr


def test_check_source_file_is_that_file_not_its_recorded_name(silu_ckpt, tmp_path):
    """Issue 25, 7: `check --source FILE` hashed the recorded name in FILE's folder instead."""
    from bitconv.convert import convert

    gguf = tmp_path / "src" / "model.gguf"
    gguf.parent.mkdir()
    convert(silu_ckpt, gguf, layout="i2_s")
    rel = tmp_path / "rel"
    release(str(gguf), rel, layouts=["tq2_0"])
    moved = tmp_path / "elsewhere" / "renamed.gguf"
    moved.parent.mkdir()
    gguf.rename(moved)
    (moved.parent / "model.gguf").write_bytes(b"another file under the recorded name")
    r = run_cli("check", rel / MANIFEST_NAME, "--source", moved, "--json")
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["source_checked"] is True
    data = moved.read_bytes()
    moved.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))
    r = run_cli("check", rel / MANIFEST_NAME, "--source", moved, "--json")
    assert r.exit_code == 1 and any("source file changed" in p for p in json.loads(r.stdout)["problems"])
