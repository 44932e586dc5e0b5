"""GGML type ids that engines disagree on (issue 12 item 6): 42 is Q2_0 upstream but TL2 in
bitnet.cpp's 2026 fork (and older PrismML files put group-128 blocks under it); 39 is TL2 in
bitnet.cpp's 2024 release but MXFP4 upstream. The reader and `inspect` decide by each
tensor's byte span and bitconv's metadata, say which reading they took, and refuse a file
that fits none they can unpack with a one-line reason."""

from __future__ import annotations

import json
from pathlib import Path

import gguf
import numpy as np
import pytest

from bitconv.convert import convert
from bitconv.errors import InputError
from bitconv.inspect_file import inspect_path
from bitconv.pack import get_layout
from bitconv.quant import Ternary
from bitconv.readers import open_source
from bitconv.readers.gguf_file import GGUFFile, layout_for

SHAPES = [(256, 512), (512, 256), (64, 768)]


def _tern(shape, seed=0) -> Ternary:
    rng = np.random.default_rng(seed)
    return Ternary(rng.integers(-1, 2, size=shape).astype(np.int8), np.float32(0.125), "tensor")


def write_gguf(path: Path, tensors: list[tuple[str, tuple[int, int], int, np.ndarray]],
               meta: dict[str, str] | None = None) -> Path:
    """A bare GGUF: the given raw tensors under the given type ids, optional bitconv.* keys."""
    w = gguf.GGUFWriter(str(path), arch="llama")
    for key, value in (meta or {}).items():
        w.add_string(key, value)
    for name, shape, t, data in tensors:
        w.add_tensor_info(name, list(shape), np.dtype(np.int8), data.size, raw_dtype=t)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_ti_data_to_file()
    for *_, data in tensors:
        w.write_tensor_data(np.ascontiguousarray(data, dtype=np.uint8))
    w.close()
    return path


def _packed(layout: str, ggml_type: int, seed_base: int = 0):
    lay = get_layout(layout)
    return [(f"blk.{i}.ffn_up.weight", s, ggml_type, lay.pack(_tern(s, seed_base + i), f"t{i}"))
            for i, s in enumerate(SHAPES)]


def test_bitconv_q2_0_file_says_its_reading(tmp_path, ckpt_factory):
    out = tmp_path / "m.gguf"
    convert(ckpt_factory("silu", seed=3), out, layout="q2_0")
    info = inspect_path(out)
    why = info["type_readings"]["42"]
    assert "Q2_0 of upstream llama.cpp" in why and "bitconv.layout=q2_0" in why
    assert {t["type"] for t in info["tensors"] if t["name"].endswith("ffn_up.weight")} == {"Q2_0"}


def test_foreign_q2_0_is_read_by_size(tmp_path):
    """No bitconv metadata (e.g. llama-quantize output): the spans fit Q2_0 and nothing else."""
    tensors = _packed("q2_0", 42)
    f = GGUFFile(write_gguf(tmp_path / "q.gguf", tensors))
    layout, why = f.readings[42]
    assert layout == "q2_0" and "every tensor's size fits it" in why
    for name, shape, _, data in tensors:
        assert f.tensors[name].type_name == "Q2_0"
        back = layout_for(f, 42).unpack(np.asarray(f.raw(name)), shape, name)
        assert np.array_equal(back.values, get_layout("q2_0").unpack(data, shape).values)


def test_tl2_under_42_is_read_as_bitnet_cpp_2026_tl2(tmp_path):
    """bitnet.cpp's 2026 fork numbers TL2 as 42: TL2-sized tensors are unpacked as TL2
    (with the tiles of the build that wrote them: another tool's file does not store them)."""
    from bitconv.pack.tiles import choose_tiles, write_kernel_config
    from bitconv.readers import GGUFReadOptions

    tensors = _packed("tl2", 42)
    path = write_gguf(tmp_path / "tl2-42.gguf", tensors)
    ini = tmp_path / "kernel_config.ini"
    write_kernel_config(ini, {s: choose_tiles("tl2", "t", s) for s in SHAPES})
    f = GGUFFile(path)
    assert f.readings[42][0] == "tl2" and "bitnet.cpp's 2026 fork" in f.readings[42][1]
    for name, shape, _, _ in tensors:
        assert f.tensors[name].type_name == "TL2"
        back = layout_for(f, 42, GGUFReadOptions(kernel_config=ini)).unpack(np.asarray(f.raw(name)), shape, name)
        assert np.array_equal(back.values, _tern(shape, SHAPES.index(shape)).values)
    assert "TL2 of bitnet.cpp's 2026 fork" in inspect_path(path)["type_readings"]["42"]


