"""llama.cpp judges a repack of a FOREIGN file (issue 13, item 1): a Llama-family model as
bitnet.cpp's llama-quantize writes it (I2_S, arch `llama`, q/k rows permuted, untied F16
output, garbage after each scale) is repacked to TQ2_0 and to Q2_0; llama.cpp runs the result and its
logits match verify's forward pass of the repacked file, and verify against the foreign
file reports every ternary code equal.

The model is a seeded random Llama whose mean NLL on real text sits near ln(vocab) (a
sane model, asserted below), with a real byte-level BPE tokenizer.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

llama_cpp = pytest.importorskip("llama_cpp", reason="llama-cpp-python (the judge) is a test extra")

from foreign_gguf import model_from_checkpoint, write_bitnetcpp_i2s  # noqa: E402

from bitconv.convert import convert  # noqa: E402
from bitconv.model import LINEAR  # noqa: E402
from bitconv.readers import open_source  # noqa: E402

from ._llamacpp import llama_logits  # noqa: E402

pytestmark = pytest.mark.judge

N_TOKENS = 160
MAX_REL_L2 = 0.05  # the gate; measured values are printed with -s
MIN_TOP1 = 0.95
LAYOUTS = ("tq2_0", "q2_0")  # the two llama.cpp layouts the issue names


@pytest.fixture(scope="module")
def files(ckpt_factory, tmp_path_factory) -> dict[str, Path]:
    ckpt = ckpt_factory("llama", hidden=256, intermediate=512, layers=2, heads=4, kv_heads=2, vocab=512,
                        tie=False, seed=21)
    d = tmp_path_factory.mktemp("foreign-judge")
    model = model_from_checkpoint(ckpt)
    foreign = write_bitnetcpp_i2s(d / "foreign-i2s.gguf", model, arch="llama", seed=5)
    out = {"ckpt": ckpt, "foreign": foreign}
    for layout in LAYOUTS:
        out[layout] = d / f"repacked-{layout}.gguf"
        convert(foreign, out[layout], layout=layout)
    return out


@pytest.fixture(scope="module")
def token_ids(files) -> list[int]:
    from tokenizers import Tokenizer

    import bitconv

    text = (Path(bitconv.__file__).resolve().parent / "data" / "eval.txt").read_text()[:4000]
    ids = Tokenizer.from_file(str(files["ckpt"] / "tokenizer.json")).encode(text).ids
    assert len(ids) >= N_TOKENS
    return ids[:N_TOKENS]


@pytest.mark.parametrize("layout", LAYOUTS)
def test_llamacpp_runs_repacked_foreign_i2s(files, token_ids, layout):
    from bitconv.verify.forward import logits_for

    got = llama_logits(files[layout], token_ids[:N_TOKENS])
    ids = np.asarray(token_ids, dtype=np.int64)[None]
    ref = logits_for(open_source(files[layout]), ids, act_quant=False)[0].numpy()
    assert got.shape == ref.shape == (N_TOKENS, 512) and np.isfinite(got).all()

    # a sane model: mean NLL near ln(vocab), not a collapsed or exploding one
    lp = ref - ref.max(-1, keepdims=True)
    lp -= np.log(np.exp(lp).sum(-1, keepdims=True))
    nll = float(-np.mean(lp[np.arange(N_TOKENS - 1), token_ids[1:]]))
    assert abs(nll - math.log(512)) < 0.5 * math.log(512), f"mean NLL {nll:.3f} vs ln(vocab) {math.log(512):.3f}"

    rel = float(np.linalg.norm(got - ref) / np.linalg.norm(ref))
    top1 = float(np.mean(got.argmax(-1) == ref.argmax(-1)))
    print(f"\nllama.cpp on a foreign I2_S file repacked to {layout}: rel L2 {rel:.4f}, top-1 {top1:.3f}, NLL {nll:.3f}")
    assert rel <= MAX_REL_L2, f"relative L2 {rel:.2%} > {MAX_REL_L2:.0%}"
    assert top1 >= MIN_TOP1, f"top-1 agreement {top1:.3f} < {MIN_TOP1}"

    # guard: the judge tells the bug this feature avoids apart: q/k left in llama.cpp's
    # rope order (read without un-permuting) computes a visibly different function
    wrong = logits_for(_qk_left_permuted(open_source(files[layout])), ids, act_quant=False)[0].numpy()
    rel_wrong = float(np.linalg.norm(got - wrong) / np.linalg.norm(wrong))
    top1_wrong = float(np.mean(got.argmax(-1) == wrong.argmax(-1)))
    print(f"q/k not un-permuted: rel L2 {rel_wrong:.4f}, top-1 {top1_wrong:.3f}")
    assert rel_wrong > 3 * rel and top1_wrong < top1


def _qk_left_permuted(ck):
    """The checkpoint as a reader that forgot to un-permute q/k would see it."""
    from foreign_gguf import llama_permute

    from bitconv.quant import Ternary

    hp = ck.spec.hparams
    for t in ck.tensors:
        heads = {"attn_q": hp.num_heads, "attn_k": hp.num_kv_heads}.get(t.name.split(".")[2] if t.name.startswith("blk.") else "")
        if heads:
            orig = t._load_ternary
            t._load_ternary = lambda o=orig, h=heads: (lambda x: Ternary(llama_permute(x.values, h), x.scales,
                                                                          x.group))(o())
    return ck


@pytest.mark.parametrize("layout", LAYOUTS)
def test_verify_repacked_against_foreign_reports_codes_equal(files, layout):
    from bitconv.verify import verify

    rep = verify(files[layout], files["foreign"], tokens=256, ctx=128)
    lin = [c for c in rep.tensors if c.role == LINEAR]
    assert lin and all(c.mismatched == 0 for c in lin)
    assert rep.passed, rep.failures
