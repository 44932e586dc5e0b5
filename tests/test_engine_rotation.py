"""Rotated ternary models and fork type ids (issue 20, item 6): inspect and doctor name them,
convert refuses to write a rotated model into any target (each would drop the rotation)."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

import foreign_gguf
from foreign_gguf import random_model, write_bitnetcpp_i2s, write_llamacpp_tq

from bitconv.convert import convert
from bitconv.doctor import doctor
from bitconv.errors import LayoutError
from bitconv.inspect_file import inspect_path


@pytest.fixture(scope="module")
def silu():
    return random_model(act="silu", seed=3)


@pytest.fixture
def rotated_gguf(tmp_path, silu, monkeypatch):
    """A llama.cpp TQ2_0 file whose header also declares PrismML's prism.hadamard.* keys."""
    orig = foreign_gguf._header

    def header(w, m, *args, **kw):
        orig(w, m, *args, **kw)
        w.add_uint32("prism.hadamard.block_size", 128)
        w.add_string("prism.hadamard.signs", "per-channel")

    monkeypatch.setattr(foreign_gguf, "_header", header)
    return write_llamacpp_tq(tmp_path / "rotated.gguf", silu)


def test_doctor_and_inspect_name_the_rotation(rotated_gguf):
    r = doctor(rotated_gguf)
    (f,) = [f for f in r.findings if f.code == "hadamard-rotation"]
    assert "prism.hadamard.block_size=128" in f.message and "fluent garbage" in f.message
    assert f.severity == "error"  # an engine was inferred (llama.cpp), which ignores the keys
    notes = inspect_path(rotated_gguf)["notes"]
    assert any("Hadamard rotation" in n and "block_size=128" in n for n in notes)
    out = subprocess.run([sys.executable, "-m", "bitconv.cli", "inspect", str(rotated_gguf)],
                         capture_output=True, text=True)
    assert out.returncode == 0 and "Hadamard rotation" in out.stdout + out.stderr


@pytest.mark.parametrize("fmt", ["gguf", "safetensors", "mlx", "compressed-tensors"])
def test_convert_refuses_a_rotated_model_into_every_target(rotated_gguf, tmp_path, fmt):
    out = tmp_path / ("x.gguf" if fmt == "gguf" else "x")
    with pytest.raises(LayoutError, match="pre-rotated by a block Hadamard rotation"):
        convert(rotated_gguf, out, format=fmt)
    assert not out.exists()


def test_release_refuses_a_rotated_model(rotated_gguf, tmp_path):
    r = subprocess.run([sys.executable, "-m", "bitconv.cli", "convert", str(rotated_gguf), str(tmp_path / "rel"),
                        "--layout", "tq2_0", "--format", "gguf,safetensors"], capture_output=True, text=True)
    assert r.returncode == 2 and "Hadamard" in r.stdout + r.stderr
    assert not (tmp_path / "rel").exists() or not any((tmp_path / "rel").iterdir())


@pytest.mark.parametrize("type_id,label", [(142, "PQ2_0"), (143, "PTQ1_0"), (43, "first id after upstream's Q2_0")])
def test_doctor_names_fork_type_ids(tmp_path, silu, type_id, label):
    name = "blk.0.ffn_up.weight"
    t, _ = silu.linears[name]
    raw = np.zeros(t.shape[0] * t.shape[1] // 128 * 34, dtype=np.uint8)  # group-128 2-bit blocks
    p = write_bitnetcpp_i2s(tmp_path / f"t{type_id}.gguf", silu, types={name: (type_id, raw)}, drop_kv=())
    (f,) = [f for f in doctor(p).findings if f.code == "fork-type-id"]
    assert f.severity == "error" and label in f.message and f"type {type_id}" in f.subject and name in f.subject


def test_doctor_names_q2_0_tensors_sized_as_128_value_blocks(tmp_path, silu):
    """Type 42 whose bytes are 34 per 128 values: PrismML's older group-128 blocks, not Q2_0."""
    types = {}
    for name, (t, _) in silu.linears.items():
        types[name] = (42, np.zeros(t.shape[0] * t.shape[1] // 128 * 34, dtype=np.uint8))
    p = write_bitnetcpp_i2s(tmp_path / "q2_128.gguf", silu, types=types, file_type=41, arch="bitnet", drop_kv=())
    r = doctor(p)
    (f,) = [f for f in r.findings if f.code == "type-id-ambiguous"]
    assert "the bytes fit PrismML's older group-128" in f.message  # no engine named: a warning
    assert r.readings == {"42": ["PrismML's older group-128 2-bit blocks"]}
    (f,) = [f for f in doctor(p, engine="llama.cpp").findings if f.code == "type-id-ambiguous"]
    assert f.severity == "error" and "group-128" in f.message
