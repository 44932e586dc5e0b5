"""Throughput of exact-ternary detection and recovery against absmean ternarization.

Converting a plain-family model whose float linears are exact ternary reads each linear
twice (detection at plan time, recovery at write time); a float model that is not ternary
is rejected after its first rows. This prints what each step costs per matrix.

    TORCHDYNAMO_DISABLE=1 python bench/bench_exact_ternary.py [--m 4096] [--k 4096] [--repeat 3]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from bitconv.exact_ternary import block_stats, detect, recover
from bitconv.quant import ternarize
from bitconv.source_kind import PROBE_ROWS


def _best(fn, repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--m", type=int, default=4096)
    ap.add_argument("--k", type=int, default=4096)
    ap.add_argument("--repeat", type=int, default=3)
    a = ap.parse_args()
    g = torch.Generator().manual_seed(0)
    t = torch.randint(-1, 2, (a.m, a.k), generator=g).to(torch.float32)
    scales = (torch.rand(a.m, a.k // 128, generator=g) * 0.1 + 0.01).repeat_interleave(128, 1)
    exact = (t * scales).to(torch.bfloat16).to(torch.float32).numpy()
    noise = np.random.default_rng(0).standard_normal((a.m, a.k)).astype(np.float32)
    found = detect(exact, "bf16")
    rows = [
        ("detect (exact, group 128)", lambda: detect(exact, "bf16")),
        ("recover (exact, group 128)", lambda: recover(exact, found.group, True)),
        ("absmean ternarize (group 128)", lambda: ternarize(exact, 128)),
        (f"reject a float tensor ({PROBE_ROWS}-row probe)", lambda: block_stats(noise[:PROBE_ROWS], 2**-7)),
        ("reject a float tensor (whole)", lambda: detect(noise, "f32")),
    ]
    n = a.m * a.k
    print(f"{a.m}x{a.k} float32, torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"{'step':<44}{'seconds':>10}{'M values/s':>12}")
    for name, fn in rows:
        s = _best(fn, a.repeat)
        vals = PROBE_ROWS * a.k if "probe" in name else n
        print(f"{name:<44}{s:>10.3f}{vals / s / 1e6:>12.0f}")


if __name__ == "__main__":
    main()
