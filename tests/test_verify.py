"""`bitconv.verify`: a faithful artifact passes, a damaged one fails the gate, bad input
raises typed errors. Tiny seeded models, a few hundred tokens each."""

from __future__ import annotations

import os

os.environ["TORCHDYNAMO_DISABLE"] = "1"

import io  # noqa: E402
import json  # noqa: E402
import shutil  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402

from bitconv.convert import convert  # noqa: E402
from bitconv.errors import InputError, SourceNotFoundError, UsageError  # noqa: E402
from bitconv.pack import get_layout  # noqa: E402
from bitconv.quant import ternarize  # noqa: E402
from bitconv.readers import open_source  # noqa: E402
from bitconv.readers.gguf_file import GGUFFile  # noqa: E402
from bitconv.synth import make_checkpoint  # noqa: E402
from bitconv.verify import load_tokenizer, make_windows, render_report, verify  # noqa: E402
from bitconv.verify.forward import TTernary, logits_for  # noqa: E402
from bitconv.verify.weights import tq2_0_decode as _tq2_0_decode  # noqa: E402
from bitconv.verify.metrics import compare_logits, perplexity  # noqa: E402

DIMS = dict(hidden=256, intermediate=512, layers=2, heads=4, kv_heads=2, vocab=512)
# Random models have near-uniform next-token distributions with tiny top-1 margins, and
# 8-bit activation rounding turns the artifact's fp16 scales (rel. error ~3e-4) into a few
# flipped activations per layer: measured top-1 agreement 0.968 (silu) and 0.974 (llama),
# mean KL 8.5e-5 with activation quantization, 1.0 and ~1e-7 without. The gate below
# allows 3x the measured disagreement; the default 0.99 is for trained models.
FAST = dict(tokens=384, ctx=96, min_top1=0.9)


def _tame(folder: Path, scale: float = 0.05) -> Path:
    """synth embeddings are N(0, 1): a tied head then gives logits of ±100 and absurd
    perplexities. Scale the embedding (and an untied head) so the softmax is not one-hot."""
    path = folder / "model.safetensors"
    w = load_file(str(path))
    for k in ("model.embed_tokens.weight", "lm_head.weight"):
        if k in w:
            w[k] = (w[k].float() * scale).to(w[k].dtype)
    save_file(w, str(path), metadata={"format": "pt"})
    return folder


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("verify")
    silu = _tame(make_checkpoint(root / "silu", family="silu", seed=40, **DIMS))
    llama = _tame(make_checkpoint(root / "llama", family="llama", seed=41, tie=False, **DIMS))
    tq = root / "silu-tq2_0.gguf"
    convert(silu, tq, layout="tq2_0")
    tq_llama = root / "llama-tq2_0.gguf"
    convert(llama, tq_llama, layout="tq2_0")
    return {"root": root, "silu": silu, "llama": llama, "tq": tq, "tq_llama": tq_llama}


def test_tq2_0_artifact_passes(models):
    rep = verify(models["tq"], models["silu"], **FAST)
    assert rep.passed, rep.failures
    assert rep.tokens == 4 * 95 and rep.sequences == 4 and rep.ctx == 96
    assert abs(rep.ppl_change) < 2e-3  # measured 5.2e-4
    assert rep.top1_agreement >= 0.9  # measured 0.968
    assert 0 <= rep.mean_kl < 1e-3  # measured 8.5e-5
    lin = [c for c in rep.tensors if c.role == "linear"]
    assert len(lin) == 14 and all(c.mismatched == 0 for c in lin)
    assert all(c.rel_error < 1.5e-3 for c in lin)  # fp16 block scales only: measured max 3.7e-4
    assert rep.tokens_per_s > 0 and rep.artifact_layouts == ["tq2_0"]
    d = json.loads(json.dumps(rep.to_dict(), allow_nan=False))
    assert d["passed"] is True and d["tensors"][0]["name"]


def test_llama_artifact_passes_with_rope_permutation(models):
    """GGUF `llama` stores q/k rows permuted; the reader (and the device decoder) undo it."""
    rep = verify(models["tq_llama"], models["llama"], **FAST)
    assert rep.passed, rep.failures
    assert all(c.mismatched == 0 for c in rep.tensors if c.role == "linear")


