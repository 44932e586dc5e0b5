"""verify's perplexity of a TQ2_0 file agrees with llama.cpp's own perplexity of that file,
within what activation quantization explains (issue 3, item 4)."""

from __future__ import annotations

import math
import os

os.environ.setdefault("TORCHDYNAMO_DISABLE", "1")

import numpy as np
import pytest

llama_cpp = pytest.importorskip("llama_cpp", reason="llama-cpp-python (the judge) is a test extra")

from tokenizers import Tokenizer  # noqa: E402

from bitconv.convert import convert  # noqa: E402
from bitconv.readers import DATA_DIR  # noqa: E402
from bitconv.synth import make_checkpoint  # noqa: E402
from bitconv.verify import make_windows, verify  # noqa: E402

pytestmark = pytest.mark.judge
TOKENS, CTX = 512, 128


def llamacpp_mean_nll(gguf_path, windows) -> float:
    """llama.cpp's own next-token NLL over the same windows verify scores (nats/token)."""
    llm = llama_cpp.Llama(model_path=str(gguf_path), logits_all=True, n_ctx=2 * CTX, verbose=False, n_threads=2)
    nll: list[float] = []
    for w in windows:
        llm.reset()
        llm.eval(w)
        lg = np.array(llm.scores[: len(w)], dtype=np.float64)
        m = lg.max(axis=1, keepdims=True)
        logp = lg - (m + np.log(np.exp(lg - m).sum(axis=1, keepdims=True)))
        nll += [-logp[i, w[i + 1]] for i in range(len(w) - 1)]
    return float(np.mean(nll))


def test_verify_perplexity_matches_llamacpp(tmp_path):
    src = make_checkpoint(tmp_path / "src", family="silu", seed=0)
    other = make_checkpoint(tmp_path / "other", family="silu", seed=1)
    art, wrong = tmp_path / "a.gguf", tmp_path / "wrong.gguf"
    convert(src, art, layout="tq2_0")
    convert(other, wrong, layout="tq2_0")
    with_aq = verify(art, src, tokens=TOKENS, ctx=CTX, act_quant=True, max_ppl_increase=1.0)
    no_aq = verify(art, src, tokens=TOKENS, ctx=CTX, act_quant=False, max_ppl_increase=1.0)
    tok = Tokenizer.from_file(str(src / "tokenizer.json"))
    ids = tok.encode((DATA_DIR / "eval.txt").read_text(), add_special_tokens=False).ids[:TOKENS]
    windows = make_windows(ids, CTX, None)  # the synth tokenizer config says add_bos_token: false
    assert sum(len(w) - 1 for w in windows) == with_aq.tokens

    ln_a, ln_n = math.log(with_aq.artifact_perplexity), math.log(no_aq.artifact_perplexity)
    ln_l = llamacpp_mean_nll(art, windows)
    act_effect = abs(ln_a - ln_n)
    print(f"ln ppl: verify {ln_a:.5f} (no act quant {ln_n:.5f}), llama.cpp {ln_l:.5f}")
    # llama.cpp quantizes activations per 256-block (Q8_K) and keeps an f16 KV cache; verify
    # quantizes per token. Both sit within a few act-quant effects of the float result.
    assert abs(ln_l - ln_a) <= 2 * act_effect + 5e-3
    assert abs(ln_l - ln_n) <= 4 * act_effect + 5e-3
    # and the comparison can tell models apart: another model's file is far away
    assert abs(llamacpp_mean_nll(wrong, windows) - ln_l) > 100 * (2 * act_effect + 5e-3)
