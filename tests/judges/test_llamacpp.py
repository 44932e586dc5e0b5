"""llama.cpp is the judge (issue 2 item 6): it loads bitconv's TQ2_0 / TQ1_0 files and its
logits match a float forward pass of the same ternary weights.

The model is a small seeded SiLU-family BitNet (hidden 256, intermediate 512, 2 layers,
4 heads / 2 KV heads, tied embeddings, vocab 512) with a real byte-level BPE tokenizer and
a trained model's logit scale (`synth.SANE_LOGIT_STD`; an unscaled tied head gives logits
of ±100 whose error hides behind the embedding's self-similarity). llama.cpp quantizes
activations per 256-block (q8_K) for TQ matmuls, so its logits differ slightly from a
float pass without activation quantization. Measured here (llama-cpp-python 0.3.36, both
layouts): relative L2 0.0193, top-1 0.963, mean KL 7.8e-4; the input reversed: KL 2.06.
Gates sit 3x or more beyond: relative L2 <= 0.06, disagreement <= 0.12, KL <= 2.5e-3.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

llama_cpp = pytest.importorskip("llama_cpp")

from bitconv.convert import convert  # noqa: E402
from bitconv.readers import open_source  # noqa: E402
from bitconv.synth import SANE_LOGIT_STD  # noqa: E402

from ._llamacpp import llama_logits  # noqa: E402
from ._metrics import mean_kl  # noqa: E402

pytestmark = pytest.mark.judge

N_TOKENS = 160
MAX_REL_L2 = 0.06  # measured 0.0193
MIN_TOP1 = 0.88  # measured 0.963
MAX_KL = 2.5e-3  # measured 7.8e-4
APART = 100  # reversed input must be this many MAX_KLs away (measured 2.06 = 820x)
MEASURED: dict[str, tuple[float, float]] = {}


@pytest.fixture(scope="module")
def judge_ckpt(ckpt_factory) -> Path:
    return ckpt_factory("silu", hidden=256, intermediate=512, layers=2, heads=4, kv_heads=2, vocab=512,
                        tie=True, seed=0, logit_std=SANE_LOGIT_STD)


@pytest.fixture(scope="module")
def judge_files(judge_ckpt, tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("judge")
    files = {}
    for layout in ("tq2_0", "tq1_0"):
        files[layout] = d / f"tiny-{layout}.gguf"
        convert(judge_ckpt, files[layout], layout=layout)
    return files


@pytest.fixture(scope="module")
def token_ids(judge_ckpt) -> list[int]:
    """Real text through the checkpoint's own tokenizer (not random ids)."""
    from tokenizers import Tokenizer

    import bitconv

    eval_text = Path(bitconv.__file__).resolve().parent / "data" / "eval.txt"  # the text verify uses
    tok = Tokenizer.from_file(str(judge_ckpt / "tokenizer.json"))
    ids = tok.encode(eval_text.read_text()[:4000]).ids
    assert len(ids) >= N_TOKENS
    return ids[:N_TOKENS]




@pytest.mark.parametrize("layout", ["tq2_0", "tq1_0"])
def test_llamacpp_logits_match_ternary_reference(judge_files, token_ids, layout):
    from bitconv.verify.forward import logits_for

    path = judge_files[layout]
    got = llama_logits(path, token_ids)
    ref = logits_for(open_source(path), np.asarray(token_ids, dtype=np.int64)[None], act_quant=False)[0].numpy()
    assert got.shape == ref.shape == (N_TOKENS, 512)
    assert np.isfinite(got).all()
    rel = float(np.linalg.norm(got - ref) / np.linalg.norm(ref))
    top1 = float(np.mean(got.argmax(-1) == ref.argmax(-1)))
    kl = mean_kl(ref, got)
    MEASURED[layout] = (rel, top1)
    print(f"\nllama.cpp {layout}: relative L2 of logits {rel:.4f}, top-1 agreement {top1:.3f}, "
          f"KL {kl:.2e} over {N_TOKENS} tokens")
    assert rel <= MAX_REL_L2, f"{layout}: relative L2 error {rel:.2%} > {MAX_REL_L2:.0%}"
    assert top1 >= MIN_TOP1, f"{layout}: top-1 agreement {top1:.3f} < {MIN_TOP1}"
    assert kl <= MAX_KL, f"{layout}: mean KL {kl:.2e} > {MAX_KL:.1e}"


def test_reference_is_not_trivially_close(judge_files, token_ids):
    """Guard the judge: a model with other weights (or an unternarized one) is far away."""
    from bitconv.verify.forward import logits_for

    got = llama_logits(judge_files["tq2_0"], token_ids)
    ids = np.asarray(token_ids, dtype=np.int64)[None]
    ck = open_source(judge_files["tq2_0"])
    shuffled = logits_for(ck, ids[:, ::-1].copy(), act_quant=False)[0].numpy()[::-1]
    rel = float(np.linalg.norm(got - shuffled) / np.linalg.norm(shuffled))
    kl = mean_kl(shuffled, got)
    print(f"\nreversed input: relative L2 {rel:.4f} > 0.3, KL {kl:.3f} > {APART} x {MAX_KL:.1e}")
    assert rel > 0.3, f"reversed input gave logits only {rel:.2%} away: the comparison cannot tell models apart"
    assert kl > APART * MAX_KL, f"reversed input only KL {kl:.3g} away: the comparison cannot tell models apart"


def test_tq1_0_and_tq2_0_agree(judge_files, token_ids):
    """Same ternary weights in two layouts: llama.cpp's logits nearly coincide."""
    a = llama_logits(judge_files["tq2_0"], token_ids)
    b = llama_logits(judge_files["tq1_0"], token_ids)
    rel = float(np.linalg.norm(a - b) / np.linalg.norm(a))
    print(f"\ntq1_0 vs tq2_0: relative L2 {rel:.2e} < 0.02")
    assert rel < 0.02


@pytest.mark.parametrize("layout", ["tq2_0", "tq1_0"])
def test_llamacpp_tokenizer_matches_and_generates(judge_files, judge_ckpt, layout):
    from tokenizers import Tokenizer

    path = judge_files[layout]
    ref = Tokenizer.from_file(str(judge_ckpt / "tokenizer.json"))
    text = "The quick brown fox jumps over the lazy dog. Zoe found a ball, and Omar smiled!"
    vocab = llama_cpp.Llama(model_path=str(path), vocab_only=True, verbose=False)
    try:
        ids = vocab.tokenize(text.encode(), add_bos=False, special=False)
        assert ids == ref.encode(text).ids
        assert vocab.detokenize(ids).decode() == text
        assert vocab.token_bos() == 0 and vocab.token_eos() == 1
        assert vocab.n_vocab() == 512
    finally:
        vocab.close()
    llm = llama_cpp.Llama(model_path=str(path), n_ctx=128, verbose=False, n_threads=2, seed=0)
    try:
        out = llm.create_completion("The quick brown fox", max_tokens=6, temperature=0.0)
        assert out["usage"]["prompt_tokens"] == len(ref.encode("The quick brown fox").ids)
        assert 0 < out["usage"]["completion_tokens"] <= 6
        assert isinstance(out["choices"][0]["text"], str)
    finally:
        llm.close()
