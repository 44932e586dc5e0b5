"""verify's CPU default path (issue 14 item 3): the fused row kernels compute what the torch
formulas they replace compute (bit for bit where the operation order is the same), at any
thread count, and the default path gives the float path's perplexity on the demo model.

What the default computes: ternary linears as exact int8 GEMMs (`torch._int_mm`, int32
sums), float32 activations (RMSNorm + 8-bit quantization, rescales, residual adds, relu²
gating and rope as fused numba row kernels), float32 attention, and the output projection
as one bfloat16 GEMM with each row's 8 largest logits recomputed in float32.
"""

from __future__ import annotations

import os

os.environ["TORCHDYNAMO_DISABLE"] = "1"

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from bitconv.convert import convert  # noqa: E402
from bitconv.readers import open_source  # noqa: E402
from bitconv.readers.gguf_file import GGUFFile  # noqa: E402
from bitconv.verify import cpu_kernels as ck  # noqa: E402
from bitconv.verify import verify  # noqa: E402
from bitconv.verify.backends.int8_cpu import Int8CpuBackend  # noqa: E402
from bitconv.verify.forward import Runner  # noqa: E402
from bitconv.verify.ops import (  # noqa: E402
    _k_quant,
    _k_rescale,
    _k_rescale_add,
    _k_rescale_glu,
    _k_rms_quant,
    _k_rope,
    int_matmul,
)
from bitconv.verify.weights import tq2_0_decode as _tq2_0_decode  # noqa: E402


@pytest.fixture
def threads():
    """Run a block at a given torch thread count, then restore it."""
    before = torch.get_num_threads()
    yield torch.set_num_threads
    torch.set_num_threads(before)


def _x(n: int, k: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, k, generator=g) * torch.rand(n, 1, generator=g) * 4
    x[0] = 0  # an all-zero row takes the 1e-5 floor
    return x


@pytest.mark.parametrize("k", [64, 1000, 2816])
def test_quant_kernel_is_torchs_quantizer_bit_for_bit(k, threads):
    x = _x(67, k, k)
    ref_q, ref_s = _k_quant(x)
    for n in (1, 2, 3):
        threads(n)
        q, s = ck.rms_quant(x, None, 1e-5)
        assert torch.equal(q, ref_q) and torch.equal(s, ref_s)


