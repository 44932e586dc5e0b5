"""Issue 24 item 5: a cached kernel cannot outlive a change to a helper it inlines.

In a temporary copy of the package, a kernel that inlines `floats.to_f32` (`quant.abs_sums`)
runs once (its machine code cached on disk), then only the helper's file is edited: the next
process must compute with the new helper. numba alone keys the cache on the kernel's own
file and would load the stale code (checked by hand: without `kernels/cache.py` the second
run prints the old sum)."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import waiting

REPO = Path(__file__).resolve().parents[1]
SCRIPT = ("import numpy as np\n"
          "import bitconv, pathlib\n"
          "assert pathlib.Path(bitconv.__file__).parent.parent == pathlib.Path.cwd(), bitconv.__file__\n"
          "from bitconv.kernels.quant import abs_sums\n"
          "print(float(abs_sums(np.ones((1, 300), np.float32))[0]))\n")


def _run(root: Path, cache: Path) -> str:
    env = {**os.environ, "PYTHONPATH": str(root), "NUMBA_CACHE_DIR": str(cache)}
    out = waiting.run([sys.executable, "-c", SCRIPT], 600, env=env, cwd=root, capture_output=True,
                      text=True)  # cwd: `python -c` puts it first on sys.path
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout.strip()


def test_editing_an_inlined_helper_recompiles_its_callers(tmp_path):
    shutil.copytree(REPO / "bitconv", tmp_path / "bitconv", ignore=shutil.ignore_patterns("__pycache__", "data"))
    cache = tmp_path / "numba-cache"
    assert _run(tmp_path, cache) == "300.0"
    assert any(cache.rglob("*.nbi")), "the kernel was not cached: the test would prove nothing"
    floats = tmp_path / "bitconv" / "kernels" / "floats.py"
    text = floats.read_text()
    old = "    if v == types.float32:\n        return lambda v: v\n"
    assert old in text, "to_f32's float32 branch moved: update this test"
    floats.write_text(text.replace(old, "    if v == types.float32:\n        return lambda v: v * np.float32(2)\n"))
    fresh = _run(tmp_path, tmp_path / "empty-cache")  # what the edited code computes, compiled anew
    assert fresh != "300.0"
    assert _run(tmp_path, cache) == fresh
