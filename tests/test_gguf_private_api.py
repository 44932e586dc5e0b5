"""bitconv overrides one private method of gguf-py's writer (`GGUFWriter._pack_val`, in
`writers/gguf_writer.ArrayPackingGGUFWriter`, for speed). pyproject.toml pins `gguf` to the
range this was tested with; this test fails the day an installed gguf changes what the
override relies on: the method's name and parameters, and that the writer sends every
metadata value through it. tests/test_speed_paths.py::test_metadata_arrays_pack_as_gguf_packs_them
checks the bytes are the stock writer's."""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import gguf

from bitconv.writers.gguf_writer import ArrayPackingGGUFWriter

PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"


def test_pack_val_is_still_what_the_override_expects():
    sig = inspect.signature(gguf.GGUFWriter._pack_val)
    assert list(sig.parameters) == ["self", "val", "vtype", "add_vtype", "sub_type"]
    assert sig.parameters["sub_type"].default is None
    assert list(inspect.signature(ArrayPackingGGUFWriter._pack_val).parameters) == list(sig.parameters)
    # the writer packs every key/value through it (what makes the override take effect)
    src = inspect.getsource(gguf.GGUFWriter)
    assert re.search(r"self\._pack_val\(val\.value, val\.type, add_vtype=True, sub_type=val\.sub_type\)", src)


def test_gguf_is_pinned_to_a_tested_range():
    deps = PYPROJECT.read_text()
    m = re.search(r'"gguf>=([\d.]+),<([\d.]+)"', deps)
    assert m, "gguf must be pinned to a tested range while ArrayPackingGGUFWriter overrides _pack_val"
    lo, hi = (tuple(int(x) for x in v.split(".")) for v in m.groups())
    from importlib.metadata import version

    have = tuple(int(x) for x in version("gguf").split(".")[:2])
    assert lo <= have < hi, f"installed gguf {version('gguf')} is outside the tested range {m.group(0)}"