def _corrupt(src: Path, dst: Path, tensor: str, n: int = 4) -> None:
    shutil.copyfile(src, dst)
    info = GGUFFile(dst).tensors[tensor]
    with open(dst, "r+b") as f:
        for i in range(n):  # one code byte in each of the first n 66-byte TQ2_0 blocks
            off = info.offset + i * 66 + 7
            f.seek(off)
            b = f.read(1)[0]
            f.seek(off)
            # -1 <-> +1 in every 2-bit field (codes 0 <-> 2, zeros kept): still valid TQ2_0 codes,
            # wrong values (a code 3 is refused by the reader: test_code_3_is_refused_by_verify)
            f.write(bytes([sum((((b >> s) & 3) ^ (0 if (b >> s) & 3 == 1 else 2)) << s for s in (0, 2, 4, 6))]))


def test_flipped_bytes_fail_the_gate(models, tmp_path):
    bad = tmp_path / "bad.gguf"
    _corrupt(models["tq"], bad, "blk.1.ffn_up.weight")
    rep = verify(bad, models["silu"], **FAST)
    assert not rep.passed
    assert any("blk.1.ffn_up.weight" in f and "differ" in f for f in rep.failures)
    bad_t = [c for c in rep.tensors if c.problem]
    assert [c.name for c in bad_t] == ["blk.1.ffn_up.weight"]
    assert 0 < bad_t[0].mismatched <= 16


def test_code_3_is_refused_by_verify(models, tmp_path):
    """verify decodes TQ2_0 with the format's one decoder, on its fast path too: a code 3
    (+2·d, not ternary) is bad input naming the tensor and block, as the reader says it."""
    from bitconv.errors import BadWeightsError

    bad = tmp_path / "code3.gguf"
    shutil.copyfile(models["tq"], bad)
    info = GGUFFile(bad).tensors["blk.1.ffn_up.weight"]
    with open(bad, "r+b") as f:
        f.seek(info.offset + 66 + 7)  # a code byte of block 1
        f.write(b"\xff")
    for fast in (True, False):
        with pytest.raises(BadWeightsError, match=r"blk\.1\.ffn_up\.weight: TQ2_0 block 1 .* code 3"):
            verify(bad, models["silu"], fast=fast, **FAST)


def test_reference_fp_reports_unquantized_model(models):
    rep = verify(models["tq"], models["silu"], reference="fp", **FAST)
    assert rep.fp_perplexity != rep.source_perplexity
    assert rep.passed, rep.failures
    assert rep.fp_perplexity is not None and np.isfinite(rep.fp_perplexity)
    lin = [c for c in rep.tensors if c.role == "linear"]
    # absmean ternarization of a Gaussian loses about half the weight's norm
    assert all(0.3 < c.rel_error_fp < 0.7 for c in lin)


def test_no_act_quant_and_render(models):
    from rich.console import Console

    rep = verify(models["tq"], models["silu"], act_quant=False, tokens=200, ctx=64)
    assert rep.passed, rep.failures
    assert rep.top1_agreement == 1.0 and rep.mean_kl < 1e-5
    buf = io.StringIO()
    render_report(rep, Console(file=buf, width=140))
    out = buf.getvalue()
    assert "top-1 agreement" in out and "PASSED" in out and "gate" in out


def test_hidden_act_mismatch_fails(models, tmp_path):
    """BN#588: a bitnet graph run with the wrong FFN activation. An artifact that declares
    relu2 for a SiLU source must fail, not pass quietly."""
    import gguf

    f = GGUFFile(models["tq"])
    w = gguf.GGUFWriter(str(tmp_path / "act.gguf"), arch=f.get("general.architecture"))
    for key, (value, vtype, sub) in f.kv.items():
        if key.startswith("GGUF.") or key == "general.architecture":
            continue
        if key in ("bitconv.hidden_act", "bitnet.hidden_activation"):
            value = "relu2"
        if vtype == gguf.GGUFValueType.ARRAY:
            w.add_key_value(key, value, vtype, sub_type=sub)
        else:
            w.add_key_value(key, value, vtype)
    for name, info in f.tensors.items():  # as bitconv's writer declares raw types
        w.add_tensor_info(name, list(info.shape), np.dtype(np.int8), info.nbytes, raw_dtype=info.ggml_type)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_ti_data_to_file()
    for name in f.tensors:
        w.write_tensor_data(np.asarray(f.raw(name)).copy())
    w.close()
    rep = verify(tmp_path / "act.gguf", models["silu"], tokens=200, ctx=64, min_top1=0.0, max_ppl_increase=1e9)
    assert not rep.passed
    assert any("hidden_act" in f for f in rep.failures)