@pytest.mark.parametrize("k", [64, 1000, 2816])
def test_rms_quant_kernel_matches_torch_and_is_thread_independent(k, threads):
    """RMSNorm sums squares in a fixed 16-lane order (torch uses its own), so a normalized
    value can differ in its last bit and land on the other side of a rounding boundary:
    measured 0-2 of 10^6 codes, scales within 1 ulp. Every thread count gives the same bytes."""
    x, w = _x(300, k, k + 1), torch.rand(k, generator=torch.Generator().manual_seed(k)) + 0.5
    ref_q, ref_s = _k_rms_quant(x, w, 1e-6)
    outs = []
    for n in (1, 2, 3):
        threads(n)
        outs.append(ck.rms_quant(x, w, 1e-6))
    q, s = outs[0]
    assert all(torch.equal(q, o[0]) and torch.equal(s, o[1]) for o in outs[1:])
    diff = (q.to(torch.int16) - ref_q.to(torch.int16)).abs()
    assert int(diff.max()) <= 1 and int((diff > 0).sum()) <= 3 * max(1, x.numel() // 10**6)
    assert float(((s - ref_s).abs() / ref_s).max()) < 4e-7


def test_rescale_kernels_are_torchs_bit_for_bit(threads):
    g = torch.Generator().manual_seed(5)
    n, m = 45, 96
    acc = torch.randint(-40000, 40000, (n, 2 * m), generator=g, dtype=torch.int32)
    rows = torch.rand(2 * m, generator=g) + 0.01
    scale = torch.rand(n, 1, generator=g) * 50 + 0.5
    x = torch.randn(n, 2 * m, generator=g)
    for t in (1, 2):
        threads(t)
        assert torch.equal(ck.rescale(acc, rows, scale), _k_rescale(acc, rows, scale, torch.float32))
        assert torch.equal(ck.rescale_add(acc, rows, scale, x), _k_rescale_add(acc, rows, scale, x))
        # relu² gating (fused with the sub-norm's quantization) against torch's, then its quantizer
        assert all(torch.equal(a, b) for a, b in zip(
            ck.relu2_rms_quant(acc, rows, scale, m, None, 1e-6),
            _k_quant(_k_rescale_glu(acc, rows, scale, m, True, torch.float32))))
        y = x.clone()
        ck.rescale_add(acc, rows, scale, y, out=y)  # in place, as the layer's second residual add runs
        assert torch.equal(y, _k_rescale_add(acc, rows, scale, x))


def test_fused_rescale_then_quantize_kernels_are_the_two_steps_bit_for_bit(threads):
    """relu²-gating + the sub-norm's quantization, and the residual add + the FFN norm's
    quantization, each in one pass, give the bytes of the two kernels run one after the other."""
    g = torch.Generator().manual_seed(12)
    n, m = 45, 200
    acc = torch.randint(-40000, 40000, (n, 2 * m), generator=g, dtype=torch.int32)
    rows = torch.rand(2 * m, generator=g) + 0.01
    scale = torch.rand(n, 1, generator=g) * 50 + 0.5
    w = torch.rand(m, generator=g) + 0.5
    x = torch.randn(n, m, generator=g)
    acc_m = acc[:, :m].contiguous()
    for t in (1, 2, 3):
        threads(t)
        for norm in (w, None):
            q, s = ck.relu2_rms_quant(acc, rows, scale, m, norm, 1e-6)
            rq, rs = ck.rms_quant(_k_rescale_glu(acc, rows, scale, m, True, torch.float32), norm, 1e-6)
            assert torch.equal(q, rq) and torch.equal(s, rs)
        y, q, s = ck.rescale_add_rms_quant(acc_m, rows[:m].contiguous(), scale, x, w, 1e-6)
        ry = ck.rescale_add(acc_m, rows[:m].contiguous(), scale, x)
        rq, rs = ck.rms_quant(ry, w, 1e-6)
        assert torch.equal(y, ry) and torch.equal(q, rq) and torch.equal(s, rs)


def test_heads_quant_kernel_reads_the_attention_layout_bit_for_bit(threads):
    a = torch.randn(3, 4, 21, 32, generator=torch.Generator().manual_seed(15)) * 3
    w = torch.rand(4 * 32, generator=torch.Generator().manual_seed(16)) + 0.5
    rows = a.transpose(1, 2).reshape(3 * 21, 4 * 32).contiguous()
    for n in (1, 2):
        threads(n)
        for norm in (w, None):
            q, s = ck.heads_rms_quant(a, norm, 1e-6)
            rq, rs = ck.rms_quant(rows, norm, 1e-6)
            assert torch.equal(q, rq) and torch.equal(s, rs)


def test_qkv_rope_kernel_is_torchs_rescale_then_rope_bit_for_bit(threads):
    b, t, heads, kv, d = 2, 19, 4, 2, 32
    g = torch.Generator().manual_seed(13)
    acc = torch.randint(-30000, 30000, (b * t, (heads + 2 * kv) * d), generator=g, dtype=torch.int32)
    rows = torch.rand(acc.shape[1], generator=g) + 0.01
    scale = torch.rand(b * t, 1, generator=g) * 50 + 0.5
    pos = torch.arange(t, dtype=torch.float32)[:, None] * (1.0 / 10000 ** (torch.arange(0, d, 2) / d))[None]
    emb = torch.cat((pos, pos), -1)
    cos, sin = emb.cos(), emb.sin()
    y = _k_rescale(acc, rows, scale, torch.float32)
    for n in (1, 2):
        threads(n)
        q, k, v = ck.qkv_rope(acc, rows, scale, heads, kv, d, b, t, cos, sin)
        assert torch.equal(q, _k_rope(y[:, :heads * d].view(b, t, heads, d), cos, sin))
        assert torch.equal(k, _k_rope(y[:, heads * d:(heads + kv) * d].view(b, t, kv, d), cos, sin))
        assert torch.equal(v, y[:, (heads + kv) * d:].view(b, t, kv, d).transpose(1, 2))


def test_int_gemm_is_exact():
    """x_q @ tᵀ in int32 equals the integer sum computed in float64."""
    g = torch.Generator().manual_seed(7)
    xq = torch.randint(-128, 128, (40, 512), generator=g, dtype=torch.int8)
    t = torch.randint(-1, 2, (24, 512), generator=g, dtype=torch.int8)
    acc = int_matmul(xq, t)
    assert torch.equal(acc.to(torch.float64), xq.double() @ t.double().t())


@pytest.fixture(scope="module")
def demo_tq(tmp_path_factory):
    art = tmp_path_factory.mktemp("fast") / "demo-tq2_0.gguf"
    convert("builtin:tiny-bitnet", art, layout="tq2_0", allow_engine_mismatch=True)
    return art


def test_tq2_0_kernel_decodes_what_the_layout_unpacks(demo_tq, threads):
    ck_ = open_source(demo_tq)
    g = GGUFFile(demo_tq)
    for st in ck_.tensors:
        if st.dtype != "tq2_0":
            continue
        ref = st.load_ternary()
        for n in (1, 2):
            threads(n)
            got = _tq2_0_decode(g.raw(st.name), st.shape, st.group or "tensor", "cpu")
            assert np.array_equal(got.values.numpy(), ref.values) and got.values.dtype == torch.int8
            assert np.array_equal(got.scales.numpy(), np.asarray(ref.scales, np.float32))


def test_default_runner_runs_the_fused_layer(demo_tq, monkeypatch):
    """The CPU int path in float32 runs the fused backend (`Int8CpuBackend`, not the torch one), and
    gives the torch int path's log-probs up to activation-rounding flips."""
    from bitconv.verify.forward import token_logprobs_and_stats

    tokens = torch.randint(0, 1000, (2, 40), generator=torch.Generator().manual_seed(8))
    r = Runner(open_source(demo_tq), int_path=True, head_math="bf16")
    assert r.fused_cpu and r.head_math == "bf16"
    calls = []
    orig = Int8CpuBackend.attn_input
    monkeypatch.setattr(Int8CpuBackend, "attn_input",
                        lambda self, x, *a: calls.append(x.shape[0]) or orig(self, x, *a))
    fused = token_logprobs_and_stats(r, tokens)
    assert sum(calls) == r.hp.num_layers * tokens.shape[0]  # every sequence through every layer (per core)
    monkeypatch.setenv("BITCONV_VERIFY_FUSED", "0")
    plain = token_logprobs_and_stats(Runner(open_source(demo_tq), int_path=True), tokens)
    assert float((fused.logprobs - plain.logprobs).abs().max()) < 0.05  # measured 3e-3
    assert abs(fused.nll - plain.nll) < 1e-3 * plain.nll


# measured on the whole eval text (6,375 tokens, ctx 256): |ppl_fast / ppl_float - 1| =
# 6.1e-5 (tl2 source and artifact), 2.2e-5 (tq2_0 artifact); the bound is 0.1%, 16x that
DEMO_BOUND = 1e-3


@pytest.mark.parametrize("layout", ["tl2", "tq2_0"])
def test_default_gives_the_float_paths_perplexity_on_the_demo_model(tmp_path, demo_tq, layout):
    if layout == "tq2_0":
        art = demo_tq
    else:
        art = tmp_path / "demo-tl2.gguf"
        convert("builtin:tiny-bitnet", art, layout="tl2")
    fast = verify(art, "builtin:tiny-bitnet", tokens=100_000, ctx=256)
    slow = verify(art, "builtin:tiny-bitnet", tokens=100_000, ctx=256, fast=False)
    assert fast.compute.startswith("int8 linears (exact), float32 activations")
    assert slow.compute.startswith("float32 linears (transformers' operation order)")
    assert fast.tokens == slow.tokens > 6000
    for side in ("artifact_perplexity", "source_perplexity"):
        a, b = getattr(fast, side), getattr(slow, side)
        print(f"\n{layout} {side}: fast {a:.6f} float {b:.6f} rel {abs(a / b - 1):.1e} < {DEMO_BOUND:.0e}")
        assert abs(a / b - 1) < DEMO_BOUND
    assert fast.passed and slow.passed


@pytest.mark.parametrize("packed", [True, False])
def test_bf16_head_recomputes_the_top_logits_in_float32(demo_tq, packed):
    """The head's 8 largest logits per row are float32 dot products (as F.linear in float32
    up to summation order), every other one is within bfloat16 rounding, and the argmax is
    the float32 argmax."""
    from bitconv.verify.forward import HEAD_EXACT

    r = Runner(open_source(demo_tq), int_path=True, head_math="bf16")
    if not packed:
        r._head_packed = False  # the plain bfloat16 GEMM, where oneDNN packing is unavailable
        r._head_lo = r.head().to(torch.bfloat16)
    w = r.head()
    h = torch.randn(70, w.shape[1], generator=torch.Generator().manual_seed(9)) * 3
    ref = torch.nn.functional.linear(h, w)
    (_, got), = list(r.logit_chunks(h))
    top = ref.topk(HEAD_EXACT // 2, dim=-1).indices  # well inside the bf16 top 8
    assert torch.allclose(got.gather(1, top), ref.gather(1, top), rtol=1e-5, atol=1e-5)
    scale = ref.abs().amax(dim=-1, keepdim=True)
    assert float(((got - ref).abs() / scale).max()) < 2 ** -7  # bf16 inputs and output
    assert torch.equal(got.argmax(-1), ref.argmax(-1))


def test_fused_path_gives_the_same_bytes_at_any_thread_count(demo_tq, threads):
    """Layers run one group of sequences per core (`cpu_kernels.per_core`) and the head's rows
    are split over the threads: hidden states and log-probs are the same bytes whatever the
    thread count, and the caller's thread count is restored."""
    from bitconv.verify.forward import token_logprobs_and_stats

    tokens = torch.randint(0, 1000, (5, 33), generator=torch.Generator().manual_seed(10))
    r = Runner(open_source(demo_tq), int_path=True, head_math="bf16")
    outs = []
    for n in (1, 2, 3):
        threads(n)
        outs.append((r.hidden(tokens), token_logprobs_and_stats(r, tokens)))
        assert torch.get_num_threads() == n
    for h, s in outs[1:]:
        assert torch.equal(h, outs[0][0])
        assert torch.equal(s.logprobs, outs[0][1].logprobs) and torch.equal(s.argmax, outs[0][1].argmax)


def _head_reference(y, w, h, targets, exact):
    """What the bf16 head's statistics mean, in float64 numpy: y's bfloat16 logits with each
    row's `exact` largest (ties: the lower index) and the target's replaced by w[j]·h[i]."""
    logits = y.to(torch.float64).numpy().copy()
    w64, h64 = w.double().numpy(), h.double().numpy()
    for i in range(logits.shape[0]):
        order = np.lexsort((np.arange(logits.shape[1]), -y[i].to(torch.float32).numpy()))
        for j in list(order[:exact]) + [int(targets[i])]:
            logits[i, j] = w64[j] @ h64[i]
    m = logits.max(-1, keepdims=True)
    lse = m[:, 0] + np.log(np.exp(logits - m).sum(-1))
    return logits, logits[np.arange(len(targets)), targets.numpy()] - lse


@pytest.mark.parametrize("vocab", [1000, 4099, 32000])
def test_head_kernels_compute_the_recomputed_logits_statistics(vocab, threads):
    """`head_kernels`: the fixed logits are the bf16 GEMM's with the top 8 in float32; the
    log-probs are those of the fixed logits with the target's logit in float32 too (float64
    reference: within 2e-6 plus float32 ulps of the value, the float32 sums' rounding), and the argmax is the reference's."""
    from bitconv.verify import head_kernels as hk

    g = torch.Generator().manual_seed(vocab)
    w = torch.randn(vocab, 96, generator=g) * 0.3
    h = torch.randn(37, 96, generator=g)
    h[3] *= 40  # a peaked row: one logit carries nearly all the mass
    y = torch.nn.functional.linear(h.bfloat16(), w.bfloat16())
    y[5, 7] = y[5, 9] = y[5].max() + 1  # a tie at the top: the first index wins
    targets = torch.randint(0, vocab, (37,), generator=g)
    targets[4] = int(y[4].float().argmax())  # a target inside the recomputed top
    ref_logits, ref_lp = _head_reference(y, w, h, targets, hk.EXACT)
    for n in (1, 2):
        threads(n)
        fixed = hk.fix_logits(y, w, h)
        lp, am = hk.logprobs(y, w, h, targets)
        top = torch.from_numpy(np.argsort(-ref_logits, axis=-1, kind="stable")[:, :4])
        assert torch.allclose(fixed.gather(1, top).double(), torch.from_numpy(ref_logits).gather(1, top), atol=2e-5)
        untouched = ~torch.isclose(fixed.double(), torch.from_numpy(ref_logits), atol=2e-5)
        assert torch.equal(fixed[untouched], y.float()[untouched])  # the rest are the bf16 values
        assert bool((np.abs(lp.double().numpy() - ref_lp) < 2e-6 + 4e-7 * np.abs(ref_lp)).all())  # + float32 ulps
        ref_am = torch.from_numpy(ref_logits).argmax(-1)
        same = am == ref_am
        assert bool(same.all()) or bool(((ref_logits.max(-1) - ref_logits[np.arange(37), am.numpy()]) < 1e-5).all())
    assert int(am[3]) == int(torch.from_numpy(ref_logits[3]).argmax())


def test_head_logprobs_match_the_logits_path_on_the_runner(demo_tq):
    """`Runner.logprob_chunks` (fused, no float32 logits made) and `logit_chunks` + torch's
    log-softmax agree: same argmax; log-probs differ only where the target logit is one the
    logits path leaves in bfloat16 (the fused path recomputes it), by its bf16 rounding."""
    from bitconv.verify.ops import _k_logprob

    r = Runner(open_source(demo_tq), int_path=True, head_math="bf16")
    g = torch.Generator().manual_seed(11)
    hid = torch.randn(50, r.hp.hidden_size, generator=g) * 2
    targets = torch.randint(0, r.hp.vocab_size, (50,), generator=g)
    (_, lp, am), = list(r.logprob_chunks(hid, targets))
    (_, logits), = list(r.logit_chunks(hid))
    ref_lp, ref_am = _k_logprob(logits, targets)
    assert torch.equal(am, ref_am)
    exact_t = (r.head()[targets] * hid).sum(-1)  # the target logit in float32
    moved = (exact_t - logits.gather(1, targets[:, None]).squeeze(1)).abs()  # 0 where it was in the top 8
    assert bool(((lp - ref_lp).abs() <= moved + 1e-4).all())
    assert float((lp - ref_lp).abs().max()) > 0  # the test looks at targets outside the top 8 too
