"""Tile parameters of bitnet.cpp's lookup-table kernels (TL1, TL2) and kernel_config.ini.

bitnet.cpp compiles one TL kernel per weight shape `(M, K)` with tile parameters `BM`
(rows per tile), `BK` (columns per tile) and `bm` (rows per sub-tile), and the packed
byte order depends on them (FORMATS.md §3-5). A file therefore only runs on a build whose
`include/kernel_config.ini` has the same parameters for every shape in it. This module
holds the parameters stock builds use (the presets of FORMATS.md §5), a deterministic rule
for other shapes, the constraints both packers and kernels rely on, and a reader/writer of
the ini file so a conversion can follow an existing build or emit the table for a new one.

Ordering (determinism): a tile table is a plain dict `{(M, K): TileConfig}`.
`write_kernel_config` and `codegen_args` keep the dict's iteration order, so a file that
was read and written again keeps its section order. Tables built by bitconv itself
(`tiles_from_metadata`, the TL layouts' `metadata()`) are sorted by `(M, K)` numerically,
so the same model always gives the same file whatever order its tensors were visited in.
bitnet.cpp's codegen, however, pairs its `--BM/--BK/--bm` lists with the shapes in the
order of its own `ModelShapeDict[--model]` entry: `codegen_command` puts the lists in that
order (a stock entry's, or a new entry it spells out), never in bitconv's.
"""

from __future__ import annotations

import configparser
import io
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Literal, Mapping

from ..errors import CorruptFileError, LayoutError, UsageError
from ..quant import GroupSize
from .base import Layout

TLName = Literal["tl1", "tl2"]
Shape = tuple[int, int]

# TL2 emits three-weight columns in groups of BK; BK % 24 keeps whole groups of 8 triples
# for the sign words. Every shipped config uses one of these two.
TL2_BK_CHOICES = (96, 192)
# TL1 BKs that stock builds use; other values would be codegen-legal but untested.
TL1_BK_CHOICES = (128, 64)
MAX_AUTO_BM = 256  # largest row tile the automatic rule picks (presets go up to 320)


@dataclass(frozen=True)
class TileConfig:
    """One kernel's tile parameters: BM rows per tile, BK columns per tile, bm rows per sub-tile."""

    BM: int
    BK: int
    bm: int

    def as_list(self) -> list[int]:
        """`[BM, BK, bm]`: the JSON form stored in bitconv metadata."""
        return [self.BM, self.BK, self.bm]

    @classmethod
    def from_list(cls, values: Iterable[Any]) -> "TileConfig":
        bm_, bk, bmm = (int(v) for v in values)
        return cls(bm_, bk, bmm)


# FORMATS.md §5: the values setup_env.py passes to codegen for the three stock shape lists.
TL2_PRESETS: dict[Shape, TileConfig] = {
    # bitnet_b1_58-large
    (1536, 4096): TileConfig(256, 96, 32),
    (1536, 1536): TileConfig(128, 192, 32),
    (4096, 1536): TileConfig(256, 96, 32),
    # bitnet_b1_58-3B
    (3200, 8640): TileConfig(160, 96, 32),
    (3200, 3200): TileConfig(320, 96, 32),
    (8640, 3200): TileConfig(320, 96, 32),
    # Llama3-8B-1.58-100B-tokens
    (14336, 4096): TileConfig(256, 96, 32),
    (4096, 14336): TileConfig(128, 96, 32),
    (1024, 4096): TileConfig(256, 96, 32),
    (4096, 4096): TileConfig(128, 96, 32),
}

TL1_PRESETS: dict[Shape, TileConfig] = {
    (1536, 4096): TileConfig(256, 128, 32),
    (1536, 1536): TileConfig(128, 64, 64),
    (4096, 1536): TileConfig(256, 128, 32),
    (3200, 8640): TileConfig(160, 64, 32),
    (3200, 3200): TileConfig(320, 128, 64),
    (8640, 3200): TileConfig(320, 64, 32),
    (14336, 4096): TileConfig(256, 128, 32),
    (4096, 14336): TileConfig(128, 64, 64),
    (1024, 4096): TileConfig(256, 128, 32),
    (4096, 4096): TileConfig(128, 64, 64),
}

