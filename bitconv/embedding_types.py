"""`--embedding-type` / `--output-type`: which GGUF type token_embd and output get.

Floats (`f32`, `f16`, `bf16`) always work. `q2_0` writes the tensor ternary, as llama.cpp's
Q2_0 (64-blocks with an fp16 scale), and only when the source already holds it as exact
ternary with group scales (Ternary-Bonsai-style embeddings, or a Q2_0 GGUF read back):
ternarizing a float embedding would make a different model, so that is refused. `auto`
(the default) picks `q2_0` when the tensor is ternary in the source and the linears are
written as `q2_0` too, and `f16` otherwise (what every earlier bitconv wrote).
"""

from __future__ import annotations

from .errors import LayoutError, UsageError
from .model import SourceTensor

FLOAT_TYPES = ("f32", "f16", "bf16")
TERNARY_TYPES = ("q2_0",)
CHOICES = ("auto",) + FLOAT_TYPES + TERNARY_TYPES


def parse_type(value: str, flag: str) -> str:
    v = str(value).strip().lower().replace("-", "_")
    if v not in CHOICES:
        raise UsageError(f"{flag} must be one of {', '.join(CHOICES)}, got {value!r}")
    return v


def is_ternary_source(st: SourceTensor) -> bool:
    """The source holds this embedding/output as ternary values and scales (exact ternary
    floats detected in the source, or a ternary GGUF tensor), not as float weights."""
    return st.is_ternary and len(st.shape) == 2


def resolve(st: SourceTensor, requested: str, layout_name: str, flag: str) -> str:
    """The type written for one embedding/output tensor (raises at plan time, before any write)."""
    if requested in FLOAT_TYPES:
        return requested
    from .pack import get_layout

    q2 = get_layout("q2_0")
    group = st.group or "tensor"
    if requested == "auto":
        if not (layout_name == "q2_0" and is_ternary_source(st)):
            return "f16"
        try:
            q2.check(st.name, tuple(st.shape), group)
        except LayoutError:
            return "f16"  # its shape or scales do not fit Q2_0: keep today's float
        return "q2_0"
    if not is_ternary_source(st):
        raise UsageError(
            f"{st.name}: {flag} q2_0 needs an embedding that is ternary in the source, but this one is "
            f"{st.dtype} floats; ternarizing it would make a different model",
            hint=f"use {flag} f16 (or auto, the default)",
        )
    q2.check(st.name, tuple(st.shape), group)
    return "q2_0"
