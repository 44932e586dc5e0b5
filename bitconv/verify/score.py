"""Scores from the final hidden states (perplexity, KL(source || artifact), top-1, a chunk of
rows at a time: `metrics.compare`) and the gates they are held to."""

from __future__ import annotations

import math
import time
from typing import Any, Callable

from .report import TensorCheck
from .sides import Sides
from .stream import Clock, Streamed


def score(sides: Sides, run: Streamed, wtok, score_from: int, clock: Clock,
          progress: Callable[[str, int, int], None] | None) -> tuple[Any, dict[str, Any]]:
    """(pair metrics source vs artifact, single metrics of the extra sides) over the scored
    positions of every window (positions before `score_from` are context only)."""
    from .metrics import compare

    t = wtok.shape[1]
    if progress is not None:
        progress("metrics", 0, 1)
    sel = lambda h: h[:, score_from:t - 1].reshape(-1, h.shape[-1])  # noqa: E731
    targets = wtok[:, score_from + 1:].reshape(-1).to(sides.src.device)
    t0 = time.perf_counter()
    pair, singles = compare((sides.src, sel(run.h_src)), (sides.art, sel(run.h_art)), targets,
                            extra={"fp": (sides.fp, sel(run.h_fp))} if sides.fp else None,
                            chunk_elements=sides.src.chunk_elements)
    clock.sync()
    clock.seconds["artifact"] += (time.perf_counter() - t0) / (2 + (1 if sides.fp else 0))
    if progress is not None:
        progress("metrics", 1, 1)
    return pair, singles


def gate_failures(pair, checks: list[TensorCheck], *, max_ppl_increase: float, min_top1: float,
                  max_kl: float | None) -> list[str]:
    """Every gate crossed, as one line each (thresholds never raise)."""
    failures = [f"{c.name}: {c.problem}" for c in checks if c.problem]
    if not math.isfinite(pair.artifact.perplexity):
        failures.append("the artifact's perplexity is not finite")
    elif not (pair.ppl_change <= max_ppl_increase):
        failures.append(f"perplexity rose by {pair.ppl_change:.2%} ({pair.source.perplexity:.4g} -> "
                        f"{pair.artifact.perplexity:.4g}), more than the {max_ppl_increase:.2%} allowed")
    if not (pair.top1_agreement >= min_top1):
        failures.append(f"top-1 agreement {pair.top1_agreement:.4f} is below {min_top1}")
    if max_kl is not None and not (pair.mean_kl <= max_kl):
        failures.append(f"mean KL divergence {pair.mean_kl:.3g} exceeds {max_kl:g}")
    return failures
