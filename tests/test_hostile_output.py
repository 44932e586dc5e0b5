"""Hostile outputs (issue 10 item 1): never lose a user's file.

An existing folder is replaced only when bitconv wrote it and --force is given; an output
that is, is inside, or contains the source is refused before anything is read; the final
rename is exclusive without --force; SIGTERM/SIGHUP clean up like Ctrl-C.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from bitconv.convert import convert
from bitconv.errors import OutputExistsError, UsageError
from bitconv.writers import atomic
from bitconv.writers.atomic import exclusive_rename, is_bitconv_output

from hostile_helpers import assert_refused, last_error_line, run_cli, temp_leftovers, tree_digest
import waiting


@pytest.fixture
def src(silu_ckpt, copy_ckpt) -> Path:
    return copy_ckpt(silu_ckpt)


@pytest.fixture(scope="module")
def gguf_src(tmp_path_factory, ckpt_factory) -> Path:
    p = tmp_path_factory.mktemp("gsrc") / "src.gguf"
    convert(ckpt_factory("silu", seed=0), p, layout="i2_s")
    return p


def _user_folder(path: Path) -> dict[str, str]:
    path.mkdir()
    (path / "thesis.tex").write_text("years of work")
    (path / "sub").mkdir()
    (path / "sub" / "data.csv").write_text("1,2,3")
    return tree_digest(path)


# -- existing folders -------------------------------------------------------------------
@pytest.mark.parametrize("fmt", ["gguf", "safetensors"])
def test_force_never_deletes_a_user_folder(src, outdir, fmt):
    target = outdir / "target"
    before = _user_folder(target)
    r = run_cli("convert", src, target, "--format", fmt, "--force")
    assert_refused(r, outdir=outdir, contains=("did not write", str(target)), keep={"target"})
    assert tree_digest(target) == before


def test_force_into_an_empty_folder_writes_there(src, outdir):
    """Issue 25 item 7: an empty folder holds nothing of the user's, so --force may replace it
    (main refused it as 'a folder bitconv did not write'); a non-empty one stays refused."""
    (outdir / "empty").mkdir()
    r = run_cli("convert", src, outdir / "empty", "--format", "safetensors", "--force")
    assert r.exit_code == 0, r.output
    assert (outdir / "empty" / "model.safetensors").is_file() and temp_leftovers(outdir) == []
    (outdir / "mine").mkdir()
    (outdir / "mine" / "notes.txt").write_text("keep me")
    r = run_cli("convert", src, outdir / "mine", "--format", "safetensors", "--force")
    assert_refused(r, outdir=outdir, contains=("did not write",), keep={"empty", "mine"})
    assert (outdir / "mine" / "notes.txt").read_text() == "keep me"


def test_folder_without_force_is_refused(src, outdir):
    before = _user_folder(outdir / "t")
    r = run_cli("convert", src, outdir / "t", "--format", "safetensors")
    assert_refused(r, outdir=outdir, contains=("already exists", "--force"), keep={"t"})
    assert tree_digest(outdir / "t") == before


def test_force_replaces_an_earlier_bitconv_folder(src, outdir):
    target = outdir / "st"
    convert(src, target, format="safetensors")
    assert is_bitconv_output(target)
    r = run_cli("convert", src, target, "--format", "safetensors", "--force", "--group-size", "row")
    assert r.exit_code == 0, r.output
    cfg = json.loads((target / "config.json").read_text())
    assert cfg["quantization_config"].get("bitconv_group_size") == "row"
    assert temp_leftovers(outdir) == []


def test_bitconv_folder_with_a_user_file_added_is_not_replaced(src, outdir):
    target = outdir / "st"
    convert(src, target, format="safetensors")
    (target / "notes.txt").write_text("mine")
    before = tree_digest(target)
    r = run_cli("convert", src, target, "--format", "safetensors", "--force")
    assert_refused(r, outdir=outdir, contains=("did not write",), keep={"st"})
    assert tree_digest(target) == before


def test_folder_of_foreign_safetensors_is_not_a_bitconv_output(src, outdir):
    import shutil

    target = outdir / "copy"
    shutil.copytree(src, target)  # a Hugging Face model folder: its files, not bitconv's stamp
    before = tree_digest(target)
    assert not is_bitconv_output(target)
    r = run_cli("convert", src, target, "--format", "safetensors", "--force")
    assert_refused(r, outdir=outdir, contains=("did not write",), keep={"copy"})
    assert tree_digest(target) == before


def test_release_folder_is_a_bitconv_output_only_when_its_manifest_lists_everything(src, tmp_path):
    rel = tmp_path / "rel"
    r = run_cli("convert", src, rel, "--layout", "i2_s,tq2_0")
    assert r.exit_code == 0, r.output
    assert is_bitconv_output(rel)
    (rel / "unrelated.bin").write_bytes(b"x")
    assert not is_bitconv_output(rel)


def test_gguf_output_onto_a_file_with_force_replaces_it(src, outdir):
    (outdir / "m.gguf").write_bytes(b"old")
    assert run_cli("convert", src, outdir / "m.gguf", "--force").exit_code == 0
    assert (outdir / "m.gguf").read_bytes()[:4] == b"GGUF"
    assert temp_leftovers(outdir) == []


# -- output vs source -------------------------------------------------------------------
def test_output_equal_to_source_folder_refused(src):
    before = tree_digest(src)
    r = run_cli("convert", src, src, "--format", "safetensors", "--force")
    assert_refused(r, src=src, before=before, contains=("is the source",))


def test_output_replacing_source_weights_refused(src):
    before = tree_digest(src)
    r = run_cli("convert", src, src / "model.safetensors", "--force")
    assert_refused(r, src=src, before=before, contains=("inside the source",))


def test_new_output_inside_source_folder_refused(src):
    before = tree_digest(src)
    r = run_cli("convert", src, src / "converted.gguf")
    assert_refused(r, src=src, before=before, contains=("inside the source",))
    assert not (src / "converted.gguf").exists()


def test_output_folder_containing_the_source_refused(tmp_path, silu_ckpt):
    import shutil

    parent = tmp_path / "models"
    parent.mkdir()
    inner = parent / "m"
    shutil.copytree(silu_ckpt, inner)
    before = tree_digest(parent)
    r = run_cli("convert", inner, parent, "--format", "safetensors", "--force")
    assert_refused(r, src=parent, before=before, contains=("contains the source",))


def test_output_through_a_symlink_to_the_source_refused(src, tmp_path):
    link = tmp_path / "alias"
    link.symlink_to(src)
    before = tree_digest(src)
    r = run_cli("convert", src, link / "out.gguf")
    assert_refused(r, src=src, before=before, contains=("inside the source",))


def test_output_symlink_to_source_weights_refused(src, tmp_path):
    link = tmp_path / "weights.gguf"
    link.symlink_to(src / "model.safetensors")
    before = tree_digest(src)
    r = run_cli("convert", src, link, "--force")
    assert_refused(r, src=src, before=before, contains=("source", str(link)))
    assert link.is_symlink()


def test_gguf_source_as_its_own_output_refused(gguf_src, tmp_path):
    before = tree_digest(gguf_src)
    r = run_cli("convert", gguf_src, gguf_src, "--layout", "tl2", "--force")
    assert_refused(r, src=gguf_src, before=before, contains=("is the source",))


def test_release_into_the_source_folder_refused(src):
    before = tree_digest(src)
    r = run_cli("convert", src, src, "--layout", "i2_s,tq2_0", "--force")
    assert_refused(r, src=src, before=before, contains=("source",))


def test_kernel_config_output_must_not_be_a_source_file(src, outdir):
    before = tree_digest(src)
    r = run_cli("convert", src, outdir / "m.gguf", "--layout", "tl2", "--emit-kernel-config", src / "config.json")
    assert_refused(r, outdir=outdir, src=src, before=before, contains=("--emit-kernel-config",), keep=set())


def test_emit_kernel_config_into_missing_folder(src, outdir):
    r = run_cli("convert", src, outdir / "m.gguf", "--layout", "tl2",
                "--emit-kernel-config", outdir / "no" / "kernel_config.ini")
    assert_refused(r, outdir=outdir, contains=("--emit-kernel-config", "does not exist"), keep=set())


def test_output_parent_is_a_file(src, outdir):
    (outdir / "f").write_text("x")
    r = run_cli("convert", src, outdir / "f" / "m.gguf")
    assert_refused(r, outdir=outdir, contains=("not a folder",), keep={"f"})


def test_library_refuses_before_reading(src, outdir, monkeypatch):
    import bitconv.convert as conv

    monkeypatch.setattr(conv, "open_source", lambda *a, **k: pytest.fail("source opened before the guard"))
    with pytest.raises(UsageError, match="source"):
        convert(src, src / "model.safetensors", force=True)


# -- unwritable output folders ----------------------------------------------------------
def test_unwritable_output_folder_is_bad_input(src, outdir, monkeypatch):
    real = os.access
    monkeypatch.setattr(atomic.os, "access", lambda p, m: False if Path(p) == outdir else real(p, m))
    r = run_cli("convert", src, outdir / "m.gguf")
    assert_refused(r, outdir=outdir, contains=("not writable", str(outdir)), keep=set())


def test_permission_error_while_writing_is_one_line(src, outdir, monkeypatch):
    import gguf

    def denied(self, *a, **k):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(gguf.GGUFWriter, "write_header_to_file", denied)
    r = run_cli("convert", src, outdir / "m.gguf")
    assert_refused(r, outdir=outdir, contains=("cannot write", "m.gguf"), keep=set())


# -- exclusive final rename -------------------------------------------------------------
def test_exclusive_rename_never_replaces(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    a.write_text("new")
    b.write_text("theirs")
    with pytest.raises(FileExistsError):
        exclusive_rename(a, b)
    assert b.read_text() == "theirs" and a.exists()


def test_exclusive_rename_folders(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    (b / "x").write_text("theirs")
    with pytest.raises(FileExistsError):
        exclusive_rename(a, b)
    assert (b / "x").read_text() == "theirs"


def test_exclusive_rename_without_renameat2(tmp_path, monkeypatch):
    monkeypatch.setattr(atomic, "_renameat2", lambda *a: False)
    for kind in ("file", "dir"):
        a, b = tmp_path / f"a{kind}", tmp_path / f"b{kind}"
        if kind == "file":
            a.write_text("new")
            b.write_text("theirs")
        else:
            a.mkdir()
            b.mkdir()
        with pytest.raises(FileExistsError):
            exclusive_rename(a, b)
        exclusive_rename(a, tmp_path / f"c{kind}")
        assert (tmp_path / f"c{kind}").exists() and not a.exists()
    assert not list(tmp_path.glob("*lock*"))


@pytest.mark.parametrize("fmt,name", [("gguf", "m.gguf"), ("safetensors", "st")])
def test_racing_writer_loses_and_the_winner_is_whole(src, outdir, monkeypatch, fmt, name):
    """Another writer finishes first while this one is writing: this one exits 2, theirs stays."""
    import bitconv.convert as conv

    target = outdir / name
    original = conv.prepare_tensors

    def racing(*a, **k):
        for i, item in enumerate(original(*a, **k)):
            if i == 1:
                monkeypatch.setattr(conv, "prepare_tensors", original)
                convert(src, target, format=fmt)  # the other writer wins the race
            yield item

    monkeypatch.setattr(conv, "prepare_tensors", racing)
    r = run_cli("convert", src, target, "--format", fmt)
    winner = tree_digest(target)
    assert_refused(r, outdir=outdir, contains=("appeared", str(target)), keep={name})
    check = outdir / ("check.gguf" if fmt == "gguf" else "check")
    convert(src, check, format=fmt)  # the winner's bytes are exactly a clean conversion's
    assert list(tree_digest(check).values()) == list(winner.values())


def test_two_processes_racing_for_one_path(src, outdir):
    """Two real processes to one new path without --force: one exits 0, the other 2."""
    target = outdir / "m.gguf"
    cmd = [sys.executable, "-m", "bitconv.cli", "convert", str(src), str(target), "--layout", "i2_s"]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    procs = [subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    done = [waiting.communicate(p, 300) for p in procs]
    codes = sorted(p.returncode for p in procs)
    errs = [err for _, err in done]
    assert codes in ([0, 2],), (codes, errs)
    assert temp_leftovers(outdir) == [] and [p.name for p in outdir.iterdir()] == ["m.gguf"]
    convert(src, outdir / "check.gguf", layout="i2_s")
    assert target.read_bytes() == (outdir / "check.gguf").read_bytes()


# -- signals ----------------------------------------------------------------------------
_SLOW = textwrap.dedent("""
    import signal, sys, time, pathlib
    # Ctrl-C as in a terminal, even when the suite runs where SIGINT is ignored (a job started
    # with `&` in a script): Python then inherits SIG_IGN and would sleep through the signal
    signal.signal(signal.SIGINT, signal.default_int_handler)
    import bitconv.convert as conv
    original = conv.prepare_tensors
    def slow(*a, **k):
        for i, item in enumerate(original(*a, **k)):
            yield item
            if i == 2:
                pathlib.Path(sys.argv[1]).write_text("ready")
                time.sleep(3600)  # until the signal; the test's budget ends a hang
    conv.prepare_tensors = slow
    from bitconv.cli import app
    app(sys.argv[2:])
