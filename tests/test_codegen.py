"""The codegen command bitconv prints builds kernels whose tiles equal the file's.

bitnet.cpp's `utils/codegen_tl1.py` and `utils/codegen_tl2.py` (4645960, unchanged at its
HEAD) take `--model NAME`, look up `ModelShapeDict[NAME]` (a list of `[M, K]`), tile the
i-th shape with the i-th value of `--BM`, `--BK` and `--bm`, and write `kernel_config.ini`
with one `[Kernels_i]` per shape in that order. `CODEGEN_MODEL_SHAPES` below is that dict
as documented in FORMATS-NOTES §2.2: the oracle here, written out independently of
bitconv's own table. `codegen_pairing` replays codegen on a printed header, so a command
that names a stock model with the lists in any other order (the bug of issue 15) fails.
"""

from __future__ import annotations

import argparse
import configparser
import io
import json
import shlex
from pathlib import Path

import pytest

from bitconv.convert import convert
from bitconv.pack.tiles import (
    TL1_PRESETS,
    TL2_PRESETS,
    TileConfig,
    codegen_args,
    codegen_command,
    read_kernel_config,
    sorted_table,
)
from bitconv.readers.gguf_file import GGUFFile

CODEGEN_MODEL_SHAPES: dict[str, list[list[int]]] = {
    "bitnet_b1_58-large": [[1536, 4096], [1536, 1536], [4096, 1536]],
    "bitnet_b1_58-3B": [[3200, 8640], [3200, 3200], [8640, 3200]],
    "Llama3-8B-1.58-100B-tokens": [[14336, 4096], [4096, 14336], [1024, 4096], [4096, 4096]],
}
STOCK_SHAPE_SETS = {name: {tuple(s) for s in shapes} for name, shapes in CODEGEN_MODEL_SHAPES.items()}
TL_TYPES = {38: "tl1", 39: "tl2"}


def codegen_pairing(header: list[str]) -> tuple[str, str, list[tuple[tuple[int, int], TileConfig]]]:
    """Replay codegen on a printed header: (script, model, [(shape, tiles)] in codegen's order).

    The header is what bitconv prints: an optional `"name": [[M, K], ...],` entry to add to
    ModelShapeDict, and the `python utils/codegen_tlN.py --model ... --BM ... --BK ... --bm ...`
    line. Codegen's own asserts (list lengths, divisibility, bm choices) are applied too.
    """
    shapes_dict = {k: list(v) for k, v in CODEGEN_MODEL_SHAPES.items()}
    command = None
    for line in header:
        text = line.lstrip("#").strip()
        if text.startswith('"'):
            shapes_dict.update(json.loads("{" + text.rstrip(",") + "}"))  # the user adds this entry
        elif text.startswith("python utils/codegen_"):
            command = shlex.split(text)
    assert command is not None, f"no codegen command in {header}"
    script = command[1]
    parser = argparse.ArgumentParser()
    for flag in ("--model", "--BM", "--BK", "--bm"):
        parser.add_argument(flag)
    args = parser.parse_args(command[2:])
    shapes = shapes_dict[args.model]  # KeyError here = the entry to add was not printed
    BM, BK, bm = ([int(x) for x in getattr(args, f).split(",")] for f in ("BM", "BK", "bm"))
    assert len(BM) == len(BK) == len(bm) == len(shapes)
    for (m, k), bm_, bk, bmm in zip(shapes, BM, BK, bm):
        assert m % bm_ == 0
        if script.endswith("codegen_tl2.py"):
            assert (k % bk) % 32 == 0 and bmm == 32
        else:
            assert k % bk == 0 and bmm in (32, 64)
    return script, args.model, [((m, k), TileConfig(a, b, c)) for (m, k), a, b, c in zip(shapes, BM, BK, bm)]


def codegen_ini_text(pairs: list[tuple[tuple[int, int], TileConfig]]) -> str:
    """kernel_config.ini as codegen writes it (ConfigParser, keys M, K, BM, BK, bmm)."""
    config = configparser.ConfigParser()
    for i, ((m, k), c) in enumerate(pairs):
        sec = f"Kernels_{i}"
        config.add_section(sec)
        for key, value in (("M", m), ("K", k), ("BM", c.BM), ("BK", c.BK), ("bmm", c.bm)):
            config.set(sec, key, str(value))
    buf = io.StringIO()
    config.write(buf)
    return buf.getvalue()


def split_header(ini: Path) -> tuple[list[str], str]:
    lines = ini.read_text().splitlines(keepends=True)
    header = [ln.rstrip("\n") for ln in lines if ln.startswith("#")]
    body = "".join(ln for ln in lines if not ln.startswith("#"))
    return header, body


def file_tiles(path: Path) -> dict[tuple[int, int], TileConfig]:
    """Each TL tensor's shape -> the tiles recorded in the file (bitconv.tiles)."""
    f = GGUFFile(path)
    table = {tuple(int(x) for x in key.split("x")): TileConfig(*v)
             for key, v in json.loads(f.get("bitconv.tiles")).items()}
    shapes = {tuple(t.shape) for t in f.tensors.values() if t.ggml_type in TL_TYPES}
    assert shapes and shapes <= set(table)
    return {s: table[s] for s in shapes}


