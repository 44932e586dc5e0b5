"""verify's result: what was measured (`VerifyReport`, one `TensorCheck` per tensor), as JSON
and as the tables `bitconv verify` prints."""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from ..model import LINEAR, LINEAR_KINDS, kind_of, layer_of
from .sparsity import SHORT_NAMES

if TYPE_CHECKING:  # pragma: no cover
    from rich.console import Console


@dataclass
class TensorCheck:
    """One tensor of the artifact against the source weight verify computes with."""

    name: str
    role: str
    shape: tuple[int, ...]
    artifact_type: str
    source_type: str
    rel_error: float  # ||A - S|| / ||S|| of the dequantized weights
    max_error: float  # max|A - S| / max|S|
    mismatched: int | None = None  # ternary values that differ (linears)
    rel_error_fp: float | None = None  # reference="fp": ||A - W|| / ||W|| against the float source
    problem: str | None = None

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["shape"] = list(self.shape)
        return _finite(d)


@dataclass
class VerifyReport:
    artifact: str
    source: str
    artifact_layouts: list[str]
    device: str
    dtype: str
    act_quant: bool  # the artifact's activations quantized to 8 bits
    source_act_quant: bool  # the source's (BitNet models: yes; a plain family: no)
    reference: str
    tokenizer: str
    text: str
    sequences: int
    ctx: int
    tokens: int  # scored positions
    source_perplexity: float
    artifact_perplexity: float
    ppl_change: float  # artifact / source - 1
    mean_kl: float
    max_kl: float
    top1_agreement: float
    fp_perplexity: float | None
    tokens_per_s: float  # artifact forward: processed tokens / seconds
    seconds: float
    artifact_seconds: float
    source_seconds: float
    tensors: list[TensorCheck]
    thresholds: dict[str, Any]
    passed: bool
    failures: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    compute: str = ""  # what the forward passes computed with (verify's `fast` path or the float path)
    act: str = "a8"  # the artifact side's activation scheme (act_schemes)
    kv_bits: int | None = None  # its KV-cache bits (None: float)
    # sparsity.SparsityStats.report() of the artifact side: zero weights, activation zeros at
    # each linear's input, parameters active per token (None: nothing collected)
    sparsity: dict[str, Any] | None = None

    @property
    def max_rel_error(self) -> float:
        lin = [t.rel_error for t in self.tensors if t.role == LINEAR]
        return max(lin) if lin else 0.0

    def to_dict(self) -> dict[str, Any]:
        d = {k: v for k, v in asdict(self).items() if k != "tensors"}
        d["tensors"] = [t.to_dict() for t in self.tensors]
        d["max_rel_error"] = self.max_rel_error
        return _finite(d)

    def to_json(self, **kw) -> str:
        return json.dumps(self.to_dict(), **kw)


def _finite(obj: Any) -> Any:
    """NaN/inf -> None so --json output is strict JSON."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


def render_report(report: VerifyReport, console: "Console") -> None:
    """Print the report as rich tables: the metrics with their gates, then the per-layer
    relative weight error of every linear (red where a tensor failed)."""
    from rich.table import Table

    ok, bad = "[green]ok[/green]", "[red]FAIL[/red]"
    th = report.thresholds
    summary = Table(title=f"bitconv verify: {report.artifact}  vs  {report.source}", show_header=True,
                    header_style="bold")
    summary.add_column("metric")
    summary.add_column("value", justify="right")
    summary.add_column("gate", justify="right")
    summary.add_column("")
    summary.add_row("source perplexity", f"{report.source_perplexity:.4f}", "", "")
    summary.add_row("artifact perplexity", f"{report.artifact_perplexity:.4f}", "", "")
    ppl_ok = math.isfinite(report.ppl_change) and report.ppl_change <= th["max_ppl_increase"]
    summary.add_row("perplexity change", f"{report.ppl_change:+.3%}", f"<= +{th['max_ppl_increase']:.2%}",
                    ok if ppl_ok else bad)
    kl_gate = f"<= {th['max_kl']:g}" if th.get("max_kl") is not None else ""
    kl_state = "" if th.get("max_kl") is None else (ok if report.mean_kl <= th["max_kl"] else bad)
    summary.add_row("mean KL (source || artifact)", f"{report.mean_kl:.3e}", kl_gate, kl_state)
    summary.add_row("max KL", f"{report.max_kl:.3e}", "", "")
    summary.add_row("top-1 agreement", f"{report.top1_agreement:.4f}", f">= {th['min_top1']}",
                    ok if report.top1_agreement >= th["min_top1"] else bad)
    weights_bad = [c for c in report.tensors if c.problem]
    summary.add_row("max linear rel. error", f"{report.max_rel_error:.3e}",
                    f"codes equal, max err <= {th['max_weight_error']:g}", bad if weights_bad else ok)
    if report.fp_perplexity is not None:
        summary.add_row("unquantized (fp) perplexity", f"{report.fp_perplexity:.4f}", "", "")
    summary.add_row("tokens scored", f"{report.tokens} ({report.sequences} x {report.ctx})", "", "")
    summary.add_row("artifact tokens/s", f"{report.tokens_per_s:,.0f}", "", "")
    summary.add_row("device / dtype", f"{report.device} / {report.dtype}", "", "")
    if report.compute:
        summary.add_row("compute", report.compute, "", "")
    onoff = lambda b: "on" if b else "off"  # noqa: E731
    summary.add_row("act. quant artifact / source / reference",
                    f"{onoff(report.act_quant)} / {onoff(report.source_act_quant)} / {report.reference}",
                    "", "")
    summary.add_row("time", f"{report.seconds:.1f} s", "", "")
    console.print(summary)

    layers: dict[int, dict[str, TensorCheck]] = {}
    for c in report.tensors:
        li = layer_of(c.name)
        if li is not None and c.role == LINEAR:
            layers.setdefault(li, {})[kind_of(c.name)] = c
    if layers:
        per = Table(title="relative weight error per linear: artifact vs source"
                          + (r" (\[in brackets]: vs the float weights)" if report.reference == "fp" else ""),
                    header_style="bold")
        per.add_column("layer", justify="right")
        kinds = [k for k in LINEAR_KINDS if any(k in row for row in layers.values())]
        for k in kinds:
            per.add_column(SHORT_NAMES[k], justify="right")
        for li in sorted(layers):
            cells = []
            for k in kinds:
                c = layers[li].get(k)
                if c is None:
                    cells.append("-")
                    continue
                txt = f"{c.rel_error:.1e}"
                if c.rel_error_fp is not None:
                    txt += f" [{c.rel_error_fp:.2f}]"
                cells.append(f"[red]{txt}[/red]" if c.problem else txt)
            per.add_row(str(li), *cells)
        console.print(per)
    others = [c for c in report.tensors if c.role != LINEAR]
    if any(c.problem for c in others):
        for c in others:
            if c.problem:
                console.print(f"[red]{c.name}[/red]: {c.problem}")
    if report.sparsity and report.sparsity.get("activations_collected"):
        from .sparsity import render_sparsity

        render_sparsity(report.sparsity, console, title=f"artifact sparsity ({report.act}"
                        + (f", {report.kv_bits}-bit KV" if report.kv_bits else "") + ")")
    for n in report.notes:
        console.print(f"[yellow]note:[/yellow] {n}")
    if report.passed:
        console.print("[bold green]PASSED[/bold green]")
    else:
        console.print("[bold red]FAILED[/bold red]")
        for f in report.failures:
            console.print(f"  [red]-[/red] {f}")
