"""GGML type ids that mean different layouts in different engines, decided per file.

Two ids collide (FORMATS.md §6b, README "Layouts"):
- 42 is Q2_0 in upstream llama.cpp (64-blocks of 18 bytes) but TL2 in bitnet.cpp's 2026
  fork, and older PrismML files wrote group-128 blocks (34 bytes per 128 values) under it.
- 39 is TL2 in bitnet.cpp's 2024 release but MXFP4 in upstream llama.cpp.

GGUF stores no byte count per tensor, so the reading is decided from the space each tensor
occupies up to the next tensor (or the end of the file) and from bitconv's own metadata
(`bitconv.layout`). The id alone never decides: a file whose tensors fit none of the
readings bitconv can unpack is refused with the reading they do fit, if any.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

from ..errors import InputError

Shape = tuple[int, ...]


@dataclass(frozen=True)
class Reading:
    layout: str | None  # bitconv layout that unpacks it; None: recognized only to refuse it
    label: str  # what it is, for messages and `inspect`
    nbytes: Callable[[int, int], int | None]  # (M, K) -> bytes, None when the shape cannot be this


def _layout_size(name: str) -> Callable[[int, int], int | None]:
    def size(m: int, k: int) -> int | None:
        from ..pack import get_layout

        if name == "q2_0" and k % 64:
            return None
        if name == "tl2" and k < 256:
            return None
        return get_layout(name).nbytes((m, k))

    return size


AMBIGUOUS: dict[int, Sequence[Reading]] = {
    42: (
        Reading("q2_0", "Q2_0 of upstream llama.cpp (64-blocks, 18 bytes each)", _layout_size("q2_0")),
        Reading("tl2", "TL2 of bitnet.cpp's 2026 fork", _layout_size("tl2")),
        Reading(None, "PrismML's older group-128 2-bit blocks (34 bytes per 128 values)",
                lambda m, k: None if k % 128 else m * (k // 128) * 34),
    ),
    39: (
        Reading("tl2", "TL2 of bitnet.cpp's 2024 release", _layout_size("tl2")),
        Reading(None, "MXFP4 of upstream llama.cpp (32-blocks, 17 bytes each)",
                lambda m, k: None if k % 32 else m * (k // 32) * 17),
    ),
}


def _fits(n: int | None, span: int, align: int) -> bool:
    """A tensor of n bytes fits a span when the span is n padded to the alignment
    (the last tensor of a file may end unpadded)."""
    return n is not None and n <= span <= (n + align - 1) // align * align


def resolve(path: Any, ggml_type: int, tensors: Sequence[tuple[str, Shape, int]],
            meta: Mapping[str, Any], align: int) -> tuple[str, str]:
    """Decide one reading for all tensors of `ggml_type`: (layout name, why).

    `tensors` lists (name, [M, K], span in bytes). The layout bitconv's metadata names is
    taken when every tensor fits it; otherwise the one reading every tensor fits.
    """
    readings = AMBIGUOUS[ggml_type]
    for name, shape, _ in tensors:
        if len(shape) != 2:
            raise InputError(f"{path}: tensor {name!r} of GGML type {ggml_type} is not a matrix (shape {list(shape)})")

    def all_fit(r: Reading) -> bool:
        return all(_fits(r.nbytes(int(s[0]), int(s[1])), span, align) for _, s, span in tensors)

    named = meta.get("layout")
    for r in readings:
        if r.layout is not None and r.layout == named and all_fit(r):
            return r.layout, f"type {ggml_type} read as {r.label}: bitconv.layout={named} and every tensor's size fits"
    fitting = [r for r in readings if all_fit(r)]
    if len(fitting) == 1 and fitting[0].layout is not None:
        r = fitting[0]
        return r.layout, f"type {ggml_type} read as {r.label}: every tensor's size fits it and no other reading"
    name, shape, span = tensors[0]
    if fitting and fitting[0].layout is None:
        raise InputError(
            f"{path}: GGML type {ggml_type} tensors are sized as {fitting[0].label}, which bitconv does not read "
            f"(e.g. {name} [{shape[0]}, {shape[1]}] spans {span} bytes)",
            hint="convert it with the engine that wrote it, or start from the original checkpoint",
        )
    if len(fitting) > 1:
        raise InputError(
            f"{path}: GGML type {ggml_type} tensors fit several readings "
            f"({'; '.join(r.label for r in fitting)}) and the file has no bitconv.layout to choose",
            hint="start from the original checkpoint",
        )
    sizes = ", ".join(f"{r.label}: {r.nbytes(int(shape[0]), int(shape[1]))}" for r in readings)
    raise InputError(
        f"{path}: GGML type {ggml_type} tensor {name} [{shape[0]}, {shape[1]}] spans {span} bytes, "
        f"which fits no known reading of id {ggml_type} ({sizes})",
        hint="the file is truncated or uses a layout bitconv does not know",
    )
