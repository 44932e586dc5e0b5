"""Issue 25 item 3: a source that changes during a conversion is detected, fails with exit 1
and leaves nothing; a truncated source is a typed error, never SIGBUS.

The change is made from the conversion's own progress callback (an event: "the first
tensor was written"), so the tests do not depend on timing. The truncation cases run in a
subprocess: on a mapped source they kill the process with SIGBUS, which must not take the
test runner with it.
"""

from __future__ import annotations

import os
import shutil
import sys
import textwrap
from pathlib import Path

import pytest

from bitconv.convert import convert
from bitconv.errors import SourceChangedError
from hostile_helpers import temp_leftovers
import waiting

TINY = dict(hidden=256, intermediate=256, layers=2, heads=2, kv_heads=1, vocab=320)


@pytest.fixture()
def two_models(ckpt_factory, tmp_path):
    """A source folder and another model of the same shapes (the 'new download')."""
    src = tmp_path / "src"
    shutil.copytree(ckpt_factory("llama", seed=0, **TINY), src)
    other = ckpt_factory("llama", seed=1, **TINY) / "model.safetensors"
    return src, other


def _once(fn):
    done = []

    def hook(_tp):
        if not done:
            done.append(1)
            fn()
    return hook


@pytest.mark.parametrize("fmt,out_name", [("gguf", "m.gguf"), ("safetensors", "m-st")])
def test_source_replaced_mid_run_fails_and_leaves_nothing(two_models, tmp_path, monkeypatch, fmt, out_name):
    """main: exit 0 with an output mixing tensors of both files."""
    monkeypatch.setenv("BITCONV_THREADS", "1")
    src, other = two_models
    out = tmp_path / "out"
    out.mkdir()
    staged = src / "model.safetensors.new"
    shutil.copyfile(other, staged)
    hook = _once(lambda: os.replace(staged, src / "model.safetensors"))  # what a downloader does
    with pytest.raises(SourceChangedError, match="model.safetensors: it was replaced by another file") as exc:
        convert(src, out / out_name, format=fmt, progress=hook)
    assert exc.value.exit_code == 1
    assert list(out.iterdir()) == [] and temp_leftovers(out) == []


def test_source_rewritten_in_place_with_its_mtime_restored_is_seen(two_models, tmp_path, monkeypatch):
    """Same size, mtime put back: only ctime tells, and it cannot be set from user space."""
    monkeypatch.setenv("BITCONV_THREADS", "1")
    src, other = two_models
    target = src / "model.safetensors"
    st = os.stat(target)

    def rewrite():
        with open(target, "r+b") as f:
            f.seek(st.st_size - 64)
            f.write(b"\0" * 64)
        os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns))
    with pytest.raises(SourceChangedError, match="it was modified"):
        convert(src, tmp_path / "m.gguf", progress=_once(rewrite))
    assert not (tmp_path / "m.gguf").exists() and temp_leftovers(tmp_path) == []


_TRUNCATE = """
import os, sys
from pathlib import Path
from bitconv.convert import convert
from bitconv.errors import BitconvError
src, out, victim = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])
done = []
def hook(tp):
    if not done:
        done.append(1)
        os.truncate(victim, os.path.getsize(victim) // 3)
try:
    convert(src, out, progress=hook)
except BitconvError as exc:
    print(type(exc).__name__, exc)
    sys.exit(exc.exit_code)
sys.exit(0)
"""


@pytest.mark.parametrize("kind", ["folder", "gguf"])
def test_source_truncated_mid_run_is_a_typed_error_not_sigbus(two_models, tmp_path, kind):
    """main: the process died of SIGBUS (exit -7) and left its temporary file."""
    src, _ = two_models
    victim = src / "model.safetensors"
    if kind == "gguf":
        convert(src, tmp_path / "src.gguf", layout="i2_s")
        src = victim = tmp_path / "src.gguf"
    out = tmp_path / "out"
    out.mkdir()
    env = {**os.environ, "BITCONV_THREADS": "1", "PYTHONPATH": os.pathsep.join(
        [str(Path(__file__).resolve().parents[1]), os.environ.get("PYTHONPATH", "")])}
    r = waiting.run([sys.executable, "-c", textwrap.dedent(_TRUNCATE), str(src), str(out / "m.gguf"), str(victim)],
                    300, capture_output=True, text=True, env=env)
    assert r.returncode == 1, (r.returncode, r.stdout, r.stderr[-2000:])
    assert r.stdout.startswith("SourceChangedError") and "truncated during the conversion" in r.stdout, r.stdout
    assert list(out.iterdir()) == []


def test_release_manifest_never_hashes_a_file_other_than_the_one_read(two_models, tmp_path, monkeypatch):
    """main: the manifest recorded the new file's hash, so `check` vouched for a mixed output."""
    from bitconv.release import MANIFEST_NAME, release

    monkeypatch.setenv("BITCONV_THREADS", "1")
    src, other = two_models
    staged = src / "model.safetensors.new"
    shutil.copyfile(other, staged)
    out = tmp_path / "rel"
    rel = release(src, out, layouts=["tq2_0", "i2_s"], progress=_once(
        lambda: os.replace(staged, src / "model.safetensors")))
    assert not rel.ok and rel.exit_code == 1
    for t in rel.targets:  # each output failed before its commit, naming the change
        assert not t.ok and "the source changed during the conversion" in t.error and not t.path.exists()
    assert not (out / MANIFEST_NAME).exists()
    assert temp_leftovers(tmp_path) == []


def test_release_source_replaced_after_the_outputs_before_the_manifest(two_models, tmp_path, monkeypatch):
    """The outputs were read from the old file; the manifest would hash the new one: refused."""
    import bitconv.release as rel_mod

    src, other = two_models
    staged = src / "model.safetensors.new"
    shutil.copyfile(other, staged)
    real = rel_mod.build_manifest

    def swap_then_build(*args, **kwargs):  # the event: every output is committed, hashing starts
        os.replace(staged, src / "model.safetensors")
        return real(*args, **kwargs)
    monkeypatch.setattr(rel_mod, "build_manifest", swap_then_build)
    with pytest.raises(SourceChangedError, match="replaced by another file"):
        rel_mod.release(src, tmp_path / "rel", layouts=["tq2_0"])
    assert not (tmp_path / "rel" / rel_mod.MANIFEST_NAME).exists()


def test_unchanged_source_converts(two_models, tmp_path):
    """The check costs nothing when nothing changes (and a reader's own reads pass it)."""
    src, _ = two_models
    r = convert(src, tmp_path / "m.gguf")
    assert r.written and (tmp_path / "m.gguf").stat().st_size > 0


def test_fifo_is_refused_not_waited_on(tmp_path):
    """doctor / inspect / convert on a FIFO blocked forever in open(); now refused by stat."""
    from bitconv.errors import InputError
    from bitconv.readers import open_source
    from bitconv.doctor import doctor
    from bitconv.inspect_file import inspect_path

    fifo = tmp_path / "pipe.gguf"
    os.mkfifo(fifo)
    with pytest.raises(InputError, match="is a FIFO, not a regular GGUF file"):
        doctor(fifo)
    for fn in (inspect_path, open_source):  # refused by their own checks; none may block
        with pytest.raises(InputError):
            fn(fifo)
    folder = tmp_path / "m"
    folder.mkdir()
    os.mkfifo(folder / "model.safetensors")
    (folder / "config.json").write_text("{}")
    with pytest.raises(InputError):
        open_source(folder)
