"""Sparsity statistics of an activation scheme's run (verify reports them for any `--act` but a8).

`SparsityStats` collects what the scheme sees (exact zeros at each linear's input as
computed, what TopK drops, the zeros of relu²(gate)·up before quantization) plus the zero
fraction of each ternary weight, and counts the parameters active per token the way the
paper's Table 2 does (see `SparsityStats.report`).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ..model import LINEAR_KINDS

# which linears read each site (GGUF names), for the parameter accounting
SITE_LINEARS: dict[str, tuple[str, ...]] = {
    "attn_in": ("attn_q", "attn_k", "attn_v"),
    "attn_out_in": ("attn_output",),
    "ffn_in": ("ffn_gate", "ffn_up"),
    "ffn_down_in": ("ffn_down",),
}
# the linears' column headers in the report tables (sparsity's and the weight error's)
SHORT_NAMES = {"attn_q": "q", "attn_k": "k", "attn_v": "v", "attn_output": "o", "ffn_gate": "gate",
               "ffn_up": "up", "ffn_down": "down"}


@dataclass
class SiteCounts:
    """Integer counts at one site of one layer (integers: the sum is the same in any order)."""

    elements: int = 0  # entries seen (tokens x width)
    zeros_in: int = 0  # exact zeros in the input before the scheme (relu²(gate)·up = 0 at ffn_down_in)
    zeros_out: int = 0  # exact zeros in what the linear computes with (after TopK and quantization)
    topk_dropped: int = 0  # nonzero inputs TopK set to 0

    def add(self, other: "SiteCounts") -> None:
        self.elements += other.elements
        self.zeros_in += other.zeros_in
        self.zeros_out += other.zeros_out
        self.topk_dropped += other.topk_dropped

    def fractions(self) -> dict[str, float | None]:
        n = self.elements
        f = (lambda c: c / n) if n else (lambda c: None)  # noqa: E731
        return {"input_zero_fraction": f(self.zeros_in), "zero_fraction": f(self.zeros_out),
                "topk_dropped_fraction": f(self.topk_dropped), "elements": n}


@dataclass
class WeightInfo:
    params: int
    zeros: int | None  # None: a float (non-ternary) weight


class SparsityStats:
    """Collects, per layer: what each site's input looked like (`record`, called by the
    schemes) and the ternary weights (`observe_weight`, called where verify loads them).
    Thread-safe (the CPU layer runs one chain of sequences per core) and deterministic
    (integer counts)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pending: list[tuple[int, str, torch.Tensor]] = []  # device counts, summed at report
        self.sites: dict[tuple[int, str], SiteCounts] = {}
        self.weights: dict[tuple[int, str], WeightInfo] = {}

    # -- collecting ------------------------------------------------------------------------
    def record(self, layer: int, site: str, x_in: torch.Tensor, x_out: torch.Tensor,
               kept: torch.Tensor | None = None) -> None:
        """One call of a scheme: input, output, and TopK's kept mask (if any)."""
        zin = x_in == 0
        counts = torch.stack([(zin).sum(), (x_out == 0).sum(),
                              (~kept & ~zin).sum() if kept is not None else torch.zeros((), dtype=torch.int64,
                                                                                        device=x_in.device)])
        with self._lock:  # the counts stay on the device: no sync per call on CUDA
            self._pending.append((layer, site, counts))
            key = (layer, site)
            self.sites.setdefault(key, SiteCounts()).elements += x_in.numel()

    def observe_weight(self, layer: int, kind: str, values: Any | None, shape: tuple[int, ...] | None = None) -> None:
        """A linear's ternary values (int8 {-1,0,1}, torch or numpy), or only its shape for a float weight."""
        if values is not None:
            if isinstance(values, np.ndarray):
                params, zeros = int(values.size), int(values.size - np.count_nonzero(values))
            else:
                params, zeros = int(values.numel()), int(values.numel() - torch.count_nonzero(values).item())
            info = WeightInfo(params, zeros)
        else:
            info = WeightInfo(int(np.prod(shape)) if shape else 0, None)
        with self._lock:
            self.weights[(layer, kind)] = info

    def _flush(self) -> None:
        with self._lock:
            pending, self._pending = self._pending, []
            for layer, site, c in pending:
                zin, zout, dropped = (int(v) for v in c.tolist())
                sc = self.sites.setdefault((layer, site), SiteCounts())
                sc.zeros_in += zin
                sc.zeros_out += zout
                sc.topk_dropped += dropped

    # -- the report ------------------------------------------------------------------------
    @staticmethod
    def linear_sparsity(kind: str, sites: dict[str, SiteCounts]) -> float | None:
        """The fraction of a linear's parameters NOT active for a token, as the paper's Table 2
        counts it: a weight column is idle when its input entry is 0 (q/k/v, o, gate, down:
        the zeros of the quantized input), and up_proj's rows are idle where relu²(gate) is 0
        (its output is multiplied by it): Table 2's a4.8 rows have Up 66-71% while Gate (the
        same input) is 12%, and its Overall column is the parameter-weighted mean of the
        per-projection columns (7B: 44.5%, "55% of parameters active")."""
        if kind == "ffn_up":
            sc = sites.get("ffn_down_in")
            return sc.zeros_in / sc.elements if sc and sc.elements else None
        site = next(s for s, ks in SITE_LINEARS.items() if kind in ks)
        sc = sites.get(site)
        return sc.zeros_out / sc.elements if sc and sc.elements else None

    def report(self) -> dict[str, Any]:
        """Per layer and total: each site's fractions, each linear's weight zero fraction and
        input sparsity, and the fraction of linear parameters active per token (embedding and
        output head excluded, as in the paper's Table 2)."""
        self._flush()
        layers = sorted({k[0] for k in self.sites} | {k[0] for k in self.weights})
        out_layers = []
        tot_sites: dict[str, SiteCounts] = {}
        tot_params = tot_active = 0.0
        # per linear kind: params, active params, zero weights, ternary params
        per_kind: dict[str, list[float]] = {k: [0.0, 0.0, 0, 0] for k in LINEAR_KINDS}
        complete = bool(layers)
        for i in layers:
            sites = {s: c for (l, s), c in self.sites.items() if l == i}
            for s, c in sites.items():
                tot_sites.setdefault(s, SiteCounts()).add(c)
            linears = {}
            for kind in LINEAR_KINDS:
                w = self.weights.get((i, kind))
                sp = self.linear_sparsity(kind, sites)
                linears[kind] = {
                    "params": w.params if w else None,
                    "weight_zero_fraction": (w.zeros / w.params) if w and w.zeros is not None and w.params else None,
                    "sparsity": sp,
                }
                if w is not None and w.zeros is not None:
                    per_kind[kind][2] += w.zeros
                    per_kind[kind][3] += w.params
                if w is None or sp is None:
                    complete = False
                    continue
                per_kind[kind][0] += w.params
                per_kind[kind][1] += w.params * (1.0 - sp)
                tot_params += w.params
                tot_active += w.params * (1.0 - sp)
            out_layers.append({"layer": i, "sites": {s: c.fractions() for s, c in sorted(sites.items())},
                               "linears": linears,
                               "active_fraction": _active(linears)})
        total_linears = {
            k: {"params": int(p) if p else None,
                "sparsity": (1.0 - a / p) if p else None,
                "weight_zero_fraction": (z / tp) if tp else None}
            for k, (p, a, z, tp) in per_kind.items()}
        return {
            "layers": out_layers,
            "total": {
                "sites": {s: c.fractions() for s, c in sorted(tot_sites.items())},
                "linears": total_linears,
                "params": int(tot_params) if tot_params else None,
                "active_params": int(round(tot_active)) if tot_params else None,
                "active_fraction": (tot_active / tot_params) if tot_params and complete else None,
                "sparsity": (1.0 - tot_active / tot_params) if tot_params and complete else None,
            },
            # False where the int8 kernels ran a8 fused (they never hand the quantized input back):
            # only the weights were seen; run --no-fast (or another scheme) for the activations
            "activations_collected": bool(self.sites),
            "accounting": ("paper Table 2: q/k/v, o, gate, down idle where their quantized input is 0; "
                           "up idle where relu2(gate)*up is 0; linears only (no embedding/head)"),
        }


