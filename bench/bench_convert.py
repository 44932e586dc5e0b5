#!/usr/bin/env python
"""Whole-model conversion time and peak memory (issue 2 item 8). Prints a table.

A seeded synthetic model much larger than its largest tensor is written once (bitconv.synth,
bf16 by default); then every registered GGUF layout that accepts its shapes converts it, each
in a fresh child process whose peak RSS (resource.getrusage(RUSAGE_CHILDREN).ru_maxrss, taken
in a small launcher process that runs only that child) is measured
and set against the model size and the largest tensor. A child that imports the same modules
and converts nothing gives the baseline. If tensors are streamed, the growth over the baseline
stays near a few copies of the largest tensor, not the model.

    python bench/bench_convert.py                        # hidden 2048, ffn 5632, 8 layers, bf16
    python bench/bench_convert.py --layers 2 --hidden 1024 --intermediate 2816 --layouts tq2_0
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

MiB = 1024 * 1024

CHILD_CONVERT = """
import json, sys, time
from bitconv.convert import convert
t = time.perf_counter()
r = convert(sys.argv[1], sys.argv[2], layout=sys.argv[3], force=True)
print(json.dumps({"seconds": time.perf_counter() - t, "output_bytes": r.output_bytes}))
"""

CHILD_BASELINE = """
import json
import bitconv.convert, bitconv.readers.hf_folder, bitconv.writers.gguf_writer, bitconv.pack  # noqa
import gguf, numpy, safetensors, torch  # noqa
print(json.dumps({"seconds": 0.0, "output_bytes": 0}))
"""


# Peak RSS is measured through a small launcher process: a child's ru_maxrss starts at the
# high-water RSS of the process it was forked from (Linux carries it over fork and exec), so
# measuring a direct child of a big process (pytest, or one that imported torch) reports that
# process's size. The launcher only imports the standard library; its RUSAGE_CHILDREN then
# holds the peak of the one measured grandchild.
LAUNCHER = """
import resource, subprocess, sys
p = subprocess.run(sys.argv[1:], stdout=subprocess.PIPE)
sys.stdout.buffer.write(p.stdout)
r = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
print("\\n@@MAXRSS", r * (1 if sys.platform == "darwin" else 1024))
sys.exit(p.returncode)
"""


def run_child(code: str, *args: str) -> tuple[dict, int]:
    """Run `python -c code args` in a fresh process; return (its last JSON line, its peak RSS in bytes)."""
    env = dict(os.environ, TORCHDYNAMO_DISABLE="1", HF_HUB_OFFLINE="1", HF_HUB_DISABLE_TELEMETRY="1")
    p = subprocess.run([sys.executable, "-c", LAUNCHER, sys.executable, "-c", code, *args], env=env,
                       capture_output=True, text=True)
    if p.returncode != 0:
        raise RuntimeError(f"child failed ({p.returncode}):\n{p.stderr}")
    lines = p.stdout.splitlines()
    peak = int(next(ln for ln in reversed(lines) if ln.startswith("@@MAXRSS")).split()[1])
    doc = next(ln for ln in reversed(lines) if ln.startswith("{"))
    return json.loads(doc), peak


def model_sizes(folder: Path) -> tuple[int, int, int, str]:
    """(file bytes, float32 bytes of the whole model, float32 bytes of the largest tensor, its name).

    Reads the safetensors headers with the standard library only: this process must stay
    small, because a child's ru_maxrss starts at its parent's RSS (it is carried over fork
    and exec), so everything heavy runs in children.
    """
    files = sorted(folder.glob("*.safetensors"))
    total, largest, largest_name = 0, 0, ""
    for f in files:
        with open(f, "rb") as fh:
            n = int.from_bytes(fh.read(8), "little")
            header = json.loads(fh.read(n))
        for name, info in header.items():
            if name == "__metadata__":
                continue
            count = 1
            for d in info["shape"]:
                count *= d
            total += 4 * count
            if 4 * count > largest:
                largest, largest_name = 4 * count, name
    return sum(f.stat().st_size for f in files), total, largest, largest_name


CHILD_MAKE = """
import json, sys
from bitconv.synth import make_checkpoint
kw = json.loads(sys.argv[2])
make_checkpoint(sys.argv[1], family="silu", tie=True, seed=0, **kw)
print("{}")
"""

CHILD_LAYOUTS = """
import json, sys
from bitconv.convert import build_options
from bitconv.errors import BitconvError
from bitconv.pack import layout_class, layout_names
from bitconv.readers import open_source
from bitconv.writers import get_writer
from pathlib import Path

