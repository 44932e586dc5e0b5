"""Artifact, source (and the unquantized reference) through the decoder layer in lockstep,
one layer at a time, so every weight is read once: each layer's tensors are compared
(`checks`), then every window of text goes through that layer on every side; then the
scores (`score.py`). Times are kept per side, device work included."""

from __future__ import annotations

import time
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from typing import Any, Callable

from ..model import LINEAR_KINDS
from .checks import check_globals, check_layer
from .report import TensorCheck
from .sides import Sides


@contextmanager
def flush_denormals(on: bool):
    """Flush float32 denormals to zero in this block (CPU fast path): values below 1.2e-38
    change no metric, but arithmetic on them is many times slower on x86 (measured 2.4x on
    a whole forward of a random model, same NLL to the last digit)."""
    import torch

    if not on or not torch.set_flush_denormal(True):  # False: this CPU cannot (nothing changed)
        yield
        return
    try:
        yield
    finally:
        torch.set_flush_denormal(False)  # torch's default


@dataclass
class Clock:
    """Seconds per side; `sync` waits for the device so queued GPU work is counted."""

    sync: Callable[[], None]
    seconds: dict[str, float] = field(default_factory=lambda: {"artifact": 0.0, "source": 0.0, "fp": 0.0})

    @contextmanager
    def timed(self, who: str):
        t0 = time.perf_counter()
        yield
        self.sync()
        self.seconds[who] += time.perf_counter() - t0


@dataclass
class Streamed:
    h_art: Any  # final normed hidden states [B, T, H]
    h_src: Any
    h_fp: Any | None
    checks: list[TensorCheck]
    failures: list[str]


def stream_layers(sides: Sides, wtok, num_layers: int, max_weight_error: float, clock: Clock,
                  progress: Callable[[str, int, int], None] | None) -> Streamed:
    """Every layer: load both sides, compare their tensors, prepare, run every window."""
    r_art, r_src, r_fp = sides.art, sides.src, sides.fp
    t = wtok.shape[1]
    checks: list[TensorCheck] = []
    failures: list[str] = []
    clock.sync()
    with clock.timed("artifact"):
        x_art = r_art.embed(wtok)
    with clock.timed("source"):
        x_src = r_src.embed(wtok)
        rope = r_src.rope(t)
        x_fp = r_fp.embed(wtok) if r_fp else None
    rope_art = r_art.rope(t)

    for i in range(num_layers):
        with r_src.layer_io(), r_art.layer_io(), (r_fp.layer_io() if r_fp else nullcontext()):
            with clock.timed("source"):
                raw_src = r_src.load_layer(i)
                tern_src = {k: r_src.as_ternary(f"blk.{i}.{k}.weight", p) for k, p in raw_src.items()
                            if k in LINEAR_KINDS}
            with clock.timed("artifact"):
                raw_art = r_art.load_layer(i)
                tern_art = {k: r_art.as_ternary(f"blk.{i}.{k}.weight", p) for k, p in raw_art.items()
                            if k in tern_src}
            check_layer(i, r_art, r_src, raw_art, raw_src, tern_art, tern_src, r_fp is not None,
                        max_weight_error, checks, failures)
            if sides.stats is not None:  # the artifact's zero weights, for the sparsity report
                for kind in raw_art:
                    if kind in LINEAR_KINDS:
                        ta = tern_art.get(kind)
                        sides.stats.observe_weight(i, kind, ta.values if ta is not None else None,
                                                   r_art.by_name[f"blk.{i}.{kind}.weight"].shape)
            with clock.timed("source"):
                lw_src = r_src.prepare_layer(i, {**raw_src, **tern_src})
            lw_fp = r_fp.prepare_layer(i, raw_src) if r_fp is not None else None
            with clock.timed("artifact"):
                lw_art = r_art.prepare_layer(i, {**raw_art, **tern_art})
            del raw_src, tern_src, raw_art, tern_art

        with clock.timed("source"):
            x_src = r_src.run_layer(x_src, lw_src, rope, i)
        if r_fp is not None:
            with clock.timed("fp"):
                x_fp = r_fp.run_layer(x_fp, lw_fp, rope, i)
        with clock.timed("artifact"):
            x_art = r_art.run_layer(x_art, lw_art, rope_art, i)
        del lw_src, lw_fp, lw_art
        if progress is not None:
            progress("layer", i + 1, num_layers)

    with clock.timed("artifact"):
        h_art = r_art.final_norm(x_art)
    h_src = r_src.final_norm(x_src)
    h_fp = r_fp.final_norm(x_fp) if r_fp else None
    del x_art, x_src, x_fp
    checks += check_globals(r_art, r_src, max_weight_error)
    return Streamed(h_art, h_src, h_fp, checks, failures)
