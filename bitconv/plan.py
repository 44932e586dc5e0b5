"""Plans and results: what a conversion will write (dry run) and what it wrote."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .model import ModelSpec, SourceTensor
from .quant import GroupSize, TensorStats


@dataclass
class ConvertOptions:
    """Every option of a conversion; recorded in the output's metadata for provenance."""

    layout: str = "tq2_0"
    format: str = "gguf"
    group_size: GroupSize = "tensor"
    embedding_type: str = "auto"  # auto | f32 | f16 | bf16 | q2_0 (embedding_types.py)
    output_type: str = "auto"
    i2s_variant: str = "x86-act"
    kernel_config: Path | None = None
    emit_kernel_config: Path | None = None
    allow_engine_mismatch: bool = False
    max_shard_size: int = 5 * 1000**3
    name: str | None = None
    ternarize: bool = False  # post-training ternarization of a float (non-BitNet) model, on purpose

    def recorded(self) -> dict[str, Any]:
        """The options that shape the output bytes (paths and flags that do not are left out)."""
        d: dict[str, Any] = {"format": self.format, "group_size": self.group_size}
        if self.format == "gguf":
            d.update(layout=self.layout, embedding_type=self.embedding_type, output_type=self.output_type)
            if self.layout == "i2_s":
                d["i2s_variant"] = self.i2s_variant
        else:
            d["max_shard_size"] = self.max_shard_size
        if self.allow_engine_mismatch:
            d["allow_engine_mismatch"] = True
        if self.ternarize:
            d["ternarize"] = True
        return d


@dataclass
class TensorPlan:
    name: str  # name in the output
    shape: tuple[int, ...]  # bitconv orientation [M, K]
    role: str
    out_type: str  # layout name for linears, else "f32" / "f16" / "bf16"
    nbytes: int
    source: SourceTensor
    group: GroupSize | None = None  # linears: the scale group written
    note: str | None = None  # what happened to it that the user must know (e.g. ternary written as float)

    @property
    def source_kind(self) -> str | None:
        """The source tensor's kind (`source_kind.SourceKind` value), e.g. "exact_ternary"."""
        return None if self.source.kind is None else str(self.source.kind)

    def to_dict(self) -> dict[str, Any]:
        d = {"name": self.name, "shape": list(self.shape), "role": self.role, "type": self.out_type,
             "bytes": self.nbytes, "source": self.source.source_name, "source_dtype": self.source.dtype,
             "source_kind": self.source_kind}
        if self.source.kind is not None and str(self.source.kind) in ("exact_ternary", "packed_ternary"):
            d["source_group"] = self.source.group or "tensor"
        if self.group is not None:
            d["group"] = self.group
        if self.note:
            d["note"] = self.note
        return d


@dataclass
class ConversionPlan:
    spec: ModelSpec
    output: Path
    format: str
    options: ConvertOptions
    tensors: list[TensorPlan]
    arch: str | None = None  # GGUF arch string
    engine: str | None = None
    warnings: list[str] = field(default_factory=list)
    layout_metadata: dict[str, Any] = field(default_factory=dict)
    layout: Any = None  # the Layout instance that checked every tensor (holds the TL tiles it chose)
    notes: list[str] = field(default_factory=list)  # what the plan found (source kinds), not warnings

    def source_kinds(self) -> dict[str, Any]:
        """{kind: count} and groups of the planned tensors' sources (GGUF metadata, manifest)."""
        from .source_kind import kind_summary

        return kind_summary(t.source for t in self.tensors)

    @property
    def total_bytes(self) -> int:
        return sum(t.nbytes for t in self.tensors)

    def to_dict(self) -> dict[str, Any]:
        return {
            "source": {"kind": self.spec.source.kind, "location": self.spec.source.location,
                       "revision": self.spec.source.revision, "commit": self.spec.source.commit},
            "family": self.spec.family, "arch": self.arch, "engine": self.engine,
            "output": str(self.output), "format": self.format, "options": self.options.recorded(),
            "hparams": self.spec.hparams.to_dict(), "tensor_bytes": self.total_bytes,
            "tensors": [t.to_dict() for t in self.tensors], "warnings": list(self.warnings),
            "notes": list(self.notes), "source_kinds": self.source_kinds(),
            "layout_metadata": self.layout_metadata,
        }


@dataclass
class ConversionResult:
    plan: ConversionPlan
    written: bool
    stats: list[TensorStats] = field(default_factory=list)
    seconds: float = 0.0
    output_bytes: int = 0

    def summary(self) -> dict[str, Any]:
        errs = [s.rel_error for s in self.stats if s.rel_error is not None]
        return {
            "linears": len(self.stats),
            "mean_rel_error": sum(errs) / len(errs) if errs else None,
            "max_rel_error": max(errs) if errs else None,
            "mean_zero_fraction": (sum(s.zero_fraction for s in self.stats) / len(self.stats)) if self.stats else None,
        }

    def to_dict(self) -> dict[str, Any]:
        return {"plan": self.plan.to_dict(), "written": self.written, "seconds": round(self.seconds, 3),
                "output_bytes": self.output_bytes, "summary": self.summary(),
                "tensors": [s.to_dict() for s in self.stats]}
