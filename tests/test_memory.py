"""Peak memory follows the largest tensor, not the model (issue 2 item 8).

A seeded bf16 model many times the size of its largest tensor is converted in a fresh
process; its peak RSS is compared with a process that imports the same modules and
converts nothing. Tensors are streamed, so the growth is a few float32 copies of the
largest tensor (its float32 copy, the ternarization temporaries, the packed bytes) and far
below the model. Holding the model, or letting the safetensors memory maps keep every page
read resident, would exceed both bounds.

Measured here (2 shared cores, hidden 1024, ffn 2816, 18 layers, bf16 442 MiB on disk):
growth 86 MiB, i.e. 7.8x the largest tensor's float32 size (11 MiB), 0.097x the model's
(884 MiB). The bounds allow 3x that; the model is 80x its largest tensor so that they
still fail a converter that holds the model (1x) or keeps the mapped bf16 pages (0.5x).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import waiting

pytestmark = pytest.mark.slow

MiB = 1024 * 1024
# bounds: 3x what was measured (7.8x, 0.097x), still far from anything that holds the model
MAX_GROWTH_PER_LARGEST_F32 = 25.0
MAX_GROWTH_PER_MODEL_F32 = 0.3

# A child's ru_maxrss starts at the high-water RSS of the process it was forked from (pytest
# with torch loaded), so the measured process is started by a small stdlib-only launcher whose
# RUSAGE_CHILDREN then holds the peak of that one grandchild.
LAUNCHER = r"""
import resource, subprocess, sys
p = subprocess.run(sys.argv[1:], stdout=subprocess.PIPE)
sys.stdout.buffer.write(p.stdout)
r = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
print("\n@@MAXRSS", r * (1 if sys.platform == "darwin" else 1024))
sys.exit(p.returncode)
"""

BASELINE = """
import bitconv.convert, bitconv.readers.hf_folder, bitconv.writers.gguf_writer, bitconv.pack  # noqa
import gguf, numpy, safetensors, torch  # noqa
from bitconv.readers import open_source
open_source(__import__("sys").argv[1])  # headers, config and tokenizer: everything but the tensors
print("{}")
"""

CONVERT = """
import json, sys
from bitconv.convert import convert
r = convert(sys.argv[1], sys.argv[2], layout=sys.argv[3])
print(json.dumps({"linears": len(r.stats), "bytes": r.output_bytes}))
"""


def peak_rss(code: str, *args: str) -> tuple[dict, int]:
    env = dict(os.environ, TORCHDYNAMO_DISABLE="1", HF_HUB_OFFLINE="1", HF_HUB_DISABLE_TELEMETRY="1")
    p = waiting.run([sys.executable, "-c", LAUNCHER, sys.executable, "-c", code, *map(str, args)], 300,
                    env=env, capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    lines = p.stdout.splitlines()
    rss = int(next(ln for ln in reversed(lines) if ln.startswith("@@MAXRSS")).split()[1])
    return json.loads(next(ln for ln in reversed(lines) if ln.startswith("{"))), rss


def f32_sizes(folder: Path) -> tuple[int, int]:
    """(float32 bytes of the model, float32 bytes of its largest tensor), from the header."""
    total = largest = 0
    for f in folder.glob("*.safetensors"):
        with open(f, "rb") as fh:
            header = json.loads(fh.read(int.from_bytes(fh.read(8), "little")))
        for name, info in header.items():
            if name != "__metadata__":
                n = 4
                for d in info["shape"]:
                    n *= d
                total += n
                largest = max(largest, n)
    return total, largest


@pytest.fixture(scope="module")
def big_ckpt(ckpt_factory) -> Path:
    return ckpt_factory("silu", hidden=1024, intermediate=2816, layers=18, heads=8, kv_heads=8, vocab=512,
                        dtype="bf16", seed=21)


@pytest.mark.parametrize("layout", ["tq2_0"])
def test_peak_rss_follows_largest_tensor(big_ckpt, tmp_path, layout):
    model_f32, largest_f32 = f32_sizes(big_ckpt)
    assert model_f32 > 3 * MAX_GROWTH_PER_LARGEST_F32 * largest_f32  # the bounds are meaningful only for such a model
    _, base = peak_rss(BASELINE, big_ckpt)
    res, peak = peak_rss(CONVERT, big_ckpt, tmp_path / "m.gguf", layout)
    assert res["linears"] == 18 * 7 and (tmp_path / "m.gguf").stat().st_size == res["bytes"]
    growth = peak - base
    print(f"\n{layout}: model {model_f32 / MiB:.0f} MiB float32 ({model_f32 / largest_f32:.1f}x its largest tensor, "
          f"{largest_f32 / MiB:.1f} MiB float32); baseline RSS {base / MiB:.0f} MiB, peak {peak / MiB:.0f} MiB, "
          f"growth {growth / MiB:.0f} MiB = {growth / largest_f32:.2f}x largest, {growth / model_f32:.3f}x model")
    assert growth < MAX_GROWTH_PER_LARGEST_F32 * largest_f32, \
        f"peak RSS grew by {growth / MiB:.0f} MiB, {growth / largest_f32:.1f}x the largest tensor"
    assert growth < MAX_GROWTH_PER_MODEL_F32 * model_f32, \
        f"peak RSS grew by {growth / MiB:.0f} MiB, {growth / model_f32:.2f}x the model's float32 size"


# Issue 23 item 2: an untied model whose largest tensors are the embedding and the head
# (as an 8B model's, 1 GB each). Peak RSS must follow the largest tensor - one of them -
# whatever the number of layers: the head written as F16 while the embedding is narrowed
# beside it, or the mapped source pages of a table kept resident, each add a whole table.
# The baseline is the same conversion of the same 2 layers with a 512-token vocabulary, so
# code, kernels and buffers are in both and the difference is what the tables cost. The
# pipeline's budget is set below one table (BITCONV_MEMORY_BUDGET_MB), the 8B regime
# (1 GB tables, a 512 MiB budget) at a size the suite can afford.
TABLE = dict(hidden=512, intermediate=1024, heads=8, kv_heads=8, tie=False, dtype="bf16", seed=23)
VOCAB = 131072
# Measured (2 shared cores, load 7-12): growth 1.20-1.22x one table's F16 bytes (128 MiB) at
# 2 and at 26 layers (the table's F16 copy, one 4 MiB chunk of the source read at a time,
# allocator slack); before the fix 2.12-2.13x at both (the head's F16 copy held while the
# embedding was narrowed, and the whole source table read or mapped beside its copy).
MAX_GROWTH_PER_TABLE = 1.7  # one table + 3x the measured excess (0.22 -> 0.66, rounded up); the old 2.12 fails
MAX_LAYER_GROWTH_PER_TABLE = 0.25  # 26 vs 2 layers: measured 0.01 tables (24 more layers are 1.2 tables on disk)


def test_peak_rss_follows_the_largest_table_not_the_layers(ckpt_factory, tmp_path, monkeypatch):
    table_f16 = 2 * VOCAB * TABLE["hidden"]
    monkeypatch.setenv("BITCONV_MEMORY_BUDGET_MB", str(table_f16 // 2 // MiB))  # the children read it
    peaks = {}
    for tag, layers, vocab in (("base", 2, 512), ("l2", 2, VOCAB), ("l26", 26, VOCAB)):
        folder = ckpt_factory("llama", layers=layers, vocab=vocab, **TABLE)
        out = tmp_path / f"{tag}.gguf"
        res, peaks[tag] = peak_rss(CONVERT, folder, out, "q2_0")
        assert out.stat().st_size == res["bytes"]
    growth = [peaks["l2"] - peaks["base"], peaks["l26"] - peaks["base"]]
    print(f"\nbaseline (vocab 512) {peaks['base'] / MiB:.0f} MiB; growth at 2 layers {growth[0] / MiB:.0f} MiB "
          f"({growth[0] / table_f16:.2f} tables), at 26 layers {growth[1] / MiB:.0f} MiB "
          f"({growth[1] / table_f16:.2f} tables); one table (F16) {table_f16 / MiB:.0f} MiB")
    assert max(growth) < MAX_GROWTH_PER_TABLE * table_f16, \
        f"peak RSS grew by {max(growth) / MiB:.0f} MiB, {max(growth) / table_f16:.2f}x the embedding's F16 bytes"
    assert growth[1] - growth[0] < MAX_LAYER_GROWTH_PER_TABLE * table_f16, \
        f"24 more layers added {(growth[1] - growth[0]) / MiB:.0f} MiB of peak RSS"
