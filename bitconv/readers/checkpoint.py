"""The reader interface: a model spec plus an ordered list of lazily loaded tensors."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..model import LINEAR_KINDS, NORM_KINDS, ModelSpec, SourceTensor, kind_of, layer_of

_BLOCK_ORDER = {k: i for i, k in enumerate(
    ("attn_norm", "attn_q", "attn_k", "attn_q_norm", "attn_k_norm", "attn_v", "attn_sub_norm", "attn_output",
     "ffn_norm", "ffn_gate", "ffn_up", "ffn_sub_norm", "ffn_down")
)}
assert set(LINEAR_KINDS) | set(NORM_KINDS) <= set(_BLOCK_ORDER)
_IN_NORM = "_in_norm"  # use_rms_norm: `attn_q_in_norm` sorts just before `attn_q`


def canonical_order(name: str) -> tuple:
    """Sort key giving the same tensor order whatever order the source files use."""
    layer = layer_of(name)
    if layer is None:
        head = {"token_embd": 0, "output_norm": 2, "output": 3}.get(kind_of(name), 4)
        return (head, 0, 0, name)
    kind = kind_of(name)
    if kind.endswith(_IN_NORM) and kind[: -len(_IN_NORM)] in _BLOCK_ORDER:
        return (1, layer, _BLOCK_ORDER[kind[: -len(_IN_NORM)]] - 0.5, name)
    return (1, layer, _BLOCK_ORDER.get(kind, 99), name)


@dataclass(frozen=True)
class GGUFReadOptions:
    """How to read a GGUF that another tool wrote, where the file itself cannot say:
    its I2_S code order (x86-act or arm) and its TL tiles (a bitnet.cpp kernel_config.ini).
    Files bitconv wrote record both and ignore these."""

    i2s_variant: str | None = None
    kernel_config: Path | None = None


@dataclass
class Checkpoint:
    spec: ModelSpec
    tensors: list[SourceTensor]
    files: list[Path] = field(default_factory=list)  # every source file read, for provenance
    # identity of the files a reader holds open (source_files.HeldFile): what was actually read
    held: dict[Path, Any] = field(default_factory=dict)
    source_kinds_decided: bool = False  # source_kind.decide_source_kinds ran (it runs once)
    source_kind_notes: list[str] = field(default_factory=list)  # what it found, for plans and reports

    def __post_init__(self) -> None:
        self.tensors.sort(key=lambda t: canonical_order(t.name))

    def get(self, name: str) -> SourceTensor:
        for t in self.tensors:
            if t.name == name:
                return t
        raise KeyError(name)

    def has(self, name: str) -> bool:
        return any(t.name == name for t in self.tensors)


def gguf_read_options(i2s_variant: str | None, kernel_config: str | Path | None) -> GGUFReadOptions:
    """How to read a foreign GGUF source; the variant name is checked like --i2s-variant."""
    if i2s_variant is not None:
        from ..pack.i2s import I2S

        i2s_variant = I2S(i2s_variant).variant
    return GGUFReadOptions(i2s_variant=i2s_variant, kernel_config=Path(kernel_config) if kernel_config else None)
