"""Issue 24 item 2: `doctor` asks `pack/` what a type's bytes hold. A layout registered
in a test (a type id no built-in layout has) is checked by doctor — its stored scales
judged, its invalid codes counted — with no edit to doctor.py."""

from __future__ import annotations

import numpy as np
import pytest
from foreign_gguf import random_model, write_bitnetcpp_i2s

from bitconv.doctor import doctor
from bitconv.pack import base
from bitconv.pack.inspect_bytes import CodeCount, count_code3, tail_scale

FAKE_ID = 200  # no engine, no built-in layout


@pytest.fixture
def fake_layout():
    """2 bits per weight (code 3 invalid), then a float32 scale in a 32-byte tail, like I2_S
    but under an id of its own, defined only here."""

    class Fake(base.Layout, name="test_fake_2bit"):
        ggml_type = FAKE_ID

        def nbytes(self, shape):
            return shape[0] * shape[1] // 4 + 32

        def stored_scales(self, data, shape):
            return tail_scale(data, self.nbytes(shape) - 32)

        def invalid_codes(self, data, shape):
            return CodeCount(count_code3(np.asarray(data)[:shape[0] * shape[1] // 4]), "2-bit code 3 (fake layout)")

    yield Fake
    del base._LAYOUTS["test_fake_2bit"]


def _fake_bytes(m: int, k: int, scale: float, code3: int = 0) -> np.ndarray:
    codes = np.full(m * k // 4, 0b01010101, np.uint8)  # every code 1
    codes[:code3] = 0xFF >> 6  # one code 3 in each of the first `code3` bytes
    tail = np.zeros(32, np.uint8)
    tail[:4] = np.array([scale], "<f4").view(np.uint8)
    return np.concatenate([codes, tail])


def test_doctor_checks_a_layout_it_has_never_heard_of(tmp_path, fake_layout):
    m = random_model(layers=1)
    name = "blk.0.attn_q.weight"
    rows, cols = m.linears[name][0].shape
    path = write_bitnetcpp_i2s(tmp_path / "fake.gguf", m, types={
        name: (FAKE_ID, _fake_bytes(rows, cols, scale=float("nan"), code3=5)),
        "blk.0.attn_k.weight": (FAKE_ID, _fake_bytes(*m.linears["blk.0.attn_k.weight"][0].shape, scale=-1.0)),
    })
    rep = doctor(path, engine="bitnet.cpp")
    got = {(f.code, f.subject) for f in rep.findings}
    assert ("non-ternary-codes", name) in got
    assert ("scale-not-finite", name) in got
    assert ("scale-negative", "blk.0.attn_k.weight") in got
    msg = next(f.message for f in rep.findings if f.code == "non-ternary-codes")
    assert msg == "5 weight(s) hold 2-bit code 3 (fake layout)"
    assert not any(f.code == "check-failed" for f in rep.findings), rep.findings


def test_a_new_layouts_file_type_marks_a_ternary_file(tmp_path, fake_layout):
    """The file_types that say "ternary" come from pack/'s layouts too: a file labelled with
    the registered layout's file_type whose linears are F16 is flagged, and the same file
    under a file_type no layout has is not."""
    fake_layout.file_type = 250
    m = random_model(layers=1)
    name = "blk.0.ffn_down.weight"
    types = {name: (1, m.dense(name).astype(np.float16).view(np.uint8).reshape(-1))}
    path = write_bitnetcpp_i2s(tmp_path / "f16.gguf", m, types=types, drop_kv=(), file_type=250)
    f = next(x for x in doctor(path).findings if x.code == "float-linears")
    assert name in f.subject and "stored as F16" in f.message
    other = write_bitnetcpp_i2s(tmp_path / "other.gguf", m, types=types, drop_kv=(), file_type=251)
    assert "float-linears" not in {x.code for x in doctor(other).findings}
