"""Peak memory of `--format mlx` / `--format compressed-tensors` follows the largest tensor,
not the model (issue 20, item 7), measured as tests/test_memory.py measures the GGUF writer:
a fresh process converting a bf16 exact-ternary Llama 80x its largest tensor, against a
process that opens the same source and converts nothing.

Measured here (2 shared cores at load ~14, hidden 1024, ffn 2816, 18 layers, bf16, 884 MiB as
float32, largest tensor 11 MiB): growth mlx 262 MiB, compressed-tensors 237 MiB (21.5-23.8x the
largest tensor, 0.27-0.30x the model). The GGUF tq2_0 writer grows 247 MiB on the same source:
the growth is the exact-ternary reading (detection and recovery per tensor, with the pipeline's
160 MiB of float32 in flight), which every writer shares, not these writers. So the gate is
relative to the GGUF writer on the same source (measured 0.96-1.13x over two runs; a writer holding the model
would add its 884 MiB, ~4.6x): at most 1.5x, and below 0.9x the model (3x the 0.30 measured).
"""

from __future__ import annotations

import pytest

from test_memory import f32_sizes, peak_rss

pytestmark = pytest.mark.slow

MiB = 1024 * 1024
MAX_GROWTH_PER_GGUF = 1.5  # measured 0.96-1.13
MAX_GROWTH_PER_MODEL_F32 = 0.9  # measured 0.27-0.30

BASELINE = """
import bitconv.convert, bitconv.readers.hf_folder, bitconv.writers.mlx_writer, bitconv.writers.ct_writer  # noqa
import bitconv.pack, numpy, safetensors, torch  # noqa
from bitconv.readers import open_source
open_source(__import__("sys").argv[1])
print("{}")
"""

CONVERT = """
import json, sys
from bitconv.convert import convert
r = convert(sys.argv[1], sys.argv[2], format=sys.argv[3])
print(json.dumps({"linears": len(r.stats), "bytes": r.output_bytes}))
"""
GGUF = CONVERT.replace("format=sys.argv[3]", "layout=sys.argv[3]")


@pytest.fixture(scope="module")
def big_exact(ckpt_factory):
    return ckpt_factory("llama", hidden=1024, intermediate=2816, layers=18, heads=8, kv_heads=8, vocab=512,
                        dtype="bf16", seed=22, weights="exact")


@pytest.fixture(scope="module")
def gguf_growth(big_exact, tmp_path_factory) -> int:
    _, base = peak_rss(BASELINE, big_exact)
    _, peak = peak_rss(GGUF, big_exact, tmp_path_factory.mktemp("gguf") / "m.gguf", "tq2_0")
    return peak - base


@pytest.mark.parametrize("fmt", ["mlx", "compressed-tensors"])
def test_peak_rss_follows_largest_tensor(big_exact, gguf_growth, tmp_path, fmt):
    model_f32, largest_f32 = f32_sizes(big_exact)
    _, base = peak_rss(BASELINE, big_exact)
    res, peak = peak_rss(CONVERT, big_exact, tmp_path / "out", fmt)
    assert res["linears"] == 18 * 7
    growth = peak - base
    print(f"\n{fmt}: model {model_f32 / MiB:.0f} MiB float32 ({model_f32 / largest_f32:.1f}x its largest tensor); "
          f"growth {growth / MiB:.0f} MiB = {growth / largest_f32:.2f}x largest, {growth / model_f32:.3f}x model, "
          f"{growth / gguf_growth:.2f}x the GGUF tq2_0 writer's {gguf_growth / MiB:.0f} MiB")
    assert growth < MAX_GROWTH_PER_GGUF * gguf_growth
    assert growth < MAX_GROWTH_PER_MODEL_F32 * model_f32
