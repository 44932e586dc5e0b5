"""Does a TL file fit a bitnet.cpp build? Compare its tiles with the build's kernel_config.ini.

bitnet.cpp compiles one TL kernel per weight shape `(M, K)` with the tile parameters in its
`include/kernel_config.ini`, and reads every TL tensor with the tiles of its shape. A file
packed with other tiles (or holding a shape the build has no kernel for) loads without
complaint and computes garbage: nothing in the engine notices. This module is the check
that does: every TL1/TL2 tensor's tiles, as the file records them (`bitconv.tiles`), must
equal the build's tiles for that shape. `inspect --kernel-config` and `doctor
--kernel-config` call `check_kernel_config`; it owns no format knowledge beyond reading the
two files through `readers.gguf_file` and `pack.tiles`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import CorruptFileError, InputError
from .pack import layout_for_ggml_type
from .pack.tiles import Shape, TileConfig, read_kernel_config, table_from_metadata

# Why a tensor does not fit the build (TileProblem.reason).
DIFFERENT_TILES = "different tiles"
MISSING_SHAPE = "shape not in build"
UNKNOWN_TILES = "file records no tiles"


@dataclass(frozen=True)
class TileProblem:
    """One TL tensor that the build would read wrongly (or cannot run)."""

    tensor: str
    layout: str
    shape: Shape
    reason: str
    file_tiles: TileConfig | None
    build_tiles: TileConfig | None

    def message(self) -> str:
        m, k = self.shape
        where = f"{self.tensor} [M={m}, K={k}]"
        if self.reason == MISSING_SHAPE:
            return f"{where}: the build has no kernel for this shape"
        if self.reason == UNKNOWN_TILES:
            return f"{where}: the file does not record which tiles it was packed with"
        f, b = self.file_tiles, self.build_tiles
        return (f"{where}: file tiles BM={f.BM} BK={f.BK} bm={f.bm}, "  # type: ignore[union-attr]
                f"build tiles BM={b.BM} BK={b.BK} bm={b.bm}")  # type: ignore[union-attr]

    def to_dict(self) -> dict[str, Any]:
        return {"tensor": self.tensor, "layout": self.layout, "shape": list(self.shape), "reason": self.reason,
                "file_tiles": self.file_tiles.as_list() if self.file_tiles else None,
                "build_tiles": self.build_tiles.as_list() if self.build_tiles else None,
                "message": self.message()}


@dataclass
class KernelCheckResult:
    """Outcome of comparing one file with one build: `ok` only if every TL tensor fits."""

    path: Path
    kernel_config: Path
    tensors_checked: int
    shapes: list[Shape]
    problems: list[TileProblem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def exit_code(self) -> int:
        return 0 if self.ok else 1

    def summary(self) -> str:
        if self.ok:
            return (f"{self.path}: all {self.tensors_checked} TL tensors ({len(self.shapes)} shapes) match "
                    f"{self.kernel_config}")
        return (f"{self.path}: {len(self.problems)} of {self.tensors_checked} TL tensors do not match "
                f"{self.kernel_config}; regenerate the kernels (convert --emit-kernel-config prints the codegen "
                "command) or convert again with --kernel-config")

    def to_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "path": str(self.path), "kernel_config": str(self.kernel_config),
                "tensors_checked": self.tensors_checked, "shapes": [list(s) for s in self.shapes],
                "problems": [p.to_dict() for p in self.problems], "summary": self.summary()}


def check_kernel_config(path: str | Path, kernel_config: str | Path) -> KernelCheckResult:
    """Compare every TL1/TL2 tensor of the GGUF at `path` with the build's `kernel_config` ini.

    A tensor is a problem when the build lacks its shape, when the build's tiles for its
    shape differ from the file's, or when the file records no tiles for it (files not
    written by bitconv: their tiles cannot be known, so the check cannot pass them).
    Raises InputError if the file has no TL tensors, CorruptFileError for unreadable files.
    """
    from .readers.gguf_file import GGUFFile

    path, kernel_config = Path(path), Path(kernel_config)
    build = read_kernel_config(kernel_config)
    f = GGUFFile(path)
    try:
        recorded = table_from_metadata(f.get("bitconv.tiles"))
    except CorruptFileError as exc:
        raise CorruptFileError(f"{path}: {exc.message}") from None
    problems: list[TileProblem] = []
    checked = 0
    shapes: set[Shape] = set()
    for info in f.tensors.values():
        layout = _layout_name(info)
        if layout not in ("tl1", "tl2") or len(info.shape) != 2:
            continue
        checked += 1
        shape: Shape = (int(info.shape[0]), int(info.shape[1]))
        shapes.add(shape)
        have, want = recorded.get(shape), build.get(shape)
        reason = (MISSING_SHAPE if want is None else UNKNOWN_TILES if have is None
                  else DIFFERENT_TILES if have != want else None)
        if reason is not None:
            problems.append(TileProblem(info.name, layout, shape, reason, have, want))
    if not checked:
        raise InputError(f"{path}: no TL1/TL2 tensors; a kernel config only applies to TL files")
    return KernelCheckResult(path, kernel_config, checked, sorted(shapes), problems)


def _layout_name(info: Any) -> str | None:
    """The layout a tensor is read as: the reader's reading of an id engines disagree on
    (e.g. 39: TL2 or MXFP4), else the layout registered for its GGML type."""
    if getattr(info, "layout", None):
        return info.layout
    cls = layout_for_ggml_type(info.ggml_type)
    return cls.name if cls is not None else None