PRESETS: dict[str, dict[Shape, TileConfig]] = {"tl1": TL1_PRESETS, "tl2": TL2_PRESETS}

# codegen's ModelShapeDict order: the --BM/--BK/--bm lists of setup_env pair with these.
MODEL_SHAPES: dict[str, list[Shape]] = {
    "bitnet_b1_58-large": [(1536, 4096), (1536, 1536), (4096, 1536)],
    "bitnet_b1_58-3B": [(3200, 8640), (3200, 3200), (8640, 3200)],
    "Llama3-8B-1.58-100B-tokens": [(14336, 4096), (4096, 14336), (1024, 4096), (4096, 4096)],
}

_HINT = "use --layout i2_s, or --kernel-config with a tile table that fits this shape"


def _layout_key(layout: str) -> TLName:
    key = layout.strip().lower()
    if key not in ("tl1", "tl2"):
        raise UsageError(f"tile parameters exist for tl1 and tl2 only, not {layout!r}")
    return key  # type: ignore[return-value]


def _error(layout: str, name: str, shape: Shape, rule: str) -> LayoutError:
    return LayoutError(
        f"{name}: shape [M={shape[0]}, K={shape[1]}] cannot be written as {layout}: {rule}", hint=_HINT
    )


def tl2_padded_size(shape: Shape) -> int:
    """bitnet.cpp's TL2 data length L (before the 32-byte alignment and the scale tail).

    `L = (K-256)·M/3·5/8 + 256·M/2·4/8`, evaluated left to right in int64 as ggml.c does:
    division truncates toward zero, which differs from Python's `//` only when K < 256.
    """
    m, k = shape

    def cdiv(a: int, b: int) -> int:
        q = abs(a) // b
        return q if a >= 0 else -q

    return cdiv(cdiv((k - 256) * m, 3) * 5, 8) + 256 * m // 2 * 4 // 8


def tl2_real_size(shape: Shape, bk: int) -> int:
    """Bytes the TL2 codes really use: magnitudes + signs of K3 columns, then the pair tail."""
    m, k = shape
    k2 = k % bk
    k3 = k - k2
    return k3 * m // 6 + k3 * m // 24 + k2 * m // 4


def validate_tiles(layout: str, name: str, shape: Shape, cfg: TileConfig) -> None:
    """Raise LayoutError if `cfg` cannot tile `shape` for `layout` (why: kernels mis-read otherwise).

    TL1 (codegen_tl1 asserts, plus what the packing arithmetic needs): bm in {32, 64};
    BM % bm == 0; M % BM == 0; K % BK == 0; BK % (256/bm) == 0.
    TL2: bm == 32; BM % 32 == 0; M % BM == 0; BK % 24 == 0; K >= BK (one three-weight
    block at least); (K % BK) % 32 == 0 (the two-weight tail is tiled by 32 columns); and
    the engine's padded size L must hold the codes (true whenever K % BK <= 256).
    """
    lay = _layout_key(layout)
    m, k = shape

    def bad(rule: str) -> LayoutError:
        return _error(lay, name, shape, f"{rule} (tiles BM={cfg.BM}, BK={cfg.BK}, bm={cfg.bm})")

    if min(cfg.BM, cfg.BK, cfg.bm) <= 0:
        raise bad("tile parameters must be positive")
    if lay == "tl1":
        if cfg.bm not in (32, 64):
            raise bad("TL1 needs bm in {32, 64}")
        if cfg.BM % cfg.bm:
            raise bad(f"BM must be a multiple of bm ({cfg.BM} % {cfg.bm} != 0)")
        if m % cfg.BM:
            raise bad(f"M must be a multiple of BM (M % BM = {m % cfg.BM})")
        if k % cfg.BK:
            raise bad(f"K must be a multiple of BK (K % BK = {k % cfg.BK})")
        by = 256 // cfg.bm
        if cfg.BK % by:
            raise bad(f"BK must be a multiple of by = 256/bm = {by}")
        return
    if cfg.bm != 32:
        raise bad("TL2 needs bm == 32")
    if cfg.BM % 32:
        raise bad("BM must be a multiple of 32")
    if m % cfg.BM:
        raise bad(f"M must be a multiple of BM (M % BM = {m % cfg.BM})")
    if cfg.BK % 24:
        raise bad("BK must be a multiple of 24 (whole groups of 8 triples per sign word)")
    if k < cfg.BK:
        raise bad("K must be at least BK (the three-weight kernel needs one whole block)")
    if (k % cfg.BK) % 32:
        raise bad(f"the two-weight tail K % BK = {k % cfg.BK} must be a multiple of 32")
    if tl2_real_size(shape, cfg.BK) > tl2_padded_size(shape):
        raise bad(f"the two-weight tail K % BK = {k % cfg.BK} is too long for bitnet.cpp's TL2 size formula")