def test_bad_input(models, tmp_path):
    with pytest.raises(SourceNotFoundError, match="no such artifact .a .gguf file, or a safetensors, MLX or "
                                                  "compressed-tensors folder"):
        verify(tmp_path / "missing.gguf", models["silu"])
    with pytest.raises(UsageError):
        verify(models["tq"], models["silu"], reference="fp32")
    with pytest.raises(UsageError):
        verify(models["tq"], models["silu"], tokens=1)
    with pytest.raises(SourceNotFoundError):
        verify(models["tq"], models["silu"], text=tmp_path / "nope.txt")
    other = make_checkpoint(tmp_path / "other", family="silu", seed=1, **{**DIMS, "hidden": 512})
    with pytest.raises(InputError, match="hidden_size"):
        verify(models["tq"], other, **FAST)
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    with pytest.raises(InputError):
        verify(models["tq"], models["silu"], text=empty)
    no_tok = tmp_path / "notok"
    shutil.copytree(models["silu"], no_tok)
    (no_tok / "tokenizer.json").unlink()
    with pytest.raises(InputError, match="tokenizer"):
        load_tokenizer(open_source(no_tok))


def test_gguf_tokenizer_matches_tokenizer_json(models):
    text = "The quick brown fox jumps over the lazy dog. A ternary network stores each weight."
    tj, _, _ = load_tokenizer(open_source(models["silu"]))
    tg, desc, _ = load_tokenizer(open_source(models["tq"]))
    assert "GGUF" in desc
    assert tg.encode(text).ids == tj.encode(text, add_special_tokens=False).ids


def test_windows():
    assert make_windows(list(range(10)), 4, None) == [[0, 1, 2, 3], [4, 5, 6, 7]]
    assert make_windows(list(range(10)), 4, 99) == [[99, 0, 1, 2], [99, 3, 4, 5], [99, 6, 7, 8]]
    assert make_windows([1, 2, 3], 8, None) == [[1, 2, 3]]


@pytest.mark.parametrize("group", ["tensor", "row", 512])
def test_torch_tq2_0_decoder_matches_numpy(group):
    rng = np.random.default_rng(0)
    w = rng.standard_normal((64, 1024)).astype(np.float32)
    w[:, :256] = 0  # all-zero blocks store d = 0
    tern = ternarize(w, group)
    lay = get_layout("tq2_0")
    data = lay.pack(tern)
    ref = lay.unpack(data, tern.shape, group=group)
    got = _tq2_0_decode(data, tern.shape, group)
    assert np.array_equal(got.values.numpy(), ref.values)
    assert got.group == ref.group
    assert np.array_equal(got.scales.numpy().reshape(np.shape(ref.scales)), ref.scales)
    assert np.array_equal(got.dequantize().numpy(), ref.dequantize())


def test_torch_unpermute_matches_reader():
    from bitconv.archs.llama import _permute

    a = np.arange(8 * 16 * 3).reshape(8 * 16, 3)
    want = _permute(a, 8, inverse=True)
    from bitconv.archs.llama import from_llama_rows  # the reader's own un-permute, on torch tensors too

    assert np.array_equal(from_llama_rows(torch.from_numpy(a), 8).numpy(), want)


def test_artifact_logits_close_to_source(models):
    """logits_for on artifact and source: the same function up to fp16 scales/embeddings."""
    tokens = torch.randint(0, DIMS["vocab"], (2, 40), generator=torch.Generator().manual_seed(0))
    a = logits_for(open_source(models["tq"]), tokens)
    s = logits_for(open_source(models["silu"]), tokens)
    m = compare_logits(s.reshape(-1, s.shape[-1]), a.reshape(-1, a.shape[-1]))
    assert m["top1_agreement"] >= 0.9 and m["mean_kl"] < 1e-3
    targets = tokens[:, 1:].reshape(-1)
    p = perplexity(s[:, :-1].reshape(-1, s.shape[-1]), targets)
    assert np.isfinite(p) and p > 1


