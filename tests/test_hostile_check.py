"""`bitconv check` against hostile manifests (issue 10 item 4).

The manifest is validated against its schema before the disk is touched; every path must
stay inside the manifest's folder (artifacts) or the recorded source folder; traversal,
absolute paths, symlinks out and special files are exit 2 with one line naming the path.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from bitconv.release import MANIFEST_NAME, check_manifest, release
from hostile_helpers import assert_refused, run_cli


@pytest.fixture(scope="module")
def rel_seed(tmp_path_factory, ckpt_factory) -> Path:
    out = tmp_path_factory.mktemp("rel") / "release"
    release(ckpt_factory("silu", seed=0), out, layouts=["i2_s"], formats=["gguf", "safetensors"])
    return out


@pytest.fixture(scope="module")
def source_folder(ckpt_factory) -> Path:
    return ckpt_factory("silu", seed=0)


@pytest.fixture
def rel(rel_seed, tmp_path) -> Path:
    d = tmp_path / "release"
    shutil.copytree(rel_seed, d, symlinks=True)
    return d


def _edit(rel: Path, edit) -> Path:
    p = rel / MANIFEST_NAME
    m = json.loads(p.read_text())
    res = edit(m)
    m = res if isinstance(res, list) else m  # an edit may return a replacement document
    p.write_text(json.dumps(m))
    return p


def _check_refused(manifest: Path, *contains):
    return assert_refused(run_cli("check", manifest), contains=contains)


def test_intact_release_checks_ok(rel):
    r = run_cli("check", rel / MANIFEST_NAME)
    assert r.exit_code == 0, r.output


def test_changed_artifact_is_exit_1(rel):
    gguf = next(rel.glob("*.gguf"))
    data = bytearray(gguf.read_bytes())
    data[-1] ^= 1
    gguf.write_bytes(bytes(data))
    r = run_cli("check", rel / MANIFEST_NAME)
    assert r.exit_code == 1 and "artifact changed" in r.output


@pytest.mark.parametrize("edit,expect", [
    (lambda m: [m], "must be object"),
    (lambda m: m["artifacts"][0].pop("path"), "'path'"),
    (lambda m: m.__setitem__("artifacts", {"a": 1}), "artifacts"),
    (lambda m: m["artifacts"][0].__setitem__("sha256", "not-hex"), "sha256"),
    (lambda m: m["artifacts"][0].__setitem__("path", 7), "path"),
    (lambda m: m["source"].__setitem__("kind", "ftp"), "kind"),
    (lambda m: m["source"]["files"].append({"path": "x"}), "sha256"),
    (lambda m: m["source"]["files"][0].__setitem__("bytes", -1), "bytes"),
    (lambda m: m.pop("source"), "source"),
])
def test_schema_violations_refused_before_disk(rel, edit, expect):
    _check_refused(_edit(rel, edit), "not a bitconv manifest", expect)


@pytest.mark.parametrize("bad", ["../outside.gguf", "/usr", "/etc/passwd", "sub/../../x", ".", "", "C:\\x.gguf"])
def test_artifact_path_leaving_the_folder_refused(rel, bad):
    m = _edit(rel, lambda m: m["artifacts"][0].__setitem__("path", bad))
    _check_refused(m, "artifact", "refusing")


def test_artifact_symlink_out_refused(rel, tmp_path):
    secret = tmp_path / "secret.bin"
    secret.write_bytes(b"s" * 10)
    link = rel / "evil.gguf"
    link.symlink_to(secret)
    m = _edit(rel, lambda m: m["artifacts"][0].__setitem__("path", "evil.gguf"))
    _check_refused(m, "evil.gguf", "leads outside")


def test_symlink_inside_folder_artifact_refused(rel, tmp_path):
    folder = next(p for p in rel.iterdir() if p.is_dir())
    (folder / "extra").symlink_to("/etc/hostname")
    _check_refused(rel / MANIFEST_NAME, "symlink")


def test_artifact_that_is_a_fifo_refused(rel):
    os.mkfifo(rel / "pipe.gguf")
    m = _edit(rel, lambda m: m["artifacts"][0].__setitem__("path", "pipe.gguf"))
    _check_refused(m, "pipe.gguf", "not a regular file")


def test_source_root_of_filesystem_root_refused(rel):
    m = _edit(rel, lambda m: m["source"].update(kind="folder", location="/"))
    _check_refused(m, "file system root")


@pytest.mark.parametrize("bad", ["../../../etc/passwd", "/etc/passwd", "a/../../b"])
def test_source_file_path_leaving_the_source_refused(rel, source_folder, bad):
    m = _edit(rel, lambda m: m["source"]["files"][0].__setitem__("path", bad))
    assert_refused(run_cli("check", m, "--source", source_folder), contains=("source file", "refusing"))


def test_source_file_symlink_out_refused(rel, source_folder, copy_ckpt, tmp_path):
    src = copy_ckpt(source_folder)
    secret = tmp_path / "secret"
    secret.write_text("s")
    (src / "config.json").unlink()
    (src / "config.json").symlink_to(secret)
    assert_refused(run_cli("check", rel / MANIFEST_NAME, "--source", src), contains=("config.json", "leads outside"))


def test_intact_source_checks_ok_with_source_option(rel, source_folder):
    r = run_cli("check", rel / MANIFEST_NAME, "--source", source_folder, "--json")
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["source_checked"] is True


def test_legacy_absolute_source_root_is_used_and_checked(rel, source_folder):
    m = _edit(rel, lambda m: m["source"].update(location=str(source_folder)))
    r = run_cli("check", m, "--json")
    assert r.exit_code == 0 and json.loads(r.stdout)["source_checked"] is True, r.output


def test_builtin_name_with_traversal_refused(rel):
    m = _edit(rel, lambda m: m["source"].update(kind="builtin", location="builtin:../../.."))
    _check_refused(m, "builtin model", "refusing")


@pytest.mark.parametrize("content", ["{oops", "\xff\xfe", "null"])
def test_manifest_not_json_or_null(rel, content):
    p = rel / MANIFEST_NAME
    p.write_bytes(content.encode("latin-1"))
    _check_refused(p, MANIFEST_NAME)


def test_manifest_is_a_folder(tmp_path):
    (tmp_path / "m.json").mkdir()
    _check_refused(tmp_path / "m.json", "not a regular file")


def test_manifest_missing(tmp_path):
    _check_refused(tmp_path / "nope.json", "no such manifest")


def test_library_refuses_before_hashing(rel, monkeypatch):
    import bitconv.release as r
    from bitconv.errors import InputError

    monkeypatch.setattr(r, "_sha256", lambda p: pytest.fail(f"hashed {p} before validating"))
    m = _edit(rel, lambda m: m["artifacts"].append({"path": "../x", "label": "x", "format": "gguf", "ok": True,
                                                     "sha256": "0" * 64}))
    with pytest.raises(InputError, match="refusing"):
        check_manifest(m)
