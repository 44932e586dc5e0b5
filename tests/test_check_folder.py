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