def render_sparsity(rep: dict[str, Any], console: Any, title: str = "sparsity") -> None:
    """Print a `SparsityStats.report()` as a rich table: per layer and in total, each
    linear's idle fraction for a token (paper Table 2's columns) with its ternary weight's
    zero fraction in brackets, and the fraction of linear parameters active per token."""
    from rich.table import Table

    pct = lambda v: "-" if v is None else f"{100 * v:.1f}"  # noqa: E731
    t = Table(title=f"{title}: % of each linear idle per token [% zero weights]; active = parameters used per token",
              header_style="bold")
    t.add_column("layer", justify="right")
    for k in LINEAR_KINDS:
        t.add_column(SHORT_NAMES[k], justify="right")
    t.add_column("active", justify="right")

    def row(name: str, lin: dict[str, Any], active: float | None, style: str | None = None) -> None:
        cells = [f"{pct(lin[k]['sparsity'])} [{pct(lin[k]['weight_zero_fraction'])}]" for k in LINEAR_KINDS]
        t.add_row(name, *cells, pct(active), style=style)

    for lay in rep["layers"]:
        row(str(lay["layer"]), lay["linears"], lay["active_fraction"])
    tot = rep["total"]
    row("all", tot["linears"], tot["active_fraction"], style="bold")
    console.print(t)
    sites = tot["sites"]
    parts = []
    if "attn_out_in" in sites and sites["attn_out_in"]["topk_dropped_fraction"]:
        parts.append(f"TopK dropped {pct(sites['attn_out_in']['topk_dropped_fraction'])}% of o_proj's input")
    if "ffn_down_in" in sites and sites["ffn_down_in"]["input_zero_fraction"] is not None:
        down = sites["ffn_down_in"]
        parts.append(f"relu²(gate)·up exactly 0 at {pct(down['input_zero_fraction'])}% of down_proj's input "
                     f"({pct(down['zero_fraction'])}% after quantization)")
    if tot["active_params"] is not None and tot["params"]:
        parts.append(f"{tot['active_params']:,} of {tot['params']:,} linear parameters active per token")
    if parts:
        console.print("; ".join(parts))


def _active(linears: dict[str, dict[str, Any]]) -> float | None:
    p = a = 0.0
    for v in linears.values():
        if v["params"] is None or v["sparsity"] is None:
            return None
        p += v["params"]
        a += v["params"] * (1.0 - v["sparsity"])
    return a / p if p else None
