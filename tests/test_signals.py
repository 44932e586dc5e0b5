"""Signals, second round (issue 25 item 5; issue 21 items 1-3): cleanup survives repeated
signals, a run whose outputs were renamed into place succeeded (exit 0), and every interrupt
message says what is on disk. Each case waits for events the child process reports through
marker files (a stage reached, a signal handled), never for a fixed time, so it holds on 2
cores at load 16; the caps below only stop a hung child."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from bitconv.convert import convert
from bitconv.release import MANIFEST_NAME

import waiting
from hostile_helpers import last_error_line, temp_leftovers, tree_digest

CAP = 600  # seconds: a hung child, not a slow machine

# The child: bitconv's CLI with hooks that report a stage by creating MARKERS/<stage> and
# then wait for MARKERS/go; every Python-level signal handler first appends the signal's
# number to MARKERS/signals, so the test knows a signal was handled before going on.
_CHILD = textwrap.dedent("""
    import os, signal, sys, time, pathlib
    markers, hooks, argv = pathlib.Path(sys.argv[1]), set(sys.argv[2].split(",")), sys.argv[3:]

    def reached(stage):
        (markers / stage).write_text("1")
        deadline = time.monotonic() + 600
        while not (markers / "go").exists() and time.monotonic() < deadline:
            time.sleep(0.01)

    _signal = signal.signal
    def recording(signum, handler):
        if callable(handler) and not getattr(handler, "_recording", False):
            inner = handler
            def handler(n, frame):
                with open(markers / "signals", "a") as f:
                    f.write(f"{n}\\n")
                return inner(n, frame)
            handler._recording = True
        return _signal(signum, handler)
    signal.signal = recording
    signal.signal(signal.SIGINT, signal.default_int_handler)

    import bitconv.convert as conv, bitconv.release as rel
    from bitconv.writers import atomic

    def slow(original):
        def wrapper(*a, **k):
            for i, item in enumerate(original(*a, **k)):
                yield item
                if i == 2:
                    reached("writing")
        return wrapper
    if "writing" in hooks:
        conv.prepare_tensors = slow(conv.prepare_tensors)
        rel.prepare_tensors = slow(rel.prepare_tensors)
    if "cleaning" in hooks:
        _remove = atomic._remove
        def slow_remove(tmp):
            if tmp.name.endswith(".tmp") and not (markers / "cleaning").exists():
                reached("cleaning")
            _remove(tmp)
        atomic._remove = slow_remove
    if "renamed" in hooks:
        _commit = atomic._commit
        def commit_then_wait(*a, **k):
            created = _commit(*a, **k)
            reached("renamed")
            return created
        atomic._commit = commit_then_wait
    if "verifying" in hooks:
        import bitconv.verify as ver
        _verify = ver.verify
        def slow_verify(*a, **k):
            reached("verifying")
            return _verify(*a, **k)
        ver.verify = slow_verify

    if "uploading" in hooks:
        def slow_upload(outdir, repo_id, **k):
            reached("uploading")
            return "https://huggingface.co/" + repo_id
        rel.upload = slow_upload

    from bitconv.cli import app
    app(argv)