def check_emitted(ini: Path, gguf_path: Path, layout: str) -> tuple[str, list[str]]:
    """The emitted command pairs every TL shape of the file with the file's tiles."""
    header, body = split_header(ini)
    script, model, pairs = codegen_pairing(header)
    assert script == f"utils/codegen_{layout}.py"
    built = dict(pairs)
    in_file = file_tiles(gguf_path)
    assert set(built) == set(in_file), "the build must have a kernel for every shape, and only those"
    for shape, tiles in in_file.items():
        assert built[shape] == tiles, f"{shape}: codegen builds {built[shape]}, the file has {tiles}"
    # the emitted ini is byte for byte what that codegen call writes, and bitconv reads it back
    assert body == codegen_ini_text(pairs)
    assert list(read_kernel_config(ini).items()) == pairs
    return model, header


LARGE_1L = dict(hidden=1536, intermediate=4096, layers=1, heads=12, kv_heads=12, vocab=512)


@pytest.mark.slow
@pytest.mark.parametrize("layout", ["tl2", "tl1"])
def test_stock_shapes_print_the_stock_model_in_its_order(ckpt_factory, tmp_path: Path, layout: str) -> None:
    """A bitnet_b1_58-large-shaped model: stock name, lists in ModelShapeDict order, no entry to add."""
    src = ckpt_factory("silu", seed=3, **LARGE_1L)
    out, ini = tmp_path / "m.gguf", tmp_path / "kernel_config.ini"
    res = convert(src, out, layout=layout, emit_kernel_config=ini)
    model, header = check_emitted(ini, out, layout)
    assert model == "bitnet_b1_58-large"
    assert not any(ln.lstrip("# ").startswith('"') for ln in header)
    presets = TL2_PRESETS if layout == "tl2" else TL1_PRESETS
    assert file_tiles(out) == {tuple(s): presets[tuple(s)] for s in CODEGEN_MODEL_SHAPES[model]}
    info = res.plan.layout_metadata["codegen"]
    assert info["stock"] and info["model"] == model and info["model_shape_entry"] is None
    # the pre-fix header (bitconv's sorted order under the stock name) is caught by the replay
    wrong = [f"# python utils/codegen_{layout}.py --model {model} {codegen_args(sorted_table(file_tiles(out)))}"]
    assert dict(codegen_pairing(wrong)[2]) != file_tiles(out)


@pytest.mark.parametrize("layout", ["tl2", "tl1"])
def test_custom_shapes_print_the_entry_to_add(ckpt_factory, tmp_path: Path, layout: str) -> None:
    src = ckpt_factory("silu", seed=0)  # 256/512 hidden/ffn, 2 KV heads: 4 shapes no stock entry has
    out, ini = tmp_path / "m.gguf", tmp_path / "kernel_config.ini"
    res = convert(src, out, layout=layout, emit_kernel_config=ini, name="tiny bitnet/v1")
    model, header = check_emitted(ini, out, layout)
    assert model not in CODEGEN_MODEL_SHAPES and model == "tiny-bitnet-v1"
    entry = [ln for ln in header if ln.lstrip("# ").startswith('"')]
    assert len(entry) == 1
    # the entry is announced before the command that needs it
    assert header.index(entry[0]) < next(i for i, ln in enumerate(header) if "python utils/" in ln)
    info = res.plan.layout_metadata["codegen"]
    assert not info["stock"] and info["model_shape_entry"] == entry[0].lstrip("# ").strip()
    assert info["shapes"] == [list(s) for s in sorted(file_tiles(out))]


@pytest.mark.parametrize("layout", ["tl1", "tl2"])
@pytest.mark.parametrize("model", list(CODEGEN_MODEL_SHAPES))
def test_every_stock_table_in_any_order(layout: str, model: str) -> None:
    """All three stock entries, whatever order bitconv holds the table in (sorted, reversed)."""
    presets = TL2_PRESETS if layout == "tl2" else TL1_PRESETS
    table = {tuple(s): presets[tuple(s)] for s in CODEGEN_MODEL_SHAPES[model]}
    for order in (sorted(table), sorted(table, reverse=True)):
        cmd = codegen_command(layout, {s: table[s] for s in order}, "whatever")
        header = ["# " + ln for ln in cmd.instructions()]
        script, name, pairs = codegen_pairing(header)
        assert name == model and dict(pairs) == table and [list(s) for s, _ in pairs] == CODEGEN_MODEL_SHAPES[model]


def test_subset_or_superset_of_a_stock_entry_is_custom() -> None:
    """Only an equal shape set may use a stock name (codegen asserts one value per shape)."""
    large = {tuple(s): TL2_PRESETS[tuple(s)] for s in CODEGEN_MODEL_SHAPES["bitnet_b1_58-large"]}
    subset = dict(list(large.items())[:2])
    superset = {**large, (256, 256): TileConfig(256, 96, 32)}
    for table in (subset, superset):
        cmd = codegen_command("tl2", table, "bitnet_b1_58-large")  # the user's model name clashes
        assert not cmd.stock and cmd.model == "bitnet_b1_58-large-bitconv"
        _, _, pairs = codegen_pairing(["# " + ln for ln in cmd.instructions()])
        assert dict(pairs) == table
