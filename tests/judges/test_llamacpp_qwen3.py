"""llama.cpp is the judge for Qwen3 GGUFs (issue 11, item 3): it loads bitconv's `qwen3`
TQ2_0 file (q/k norms, GQA, head_dim != hidden / heads, untied head) and its logits match
transformers' Qwen3ForCausalLM running the SOURCE (issue 22 item 1), not bitconv's forward.

The source is an exact-ternary Qwen3 (row scales, as the "-unpacked" exports ship). llama.cpp
quantizes activations per 256-block (q8_K) for TQ matmuls, so its logits differ slightly from
the float source, which transformers runs without activation quantization.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

llama_cpp = pytest.importorskip("llama_cpp")

from bitconv.convert import convert  # noqa: E402
from bitconv.readers import DATA_DIR  # noqa: E402
from bitconv.readers.gguf_file import GGUFFile  # noqa: E402
from bitconv.synth import make_checkpoint  # noqa: E402

from ._llamacpp import llama_logits  # noqa: E402
from ._metrics import mean_kl  # noqa: E402
from ._reference import Gates, judge, source_logits  # noqa: E402

pytestmark = pytest.mark.judge

N_TOKENS = 160
# Measured against transformers on the float source (seeds 12, 14, 15 for both models):
# TQ2_0 mean KL 2.2e-4..2.5e-4, top-1 0.963-0.975; the Bonsai-style Q2_0 4.3e-5..4.6e-5,
# top-1 0.975-0.994. Gates keep 3x the worst KL and 3x the worst disagreement.
GATES = {"tq2_0": Gates(max_kl=7.5e-4, min_top1=0.89), "q2_0-bonsai": Gates(max_kl=1.4e-4, min_top1=0.925)}
APART = 100  # reversed input must be this many KL gates away (measured 0.56..0.67 = 750x+)




@pytest.fixture(scope="module")
def qwen3(tmp_path_factory) -> tuple[Path, Path]:
    d = tmp_path_factory.mktemp("qwen3")
    src = make_checkpoint(d / "src", family="qwen3", weights="exact", ternary_group="row", hidden=256,
                          intermediate=512, layers=2, heads=4, kv_heads=2, head_dim=128, vocab=512, tie=False,
                          embed_std=0.05, seed=12)
    out = d / "qwen3-tq2_0.gguf"
    convert(src, out, layout="tq2_0")
    return src, out


def _ids(src: Path) -> list[int]:
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(src / "tokenizer.json"))
    ids = tok.encode((DATA_DIR / "eval.txt").read_text()[:4000]).ids
    assert len(ids) >= N_TOKENS
    return ids[:N_TOKENS]


def test_qwen3_file_has_llama_cpp_names_and_hparams(qwen3):
    _, path = qwen3
    f = GGUFFile(path)
    assert f.get("general.architecture") == "qwen3"
    assert f.get("qwen3.attention.key_length") == 128 and f.get("qwen3.attention.value_length") == 128
    assert f.get("qwen3.attention.head_count") == 4 and f.get("qwen3.attention.head_count_kv") == 2
    assert f.get("qwen3.embedding_length") == 256
    assert f.tensors["blk.0.attn_q_norm.weight"].shape == (128,)
    assert f.tensors["blk.1.attn_k_norm.weight"].shape == (128,)
    assert f.tensors["blk.0.attn_q.weight"].shape == (512, 256)
    assert f.tensors["blk.0.attn_output.weight"].shape == (256, 512)
    assert "output.weight" in f.tensors


def test_llamacpp_runs_qwen3_tq2_0(qwen3):
    src, path = qwen3
    ids = _ids(src)
    got = llama_logits(path, ids)
    ref = source_logits(src, ids)  # transformers' Qwen3ForCausalLM on the float source
    assert got.shape == ref.shape == (N_TOKENS, 512) and np.isfinite(got).all()
    v = judge("llama.cpp qwen3 tq2_0", ref, got, GATES["tq2_0"])
    # guard: the same file on reversed input is far away, so the comparison can tell models apart
    far = mean_kl(ref, llama_logits(path, ids[::-1])[::-1])
    print(f"\n{v}; reversed input KL {far:.3f} > {APART} x {GATES['tq2_0'].max_kl:.0e}")
    assert v.passed, str(v)
    assert far > APART * GATES["tq2_0"].max_kl


def test_llamacpp_runs_bonsai_style_qwen3_q2_0_with_ternary_embeddings(tmp_path):
    """Row-scale linears and a group-128 ternary embedding and head, all written as Q2_0
    (nothing dequantized): llama.cpp's logits match transformers' on the float source."""
    src = make_checkpoint(tmp_path / "src", family="qwen3", weights="exact", ternary_group="row",
                          ternary_embeddings=128, hidden=256, intermediate=512, layers=2, heads=4, kv_heads=2,
                          head_dim=128, vocab=512, tie=False, embed_std=0.05, seed=13)
    path = tmp_path / "bonsai-q2_0.gguf"
    res = convert(src, path, layout="q2_0")
    assert {tp.out_type for tp in res.plan.tensors if tp.role != "norm"} == {"q2_0"}
    ids = _ids(src)
    got = llama_logits(path, ids)
    v = judge("llama.cpp qwen3 q2_0 (ternary embeddings)", source_logits(src, ids), got, GATES["q2_0-bonsai"])
    print(f"\n{v}")
    assert np.isfinite(got).all() and v.passed, str(v)
