"""The two sides verify runs: how each computes (activation semantics, numeric path) and the
`Runner`s that compute them — the artifact, the source ternarized with the artifact's groups,
and optionally the unquantized source (`reference="fp"`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..model import LINEAR
from ..source_kind import SourceKind, decide_source_kinds, source_act_quant


@dataclass
class Sides:
    art: Any  # Runner
    src: Any  # Runner
    fp: Any | None  # Runner, reference="fp"
    art_aq: bool  # the artifact's activations quantized
    src_aq: bool
    fast: bool  # verify's fast CPU path
    compute: str  # what the forward passes computed with, for the report
    notes: list[str] = field(default_factory=list)
    stats: Any = None  # sparsity.SparsityStats of the artifact side

    def runners(self) -> list[Any]:
        return [r for r in (self.art, self.src, self.fp) if r is not None]


def make_sides(art, src, *, dev, dtype_name: str, act_quant: bool | None, art_scheme, reference: str,
               fast: bool | None, micro_batch: int | None) -> Sides:
    """Decide each side's semantics and build its runner.

    The source computes what the source model computes: every tensor's kind is decided once
    (`source_kind`: exact ternary floats recovered, BitNet latents ternarized by the model's
    own absmean, floats of a plain model ternarized like --ternarize did); BitNet models
    quantize activations to 8 bits, a plain family runs in float. verify measures what the
    CONVERSION cost, so by default the artifact runs with the source's semantics; `act_quant`
    forces both, `art_scheme` (from --act/--kv-bits) sets the artifact's alone."""
    import torch

    from .act_schemes import get_scheme, is_int8_fused
    from .sparsity import SparsityStats
    from .head import HEAD_EXACT
    from .runner import Runner

    tdtype = getattr(torch, dtype_name)
    notes = list(decide_source_kinds(src, ternarize=True))
    src_aq = source_act_quant(src) if act_quant is None else act_quant
    art_aq = src_aq if act_quant is None else act_quant
    if not src_aq:
        notes.append(f"source: {src.spec.family} without a bitnet quantization_config runs in float without "
                     "activation quantization (as transformers runs it); the artifact runs the same way, so "
                     "only the conversion is measured (--act-quant quantizes both sides to 8 bits)")
    if any(st.role == LINEAR and st.kind == SourceKind.FLOAT for st in src.tensors):
        notes.append("source: a float model that is not ternary; its linears are ternarized with the artifact's "
                     "groups (what --ternarize wrote); --reference fp reports the float model itself")

    groups = {st.name: (st.group or "tensor") for st in art.tensors if st.role == LINEAR and st.is_ternary}
    kw: dict[str, Any] = dict(device=dev, dtype=tdtype, micro_batch=micro_batch)
    compute = "int8 linears (exact), float32 activations" if dev.type == "cuda" else \
        "float32 linears (transformers' operation order), float32 head"
    if fast is None:
        fast = dev.type == "cpu" and tdtype == torch.float32
    if fast and dev.type == "cpu":
        kw.update(int_path=True)
        if tdtype == torch.float32:
            kw.update(head_math="bf16")
            compute = (f"int8 linears (exact), {dtype_name} activations, bfloat16 head with each row's "
                       f"top {HEAD_EXACT} logits in float32")
        else:
            kw.update(head_dtype=torch.bfloat16)
            compute = f"int8 linears (exact), {dtype_name} activations, bfloat16 head"
    elif dev.type == "cpu":
        compute = f"{dtype_name} linears (transformers' operation order), {dtype_name} head"
    if not art_aq:
        compute = compute.replace("int8 linears (exact)", f"{dtype_name} linears (no activation quantization)")
    # the artifact's sparsity: its ternary weights as `stream` reads them, its activations
    # wherever a scheme runs on the float backend (an explicit scheme; a8 with --no-fast: the
    # int8 kernels fuse a8 and never hand the quantized input back)
    stats = SparsityStats()
    if art_scheme is not None:
        art_scheme.stats = stats
        art_aq = art_scheme.name != "none"  # the report's "act. quant artifact" line
        if not is_int8_fused(art_scheme):
            compute += f"; the artifact with activation scheme {art_scheme.name!r}" + (
                f" and a {art_scheme.kv_bits}-bit KV cache" if art_scheme.kv_bits is not None else ""
            ) + " on the float backend"
    elif art_aq:
        art_scheme = get_scheme("a8", None, stats)  # the same rule (is_int8_fused): the same numbers
    r_art = Runner(art, act_quant=art_aq, scheme=art_scheme, reference="ternary", **kw)
    r_src = Runner(src, act_quant=src_aq, reference="ternary", groups=groups, **kw)
    r_fp = Runner(src, act_quant=False, reference="fp", **kw) if reference == "fp" else None
    notes += [f"artifact: {n}" for n in r_art.notes] + [f"source: {n}" for n in r_src.notes]
    if reference == "fp" and src.spec.packed:
        notes.append("reference fp: the source is ternary on disk, so its 'unquantized' model is s·t "
                     "without activation quantization")
    if any(st.role == LINEAR and not st.is_ternary for st in art.tensors):
        notes.append("the artifact has float linears: verify ternarizes them on the fly like the source")
    return Sides(r_art, r_src, r_fp, art_aq, src_aq, bool(fast), compute, notes, stats)
