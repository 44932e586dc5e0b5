"""Activation schemes: how verify's decoder layer quantizes each ternary linear's input and
the KV cache, as one plug-in of the layer (not another copy of it).

The layer calls, for the artifact side:

* `scheme.act(x, site, layer)` on the input of each group of linears, `site` one of
  `SITES`: "attn_in" (q/k/v, after the attention norm), "attn_out_in" (o_proj, after any
  sub-norm), "ffn_in" (gate/up, after the FFN norm), "ffn_down_in" (down_proj, after the
  activation and any sub-norm). It returns the fake-quantized input (quantize, then
  dequantize) in x's shape and dtype.
* `scheme.kv(k, v, layer)` on the keys and values after rope, before attention.

`get_scheme(name, kv_bits)` builds one; `SCHEMES` is the registry (one class per scheme).

"a8" is BitNet b1.58's rule, the one verify has always used (FORMATS.md §1): per token
γ = max|x|, `x_q = clip(round(x·127/max(γ, 1e-5)), -128, 127)`, input `x_q / (127/γ)`, the
same float32 operations as before the scheme seam, so `--act a8` reproduces verify's default
numbers bit for bit (the int8 backends fuse exactly this rule: `is_int8_fused`). "none" is
no quantization (a plain family, `--no-act-quant`).

"a4.8" is BitNet a4.8 (Wang, Ma, Wei, arXiv 2411.04965, §2 "BitNet a4.8"):

* inputs to attention and FFN (attn_in, ffn_in), 4-bit absmean, per token (Eq. 4):
  `Q_INT4(X) = β/√7 · RoundClip(√7·X/(β+ε), -8, 7)`, `β = mean(|X|)`;
* the intermediate states, 8-bit absmax, per token (Eq. 3):
  `Q_INT8(X) = γ/127 · RoundClip(127·X/(γ+ε), -128, 127)`, `γ = max(|X|)`;
  the input of the attention output projection is first sparsified by TopK at 50% (the
  paper's Q-Sparse step, Table 4 "INT8 + TopK 50%"): per token the K = ⌈0.5·d⌉ entries
  of largest |x| are kept, the rest set to 0; the input of the FFN down projection is not
  TopK'd: its sparsity comes from the squared ReLU of the gated FFN (§2, Fig. 5, Table 2);
* `RoundClip(x, a, b) = max(a, min(b, round(x)))`, round half to even (torch.round, as the
  a8 rule), ε = 1e-5.
* `kv_bits` b (3, 4 or 8): keys and values after rope, absmax to b-bit signed integers,
  per token and per head (`γ = max|x|` over head_dim; `Q_b(X) = γ/Q·RoundClip(Q·X/(γ+ε),
  -Q-1, Q)`, Q = 2^(b-1)-1). The paper's Table 3 reports 4-bit and 3-bit KV; that they are
  quantized after rope with absmax is our recollection of its text, and the per-head,
  per-token granularity our reading of it.

Sources: the paper's full text could not be read from the session that wrote this. Eq. 3/4
are as a public explainer restates them, the TopK ratio and site and the KV bit widths are
from Tables 2-4 as a public review quotes them, section numbers are from memory. Eq. 4 has
an independent check: on Gaussian inputs it zeroes 12.0% of entries, the 12.0-12.1% Table 2
reports at the q/k/v and gate inputs of every a4.8 size (tests/test_act_schemes.py).

Ties at the TopK boundary: among entries of equal |x| the one with the LOWER index wins.
`torch.topk` documents no order among equal values (its kernels differ by device and
size), so the mask comes from a stable descending sort, which
keeps equal magnitudes in index order: deterministic on every device and thread count.

The a4.8 statistics (β, γ) and products are computed in float64 and the result cast to
x's dtype: the summation order of mean(|X|) (threads, devices) then cannot move a value
across a rounding boundary in practice, and an independent reference can match bit for bit.

`SparsityStats` collects what the scheme sees (exact zeros at each linear's input as
computed, what TopK drops, the zeros of relu²(gate)·up before quantization) plus the zero
fraction of each ternary weight, and counts the parameters active per token the way the
paper's Table 2 does (see `SparsityStats.report`).
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch

from ..errors import UsageError

SITES = ("attn_in", "attn_out_in", "ffn_in", "ffn_down_in")
KV_BITS = (3, 4, 8)
ACT_EPS = 1e-5  # γ floor of b1.58's per-token absmax (BitNet's clamp)
EPS = 1e-5  # the paper's ε
SQRT7 = math.sqrt(7.0)
TOPK_RATIO = 0.5  # a4.8's TopK for the attention output projection's input (Table 4)

# which linears read each site (GGUF names), for the parameter accounting
SITE_LINEARS: dict[str, tuple[str, ...]] = {
    "attn_in": ("attn_q", "attn_k", "attn_v"),
    "attn_out_in": ("attn_output",),
    "ffn_in": ("ffn_gate", "ffn_up"),
    "ffn_down_in": ("ffn_down",),
}
LINEARS = ("attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down")


# ----------------------------------------------------------------------------------------
# the quantizers (each one equation of the paper; tests hold them to an independent reference)
# ----------------------------------------------------------------------------------------
def absmean_int4(x: torch.Tensor) -> torch.Tensor:
    """a4.8 Eq. 4, per token (last dim): β/√7 · RoundClip(√7·x/(β+ε), -8, 7), β = mean|x|."""
    xf = x.to(torch.float64)
    beta = xf.abs().mean(dim=-1, keepdim=True)
    q = (xf * (SQRT7 / (beta + EPS))).round_().clamp_(-8, 7)
    return (q * (beta / SQRT7)).to(x.dtype)


def absmax_int(x: torch.Tensor, bits: int = 8) -> torch.Tensor:
    """a4.8 Eq. 3 generalized to b bits, per row of the last dim:
    γ/Q · RoundClip(Q·x/(γ+ε), -Q-1, Q), γ = max|x|, Q = 2^(b-1)-1 (127 for 8 bits)."""
    qmax = float(2 ** (bits - 1) - 1)
    xf = x.to(torch.float64)
    gamma = xf.abs().amax(dim=-1, keepdim=True)
    q = (xf * (qmax / (gamma + EPS))).round_().clamp_(-qmax - 1, qmax)
    return (q * (gamma / qmax)).to(x.dtype)


def topk_count(d: int, ratio: float = TOPK_RATIO) -> int:
    """Entries TopK keeps of a token of width d: ⌈ratio·d⌉ (at least 1)."""
    return max(1, min(d, math.ceil(ratio * d - 1e-9)))


def topk_mask(x: torch.Tensor, k: int) -> torch.Tensor:
    """Boolean mask of the k entries of largest |x| per row (last dim); among equal |x| the
    lower index wins (stable descending sort), so the mask is the same on every device."""
    d = x.shape[-1]
    if k >= d:
        return torch.ones_like(x, dtype=torch.bool)
    order = torch.sort(x.abs(), dim=-1, descending=True, stable=True).indices[..., :k]
    return torch.zeros_like(x, dtype=torch.bool).scatter_(-1, order, True)


def topk(x: torch.Tensor, ratio: float = TOPK_RATIO) -> tuple[torch.Tensor, torch.Tensor]:
    """Q-Sparse TopK: (x with all but the ⌈ratio·d⌉ largest |x| of each token set to 0, the kept mask)."""
    mask = topk_mask(x, topk_count(x.shape[-1], ratio))
    return x * mask, mask


def absmax_int8(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """BitNet b1.58's per-token 8-bit absmax, as verify has always computed it: integer-valued
    float32 x_q = clip(round(x·127/max(γ, 1e-5)), -128, 127) and 127/γ (γ = max|x|)."""
    xf = x.to(torch.float32)
    gamma = torch.linalg.vector_norm(xf, float("inf"), dim=-1, keepdim=True)  # max|x|, one pass
    scale = 127.0 / gamma.clamp_(min=ACT_EPS)
    return (xf * scale).round_().clamp_(-128, 127), scale


def a8_quant(x: torch.Tensor) -> torch.Tensor:
    """b1.58's input to a linear: x_q / (127/γ) in x's dtype, what transformers' BitLinear
    feeds F.linear (and verify's float path always has)."""
    xq, scale = absmax_int8(x)
    return (xq / scale).to(x.dtype)


# ----------------------------------------------------------------------------------------
# sparsity statistics
# ----------------------------------------------------------------------------------------
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
        per_kind: dict[str, list[float]] = {k: [0.0, 0.0, 0, 0] for k in LINEARS}
        complete = bool(layers)
        for i in layers:
            sites = {s: c for (l, s), c in self.sites.items() if l == i}
            for s, c in sites.items():
                tot_sites.setdefault(s, SiteCounts()).add(c)
            linears = {}
            for kind in LINEARS:
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


_SHORT = {"attn_q": "q", "attn_k": "k", "attn_v": "v", "attn_output": "o", "ffn_gate": "gate", "ffn_up": "up",
          "ffn_down": "down"}


def render_sparsity(rep: dict[str, Any], console: Any, title: str = "sparsity") -> None:
    """Print a `SparsityStats.report()` as a rich table: per layer and in total, each
    linear's idle fraction for a token (paper Table 2's columns) with its ternary weight's
    zero fraction in brackets, and the fraction of linear parameters active per token."""
    from rich.table import Table

    pct = lambda v: "-" if v is None else f"{100 * v:.1f}"  # noqa: E731
    t = Table(title=f"{title}: % of each linear idle per token [% zero weights]; active = parameters used per token",
              header_style="bold")
    t.add_column("layer", justify="right")
    for k in LINEARS:
        t.add_column(_SHORT[k], justify="right")
    t.add_column("active", justify="right")

    def row(name: str, lin: dict[str, Any], active: float | None, style: str | None = None) -> None:
        cells = [f"{pct(lin[k]['sparsity'])} [{pct(lin[k]['weight_zero_fraction'])}]" for k in LINEARS]
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


# ----------------------------------------------------------------------------------------
# the schemes
# ----------------------------------------------------------------------------------------
SCHEMES: dict[str, type["ActScheme"]] = {}


def register(cls: type["ActScheme"]) -> type["ActScheme"]:
    SCHEMES[cls.name] = cls
    return cls


class ActScheme:
    """One activation scheme. Subclasses define `_act(x, site) -> (out, kept mask | None)`."""

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    kv_bits: int | None = None  # class defaults: a subclass need not call __init__
    stats: SparsityStats | None = None

    def __init__(self, kv_bits: int | None = None, stats: SparsityStats | None = None) -> None:
        if kv_bits is not None and kv_bits not in KV_BITS:
            raise UsageError(f"--kv-bits must be one of {', '.join(map(str, KV_BITS))}, got {kv_bits}")
        self.kv_bits = kv_bits
        self.stats = stats

    def act(self, x: torch.Tensor, site: str, layer: int) -> torch.Tensor:
        """The fake-quantized input of the linears at `site` (same shape and dtype as x)."""
        if site not in SITES:
            raise ValueError(f"unknown activation site {site!r} (one of {', '.join(SITES)})")
        out, kept = self._act(x, site)
        if self.stats is not None:
            self.stats.record(layer, site, x, out, kept)
        return out

    def _act(self, x: torch.Tensor, site: str) -> tuple[torch.Tensor, torch.Tensor | None]:
        raise NotImplementedError

    def kv(self, k: torch.Tensor, v: torch.Tensor, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys and values after rope ([..., head_dim]), quantized per token and head to
        `kv_bits` (unchanged without)."""
        if self.kv_bits is None:
            return k, v
        return absmax_int(k, self.kv_bits), absmax_int(v, self.kv_bits)

    @property
    def label(self) -> str:
        return self.name + (f" + {self.kv_bits}-bit KV" if self.kv_bits else "")


@register
class A8(ActScheme):
    """BitNet b1.58: every linear input 8-bit absmax per token (verify's default)."""

    name = "a8"
    description = "8-bit absmax activations per token at every linear (BitNet b1.58)"

    def _act(self, x, site):
        return a8_quant(x), None


@register
class NoQuant(ActScheme):
    """No activation quantization (a plain family as transformers runs it, `--no-act-quant`)."""

    name = "none"
    description = "float activations (no quantization)"

    def _act(self, x, site):
        return x, None


@register
class A48(ActScheme):
    """BitNet a4.8 (arXiv 2411.04965 §2): INT4 absmean at attention/FFN inputs, TopK 50% +
    INT8 at o_proj's input, INT8 at down_proj's input (sparse from relu²)."""

    name = "a4.8"
    description = ("4-bit absmean at q/k/v and gate/up inputs, top-50% + 8-bit absmax at o_proj's input, "
                   "8-bit absmax at down_proj's input (BitNet a4.8)")

    def __init__(self, kv_bits: int | None = None, stats: SparsityStats | None = None,
                 topk_ratio: float = TOPK_RATIO) -> None:
        super().__init__(kv_bits, stats)
        self.topk_ratio = topk_ratio

    def _act(self, x, site):
        if site in ("attn_in", "ffn_in"):
            return absmean_int4(x), None
        if site == "attn_out_in":
            sparse, kept = topk(x, self.topk_ratio)
            return absmax_int(sparse, 8), kept
        return absmax_int(x, 8), None


def get_scheme(name: str, kv_bits: int | None = None, stats: SparsityStats | None = None) -> ActScheme:
    """The scheme called `name` ("a8", "a4.8"), with a `kv_bits` KV cache (None: unquantized)."""
    cls = SCHEMES.get(name)
    if cls is None:
        raise UsageError(f"--act must be one of {', '.join(SCHEMES)}, got {name!r}")
    return cls(kv_bits=kv_bits, stats=stats)


def scheme_names() -> list[str]:
    return list(SCHEMES)


def is_int8_fused(scheme: Any) -> bool:
    """Whether the int8 backends' fused kernels compute `scheme` (plain a8, float KV cache)."""
    return type(scheme) is A8 and getattr(scheme, "kv_bits", None) is None


