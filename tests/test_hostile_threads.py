"""Issue 10 item 5 (owned by i14's quantizer work): bytes must not depend on the thread count.

A hostile-environment check: the same conversion under OMP_NUM_THREADS=1 and =2 (torch and
numpy read it at start) gives byte-identical files for a float source, with row scales and
with per-tensor scales (one reduction over the whole tensor, float32 in i2_s and tl2), which
differed by one ulp before absmean was pinned to a fixed reduction order. The pipelined
worker counts are covered by tests/test_speed_paths.py.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest
import waiting


@pytest.mark.slow
@pytest.mark.parametrize("layout,group", [("tq2_0", "row"), ("i2_s", "tensor"), ("tl2", "tensor")])
def test_thread_count_does_not_change_the_bytes(ckpt_factory, tmp_path, layout, group):
    src = ckpt_factory("llama", seed=2, tie=False, hidden=512, intermediate=1024)
    digests = []
    for threads in ("1", "2"):
        out = tmp_path / f"t{threads}.gguf"
        env = {**os.environ, "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads,
               "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
        p = waiting.run([sys.executable, "-m", "bitconv.cli", "convert", str(src), str(out), "--layout", layout,
                         "--group-size", group, "--quiet"], 300, env=env, capture_output=True, text=True)
        assert p.returncode == 0, p.stderr
        digests.append(hashlib.sha256(out.read_bytes()).hexdigest())
    assert digests[0] == digests[1]