def test_prism_group_128_under_42_is_refused_by_name(tmp_path):
    tensors = [(n, s, 42, np.zeros(s[0] * (s[1] // 128) * 34, np.uint8)) for n, s, _, _ in _packed("q2_0", 42)]
    path = write_gguf(tmp_path / "prism.gguf", tensors)
    with pytest.raises(InputError, match="PrismML's older group-128") as exc:
        GGUFFile(path)
    assert "\n" not in str(exc.value)
    with pytest.raises(InputError, match="PrismML"):
        inspect_path(path)


def test_file_fitting_no_reading_is_refused(tmp_path):
    shape = (256, 512)
    data = get_layout("q2_0").pack(_tern(shape))[:-64]  # one tensor 64 bytes short of Q2_0
    path = write_gguf(tmp_path / "short.gguf", [("blk.0.ffn_up.weight", shape, 42, data),
                                                 ("blk.0.ffn_down.weight", shape, 42, data)])
    with pytest.raises(InputError, match="fits no known reading of id 42") as exc:
        GGUFFile(path)
    msg = str(exc.value)
    assert "blk.0.ffn_up.weight" in msg and "Q2_0 of upstream llama.cpp" in msg and "\n" not in msg


def test_metadata_naming_a_layout_that_does_not_fit_is_not_trusted(tmp_path):
    """bitconv.layout=tl2 on Q2_0-sized tensors: the sizes win (Q2_0 is the only fit)."""
    path = write_gguf(tmp_path / "m.gguf", _packed("q2_0", 42), {"bitconv.layout": "tl2"})
    assert GGUFFile(path).readings[42][0] == "q2_0"


def test_type_39_mxfp4_sized_is_refused_and_tl2_is_read(tmp_path):
    tl2 = write_gguf(tmp_path / "tl2.gguf", _packed("tl2", 39))
    assert GGUFFile(tl2).readings[39][0] == "tl2"
    mx = [(n, s, 39, np.zeros(s[0] * (s[1] // 32) * 17, np.uint8)) for n, s, _, _ in _packed("tl2", 39)]
    with pytest.raises(InputError, match="MXFP4 of upstream llama.cpp"):
        GGUFFile(write_gguf(tmp_path / "mxfp4.gguf", mx))


def test_cli_inspect_reports_reading_and_refusal_exit_code(tmp_path, ckpt_factory):
    from typer.testing import CliRunner

    from bitconv.cli import app

    out = tmp_path / "m.gguf"
    convert(ckpt_factory("silu", seed=3), out, layout="q2_0")
    res = CliRunner().invoke(app, ["inspect", str(out), "--json"])
    assert res.exit_code == 0, res.output
    assert "Q2_0 of upstream llama.cpp" in json.loads(res.output)["type_readings"]["42"]
    tensors = [(n, s, 42, np.zeros(s[0] * (s[1] // 128) * 34, np.uint8)) for n, s, _, _ in _packed("q2_0", 42)]
    bad = write_gguf(tmp_path / "prism.gguf", tensors)
    res = CliRunner().invoke(app, ["inspect", str(bad)])
    assert res.exit_code == 2 and "PrismML" in res.output


def test_q2_0_file_is_a_source_after_its_reading(tmp_path, ckpt_factory):
    out = tmp_path / "m.gguf"
    convert(ckpt_factory("silu", seed=3), out, layout="q2_0", group_size=128)
    ck = open_source(out)
    lin = [t for t in ck.tensors if t.role == "linear"]
    assert lin and all(t.dtype == "q2_0" and t.group == 128 for t in lin)
    assert lin[0].load_ternary().group == 128
