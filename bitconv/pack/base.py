"""The packer interface and its registry: one class per layout, registered by name.

A layout turns a `Ternary` [M, K] into the exact bytes an engine reads for that tensor
(scale included where the format stores it inline) and back. Packers never read files or
decide policy; they are pure, vectorized functions of the matrix, so they can be tested
byte for byte against reference vectors.
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np

from ..errors import LayoutError, UsageError
from ..quant import GroupSize, Ternary
from .inspect_bytes import CodeCount

_LAYOUTS: dict[str, type["Layout"]] = {}


class Layout:
    """Base of every packer. Subclasses declare `name=` in the class statement.

    Instances carry the layout's options (I2_S variant, TL tile table), so `pack` and
    `unpack` take only the tensor. `check` runs at plan time, before anything is written,
    and raises `LayoutError` naming the tensor, its shape and the rule it breaks.
    """

    name: ClassVar[str]
    ggml_type: ClassVar[int | None] = None  # GGML type id in a GGUF; None: not a GGUF layout
    file_type: ClassVar[int | None] = None  # general.file_type of a file whose linears use it
    bits_per_weight: ClassVar[float] = 2.0
    tensor_scale_only: ClassVar[bool] = True  # only one scale per tensor can be stored
    engine: ClassVar[str] = "bitnet.cpp"  # the engine that owns the format and judges its files
    scale_type: ClassVar[str] = "f32"  # the float type the layout stores its scales in (float_range)
    block_k: ClassVar[int | None] = None  # values per block along K (llama.cpp block types): K must be whole blocks
    description: ClassVar[str] = ""

    def __init_subclass__(cls, *, name: str | None = None, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if name is None:
            return
        if name in _LAYOUTS:
            raise AssertionError(f"layout {name!r} registered twice")
        cls.name = name
        _LAYOUTS[name] = cls

    # -- plan time -------------------------------------------------------------------
    def check(self, name: str, shape: tuple[int, int], group: GroupSize) -> None:
        """Raise LayoutError if this tensor cannot be stored in this layout."""
        if self.tensor_scale_only and group != "tensor":
            raise UsageError(
                f"layout {self.name} stores one scale per tensor; --group-size {group} cannot be written",
                hint="use --group-size tensor, or a layout with group scales "
                     "(q2_0 takes row or multiples of 64, tq1_0/tq2_0 multiples of 256)",
            )

    def nbytes(self, shape: tuple[int, int]) -> int:
        raise NotImplementedError

    def metadata(self) -> dict[str, Any]:
        """Options that a reader needs to unpack this layout again (stored as bitconv.*)."""
        return {}

    # -- data ------------------------------------------------------------------------
    def stored_scales(self, data: np.ndarray, shape: tuple[int, int]) -> np.ndarray | None:
        """The scales `data` (exactly nbytes(shape) bytes) stores, float32 as written (one per
        block, or the tensor's one), read without unpacking, for `doctor` to judge; None when
        the layout keeps no scale in the tensor's bytes or the shape cannot be this layout."""
        return None

    def invalid_codes(self, data: np.ndarray, shape: tuple[int, int]) -> "CodeCount | None":
        """The code fields of `data` that decode to no ternary value (`inspect_bytes.CodeCount`);
        None when every bit pattern is a ternary value."""
        return None

    def pack(self, tern: Ternary, name: str = "tensor") -> np.ndarray:
        """Return the tensor's bytes as a 1-D uint8 array of length nbytes(shape)."""
        raise NotImplementedError

    def unpack(self, data: np.ndarray, shape: tuple[int, int], name: str = "tensor") -> Ternary:
        """Inverse of pack: bytes (1-D uint8) back to ternary values and scale(s)."""
        raise NotImplementedError

    # -- helpers for subclasses ------------------------------------------------------
    def _fail(self, name: str, shape: tuple[int, int], rule: str, hint: str | None = None) -> LayoutError:
        return LayoutError(
            f"{name}: shape [M={shape[0]}, K={shape[1]}] cannot be written as {self.name}: {rule}",
            hint=hint,
        )

    def _check_blocks(self, name: str, shape: tuple[int, int], group: GroupSize, block: int, label: str) -> None:
        """The rule of llama.cpp's block types (TQ, Q2_0): K whole blocks of `block` values, and a
        scale group made of whole blocks that divides K, because each block holds one scale."""
        k = shape[1]
        if k % block:
            raise self._fail(
                name, shape, f"K={k} is not a multiple of {block} (llama.cpp's {label} block size)",
                hint=f"use --layout i2_s or tl2 (bitnet.cpp), or a model whose widths are multiples of {block}",
            )
        if group not in ("tensor", "row") and int(group) % block:
            raise self._fail(
                name, shape, f"--group-size {group} is not a multiple of {block}; a {label} block holds one scale",
                hint=f"use --group-size tensor, row, or a multiple of {block}",
            )
        if group not in ("tensor", "row") and k % int(group):
            raise self._fail(name, shape, f"K={k} is not a multiple of --group-size {group}",
                             hint="use a group size that divides every linear's input width, or 'row'")

    def _check_scales(self, tern: Ternary, name: str) -> None:
        """Refuse a scale this layout's `scale_type` cannot hold (float_range's scale rule):
        an fp16 block scale of 1e5 would be stored as inf, 1e-9 as 0. A group whose values
        are all zero is stored with d = 0 whatever its scale, so its scale does not count.
        O(number of scales); the values are looked at only when a scale fails."""
        from .. import float_range

        s = np.asarray(tern.scales, dtype=np.float32)
        bad = float_range.bad_scales(s, self.scale_type)
        if not bad.any():
            return
        m, k = tern.shape
        s2 = s.reshape(1, 1) if s.size == 1 else s.reshape(m, -1) if s.ndim < 2 else s
        bad2 = bad.reshape(s2.shape)
        v = np.asarray(tern.values)
        if s2.shape[0] == 1:
            used = np.array([[bool(np.any(v))]])
        else:
            gs = s2.shape[1]
            used = np.any(v.reshape(m, gs, k // gs) != 0, axis=2) if gs and k % gs == 0 else np.ones_like(bad2)
        hit = np.argwhere(bad2 & (used | ~np.isfinite(s2)))  # NaN/inf: never a scale, even of zeros
        if hit.size == 0:
            return
        value = float(s2[tuple(hit[0])])
        holders = [n for n in layouts_holding(tern.shape, tern.group)
                   if float_range.holds(value, layout_class(n).scale_type, scale=True)]
        raise float_range.scale_error(name, value, self.name.upper(), self.scale_type,
                                      [f"--layout {', '.join(holders)}"] if holders else [])

    def _check_whole_blocks(self, name: str, shape: tuple[int, int]) -> None:
        """Reading: data of a block type whose K is not whole blocks (K < 256 for TQ) was
        never a valid tensor; unpacking it read nothing and returned uninitialized values."""
        if self.block_k and (len(shape) != 2 or int(shape[1]) % self.block_k):
            from ..errors import CorruptFileError

            raise CorruptFileError(f"{name}: shape {list(shape)} cannot hold {self.name.upper()} data: K is not a "
                                   f"multiple of its {self.block_k}-value blocks",
                                   hint="ggml refuses such a tensor too; the file is damaged")

    def _check_data(self, data: np.ndarray, shape: tuple[int, int], name: str) -> np.ndarray:
        data = np.asarray(data).reshape(-1).view(np.uint8)
        if data.size != self.nbytes(shape):
            raise LayoutError(
                f"{name}: {self.name} data holds {data.size} bytes, expected {self.nbytes(shape)} "
                f"for shape {list(shape)}",
                hint="the file is truncated or was written for another shape",
            )
        return data


def layout_names() -> list[str]:
    _load_builtin()
    return sorted(_LAYOUTS)


def layout_class(name: str) -> type[Layout]:
    _load_builtin()
    key = name.strip().lower().replace("-", "_")
    if key not in _LAYOUTS:
        choices = sorted(n for n, c in _LAYOUTS.items() if c.ggml_type is not None)
        raise UsageError(f"unknown layout {name!r}; choose one of: {', '.join(choices)}",
                         hint="--layout names a GGUF layout; the folder formats (--format safetensors, mlx, "
                              "compressed-tensors) have one packing of their own and take no --layout")
    return _LAYOUTS[key]


def get_layout(name: str, **options: Any) -> Layout:
    """Instantiate a registered layout with its options (unknown options are an error)."""
    cls = layout_class(name)
    try:
        return cls(**options)
    except TypeError as exc:
        raise UsageError(f"layout {cls.name}: {exc}") from None


def layouts_holding(shape: tuple[int, int], group: GroupSize) -> list[str]:
    """GGUF layouts that can store a [M, K] ternary tensor with this scale group, as is
    (refusal messages name them: a ternary source's own scales are never averaged)."""
    _load_builtin()
    out = []
    for name, cls in sorted(_LAYOUTS.items()):
        if cls.ggml_type is None:
            continue
        try:
            cls().check("tensor", shape, group)
        except (UsageError, LayoutError, TypeError, ValueError):
            continue
        out.append(name)
    return out


def layout_for_ggml_type(ggml_type: int) -> type[Layout] | None:
    _load_builtin()
    for cls in _LAYOUTS.values():
        if cls.ggml_type == ggml_type:
            return cls
    return None


def _load_builtin() -> None:
    # Importing the package modules registers every built-in layout exactly once.
    from . import _builtin  # noqa: F401

