"""`doctor` checks for what ternary forks of llama.cpp put in GGUF files (issue 20, item 6):

* a block Hadamard rotation declared under `prism.hadamard.*` (PrismML's fork, Ternary-Bonsai-2
  style): upstream llama.cpp and bitnet.cpp ignore those keys and run the rotated weights on
  unrotated activations, fluent garbage without any error;
* type ids that forks claim for their own types, which neither upstream nor bitnet.cpp reads:
  142 and 143 (PrismML's PQ2_0 / PTQ1_0, group-128 2-bit and ternary blocks, requested
  upstream in llama.cpp#29058) and 43 (the first id after upstream's Q2_0 = 42, which forks
  take for their own 2-bit types; the bytes alone cannot say whose).

Q2_0 tensors (id 42) whose byte size implies 128-value blocks (34 bytes per 128 values,
PrismML's older files) are named by doctor's type-id check through
`readers/type_ids.AMBIGUOUS[42]`, where that reading lives; nothing is repeated here.

Kept apart from doctor.py (owned by the verify rebuild) so doctor only lists one more check.
"""

from __future__ import annotations

from typing import Any, Iterable

from .ggml_types import FORK_TYPE_IDS as FORK_TYPES  # the table lives with the other type ids


def fork_findings(c: Any) -> Iterable[Any]:
    """Findings for a doctor context `c` (doctor._Ctx): rotation keys and fork-claimed type ids."""
    from .doctor import Finding
    from .rotation import GGUF_PREFIX, describe, rotation_from_gguf

    rot = rotation_from_gguf(c.f.kv)
    if rot is not None:
        yield Finding("hadamard-rotation", "error" if c.engine else "warning", GGUF_PREFIX + "*",
                      f"the weights are pre-rotated by a {describe(rot)}; llama.cpp and bitnet.cpp ignore these keys "
                      "and run the rotated weights on unrotated activations: fluent garbage, no error",
                      "run it only in an engine that applies the rotation (PrismML's llama.cpp fork, or the MLX "
                      "prism_hadamard pack in mlx-lm); bitconv convert refuses to write it elsewhere")
    by_type: dict[int, list[str]] = {}
    for info in c.f.index:
        if info.ggml_type in FORK_TYPES:
            by_type.setdefault(int(info.ggml_type), []).append(info.name)
    for t, names in sorted(by_type.items()):
        yield Finding("fork-type-id", "error", f"{len(names)} tensor(s) of type {t} ({names[0]}...)",
                      f"type {t} is {FORK_TYPES[t]}; neither upstream llama.cpp nor bitnet.cpp reads it",
                      "run it in the fork that wrote it (see general.* keys), or convert the original checkpoint")