""")


@pytest.mark.slow
@pytest.mark.parametrize("sig,fmt,name", [(signal.SIGTERM, "gguf", "m.gguf"), (signal.SIGTERM, "safetensors", "st"),
                                           (signal.SIGHUP, "safetensors", "st"), (signal.SIGHUP, "gguf", "m.gguf"),
                                           (signal.SIGINT, "safetensors", "st")])
def test_signal_cleans_up_and_keeps_earlier_output(src, outdir, tmp_path, sig, fmt, name):
    target = outdir / name
    convert(src, target, format=fmt)
    earlier = tree_digest(target)
    ready = tmp_path / "ready"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    p = subprocess.Popen([sys.executable, "-c", _SLOW, str(ready), "convert", str(src), str(target),
                          "--format", fmt, "--force", "--group-size", "row"],
                         env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    waiting.wait_for(ready.exists, 120, proc=p)  # the event; the budget stretches with the load
    assert ready.exists(), p.communicate()
    assert temp_leftovers(outdir), "the conversion should be writing its temporary output now"
    p.send_signal(sig)
    _, err = waiting.communicate(p, 60)
    assert p.returncode == 128 + sig or (sig == signal.SIGINT and p.returncode == 130), (p.returncode, err)
    assert "no output was left behind" in last_error_line(err), err
    assert temp_leftovers(outdir) == []
    assert tree_digest(target) == earlier