def _largest_bm(m: int, step: int, limit: int = MAX_AUTO_BM) -> int | None:
    for bm_ in range(limit - limit % step, 0, -step):
        if m % bm_ == 0:
            return bm_
    return None


def choose_tiles(layout: str, name: str, shape: Shape) -> TileConfig:
    """The tile parameters bitconv uses for `shape`: the stock preset, else a fixed rule.

    A shape of FORMATS.md §5 gets the preset stock builds compile, so files for stock
    models run on stock kernels. Any other shape gets (and the emitted kernel_config.ini
    must then be compiled into a build):
    - TL2: bm = 32; BM = the largest multiple of 32 that is <= 256 and divides M;
      BK from {96, 192}, keeping those with K >= BK and (K % BK) % 32 == 0, the one with
      the shortest two-weight tail K % BK (ties -> 96, the stock default). Since
      K % 96 <= K % 192 and both need K % 32 == 0, this always yields 96 when anything
      fits; 192 only ever comes from a preset or a forced kernel_config.
    - TL1: BK = 128 if K % 128 == 0, else 64 if K % 64 == 0 (the two stock values);
      bm = 32 with BK 128 and 64 with BK 64 (the stock pairing; 32 when M has no
      multiple-of-64 divisor <= 256); BM = the largest multiple of bm <= 256 dividing M.
    Raises LayoutError naming the tensor, shape and constraint when nothing fits.
    """
    lay = _layout_key(layout)
    shape = (int(shape[0]), int(shape[1]))
    m, k = shape
    preset = PRESETS[lay].get(shape)
    if preset is not None:
        return preset
    if lay == "tl2":
        BM = _largest_bm(m, 32)
        if BM is None:
            raise _error(lay, name, shape,
                         f"M must be a multiple of 32 (BM % 32 == 0, M % BM == 0); M % 32 = {m % 32}")
        fits = [bk for bk in TL2_BK_CHOICES if k >= bk and (k % bk) % 32 == 0
                and tl2_real_size(shape, bk) <= tl2_padded_size(shape)]
        if not fits:
            raise _error(lay, name, shape,
                         f"K must be >= 96 and a multiple of 32 (BK in {{96, 192}}, (K % BK) % 32 == 0); K = {k}")
        BK = min(fits, key=lambda bk: (k % bk, bk))
        cfg = TileConfig(BM, BK, 32)
    else:
        BK = next((bk for bk in TL1_BK_CHOICES if k % bk == 0), None)
        if BK is None:
            raise _error(lay, name, shape,
                         f"K must be a multiple of 64 (BK in {{64, 128}}, K % BK == 0); K % 64 = {k % 64}")
        order = (32, 64) if BK == 128 else (64, 32)
        cfg = None
        for bmm in order:
            BM = _largest_bm(m, bmm)
            if BM is not None:
                cfg = TileConfig(BM, BK, bmm)
                break
        if cfg is None:
            raise _error(lay, name, shape, "M must be a multiple of 32 (bm in {32, 64}, BM % bm == 0, "
                         f"M % BM == 0); M % 32 = {m % 32}")
    validate_tiles(lay, name, shape, cfg)
    return cfg


