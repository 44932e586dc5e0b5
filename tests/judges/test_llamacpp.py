"""llama.cpp is the judge of bitconv's TQ1_0, TQ2_0 and Q2_0 files, against the SOURCE model
run by transformers (issue 22, item 1; tests/judges/_reference.py), never against bitconv's
own forward pass: a defect in what bitconv writes shows up as a distance here.

Every family llama.cpp has a graph for, in every layout it runs:
* `silu`: a 1bitLLM-style SiLU BitNet (GGUF arch `bitnet`, tied head) with latent bf16
  weights; transformers ternarizes them online (its own float32 absmean) with 8-bit acts;
* `llama`: a Llama with a bitnet online config (arch `llama`: q/k rows permuted to
  llama.cpp's rope order, untied head);
* `qwen3`: an exact-ternary float Qwen3 (row scales, q/k norms, head_dim 128 != hidden /
  heads, untied), which transformers runs as the plain float model it is.
The models are seeded random ones with a trained model's logit scale (`SANE_LOGIT_STD`):
mean NLL of real text ln(512) + 1.8..2.3 nats, neither collapsed nor saturated (checked).
llama.cpp quantizes activations per block (q8_K for TQ, q8_0 for Q2_0) where transformers
quantizes per token (BitNet) or not at all (the float Qwen3), hence the small gaps below.

The gates live in `_reference.LLAMACPP_GATES` (measured values there), shared with the
mutation check (test_mutations.py), so loosening one is seen by both.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

llama_cpp = pytest.importorskip("llama_cpp", reason="llama-cpp-python (the judge) is a test extra")
pytest.importorskip("transformers", reason="transformers (the reference) is a test extra")
pytest.importorskip("accelerate", reason="transformers' bitnet integration needs accelerate")

from bitconv.convert import convert  # noqa: E402

from ._llamacpp import llama_logits  # noqa: E402
from ._metrics import mean_kl  # noqa: E402
from ._reference import (JUDGE_DIMS, JUDGE_SOURCES, LLAMACPP_GATES, judge, load_transformers,  # noqa: E402
                         mean_nll, source_kind, source_logits, text_ids)

pytestmark = pytest.mark.judge

N_TOKENS = 160
LAYOUTS = ("tq1_0", "tq2_0", "q2_0")
APART = 100  # another model's source must be this many (largest) KL gates away (measured 2.0 = 400x)
# Greedy generation (item 8): llama.cpp's completion text must be the text transformers
# generates greedily from the source. Measured with the generation model below (logit std 6,
# so greedy steps are not near-ties of a flat random model): 40 of 40 tokens equal for qwen3,
# seeds 0 and 1, two prompts, TQ2_0 and Q2_0 (at logit std 2 the common prefix was 3..40);
# N keeps a 3x margin. The untied Qwen3 writes varied text; a tied SiLU BitNet at this logit
# scale repeats the prompt's last token (its embedding's self-similarity), which would
# compare little.
GEN_STEPS = 12
GEN_LOGIT_STD = 6.0
GEN_PROMPT = "The quick brown fox"


@pytest.fixture(scope="module")
def sources(ckpt_factory) -> dict[str, Path]:
    """The judge sources, built once per session (conftest's ckpt_factory: the mutation check
    and the bitnet.cpp judge share them)."""
    return {fam: ckpt_factory(**{**JUDGE_DIMS, **kw}) for fam, kw in JUDGE_SOURCES.items() if fam in LLAMACPP_GATES}


@pytest.fixture(scope="module")
def gguf(sources, tmp_path_factory):
    d = tmp_path_factory.mktemp("llamacpp-gguf")
    made: dict[tuple[str, str], Path] = {}

    def get(family: str, layout: str) -> Path:
        if (family, layout) not in made:
            made[family, layout] = d / f"{family}-{layout}.gguf"
            convert(sources[family], made[family, layout], layout=layout)
        return made[family, layout]

    return get


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("family", list(LLAMACPP_GATES))
def test_llamacpp_matches_the_source_model(sources, gguf, family, layout):
    src = sources[family]
    ids = text_ids(src, N_TOKENS)
    ref = source_logits(src, ids)
    nll = mean_nll(ref, ids)
    assert abs(nll - math.log(512) - 2.0) < 1.0, f"not a sane-logit model: mean NLL {nll:.2f}"
    got = llama_logits(gguf(family, layout), ids)
    v = judge(f"llama.cpp {family} {layout}", ref, got, LLAMACPP_GATES[family])
    print(f"\n{v} over {N_TOKENS} tokens; source mean NLL {nll:.2f} (ln vocab {math.log(512):.2f})")
    assert v.passed, str(v)


def test_judge_tells_models_apart(sources, gguf, tmp_path):
    """Guard the judge: the same file against another model's source (same shapes, another
    seed) is orders of magnitude beyond every gate."""
    from bitconv.synth import make_checkpoint

    other = make_checkpoint(tmp_path / "other", **{**JUDGE_DIMS, **JUDGE_SOURCES["silu"], "seed": 99})
    ids = text_ids(sources["silu"], N_TOKENS)
    kl = mean_kl(source_logits(other, ids), llama_logits(gguf("silu", "tq2_0"), ids))
    worst = max(g.max_kl for g in LLAMACPP_GATES.values())
    print(f"\nanother model: KL {kl:.3f} > {APART} x {worst:.0e}")
    assert kl > APART * worst


def test_tq1_0_and_tq2_0_agree(sources, gguf):
    """Same ternary weights in two layouts: llama.cpp's distributions coincide (measured KL 0:
    both dequantize to the same values and use the same q8_K activations)."""
    ids = text_ids(sources["silu"], N_TOKENS)
    kl = mean_kl(llama_logits(gguf("silu", "tq2_0"), ids), llama_logits(gguf("silu", "tq1_0"), ids))
    print(f"\ntq1_0 vs tq2_0: KL {kl:.2e}")
    assert kl < 1e-6


@pytest.mark.parametrize("layout", ["tq2_0", "tq1_0"])
def test_llamacpp_tokenizer_matches(sources, gguf, layout):
    from tokenizers import Tokenizer

    path = gguf("silu", layout)
    ref = Tokenizer.from_file(str(sources["silu"] / "tokenizer.json"))
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


@pytest.fixture(scope="module")
def gen_source(tmp_path_factory) -> tuple[Path, list[int], list[int]]:
    """(source, prompt ids, the tokens transformers generates greedily from the source)."""
    import torch
    from tokenizers import Tokenizer

    from bitconv.synth import make_checkpoint

    src = make_checkpoint(tmp_path_factory.mktemp("gen-src") / "qwen3",
                          **{**JUDGE_DIMS, **JUDGE_SOURCES["qwen3"], "logit_std": GEN_LOGIT_STD})
    pids = Tokenizer.from_file(str(src / "tokenizer.json")).encode(GEN_PROMPT).ids
    model = load_transformers(src, expect=source_kind(src))
    with torch.no_grad():
        new = model.generate(torch.tensor([pids]), max_new_tokens=GEN_STEPS, do_sample=False,
                             eos_token_id=None, pad_token_id=0)[0, len(pids):].tolist()
    if 1 in new:  # llama.cpp stops at EOS (id 1); so would a user's transformers call
        new = new[: new.index(1)]
    assert len(new) >= GEN_STEPS // 2, "the source stopped early: the check would compare too little"
    return src, pids, new


@pytest.mark.parametrize("layout", LAYOUTS)
def test_greedy_text_is_the_source_models(gen_source, layout, tmp_path):
    """What a user sees: llama.cpp's greedy completion is the text transformers generates
    greedily from the SOURCE model, token for token, for the first GEN_STEPS tokens."""
    src, pids, new = gen_source
    path = tmp_path / f"qwen3-{layout}.gguf"
    convert(src, path, layout=layout)
    llm = llama_cpp.Llama(model_path=str(path), n_ctx=128, verbose=False, n_threads=2, seed=0)
    try:
        out = llm.create_completion(GEN_PROMPT, max_tokens=GEN_STEPS, temperature=0.0)
        # transformers' tokens as text the way a user sees it (a random model emits byte tokens
        # that are not whole UTF-8 characters; llama.cpp's completion drops those bytes)
        want = llm.detokenize(new).decode("utf-8", errors="ignore")
    finally:
        llm.close()
    got = out["choices"][0]["text"]
    print(f"\nqwen3 {layout}: llama.cpp {got!r}, transformers {want!r}")
    assert out["usage"]["prompt_tokens"] == len(pids)
    assert len(want) >= GEN_STEPS // 2
    assert got == want
    assert out["usage"]["completion_tokens"] == len(new)


def test_sources_are_what_the_reference_runs(sources):
    """The reference runs what each source is: transformers' own ternary layers for latent
    BitNet sources, plain float linears for the exact-ternary Qwen3."""
    assert {f: source_kind(p) for f, p in sources.items()} == {"silu": "online", "llama": "online",
                                                               "qwen3": "float"}
    ids = text_ids(sources["qwen3"], 8)
    assert np.isfinite(source_logits(sources["qwen3"], ids)).all()
