"""TQ2_0 code 3 is refused by the reader (issue 22, item 6), as the I2_S, Q2_0 and Hugging
Face readers refuse it: TQ2_0 is llama.cpp's ternary type, its quantizer writes codes 0..2
only, and code 3 would decode to +2·d. Before the fix one flipped code made `load_ternary()`
return the value 2 silently, a later i2_s conversion failed naming neither file nor code and
`verify` ran with the bad value."""

from __future__ import annotations

import numpy as np
import pytest

from bitconv.errors import BadWeightsError
from bitconv.pack import get_layout
from bitconv.quant import Ternary


def _packed(m: int = 3, k: int = 512) -> tuple[np.ndarray, Ternary]:
    rng = np.random.default_rng(7)
    tern = Ternary(rng.integers(-1, 2, size=(m, k), dtype=np.int8), np.float32(0.03), "tensor")
    return get_layout("tq2_0").pack(tern, "w").copy(), tern


@pytest.mark.parametrize("block,byte,field", [(0, 0, 0), (3, 63, 3), (5, 17, 2)])
def test_tq2_0_unpack_refuses_code_3_naming_tensor_and_block(block, byte, field):
    data, tern = _packed()
    assert np.array_equal(get_layout("tq2_0").unpack(data, tern.shape, "w").values, tern.values)
    data[66 * block + byte] |= 0b11 << (2 * field)
    with pytest.raises(BadWeightsError, match=rf"^w: TQ2_0 block {block} \(row {block // 2}, .*code 3"):
        get_layout("tq2_0").unpack(data, tern.shape, "w")


def test_code_3_in_a_tq2_0_file_is_refused_by_load_and_by_a_conversion(tmp_path, ckpt_factory):
    """A flipped code in a file: reading names the tensor; converting it to i2_s exits 2
    (bad input) naming the tensor, and writes nothing."""
    import subprocess
    import sys

    from bitconv.convert import convert
    from bitconv.readers import open_source
    from bitconv.readers.gguf_file import GGUFFile

    path = tmp_path / "m.gguf"
    convert(ckpt_factory("silu", seed=3), path, layout="tq2_0")
    info = GGUFFile(path).tensors["blk.1.ffn_gate.weight"]
    raw = bytearray(path.read_bytes())
    raw[info.offset + 66 + 4] |= 0b11 << 2  # block 1, byte 4, field 1 -> code 3
    path.write_bytes(bytes(raw))
    tensor = next(t for t in open_source(path).tensors if t.name == "blk.1.ffn_gate.weight")
    with pytest.raises(BadWeightsError, match=r"blk\.1\.ffn_gate\.weight: TQ2_0 block 1 .*code 3"):
        tensor.load_ternary()
    out = tmp_path / "again.gguf"
    r = subprocess.run([sys.executable, "-m", "bitconv.cli", "convert", str(path), str(out), "--layout", "i2_s"],
                       capture_output=True, text=True)
    assert r.returncode == 2, r.stderr
    assert "blk.1.ffn_gate.weight" in r.stderr and "code 3" in r.stderr
    assert not out.exists()
