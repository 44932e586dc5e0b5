"""Benchmark: one source to three layouts in one run vs three separate runs.

Prints wall time and peak RSS (of a child process per measurement). Not a test.
    python bench/bench_release.py [--hidden 1024 --intermediate 2816 --layers 8]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CHILD = """
import sys
from bitconv.convert import convert
from bitconv.release import release
mode, src, out, layouts = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4].split(",")
if mode == "one":
    release(src, out, layouts=layouts, write_manifest=False)
else:
    convert(src, out, layout=layouts[0])
import resource
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


def run_child(*args: str) -> tuple[float, float]:
    t = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", CHILD, *args], check=True, capture_output=True, text=True)
    wall = time.perf_counter() - t
    return wall, int(proc.stdout.strip().splitlines()[-1]) / 1024  # the child's own peak, MiB


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--hidden", type=int, default=1024)
    ap.add_argument("--intermediate", type=int, default=2816)
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--layouts", default="tl2,i2_s,tq2_0")
    a = ap.parse_args()
    from bitconv.synth import make_checkpoint

    layouts = a.layouts.split(",")
    with tempfile.TemporaryDirectory() as d:
        d = Path(d)
        src = make_checkpoint(d / "src", family="silu", hidden=a.hidden, intermediate=a.intermediate,
                              layers=a.layers, heads=a.hidden // 128, kv_heads=a.hidden // 256, vocab=4096)
        size = sum(p.stat().st_size for p in src.glob("*.safetensors")) / 2**20
        rows = []
        sep_wall, sep_peak = 0.0, 0.0
        for lay in layouts:
            w, p = run_child("sep", str(src), str(d / f"sep-{lay}.gguf"), lay)
            sep_wall += w
            sep_peak = max(sep_peak, p)
            rows.append((f"separate: {lay}", w, p))
        w, p = run_child("one", str(src), str(d / "one"), ",".join(layouts))
        rows.append((f"one run: {','.join(layouts)}", w, p))
        print(f"source: {size:.1f} MiB bf16 safetensors ({a.layers} layers, hidden {a.hidden}, ff {a.intermediate})")
        print(f"{'run':<34} {'wall s':>8} {'peak RSS MiB':>14}")
        for name, w, p in rows:
            print(f"{name:<34} {w:>8.2f} {p:>14.0f}")
        print(f"{'three separate runs (sum / max)':<34} {sep_wall:>8.2f} {sep_peak:>14.0f}")


if __name__ == "__main__":
    main()
