"""Output writers, one per format, registered by name (`--format gguf|safetensors`).

A writer decides, before anything is read, what each tensor becomes (`plan`), refusing
what its target engine cannot run; then it streams prepared tensors into a temporary path
(`write`). It never ternarizes: it receives `Ternary` linears and float arrays.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar, Iterator, Union

import numpy as np

from ..errors import UsageError
from ..plan import ConversionPlan, ConvertOptions, TensorPlan
from ..quant import Ternary
from ..readers.checkpoint import Checkpoint

Payload = Union[Ternary, np.ndarray]


class Encoded(list):
    """A tensor already turned into the bytes its writer stores (one array per entry the
    writer plans for it), by `Writer.encode` on a pipeline worker."""

_WRITERS: dict[str, type["Writer"]] = {}


class Writer:
    format: ClassVar[str]
    is_folder: ClassVar[bool] = False

    def __init_subclass__(cls, *, format: str | None = None, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if format is not None:
            if format in _WRITERS:
                raise AssertionError(f"writer {format!r} registered twice")
            cls.format = format
            _WRITERS[format] = cls

    def plan(self, ckpt: Checkpoint, output: Path, options: ConvertOptions) -> ConversionPlan:
        raise NotImplementedError

    def encode(self, plan: ConversionPlan, tp: TensorPlan, payload: Payload) -> Encoded:
        """The bytes stored for one tensor. Pure and thread-safe: `convert` runs it on the
        pipeline's workers, so packing overlaps reading and writing."""
        raise NotImplementedError

    def encode_source(self, plan: ConversionPlan, tp: TensorPlan) -> Encoded | None:
        """Bytes for `tp` straight from its source, when the writer can make them without
        the float32 payload (`encode`'s input); None otherwise. Conversion asks this first,
        so a bf16 embedding written as F16 is never widened into a float32 copy."""
        return None

    def direct_bytes(self, plan: ConversionPlan, tp: TensorPlan) -> int | None:
        """The memory `encode_source` allocates for `tp` when it takes it, else None. The
        pipeline budgets a tensor's job by it instead of the float32 copy the usual path
        makes: a bf16 embedding narrowed straight to F16 is half its float32 size, so it
        no longer runs alone with the other worker idle (~0.1 s of a 1 s conversion)."""
        return None

    def write(self, tmp: Path, plan: ConversionPlan,
              tensors: Iterator[tuple[TensorPlan, Payload | Encoded]]) -> None:
        """Stream the tensors (in plan order) into `tmp`; payloads not yet `Encoded` are
        encoded here."""
        raise NotImplementedError

    def encoded(self, plan: ConversionPlan, tp: TensorPlan, payload: Payload | Encoded) -> Encoded:
        return payload if isinstance(payload, Encoded) else self.encode(plan, tp, payload)


def writer_formats() -> list[str]:
    _load_builtin()
    return sorted(_WRITERS)


def get_writer(fmt: str) -> Writer:
    _load_builtin()
    if fmt not in _WRITERS:
        raise UsageError(f"unknown --format {fmt!r}; choose one of: {', '.join(sorted(_WRITERS))}")
    return _WRITERS[fmt]()


def _load_builtin() -> None:
    from . import ct_writer, gguf_writer, mlx_writer, safetensors_writer  # noqa: F401
