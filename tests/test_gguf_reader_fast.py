"""The GGUF reader's fast paths (issue 14, GGUF sources): string arrays (the vocabulary) are
parsed in one loop over a memoryview, F16/BF16 float tensors are widened by a compiled
pass. Same values as gguf-py's reader and numpy's conversion; truncation is still a
CorruptFileError."""

from __future__ import annotations

import gguf
import numpy as np
import pytest

from bitconv.errors import CorruptFileError
from bitconv.ggml_types import BF16, F16, bytes_to_float
from bitconv.readers.gguf_file import GGUFFile, _float32

TOKENS = ["<s>", "</s>", "", "héllo", "▁world", "日本語", "a" * 300, "\n", "🙂"] * 50


def _write(path, tokens=TOKENS):
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_token_list(tokens)
    w.add_string("general.name", "tiny")
    w.add_array("test.ints", [1, 2, 3])
    w.add_tensor("x", np.arange(64, dtype=np.float32).reshape(2, 32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def test_string_arrays_read_as_gguf_py_reads_them(tmp_path):
    path = _write(tmp_path / "v.gguf")
    f = GGUFFile(path)
    assert f.kv["tokenizer.ggml.tokens"][0] == TOKENS
    assert f.kv["general.name"][0] == "tiny" and f.kv["test.ints"][0] == [1, 2, 3]
    r = gguf.GGUFReader(str(path))
    fld = r.fields["tokenizer.ggml.tokens"]
    assert [bytes(fld.parts[i]).decode() for i in fld.data] == TOKENS
    assert np.array_equal(bytes_to_float(f.raw("x"), 0, (2, 32)), np.arange(64, dtype=np.float32).reshape(2, 32))


@pytest.mark.parametrize("cut", [3, 9, 200, 2000])
def test_a_vocabulary_cut_short_is_a_corrupt_file(tmp_path, cut):
    path = _write(tmp_path / "v.gguf")
    data = path.read_bytes()
    start = data.index(b"tokenizer.ggml.tokens") + len("tokenizer.ggml.tokens") + 4 + 4 + 8
    (tmp_path / "cut.gguf").write_bytes(data[:start + cut])
    with pytest.raises(CorruptFileError, match="not a readable GGUF file"):
        GGUFFile(tmp_path / "cut.gguf")


@pytest.mark.parametrize("ggml_type", [F16, BF16])
def test_half_floats_widen_like_numpy(ggml_type):
    """Every 16-bit pattern: the same float32 bits as numpy's conversion (NaNs stay NaN;
    the hardware conversion may quiet a signalling NaN, which bitconv refuses anyway)."""
    bits = np.arange(65536, dtype=np.uint32).astype(np.uint16)
    got = _float32(bits.view(np.uint8), ggml_type, (256, 256))
    # numpy is the reference (bitconv's own routine is what is under test)
    want = (bits.view(np.float16).astype(np.float32) if ggml_type == F16
            else (bits.astype(np.uint32) << 16).view(np.float32)).reshape(256, 256)
    assert np.array_equal(bytes_to_float(bits.view(np.uint8), ggml_type, (256, 256)), got, equal_nan=True)
    assert got.dtype == np.float32 and got.shape == (256, 256) and got.flags.writeable
    nan = np.isnan(want)
    assert np.array_equal(np.isnan(got), nan)
    assert np.array_equal(got[~nan].view(np.uint32), want[~nan].view(np.uint32))
    odd = np.empty(bits.size * 2 + 1, np.uint8)[1:]  # an odd address
    odd[:] = bits.view(np.uint8)
    assert np.array_equal(_float32(odd, ggml_type, (256, 256))[~nan], want[~nan])