# -- tables and kernel_config.ini -----------------------------------------------------------

def shape_key(shape: Shape) -> str:
    """`"MxK"`: how a shape is named in bitconv metadata (JSON keys must be strings)."""
    return f"{int(shape[0])}x{int(shape[1])}"


def parse_shape_key(key: str) -> Shape:
    try:
        m, k = key.lower().split("x")
        return (int(m), int(k))
    except ValueError:
        raise CorruptFileError(f"bad tile table key {key!r}; expected 'MxK'") from None


def sorted_table(table: Mapping[Shape, TileConfig]) -> dict[Shape, TileConfig]:
    """The table in bitconv's canonical order: shapes sorted by (M, K)."""
    return {s: table[s] for s in sorted(table)}


def table_to_metadata(table: Mapping[Shape, TileConfig]) -> dict[str, list[int]]:
    """`{"MxK": [BM, BK, bm]}` in canonical order (JSON-serializable)."""
    return {shape_key(s): c.as_list() for s, c in sorted_table(table).items()}


def table_from_metadata(value: Any) -> dict[Shape, TileConfig]:
    """Inverse of table_to_metadata; accepts the dict or its JSON text (as GGUF stores it)."""
    if value is None:
        return {}
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except (ValueError, RecursionError):
            raise CorruptFileError(f"bad tile table in metadata: {value[:80]!r}") from None
    if not isinstance(value, Mapping):
        raise CorruptFileError(f"bad tile table in metadata: expected a mapping, got {type(value).__name__}")
    return sorted_table(_normalize(value))


def tiles_from_metadata(meta: Mapping[str, Any]) -> dict[Shape, TileConfig]:
    """The tile table a TL layout recorded in its `metadata()` (key "tiles"), sorted by (M, K)."""
    if "tiles" not in meta:
        raise UsageError("no TL tile table in the layout metadata (is this a tl1/tl2 conversion?)")
    return table_from_metadata(meta["tiles"])


def read_kernel_config(path: str | Path) -> dict[Shape, TileConfig]:
    """Read bitnet.cpp's include/kernel_config.ini: `[Kernels_N]` with m, k, bm (=BM), bk (=BK), bmm (=bm).

    Keys are case-insensitive (codegen writes `M`, ConfigParser lowers them). The table keeps
    the file's section order. A shape listed twice with different tiles is an error, since
    the engine would pick one of them silently.
    """
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"kernel config {path} does not exist")
    parser = configparser.ConfigParser()
    try:
        parser.read_string(path.read_text(encoding="utf-8"), source=str(path))
    except (configparser.Error, UnicodeDecodeError) as exc:
        raise CorruptFileError(f"{path}: not a kernel_config.ini ({exc})".splitlines()[0]) from None
    table: dict[Shape, TileConfig] = {}
    for section in parser.sections():
        sec = parser[section]
        try:
            shape = (int(sec["m"]), int(sec["k"]))
            cfg = TileConfig(int(sec["bm"]), int(sec["bk"]), int(sec["bmm"]))
        except (KeyError, ValueError) as exc:
            raise CorruptFileError(
                f"{path}: section [{section}] needs integer keys m, k, bm, bk, bmm ({exc!s})"
            ) from None
        if shape in table and table[shape] != cfg:
            raise CorruptFileError(f"{path}: shape [{shape[0]}, {shape[1]}] listed twice with different tiles")
        table[shape] = cfg
    if not table:
        raise CorruptFileError(f"{path}: no [Kernels_N] sections")
    return table


def kernel_config_text(table: Mapping[Shape, TileConfig]) -> str:
    """The table as codegen writes it (ConfigParser, `[Kernels_N]` in the table's order)."""
    parser = configparser.ConfigParser()
    for i, ((m, k), cfg) in enumerate(table.items()):
        sec = f"Kernels_{i}"
        parser.add_section(sec)
        parser.set(sec, "m", str(int(m)))
        parser.set(sec, "k", str(int(k)))
        parser.set(sec, "bm", str(cfg.BM))
        parser.set(sec, "bk", str(cfg.BK))
        parser.set(sec, "bmm", str(cfg.bm))
    buf = io.StringIO()
    parser.write(buf)
    return buf.getvalue()


