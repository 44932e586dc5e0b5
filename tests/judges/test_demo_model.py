"""The shipped demo model: verify's source perplexity equals transformers' on the same
windows, it is far below the uniform baseline, and the quickstart path (tl2 + verify) passes."""

from __future__ import annotations

import math
import os

os.environ.setdefault("TORCHDYNAMO_DISABLE", "1")

import pytest
import torch

from bitconv.convert import convert
from bitconv.readers import DATA_DIR
from bitconv.verify import make_windows, verify

pytestmark = pytest.mark.judge
DEMO = DATA_DIR / "tiny-bitnet"
CTX = 256


def transformers_perplexity(windows: list[list[int]]) -> float:
    from transformers import BitNetForCausalLM

    model = BitNetForCausalLM.from_pretrained(DEMO, dtype=torch.float32).eval()
    nll, n = 0.0, 0
    with torch.no_grad():
        for w in windows:
            logits = model(torch.tensor([w])).logits[0, :-1]
            nll += torch.nn.functional.cross_entropy(logits, torch.tensor(w[1:]), reduction="sum").item()
            n += len(w) - 1
    return math.exp(nll / n)


def test_demo_quickstart_and_transformers_perplexity(tmp_path):
    art = tmp_path / "tiny-tl2.gguf"
    convert("builtin:tiny-bitnet", art, layout="tl2")
    report = verify(art, "builtin:tiny-bitnet", tokens=100_000, ctx=CTX)  # the whole eval text
    assert report.passed, report.failures
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(DEMO / "tokenizer.json"))
    ids = tok.encode((DATA_DIR / "eval.txt").read_text(), add_special_tokens=False).ids
    windows = make_windows(ids, CTX, 0)  # BOS (id 0) + 255 text tokens, as verify does for this model
    assert sum(len(w) - 1 for w in windows) == report.tokens
    hf = transformers_perplexity(windows)
    print(f"verify source ppl {report.source_perplexity:.5f}, artifact {report.artifact_perplexity:.5f}, "
          f"transformers {hf:.5f}, uniform {tok.get_vocab_size()}")
    assert report.source_perplexity == pytest.approx(hf, rel=1e-3)
    assert report.artifact_perplexity < 0.01 * tok.get_vocab_size()
