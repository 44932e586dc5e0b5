"""bitnet.cpp is the judge of bitconv's I2_S and TL2 files (issue 22, item 4): its own
`llama-perplexity` runs them, and its perplexity must be the SOURCE model's, computed by
transformers over the same chunks the way llama-perplexity scores them.

Runs when a bitnet.cpp build is present: `BITNET_CPP_DIR` names the checkout (the recipe is
in README "Development": bitnet.cpp 4645960 with its llama.cpp fork at 406a5036, built with
TL2 kernels generated for this model's shapes from what `--emit-kernel-config` prints). The
TL2 file is written with that build's `include/kernel_config.ini` (`--kernel-config`), so a
build whose kernels do not cover these shapes skips the TL2 case with that reason. Without a
build the whole module skips, saying so.

The model is the SiLU judge source (tests/judges/_reference.py): arch `bitnet`, tied head,
which the Nov-2024 fork's graph runs (SiLU-gated). TL2 runs with `-ub 7`: the TL2 kernels
generated at 4645960 write every row of a micro-batch of 8 or more tokens to the same slot
(FORMATS.md §5).
"""

from __future__ import annotations

import math
import os
import re
import subprocess
from pathlib import Path

import numpy as np
import pytest

from bitconv.convert import convert
from bitconv.readers import DATA_DIR

from ._metrics import log_softmax
from ._reference import JUDGE_DIMS, JUDGE_SOURCES, source_logits

pytestmark = pytest.mark.judge

N_CTX, CHUNKS = 128, 4
# |ln ppl(bitnet.cpp) - ln ppl(transformers on the source)|, measured with a build of 4645960 +
# 406a5036 (gcc 12, x86 AVX2, TL2 kernels from the recipe in README "Development"), 4 chunks
# of 128 tokens: I2_S 0.0015 (ppl 3934.06 vs 3939.85), TL2 0.0003 (3938.59). The gate keeps 3x.
# FORMATS.md §5 saw the same file's ln ppl move ~0.003 between builds (gcc/clang, -ub), inside
# it. What it catches (the defects of test_mutations.py planted in this model's I2_S / TL2
# files, same build): every scale x1.3 0.062, codes swapped 0.10 / 1.09, rows off by one 0.27;
# v/gate/up scales x1.3 only 0.0044 / 0.0048 (this SiLU BitNet's sub-norms absorb v and up, and
# perplexity is a coarser yardstick than the other judges' per-token KL): missed here, caught
# for I2_S/TL2 files by the transformers byte-path judge of the mutation check.
MAX_LN_PPL = 0.005


def _bitnet_dir() -> Path:
    d = os.environ.get("BITNET_CPP_DIR")
    if not d:
        pytest.skip("BITNET_CPP_DIR is not set: no bitnet.cpp build to judge I2_S/TL2 files "
                    "(README 'Development' has the recipe)")
    exe = Path(d) / "build" / "bin" / "llama-perplexity"
    if not exe.is_file():
        pytest.skip(f"BITNET_CPP_DIR={d} has no build/bin/llama-perplexity (README 'Development')")
    return Path(d)


def _perplexity(exe: Path, model: Path, text: Path, ubatch: int | None) -> float:
    cmd = [str(exe), "-m", str(model), "-f", str(text), "-c", str(N_CTX), "-b", str(N_CTX), "--chunks",
           str(CHUNKS), "-t", "2"] + (["-ub", str(ubatch)] if ubatch else [])
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    out = r.stdout + r.stderr
    assert r.returncode == 0, f"llama-perplexity failed ({r.returncode}):\n{out[-3000:]}"
    m = re.search(r"Final estimate: PPL = ([0-9.eE+-]+|nan|inf)", out)
    assert m, f"no final estimate in llama-perplexity's output:\n{out[-3000:]}"
    return float(m.group(1))


def _reference_perplexity(src: Path, gguf: Path, text: str) -> float:
    """What llama-perplexity computes, with transformers on the source: the text tokenized
    once (BOS first when the file says add_bos_token), cut into chunks of N_CTX (the chunk's
    first token replaced by BOS when add_bos), each scored on its second half."""
    from tokenizers import Tokenizer

    from bitconv.readers.gguf_file import GGUFFile

    f = GGUFFile(gguf)
    add_bos = bool(f.get("tokenizer.ggml.add_bos_token") or False)
    bos = int(f.get("tokenizer.ggml.bos_token_id"))
    ids = Tokenizer.from_file(str(src / "tokenizer.json")).encode(text, add_special_tokens=False).ids
    ids = ([bos] if add_bos else []) + ids
    assert len(ids) >= CHUNKS * N_CTX
    nll, n = 0.0, 0
    first = N_CTX // 2
    for c in range(CHUNKS):
        chunk = list(ids[c * N_CTX:(c + 1) * N_CTX])
        if add_bos:
            chunk[0] = bos
        lp = log_softmax(source_logits(src, chunk))
        for j in range(first, N_CTX - 1):
            nll -= lp[j, chunk[j + 1]]
            n += 1
    return math.exp(nll / n)


@pytest.fixture(scope="module")
def judged(tmp_path_factory):
    from bitconv.synth import make_checkpoint

    d = _bitnet_dir()
    root = tmp_path_factory.mktemp("bitnetcpp")
    src = make_checkpoint(root / "src", **{**JUDGE_DIMS, **JUDGE_SOURCES["silu"]})
    text = root / "eval.txt"
    text.write_text((DATA_DIR / "eval.txt").read_text())
    return d, src, text


def test_bitnetcpp_runs_i2_s_like_the_source(judged, tmp_path):
    d, src, text = judged
    path = tmp_path / "m-i2_s.gguf"
    convert(src, path, layout="i2_s")
    ppl = _perplexity(d / "build" / "bin" / "llama-perplexity", path, text, None)
    ref = _reference_perplexity(src, path, text.read_text())
    print(f"\nbitnet.cpp I2_S: ppl {ppl:.4f}, transformers on the source {ref:.4f}, "
          f"|ln ratio| {abs(math.log(ppl / ref)):.4f} <= {MAX_LN_PPL}")
    assert np.isfinite(ppl) and abs(math.log(ppl / ref)) <= MAX_LN_PPL


def test_bitnetcpp_runs_tl2_like_the_source(judged, tmp_path):
    from bitconv.errors import BitconvError

    d, src, text = judged
    ini = d / "include" / "kernel_config.ini"
    if not ini.is_file():
        pytest.skip(f"{ini} is missing: the build has no TL2 kernels")
    path = tmp_path / "m-tl2.gguf"
    try:
        convert(src, path, layout="tl2", kernel_config=ini)
    except BitconvError as exc:
        pytest.skip(f"the build's TL2 kernels do not cover this model's shapes ({exc}); "
                    "build them with what --emit-kernel-config prints (README 'Development')")
    ppl = _perplexity(d / "build" / "bin" / "llama-perplexity", path, text, 7)
    ref = _reference_perplexity(src, path, text.read_text())
    print(f"\nbitnet.cpp TL2 (-ub 7): ppl {ppl:.4f}, transformers on the source {ref:.4f}, "
          f"|ln ratio| {abs(math.log(ppl / ref)):.4f} <= {MAX_LN_PPL}")
    assert np.isfinite(ppl) and abs(math.log(ppl / ref)) <= MAX_LN_PPL
