#!/usr/bin/env python
"""Where a conversion's time goes, per phase (issue 14 item 5). Prints a table.

Runs one conversion under cProfile on a single thread (BITCONV_THREADS=1, so every phase
runs in the profiled thread and the phases add up) and sums the time spent in the
functions of each phase:

* read       - loading each source tensor (`SourceTensor.load` / `load_ternary`); where the
               source is memory-mapped, pages come in during the first pass over the
               tensor, which is counted under ternarize
* ternarize  - absmean, thresholds and the quantizing pass (`bitconv.quant`), statistics excluded
* statistics - the per-tensor statistics (`tensor_stats` in code that computes them from a
               dequantized copy; torch.dot/count_nonzero calls of the numpy quantizer;
               since the numba quantizer they are sums inside its one pass, which
               cProfile cannot separate: they count under ternarize)
* pack       - `Layout.pack` and float conversion of the other tensors
* write      - writing bytes to the output file

    python bench/profile_phases.py SOURCE --layout tl2          # profile this checkout
    PYTHONPATH=/path/to/other/checkout python bench/profile_phases.py SOURCE --layout tl2

It works on older checkouts too (it looks functions up by name), which is how the
before/after table of the issue was made. Times are cProfile's (a few percent of overhead).
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import sys
import tempfile
import time
from pathlib import Path

PHASES = {
    # (file suffix, function name) -> phase; cumulative time of the outermost match counts
    "read": [("model.py", "load"), ("model.py", "load_ternary"), ("model.py", "load_raw")],
    "statistics": [("quant.py", "tensor_stats")],
    "ternarize": [("quant.py", "ternarize"), ("quant.py", "ternarize_with_stats")],
    "pack": [("pack/", "pack"), ("ggml_types.py", "float_to_bytes"), ("safetensors_writer.py", "_encode")],
    "write": [("gguf_writer.py", "write_tensor_data"), ("~", "<method 'write' of '_io.BufferedWriter' objects>")],
}
# builtins called only for the statistics inside the fused quantizer (subtracted from ternarize)
FUSED_STATS = ("torch.dot", "numpy._core._multiarray_umath.count_nonzero", "'copyto'")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("source")
    ap.add_argument("--layout", default="tq2_0")
    ap.add_argument("--format", default="gguf")
    args = ap.parse_args()
    os.environ["BITCONV_THREADS"] = "1"
    os.environ.setdefault("TORCHDYNAMO_DISABLE", "1")
    import torch  # noqa: F401 - imported before profiling: start-up is not a conversion phase

    try:  # numba's one-time start-up (checkouts that have kernels), like the imports above
        from bitconv.kernels import warm
    except ImportError:
        pass
    else:
        warm()

    from bitconv.convert import convert

    with tempfile.TemporaryDirectory(prefix="bitconv-prof-") as tmp:
        out = Path(tmp) / ("out" if args.format == "safetensors" else "out.gguf")
        prof = cProfile.Profile()
        t = time.perf_counter()
        prof.enable()
        convert(args.source, out, layout=args.layout, format=args.format)
        prof.disable()
        wall = time.perf_counter() - t
    st = pstats.Stats(prof)
    totals = {k: 0.0 for k in PHASES}
    fused = 0.0
    for (file, _line, func), (_cc, _nc, tt, ct, _callers) in st.stats.items():
        for phase, keys in PHASES.items():
            for suf, name in keys:
                hit = (suf in file.replace("\\", "/")) if suf.endswith("/") else (file == suf or file.endswith(suf))
                if hit and func == name:
                    totals[phase] += ct
        if file == "~" and any(k in func for k in FUSED_STATS):
            fused += tt
    # nested matches (ternarize_with_stats -> ternarize helpers) are not double counted: the
    # two quantizer entry points never call each other; tensor_stats inside ternarize is
    # moved to statistics
    totals["statistics"] += fused
    totals["ternarize"] -= fused
    print(f"{args.source} -> {args.layout if args.format == 'gguf' else args.format}: "
          f"{wall:.2f} s under cProfile, one thread")
    print(f"{'phase':<12} {'seconds':>8}")
    for phase in ("read", "ternarize", "statistics", "pack", "write"):
        print(f"{phase:<12} {totals[phase]:>8.2f}")
    print(f"{'other':<12} {wall - sum(totals.values()):>8.2f}")


if __name__ == "__main__":
    main()
