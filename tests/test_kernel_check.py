"""`check_kernel_config` / `inspect --kernel-config`: a TL file against a bitnet.cpp build's tiles.

The build's kernel_config.ini here is what codegen writes (sections `[Kernels_i]`, keys
m, k, bm, bk, bmm); its tiles are changed on purpose to play a build that would read the
file wrongly. The check must name every such tensor and exit 1.
"""

from __future__ import annotations

import json
from pathlib import Path

import gguf
import numpy as np
import pytest
from typer.testing import CliRunner

from bitconv.cli import app
from bitconv.convert import convert
from bitconv.errors import CorruptFileError, InputError
from bitconv.kernel_check import DIFFERENT_TILES, MISSING_SHAPE, UNKNOWN_TILES, check_kernel_config
from bitconv.pack.tiles import TileConfig, read_kernel_config, write_kernel_config
from bitconv.readers.gguf_file import GGUFFile

runner = CliRunner(env={"COLUMNS": "250", "NO_COLOR": "1"})


@pytest.fixture(scope="module", params=["tl2", "tl1"])
def tl_file(request, silu_ckpt, tmp_path_factory) -> tuple[str, Path, Path]:
    """(layout, file, the ini its codegen command builds)."""
    d = tmp_path_factory.mktemp(f"kcheck-{request.param}")
    out, ini = d / "m.gguf", d / "kernel_config.ini"
    convert(silu_ckpt, out, layout=request.param, emit_kernel_config=ini)
    return request.param, out, ini


def tensors_of_shape(path: Path, shape: tuple[int, int]) -> set[str]:
    """The TL tensors (GGML types 38, 39) of that shape (token_embd may share it, as F16)."""
    return {t.name for t in GGUFFile(path).tensors.values() if tuple(t.shape) == shape and t.ggml_type in (38, 39)}


def test_matching_build_passes(tl_file, tmp_path: Path) -> None:
    layout, path, ini = tl_file
    res = check_kernel_config(path, ini)
    assert res.ok and res.exit_code == 0 and res.problems == []
    assert res.tensors_checked == 14  # 7 linears x 2 layers
    assert res.shapes == sorted(read_kernel_config(ini))
    # a build with extra shapes (another model's kernels too) still fits
    bigger = {**read_kernel_config(ini), (1536, 4096): TileConfig(256, 96, 32)}
    write_kernel_config(tmp_path / "more.ini", bigger)
    assert check_kernel_config(path, tmp_path / "more.ini").ok
    r = runner.invoke(app, ["inspect", str(path), "--kernel-config", str(ini)])
    assert r.exit_code == 0, r.output
    assert "kernel config ok" in r.output


def test_different_tiles_and_missing_shapes_fail_naming_each_tensor(tl_file, tmp_path: Path) -> None:
    layout, path, ini = tl_file
    build = read_kernel_config(ini)
    # codegen-legal but different tiles for (512, 256) (gate, up); no kernel for (128, 256) (k, v)
    other = TileConfig(256, 192, 32) if layout == "tl2" else TileConfig(256, 64, 64)
    assert build[(512, 256)] != other
    build[(512, 256)] = other
    del build[(128, 256)]
    bad = tmp_path / "kernel_config.ini"
    write_kernel_config(bad, build)

    res = check_kernel_config(path, bad)
    assert not res.ok and res.exit_code == 1
    by_name = {p.tensor: p for p in res.problems}
    differ, missing = tensors_of_shape(path, (512, 256)), tensors_of_shape(path, (128, 256))
    assert len(differ) == 4 and len(missing) == 4
    assert set(by_name) == differ | missing
    for name in differ:
        p = by_name[name]
        assert p.reason == DIFFERENT_TILES and p.build_tiles == other and p.layout == layout
        assert p.file_tiles == read_kernel_config(ini)[(512, 256)]
    for name in missing:
        assert by_name[name].reason == MISSING_SHAPE and by_name[name].build_tiles is None

    r = runner.invoke(app, ["inspect", str(path), "--kernel-config", str(bad)])
    assert r.exit_code == 1
    for name in differ | missing:
        assert name in r.output
    r = runner.invoke(app, ["inspect", str(path), "--kernel-config", str(bad), "--json"])
    assert r.exit_code == 1
    doc = json.loads(r.stdout)
    assert doc["kernel_check"]["ok"] is False
    assert {p["tensor"] for p in doc["kernel_check"]["problems"]} == differ | missing


@pytest.mark.parametrize("ggml_type", [39, 42])  # TL2 in bitnet.cpp's 2024 fork, and in its 2026 fork
def test_file_without_tile_record_cannot_pass(tmp_path: Path, ggml_type: int) -> None:
    """A TL2 tensor from another converter: its tiles are unknown, so the check refuses to vouch."""
    from bitconv.pack.tl2 import TL2

    shape = (256, 256)
    path = tmp_path / "foreign.gguf"
    w = gguf.GGUFWriter(str(path), arch="bitnet")
    nbytes = TL2().nbytes(shape)
    w.add_tensor_info("blk.0.attn_q.weight", list(shape), np.dtype(np.int8), nbytes, raw_dtype=ggml_type)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_ti_data_to_file()
    w.write_tensor_data(np.zeros(nbytes, np.uint8))
    w.close()
    ini = tmp_path / "k.ini"
    write_kernel_config(ini, {shape: TileConfig(256, 96, 32)})
    res = check_kernel_config(path, ini)
    assert [(p.reason, p.layout) for p in res.problems] == [(UNKNOWN_TILES, "tl2")] and res.exit_code == 1


def test_bad_inputs_are_exit_2(silu_ckpt, tl_file, tmp_path: Path) -> None:
    _, path, ini = tl_file
    tq = tmp_path / "tq.gguf"
    convert(silu_ckpt, tq, layout="tq2_0")
    with pytest.raises(InputError, match="no TL1/TL2 tensors"):
        check_kernel_config(tq, ini)
    (tmp_path / "broken.ini").write_text("[Kernels_0]\nm = 256\n")
    with pytest.raises(CorruptFileError):
        check_kernel_config(path, tmp_path / "broken.ini")
    r = runner.invoke(app, ["inspect", str(tq), "--kernel-config", str(ini)])
    assert r.exit_code == 2 and "no TL1/TL2 tensors" in r.output
    r = runner.invoke(app, ["inspect", str(path), "--kernel-config", str(tmp_path / "absent.ini")])
    assert r.exit_code == 2