def write_kernel_config(path: str | Path, table: Mapping[Shape, TileConfig]) -> None:
    """Write `kernel_config_text(table)` to PATH (tests and tools; convert stages it through
    the output guard instead)."""
    with open(path, "w", encoding="utf-8") as f:
        f.write(kernel_config_text(table))


def codegen_args(table: Mapping[Shape, TileConfig]) -> str:
    """bitnet.cpp codegen list arguments in the table's order, e.g. `--BM 256,128,256 --BK ... --bm ...`.

    Low level: codegen pairs the i-th value of each list with the i-th `[M, K]` of its
    `ModelShapeDict[--model]` entry, so these lists are only correct next to a model whose
    entry has the table's order. Use `codegen_command`, which fixes that order.
    """
    cfgs = list(table.values())
    return (
        f"--BM {','.join(str(c.BM) for c in cfgs)} "
        f"--BK {','.join(str(c.BK) for c in cfgs)} "
        f"--bm {','.join(str(c.bm) for c in cfgs)}"
    )


_UNSAFE_NAME = re.compile(r"[^A-Za-z0-9._-]+")


@dataclass(frozen=True)
class CodegenCommand:
    """A bitnet.cpp codegen call whose lists cannot be applied to the wrong shapes.

    `utils/codegen_tl1.py` / `codegen_tl2.py` take `--model NAME` and look up
    `ModelShapeDict[NAME]`, a list of `[M, K]`; the i-th value of `--BM`, `--BK` and `--bm`
    tiles the i-th shape, and `kernel_config.ini` gets one `[Kernels_i]` per shape in the
    same order. `shapes` is that order. With `stock` the model is one of codegen's own
    entries (its shape set equals the table's); otherwise `model_shape_entry()` is the line
    the user must add to `ModelShapeDict` before running `command()`.
    """

    layout: TLName
    model: str
    shapes: tuple[Shape, ...]
    tiles: tuple[TileConfig, ...]
    stock: bool

    @property
    def script(self) -> str:
        return f"utils/codegen_{self.layout}.py"

    def table(self) -> dict[Shape, TileConfig]:
        """The tile table in codegen's order (the order kernel_config.ini's sections get)."""
        return dict(zip(self.shapes, self.tiles))

    def args(self) -> str:
        return codegen_args(self.table())

    def command(self) -> str:
        return f"python {self.script} --model {self.model} {self.args()}"

    def model_shape_entry(self) -> str | None:
        """`"name": [[M, K], ...],` to add to ModelShapeDict; None for a stock model."""
        if self.stock:
            return None
        shapes = ", ".join(f"[{m}, {k}]" for m, k in self.shapes)
        return f'"{self.model}": [{shapes}],'

    def instructions(self) -> list[str]:
        """The lines to show a user, in the order they must act on them."""
        if self.stock:
            return [f"{self.model} is a stock bitnet.cpp model; build kernels with:", self.command()]
        return [f"add this entry to ModelShapeDict in {self.script} (the lists follow its order):",
                f"    {self.model_shape_entry()}",
                "then build kernels with:", self.command()]

    def to_dict(self) -> dict[str, Any]:
        return {"script": self.script, "model": self.model, "stock": self.stock,
                "shapes": [list(s) for s in self.shapes], "args": self.args(), "command": self.command(),
                "model_shape_entry": self.model_shape_entry()}


def codegen_command(layout: str, table: Mapping[Shape, TileConfig], model_name: str) -> CodegenCommand:
    """The codegen call that builds kernels with exactly `table`'s tiles for each shape.

    A table whose shape set equals a stock `ModelShapeDict` entry gets that entry's name and
    order (so the printed command also works as is). Any other table gets a new entry named
    after the model (made shell- and Python-string-safe, and never a stock name, whose entry
    would override the user's) with the shapes sorted by (M, K).
    """
    lay = _layout_key(layout)
    table = _normalize(table)
    if not table:
        raise UsageError("no TL shapes to generate kernels for")
    for model, shapes in MODEL_SHAPES.items():
        if set(shapes) == set(table):
            return CodegenCommand(lay, model, tuple(shapes), tuple(table[s] for s in shapes), stock=True)
    name = _UNSAFE_NAME.sub("-", model_name or "").strip("-.") or "my-model"
    if name in MODEL_SHAPES:
        name += "-bitconv"
    shapes = sorted(table)
    return CodegenCommand(lay, name, tuple(shapes), tuple(table[s] for s in shapes), stock=False)