def test_ternary_source_is_not_requantized(models, tmp_path):
    """A ternary GGUF as SOURCE keeps its own values and scales: verifying the TQ2_0 file
    against itself is exact."""
    rep = verify(models["tq"], models["tq"], tokens=200, ctx=64)
    assert rep.passed and rep.mean_kl == 0.0 and rep.ppl_change == 0.0
    assert all(c.rel_error == 0.0 for c in rep.tensors)


def test_ttternary_roundtrip():
    tern = ternarize(np.random.default_rng(1).standard_normal((8, 32)).astype(np.float32), "row")
    t = TTernary.from_numpy(tern)
    assert np.array_equal(t.dequantize().numpy(), tern.dequantize())
    assert t.row_scales().shape == (8,)


def test_token_logprobs_match_full_logits(models):
    from bitconv.verify.forward import token_logprobs_and_stats

    tokens = torch.randint(0, DIMS["vocab"], (3, 33), generator=torch.Generator().manual_seed(2))
    ck = open_source(models["tq"])
    full = torch.log_softmax(logits_for(ck, tokens), -1)[:, :-1].gather(2, tokens[:, 1:, None]).squeeze(2)
    sc = token_logprobs_and_stats(ck, tokens, score_from=4)
    assert torch.allclose(sc.logprobs, full, atol=1e-5)
    assert sc.tokens == 3 * 28
    assert abs(sc.nll + float(full[:, 4:].double().mean())) < 1e-5


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("which", ["tq", "tq_llama", "silu"])
def test_cuda_path_matches_cpu(models, which):
    """CUDA: TQ2_0 decoded on the GPU, int8 codes through torch._int_mm, fused projections,
    flash attention. float32 tracks the CPU logits up to activation-rounding flips; bf16
    stays close in distribution."""
    tokens = torch.randint(0, DIMS["vocab"], (4, 64), generator=torch.Generator().manual_seed(3))
    ck = open_source(models[which])
    cpu = logits_for(ck, tokens).reshape(-1, DIMS["vocab"])
    for dtype, kl in ((torch.float32, 1e-3), (torch.bfloat16, 2e-2)):
        gpu = logits_for(ck, tokens, device="cuda", dtype=dtype).reshape(-1, DIMS["vocab"])
        m = compare_logits(cpu, gpu)
        assert m["mean_kl"] < kl and m["top1_agreement"] >= 0.9, (dtype, m)
    rep = verify(models["tq"], models["silu"], device="cuda", **FAST)
    assert rep.passed, rep.failures


@pytest.mark.parametrize("which", ["silu", "llama"])
def test_fast_cpu_default_gives_the_float_paths_metrics(models, which):
    """Issue 14 item 3: verify's CPU default (exact int8 GEMMs, fused float32 row kernels,
    bfloat16 head with the top logits in float32) reports what it computed and gives the float
    path's perplexities within 0.1%. Measured: llama 7.5e-6 / 1.5e-5 (artifact / source),
    silu 4.2e-5 / 4.1e-4: this random model's perplexity (~760) is above its vocabulary, so
    an activation flipped by the int8 path's other rounding order moves it; the torch int
    path measures the same (5.7e-4). The demo model (tests/test_verify_fast.py) is the
    margin test: 4.6e-5."""
    art = models["tq"] if which == "silu" else models["tq_llama"]
    fast = verify(art, models[which], **FAST)
    slow = verify(art, models[which], fast=False, **FAST)
    assert fast.compute == "int8 linears (exact), float32 activations, bfloat16 head with each row's top 8 " \
        "logits in float32"
    assert slow.compute.startswith("float32 linears (transformers' operation order)")
    for a, b in ((fast.artifact_perplexity, slow.artifact_perplexity),
                 (fast.source_perplexity, slow.source_perplexity)):
        print(f"\n{which}: fast {a:.6f} float {b:.6f} rel {abs(a / b - 1):.1e}")
        assert abs(a / b - 1) < 1e-3
    assert abs(fast.ppl_change - slow.ppl_change) < 1e-3
    assert fast.passed == slow.passed
    assert json.loads(json.dumps(fast.to_dict()))["compute"] == fast.compute
