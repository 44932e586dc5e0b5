"""bitnet.cpp as a judge: its own `llama-perplexity` on a file, and what transformers computes
on the source over the same chunks, shared by test_bitnetcpp.py and the mutation check."""

from __future__ import annotations

import math
import os
import re
from pathlib import Path

import numpy as np
import waiting

from ._metrics import log_softmax
from ._reference import source_logits

N_CTX, CHUNKS = 128, 4
# |ln ppl(bitnet.cpp) - ln ppl(transformers on the source)|, measured with a build of 4645960 +
# 406a5036 (gcc 12, x86 AVX2, TL2 kernels from the recipe in README "Development"), 4 chunks
# of 128 tokens: SiLU BitNet I2_S 0.0015 (ppl 3934.06 vs 3939.85), TL2 0.0003 (3938.59);
# Llama I2_S 0.0003 (4260.87 vs 4259.69), TL2 0.0002. Gates keep 3x the family's worst.
# FORMATS.md §5 saw one file's ln ppl move ~0.003 between builds (gcc/clang, -ub).
# What they catch (test_mutations.py's defects planted in these files, same build):
# SiLU BitNet: every scale x1.3 (at the writer seam) 0.062, codes swapped 0.10 / 1.09, rows off by one 0.27;
# v/gate/up x1.3 only 0.0044 / 0.0048, missed (its sub-norms absorb v and up; perplexity is a
# coarser yardstick than per-token KL). Llama: every scale (in the quantizer) 0.078, v/gate/up 0.0056, codes
# swapped 0.17 / 0.028, rows 0.083, q/k permutation skipped 0.0052, head scale dropped 42.6:
# all caught (test_mutations.py runs these with a build present).
MAX_LN_PPL = {"silu": 0.005, "llama": 0.001}


def bitnet_dir() -> Path | None:
    """The bitnet.cpp build `BITNET_CPP_DIR` names, if it has llama-perplexity."""
    d = os.environ.get("BITNET_CPP_DIR")
    return Path(d) if d and (Path(d) / "build" / "bin" / "llama-perplexity").is_file() else None


def perplexity(exe: Path, model: Path, text: Path, ubatch: int | None) -> float:
    """llama-perplexity's final estimate over CHUNKS chunks of N_CTX tokens, 2 threads."""
    cmd = [str(exe), "-m", str(model), "-f", str(text), "-c", str(N_CTX), "-b", str(N_CTX), "--chunks",
           str(CHUNKS), "-t", "2"] + (["-ub", str(ubatch)] if ubatch else [])
    r = waiting.run(cmd, 600, capture_output=True, text=True)
    out = r.stdout + r.stderr
    assert r.returncode == 0, f"llama-perplexity failed ({r.returncode}):\n{out[-3000:]}"
    m = re.search(r"Final estimate: PPL = ([0-9.eE+-]+|nan|inf)", out)
    assert m, f"no final estimate in llama-perplexity's output:\n{out[-3000:]}"
    return float(m.group(1))


def reference_perplexity(src: Path, gguf: Path, text: str) -> float:
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


def bitnetcpp_verdict(d: Path, src: Path, path: Path, text: Path) -> tuple[float, float, float]:
    """(bitnet.cpp's ppl of `path`, transformers' on the source, |ln ratio|); TL2 runs with -ub 7."""
    layout = "tl2" if "tl2" in path.name else "i2_s"
    ppl = perplexity(d / "build" / "bin" / "llama-perplexity", path, text, 7 if layout == "tl2" else None)
    ref = reference_perplexity(src, path, text.read_text())
    return ppl, ref, abs(math.log(ppl / ref)) if np.isfinite(ppl) and ppl > 0 else float("inf")