# -- the part TL1 and TL2 share ------------------------------------------------------------

class TiledLayout(Layout):
    """Base of TL1/TL2: one tile config per (M, K), remembered so metadata() can record it.

    `tiles` overrides the choice for the shapes it lists (unpacking a file rebuilds the
    layout from its recorded table this way); `kernel_config` forces the table of an
    existing build (its kernel_config.ini, read or as a path): a shape it lacks is refused,
    because no kernel for it exists in that build.
    """

    def __init__(
        self,
        tiles: Mapping[Shape, TileConfig] | None = None,
        kernel_config: Mapping[Shape, TileConfig] | str | Path | None = None,
    ) -> None:
        if tiles is not None and kernel_config is not None:
            raise UsageError(f"layout {self.name}: give either tiles or kernel_config, not both")
        self._source = "the kernel config given with --kernel-config"
        if isinstance(kernel_config, (str, Path)):
            self._source = f"the kernel config {kernel_config}"
            kernel_config = read_kernel_config(kernel_config)
        self._forced = _normalize(kernel_config) if kernel_config is not None else None
        self._tiles = _normalize(tiles) if tiles is not None else {}
        self.chosen: dict[Shape, TileConfig] = {}  # shape -> tiles used, in first-use order

    @classmethod
    def from_metadata(cls, meta: Mapping[str, Any]) -> "TiledLayout":
        """Rebuild the layout a file was written with from its bitconv metadata (key "tiles").

        Shapes the table lacks (files bitconv did not write) fall back to choose_tiles, i.e.
        the stock presets, which is what the reference converter used.
        """
        value = meta.get("tiles") if meta else None
        return cls(tiles=table_from_metadata(value)) if value else cls()

    def tiles_for(self, name: str, shape: Shape) -> TileConfig:
        """The validated tile config of `shape`, recorded in `self.chosen`."""
        shape = (int(shape[0]), int(shape[1]))
        if self._forced is not None:
            cfg = self._forced.get(shape)
            if cfg is None:
                raise LayoutError(
                    f"{name}: {self._source} does not cover shape [{shape[0]}, {shape[1]}]; "
                    "regenerate kernels or drop --kernel-config",
                    hint="bitnet.cpp compiles one kernel per shape; a build without this shape cannot run the file",
                )
        else:
            cfg = self._tiles.get(shape) or choose_tiles(self.name, name, shape)
        validate_tiles(self.name, name, shape, cfg)
        self.chosen.setdefault(shape, cfg)
        return cfg

    def check(self, name: str, shape: tuple[int, int], group: GroupSize) -> None:
        super().check(name, shape, group)
        self.tiles_for(name, shape)

    def metadata(self) -> dict[str, Any]:
        """`{"tiles": {"MxK": [BM, BK, bm]}}`, sorted by (M, K).

        Lists every shape checked or packed so far and, with a forced kernel config, every
        shape of that config as well: a reader then unpacks with the build's tiles even if
        this instance recorded its metadata before it saw any tensor.
        """
        table = dict(self._forced or {})
        table.update(self.chosen)
        return {"tiles": table_to_metadata(table)}


def _normalize(table: Mapping[Any, Any]) -> dict[Shape, TileConfig]:
    out: dict[Shape, TileConfig] = {}
    for key, cfg in table.items():
        shape = parse_shape_key(key) if isinstance(key, str) else (int(key[0]), int(key[1]))
        out[shape] = cfg if isinstance(cfg, TileConfig) else TileConfig.from_list(cfg)
    return out
