"""Ternary models whose weights are pre-rotated by a block Hadamard transform.

Ternary-Bonsai-2 style packs fold a signed, normalized block Walsh–Hadamard rotation into
the input axis of their weights; the engine must rotate the activations the same way before
each matmul (mlx-lm's `prism_hadamard_*` models do, with `mx.hadamard_transform`). An engine
that ignores the rotation still runs and writes fluent garbage, so such a model is named
wherever bitconv shows a model (`inspect`, `doctor`) and refused by every writer whose target
has no way to say "rotate first" (all of bitconv's targets today).

A rotation is declared by GGUF keys under `prism.hadamard.` (PrismML's llama.cpp fork) or by
an MLX/Hugging Face config whose `model_type` starts with `prism_hadamard` (mlx-lm's
`prism_hadamard_qwen35`: 2-bit affine groups of 128, a `modules` list with each module's
`block` size and `.signs` tensors).
"""

from __future__ import annotations

from typing import Any

from .errors import LayoutError

GGUF_PREFIX = "prism.hadamard."
MODEL_TYPE_PREFIX = "prism_hadamard"


def rotation_from_gguf(metadata: dict[str, Any]) -> dict[str, Any] | None:
    """The `prism.hadamard.*` keys of a GGUF's metadata (name without the prefix -> value), or None."""
    keys = {k[len(GGUF_PREFIX):]: (v[0] if isinstance(v, tuple) and len(v) == 3 else v)  # GGUFFile.kv: (value, type, pos)
            for k, v in (metadata or {}).items() if str(k).startswith(GGUF_PREFIX)}
    return keys or None


def rotation_from_config(config: dict[str, Any]) -> dict[str, Any] | None:
    """What a `prism_hadamard_*` config declares (model type, block sizes), or None."""
    mt = str((config or {}).get("model_type") or "")
    if not mt.startswith(MODEL_TYPE_PREFIX):
        return None
    blocks = sorted({int(r["block"]) for r in config.get("modules") or []
                     if isinstance(r, dict) and isinstance(r.get("block"), int)})
    return {"model_type": mt, "blocks": blocks, "modules": len(config.get("modules") or [])}


def describe(rotation: dict[str, Any]) -> str:
    """One line naming the rotation, for inspect / doctor / refusals."""
    if "model_type" in rotation:
        blocks = ", ".join(str(b) for b in rotation.get("blocks") or []) or "unknown"
        return (f"block Hadamard rotation (MLX model_type {rotation['model_type']}, "
                f"{rotation.get('modules', 0)} rotated modules, block sizes {blocks})")
    shown = ", ".join(f"{GGUF_PREFIX}{k}={_short(v)}" for k, v in sorted(rotation.items())[:4])
    return f"block Hadamard rotation ({shown})"


def _short(v: Any) -> str:
    text = str(v)
    return text if len(text) <= 24 else text[:21] + "..."


def rotation_of(spec: Any) -> dict[str, Any] | None:
    """The rotation a ModelSpec declares (GGUF keys or config), or None."""
    return rotation_from_gguf(getattr(spec, "gguf_metadata", None) or {}) or \
        rotation_from_config(getattr(spec, "config", None) or {})


def refuse_rotated(ckpt: Any, fmt: str) -> None:
    """Raise LayoutError when the model is rotated: no bitconv target keeps the rotation."""
    rot = rotation_of(ckpt.spec)
    if rot is not None:
        raise _refusal(ckpt.spec.source.location, rot, f"--format {fmt} has no way to declare it")


def refuse_rotated_config(config: dict[str, Any], where: str) -> None:
    """A folder whose config declares a rotation, refused when it is opened (before its
    architecture is looked up: a prism_hadamard pack's base architecture is not what matters)."""
    rot = rotation_from_config(config)
    if rot is not None:
        raise _refusal(where, rot, "no bitconv target or forward pass applies it")


def _refusal(where: str, rot: dict[str, Any], why: str) -> LayoutError:
    return LayoutError(
        f"{where}: the weights are pre-rotated by a {describe(rot)}; {why}, and an engine that skips the "
        "rotation runs and writes fluent garbage",
        hint="run it in an engine that applies the rotation (mlx-lm's prism_hadamard models, PrismML's "
             "llama.cpp fork); bitconv does not write rotated models")
