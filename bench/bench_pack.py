"""Pack/unpack throughput of every registered layout, single thread (prints a table; never asserted).

Why single thread: conversion runs one tensor at a time and the numpy kernels here are
meant to be fast on their own; thread pools would hide a Python loop that scales with M or
K. The env vars are set before numpy is imported, and threadpoolctl (if installed) caps
any pool that was already started.

    python bench/bench_pack.py            # 14336 x 4096 (Llama-3-8B ffn_gate), the target shape
    python bench/bench_pack.py --quick    # 1536 x 4096, a few seconds
    python bench/bench_pack.py --shape 4096x1536 --layouts i2_s,tl1,tl2   # any M x K

Targets: >= 4000 M weights/s (0.25 ns per weight) for every layout, pack and unpack (issue
14: a whole conversion runs at about twice the I/O floor, so packing gets well under 1 ns
per weight); q2_0 is timed with per-tensor and group-128 scales, tq1_0/tq2_0 with
per-tensor and group-256 scales. Unpacking
writes 1 byte per weight into a fresh array: on the default shape that array is larger
than malloc reuses, so its page faults (about 0.25 ns per weight here) are part of the time.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMEXPR_NUM_THREADS",
             "VECLIB_MAXIMUM_THREADS"):
    os.environ[_var] = "1"

import argparse  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from contextlib import nullcontext  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any, Callable  # noqa: E402

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bitconv.pack import get_layout, layout_names  # noqa: E402
from bitconv.quant import Ternary  # noqa: E402

TARGETS = {name: 4000.0 for name in ("i2_s", "tl1", "tl2", "tq1_0", "tq2_0", "q2_0", "hf2bit")}
GROUPS = {"q2_0": ["tensor", 128], "tq1_0": ["tensor", 256], "tq2_0": ["tensor", 256]}  # scale groups timed per layout (default: per tensor)
VARIANTS = {"i2_s": [{"variant": "x86-act"}, {"variant": "arm"}, {"variant": "x86-1x4"}]}


def _limit_threads() -> Any:
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        return nullcontext()
    return threadpool_limits(limits=1)


def _best(fn: Callable[[], Any], repeat: int) -> tuple[float, Any]:
    """Fastest of `repeat` runs (the minimum is the least noisy estimate of the code's cost)."""
    best, result = float("inf"), None
    for _ in range(repeat):
        t0 = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - t0)
    return best, result


def _random_ternary(m: int, k: int, seed: int = 0, group: str | int = "tensor") -> Ternary:
    rng = np.random.default_rng(seed)
    values = rng.integers(-1, 2, size=(m, k), dtype=np.int8)
    if group == "tensor":
        return Ternary(values, np.float32(0.0421875), "tensor")
    scales = rng.uniform(0.01, 0.1, size=(m, k // int(group))).astype(np.float16).astype(np.float32)
    return Ternary(values, scales, int(group))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="1536 x 4096 instead of 14336 x 4096")
    ap.add_argument("--shape", default=None, help="M x K to time instead, e.g. 4096x1536")
    ap.add_argument("--repeat", type=int, default=None, help="timed runs per cell (best is shown)")
    ap.add_argument("--layouts", default=None, help="comma-separated subset of layouts")
    args = ap.parse_args(argv)
    m, k = (1536, 4096) if args.quick else (14336, 4096)
    if args.shape:
        m, k = (int(x) for x in args.shape.lower().split("x"))
    repeat = args.repeat or (5 if args.quick else 3)
    terns = {g: _random_ternary(m, k, group=g) for g in ("tensor", 128, 256)}
    n = m * k
    names = args.layouts.split(",") if args.layouts else layout_names()

    print(f"pack/unpack throughput, {m} x {k} = {n / 1e6:.1f} M weights, single thread, best of {repeat}")
    print("(ns per weight = 1000 / (M w/s))")
    print(f"numpy {np.__version__}")
    header = f"{'layout':<18}{'bytes':>12}{'pack M w/s':>13}{'unpack M w/s':>14}{'target':>8}  ok"
    print(header)
    print("-" * len(header))
    failed = False
    with _limit_threads():
        for name in names:
            for opts, group in [(o, g) for o in VARIANTS.get(name, [{}]) for g in GROUPS.get(name, ["tensor"])]:
                label = name + (f"[{opts['variant']}]" if "variant" in opts else "") + (
                    f"[g{group}]" if group != "tensor" else "")
                layout = get_layout(name, **opts)
                tern = terns[group]
                kw = {} if group == "tensor" else {"group": group}
                try:
                    t_pack, data = _best(lambda: layout.pack(tern, "bench"), repeat)
                except NotImplementedError:
                    print(f"{label:<18}{'(pack not implemented: skipped)':>40}")
                    continue
                try:
                    t_unpack, back = _best(lambda: layout.unpack(data, (m, k), "bench", **kw), repeat)
                    if not np.array_equal(back.values, tern.values) or back.group != tern.group:
                        print(f"{label:<18} unpack(pack(x)) != x")
                        failed = True
                        continue
                    unpack_rate = f"{n / t_unpack / 1e6:14.0f}"
                except NotImplementedError:
                    t_unpack, unpack_rate = None, f"{'n/a':>14}"
                pack_rate = n / t_pack / 1e6
                target = TARGETS.get(name)
                ok = ""
                if target is not None:
                    rates = [pack_rate] + ([n / t_unpack / 1e6] if t_unpack else [])
                    ok = "yes" if min(rates) >= target else "NO"
                    failed |= ok == "NO"
                tgt = f"{target:8.0f}" if target else f"{'-':>8}"
                print(f"{label:<18}{data.size:>12}{pack_rate:13.0f}{unpack_rate}{tgt}  {ok}")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