""")


class Child:
    def __init__(self, tmp_path: Path, hooks: str, *args) -> None:
        self.markers = tmp_path / "markers"
        self.markers.mkdir()
        env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
        self.p = subprocess.Popen([sys.executable, "-c", _CHILD, str(self.markers), hooks, *map(str, args)],
                                  env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def wait_for(self, stage: str) -> None:
        waiting.wait_for((self.markers / stage).exists, CAP, proc=self.p)
        assert (self.markers / stage).exists(), (stage, self.p.poll(), self.finish())

    def handled(self) -> int:
        f = self.markers / "signals"
        return len(f.read_text().split()) if f.exists() else 0

    def signal(self, sig: int) -> None:
        """Send SIG and wait until a Python handler in the child ran (or the child is gone)."""
        before = self.handled()
        self.p.send_signal(sig)
        waiting.wait_for(lambda: self.handled() != before, CAP, proc=self.p)

    def go(self) -> None:
        (self.markers / "go").write_text("1")

    def finish(self) -> tuple[int, str, str]:
        self.go()
        out, err = waiting.communicate(self.p, CAP)
        return self.p.returncode, out, err


def _interrupt_at(tmp_path: Path, stage: str, sig: int, *args) -> tuple[str, str]:
    """Run the CLI with ARGS, send SIG once it reaches STAGE, and check it stopped as an
    interrupt (exit 128 + SIG, one error line, no traceback): (stderr, that error line)."""
    child = Child(tmp_path, stage, *args)
    child.wait_for(stage)
    child.signal(sig)
    code, _, err = child.finish()
    assert code == 128 + sig, err
    return err, last_error_line(err)


@pytest.fixture
def src(silu_ckpt) -> Path:
    return silu_ckpt


@pytest.mark.slow
@pytest.mark.parametrize("fmt,name", [("safetensors", "st"), ("gguf", "m.gguf")])
def test_second_ctrl_c_during_cleanup_leaves_no_temp(src, tmp_path, fmt, name):
    """Issue 25: a second Ctrl-C 20 ms after the first left a 2.7 GB temporary folder."""
    out = tmp_path / "out"
    out.mkdir()
    child = Child(tmp_path, "writing,cleaning", "convert", src, out / name, "--format", fmt)
    child.wait_for("writing")
    assert temp_leftovers(out), "the conversion should be writing its temporary output now"
    child.signal(signal.SIGINT)
    child.wait_for("cleaning")  # the first Ctrl-C is removing the temporary output
    child.signal(signal.SIGINT)  # the second one lands during that removal
    code, _, err = child.finish()
    assert code == 130, err
    assert "no output was left behind" in last_error_line(err)
    assert list(out.iterdir()) == []


@pytest.mark.slow
def test_repeated_sigterm_during_a_release_leaves_no_temp(src, tmp_path):
    """Issue 25: a second SIGTERM during a release left GGUF temps while saying none were."""
    out = tmp_path / "rel"
    child = Child(tmp_path, "writing,cleaning", "convert", src, out, "--layout", "tq2_0,i2_s,tl2",
                  "--format", "gguf,safetensors")
    child.wait_for("writing")
    assert len(temp_leftovers(out)) >= 2
    child.signal(signal.SIGTERM)
    child.wait_for("cleaning")  # a writer thread is removing its temporary file
    child.signal(signal.SIGTERM)
    child.signal(signal.SIGTERM)
    code, _, err = child.finish()
    assert code == 128 + signal.SIGTERM, err
    assert "no output was left behind" in last_error_line(err)
    assert not out.exists() or list(out.iterdir()) == []


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP])
def test_signal_just_after_the_rename_is_a_success(src, tmp_path, sig):
    """Issue 21, 2 / issue 25, 5: a signal landing just after a --force rename exited 128+n
    saying "no output was left behind" though the new file had replaced the old one."""
    out = tmp_path / "out"
    out.mkdir()
    target = out / "m.gguf"
    convert(src, target, layout="tq1_0")
    old = tree_digest(target)
    child = Child(tmp_path, "renamed", "convert", src, target, "--force")
    child.wait_for("renamed")
    assert tree_digest(target) != old  # the new file is in place
    child.signal(sig)
    code, out_text, err = child.finish()
    assert code == 0, err
    assert "no output was left behind" not in err and "error:" not in err
    assert "after the run was complete" in err and str(target) in out_text.replace("\n", "")
    convert(src, tmp_path / "check.gguf")
    assert target.read_bytes() == (tmp_path / "check.gguf").read_bytes()
    assert temp_leftovers(out) == []


@pytest.mark.slow
def test_interrupt_during_release_verify_says_what_is_on_disk(src, tmp_path):
    """Issue 21, 1: interrupted during --verify, the message said "no output was left behind"
    while both GGUFs were in the folder. Now it names them and what was not written, and a
    re-run with --force replaces them."""
    out = tmp_path / "rel"
    _, line = _interrupt_at(tmp_path, "verifying", signal.SIGTERM,
                            "convert", src, out, "--layout", "tq2_0,i2_s", "--verify", "--model-card")
    on_disk = sorted(p.name for p in out.iterdir())
    assert on_disk == [f"{src.name}-i2_s.gguf", f"{src.name}-tq2_0.gguf"]
    assert "no output was left behind" not in line
    assert "written before it" in line and all(n in line for n in on_disk)
    assert "not written" in line and MANIFEST_NAME in line and "README.md" in line
    assert "--force" in line
    from hostile_helpers import run_cli

    r = run_cli("convert", src, out, "--layout", "tq2_0,i2_s", "--model-card", "--force")
    assert r.exit_code == 0, r.output
    assert {MANIFEST_NAME, "README.md"} <= {p.name for p in out.iterdir()}


@pytest.mark.slow
def test_ctrl_c_during_verify_does_not_talk_about_outputs(src, tmp_path):
    """Issue 21, 3: `verify` writes nothing, yet its Ctrl-C said "no output was left behind"."""
    art = tmp_path / "m.gguf"
    convert(src, art)
    _, line = _interrupt_at(tmp_path, "verifying", signal.SIGINT, "verify", art, "--source", src)  # exit 130
    assert "interrupted" in line and "output" not in line


def test_hold_signals_defers_to_the_end_of_the_body():
    """Library level: a signal inside a hold runs no exception into the body; it is raised
    once the body is done (reraise) or dropped (a cleanup already handling one)."""
    from bitconv.writers.atomic import Interrupted, cleanup_on_signals, hold_signals

    steps = []
    before = signal.getsignal(signal.SIGINT)  # SIG_IGN where the suite runs as a background job
    with cleanup_on_signals():
        with pytest.raises(Interrupted) as info:
            with hold_signals():
                signal.raise_signal(signal.SIGTERM)  # delivered and handled before it returns
                steps.append("after the signal")
                signal.raise_signal(signal.SIGINT)
                steps.append("after the second")
        assert info.value.signum == signal.SIGTERM and steps == ["after the signal", "after the second"]
        with hold_signals(reraise=False):
            signal.raise_signal(signal.SIGINT)
            steps.append("dropped")
    assert steps[-1] == "dropped"
    assert signal.getsignal(signal.SIGINT) is before


@pytest.mark.slow
def test_signal_during_upload_is_not_a_success(src, tmp_path):
    """Every file is in place while the upload runs, yet the run is not done: a signal then
    is an interrupt (exit 128+n) whose message names the files on disk."""
    out = tmp_path / "rel"
    err, line = _interrupt_at(tmp_path, "uploading", signal.SIGTERM,
                              "convert", src, out, "--layout", "tq2_0", "--upload-repo", "me/tiny")
    assert "after the run was complete" not in err and "written before it" in line
    assert all(p.name in line for p in out.iterdir())