folder = Path(sys.argv[1])
wanted = [x for x in sys.argv[2].split(",") if x]
ckpt = open_source(folder)
names = wanted or [n for n in layout_names() if layout_class(n).ggml_type is not None]
ok, skipped = [], {}
for name in names:
    try:
        get_writer("gguf").plan(ckpt, folder / "x.gguf", build_options(layout=name))
        ok.append(name)
    except BitconvError as exc:
        skipped[name] = str(exc)
print(json.dumps({"ok": ok, "skipped": skipped}))
"""


def make_model(folder: Path, args) -> Path:
    if (folder / "config.json").exists():
        return folder
    t = time.perf_counter()
    kw = dict(hidden=args.hidden, intermediate=args.intermediate, layers=args.layers, heads=args.heads,
              kv_heads=args.heads, vocab=args.vocab, dtype=args.dtype)
    run_child(CHILD_MAKE, str(folder), json.dumps(kw))
    print(f"wrote the synthetic model in {time.perf_counter() - t:.1f} s: {folder}", file=sys.stderr)
    return folder


def accepting_layouts(folder: Path, wanted: str) -> list[str]:
    """Registered GGUF layouts whose plan accepts every tensor of the model (default options)."""
    res, _ = run_child(CHILD_LAYOUTS, str(folder), wanted)
    for name, why in res["skipped"].items():
        print(f"skipping {name}: {why}", file=sys.stderr)
    return res["ok"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--hidden", type=int, default=2048)
    ap.add_argument("--intermediate", type=int, default=5632)
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--heads", type=int, default=16)
    ap.add_argument("--vocab", type=int, default=512)
    ap.add_argument("--dtype", default="bf16", choices=["bf16", "f16", "f32"])
    ap.add_argument("--layouts", default="", help="comma-separated; default: every GGUF layout that accepts the shapes")
    ap.add_argument("--workdir", type=Path, default=None, help="keep the model here (default: a temp dir)")
    ap.add_argument("--json", action="store_true", help="print the rows as JSON instead of a table")
    args = ap.parse_args()

    tmp = None
    if args.workdir is None:
        tmp = tempfile.TemporaryDirectory(prefix="bitconv-bench-")
        workdir = Path(tmp.name)
    else:
        workdir = args.workdir
        workdir.mkdir(parents=True, exist_ok=True)
    try:
        tag = f"silu-h{args.hidden}-i{args.intermediate}-l{args.layers}-{args.dtype}"
        folder = make_model(workdir / tag, args)
        file_bytes, model_f32, largest_f32, largest_name = model_sizes(folder)
        layouts = accepting_layouts(folder, args.layouts)
        base, base_rss = run_child(CHILD_BASELINE)
        rows = []
        for layout in layouts:
            out = workdir / f"{tag}-{layout}.gguf"
            res, rss = run_child(CHILD_CONVERT, str(folder), str(out), layout)
            growth = rss - base_rss
            rows.append({
                "layout": layout, "seconds": res["seconds"], "output_bytes": res["output_bytes"],
                "peak_rss": rss, "baseline_rss": base_rss, "growth": growth,
                "growth_per_largest_f32": growth / largest_f32, "growth_per_model_f32": growth / model_f32,
                "mb_per_s": file_bytes / MiB / res["seconds"],
            })
            out.unlink(missing_ok=True)
    finally:
        if tmp is not None:
            tmp.cleanup()

    summary = {"model": tag, "source_bytes": file_bytes, "model_f32_bytes": model_f32,
               "largest_tensor": largest_name, "largest_f32_bytes": largest_f32,
               "model_over_largest": model_f32 / largest_f32, "baseline_rss": base_rss, "rows": rows}
    if args.json:
        print(json.dumps(summary, indent=2))
        return
    print(f"model {tag}: {file_bytes / MiB:.0f} MiB on disk, {model_f32 / MiB:.0f} MiB as float32, "
          f"{model_f32 / largest_f32:.1f}x its largest tensor ({largest_name}, {largest_f32 / MiB:.1f} MiB float32)")
    print(f"baseline (imports only): peak RSS {base_rss / MiB:.0f} MiB")
    head = f"{'layout':<8} {'time s':>7} {'MiB/s':>7} {'out MiB':>8} {'peak RSS MiB':>13} {'growth MiB':>11} " \
           f"{'x largest':>10} {'x model':>8}"
    print(head)
    print("-" * len(head))
    for r in rows:
        print(f"{r['layout']:<8} {r['seconds']:>7.2f} {r['mb_per_s']:>7.1f} {r['output_bytes'] / MiB:>8.1f} "
              f"{r['peak_rss'] / MiB:>13.0f} {r['growth'] / MiB:>11.0f} {r['growth_per_largest_f32']:>10.2f} "
              f"{r['growth_per_model_f32']:>8.3f}")
    print("(growth = peak RSS - baseline; 'x largest' / 'x model' relative to float32 sizes)")


if __name__ == "__main__":
    main()
