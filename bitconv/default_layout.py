"""The layout a conversion uses when the user names none (`--layout auto`, the default).

A user's first command, `bitconv convert MODEL out.gguf`, should produce a file some
engine runs as the model computes, so the default is chosen from the model, not fixed:
the engine that runs its family first (llama.cpp's `bitnet` graph only computes SiLU
BitNet models with tied embeddings; bitnet.cpp's `bitnet-b1.58` graph runs relu² ones;
Llama and Qwen3 run in llama.cpp), then that engine's layouts in order of preference,
the first whose plan accepts every tensor (shape, scale groups). The choice and its
reason become a plan note, so the user sees what was picked and why. An explicit
`--layout` never goes through here: it stays strict and is refused when it cannot hold
the model.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from .archs.base import BITNET_CPP, LLAMA_CPP, family_of
from .errors import InputError, LayoutError
from .model import OUTPUT
from .plan import ConversionPlan, ConvertOptions
from .readers.checkpoint import Checkpoint

AUTO = "auto"

# Per engine, its layouts in the order a default takes them: the most widely runnable first
# (TQ2_0 runs on every llama.cpp CPU build; Q2_0 holds 64-value groups TQ2_0 cannot; I2_S is
# bitnet.cpp's layout that needs no kernel build for the model's shapes, unlike TL1/TL2).
PREFERENCE: dict[str, tuple[str, ...]] = {
    LLAMA_CPP: ("tq2_0", "q2_0", "tq1_0"),
    BITNET_CPP: ("i2_s", "tl2", "tl1"),
}


def engine_order(ckpt: Checkpoint) -> list[tuple[str, list[str]]]:
    """Engines in the order a default tries them, each with what it would compute wrong
    for this model (empty: it runs the model as the source computes it)."""
    hp = ckpt.spec.hparams
    family = family_of(ckpt.spec)
    has_output = any(t.role == OUTPUT for t in ckpt.tensors) and not hp.tie_embeddings
    found = [(engine, family.engine_problems(hp, engine, has_output)) for engine in (LLAMA_CPP, BITNET_CPP)]
    return sorted(found, key=lambda e: bool(e[1]))  # stable: llama.cpp first when both run it


def _preference(ckpt: Checkpoint, engine: str) -> tuple[str, ...]:
    """The engine's layouts in order; Q2_0 first for llama.cpp when the embedding or head is
    exact ternary (Bonsai-style): only Q2_0 keeps them ternary instead of dequantized."""
    from .model import EMBEDDING
    from .source_kind import ternary_embeddings

    order = PREFERENCE[engine]
    ternary_table = ternary_embeddings(ckpt) or any(
        t.role in (EMBEDDING, OUTPUT) and t.is_ternary for t in ckpt.tensors)  # e.g. a Q2_0 GGUF source
    if engine == LLAMA_CPP and ternary_table:
        order = ("q2_0",) + tuple(x for x in order if x != "q2_0")
    return order


def _model_words(ckpt: Checkpoint) -> str:
    hp = ckpt.spec.hparams
    act = "relu²" if hp.hidden_act == "relu2" else hp.hidden_act.upper() if hp.hidden_act == "silu" else hp.hidden_act
    head = "tied embeddings" if hp.tie_embeddings else "its own output layer"
    return f"{ckpt.spec.family} ({act} FFN, {head})"


def choose_gguf_plan(ckpt: Checkpoint, output: Path, options: ConvertOptions) -> tuple[ConversionPlan, str]:
    """Plan OUTPUT with the default layout for CKPT: (plan, the note saying which and why).

    Raises the first candidate's error when no layout of any fitting engine can hold the
    model (with a hint to name one), never a silent fallback to an engine that would
    compute another function."""
    from .writers import get_writer

    writer = get_writer("gguf")
    first_error: InputError | None = None
    order = engine_order(ckpt)
    for engine, problems in order:
        if problems:
            break  # the engines left would compute another function: not a default
        for name in _preference(ckpt, engine):
            try:
                plan = writer.plan(ckpt, output, replace(options, layout=name))
            except InputError as exc:
                first_error = first_error or exc
                continue
            return plan, _why(ckpt, engine, name, [p for e, p in order if e != engine and p])
    if first_error is None:  # no engine runs the model at all
        engine, problems = order[0]
        raise LayoutError(
            f"no GGUF engine runs {_model_words(ckpt)} as the source computes it: " + "; ".join(problems),
            hint="use --format safetensors, or name a --layout with --allow-engine-mismatch",
        )
    raise type(first_error)(f"no --layout given and no default layout fits: {first_error.message}",
                            hint="name one with --layout (q2_0, tq2_0, tq1_0, i2_s, tl1, tl2) or use --format safetensors")


def _why(ckpt: Checkpoint, engine: str, layout: str, elsewhere: list[list[str]]) -> str:
    """The plan note: which layout, for which engine, and why not the other engine."""
    because = f" (not llama.cpp: {'; '.join(elsewhere[0])})" if elsewhere and engine == BITNET_CPP else ""
    order = _preference(ckpt, engine)
    skipped = order[:order.index(layout)]
    tried = f"; {', '.join(skipped)} cannot hold it" if skipped else ""
    return (f"no --layout given: chose {layout} for {engine}, the engine that runs {_model_words(ckpt)}{because}"
            f"{tried}; pass --layout to choose another")
