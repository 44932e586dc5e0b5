"""Shared checks of the hostile-input suite (tests/test_hostile_*.py).

Every hostile case asserts the same four things: the exit code, exactly one error line (no
traceback) naming what is wrong, nothing left behind in the output folder (no temp file or
folder), and the source unchanged (a digest of every file before and after).
"""

from __future__ import annotations

import hashlib
import importlib
import shutil
from pathlib import Path

from typer.testing import CliRunner

from bitconv.cli import app

runner = CliRunner()


def run_cli(*args):
    return runner.invoke(app, [str(a) for a in args])


def edited_copy(src: Path, dst: Path, edit, tensors: str = "numpy") -> Path:
    """A copy of the single-file safetensors folder SRC at DST whose tensors EDIT changed in
    place (a dict name -> array, loaded as `tensors`: "numpy" or "torch"), for a test to feed
    a hostile file while SRC stays as it was."""
    st = importlib.import_module(f"safetensors.{tensors}")
    shutil.copytree(src, dst)
    w = st.load_file(str(dst / "model.safetensors"))
    edit(w)
    st.save_file(w, str(dst / "model.safetensors"), metadata={"format": "pt"})
    return dst


def read_tensors(folder: Path, tensors: str = "numpy") -> dict:
    """Every tensor of every *.safetensors file in FOLDER in one dict (name -> array, in its
    stored dtype), loaded as `tensors`: "numpy" or "torch"."""
    st = importlib.import_module(f"safetensors.{tensors}")
    out = {}
    for f in sorted(Path(folder).glob("*.safetensors")):
        out.update(st.load_file(str(f)))
    return out


def tree_digest(path: Path) -> dict[str, str]:
    """relative path -> sha256 of every file under PATH (or of PATH itself)."""
    path = Path(path)
    if path.is_file():
        return {path.name: hashlib.sha256(path.read_bytes()).hexdigest()}
    return {p.relative_to(path).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(path.rglob("*")) if p.is_file()}


def one_error_line(result) -> str:
    """The one error line of a CliRunner RESULT (`last_error_line` of its stderr)."""
    assert "Traceback" not in result.output, result.output
    return last_error_line(result.stderr)


def last_error_line(err: str) -> str:
    """The one error line of a CLI run's stderr text ERR: no traceback, exactly one line
    starting with "error:", the last one, and not an internal error."""
    assert "Traceback" not in err, err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    errors = [i for i, ln in enumerate(lines) if ln.startswith("error:")]
    # warnings (which may wrap) can come first; the error is one line and the last one
    assert errors == [len(lines) - 1], f"expected one error line, last, got:\n{err}"
    assert "internal error" not in lines[-1], lines[-1]
    return lines[-1]


def temp_leftovers(folder: Path) -> list[str]:
    """Temporary names bitconv's writers use (`.NAME.bitconv-PID-HEX.tmp`, `-old-`, `-lock`);
    bitconv-manifest.json is an output, not a temporary."""
    return sorted(p.name for p in Path(folder).rglob("*") if ".bitconv-" in p.name or p.name.endswith(".tmp"))


def assert_refused(result, *, outdir: Path | None = None, src: Path | None = None, before: dict | None = None,
                   contains: tuple[str, ...] = (), code: int = 2, keep: set[str] | None = None) -> str:
    """Exit CODE, one error line with every string in CONTAINS, OUTDIR holding only KEEP (and
    no temporaries), SRC's files byte-identical to BEFORE."""
    assert result.exit_code == code, f"exit {result.exit_code}:\n{result.output}"
    line = one_error_line(result)
    for text in contains:
        assert str(text) in line, f"{text!r} not in {line!r}"
    if outdir is not None:
        assert temp_leftovers(outdir) == []
        if keep is not None:
            left = {p.name for p in Path(outdir).iterdir()}
            assert left == set(keep), f"left behind: {sorted(left - set(keep))}"
    if src is not None and before is not None:
        assert tree_digest(src) == before, "the source changed"
    return line


def rewrite_weights(folder: Path, edit) -> None:
    """Apply `edit` to the dict of tensors in folder/model.safetensors and save it back."""
    from safetensors.torch import load_file, save_file

    path = folder / "model.safetensors"
    weights = load_file(str(path))
    edit(weights)
    save_file(weights, str(path), metadata={"format": "pt"})
