"""`bitconv verify --act a4.8 [--kv-bits N]` end to end: the scheme runs on the artifact side
through verify's one decoder layer, the source keeps its own semantics, the sparsity report
reaches the report and --json, `--act a8` gives the default numbers exactly, and on the demo
model a4.8 moves the metrics in the direction and by roughly the size measured."""

from __future__ import annotations

import json
import os
import sys

os.environ.setdefault("TORCHDYNAMO_DISABLE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

from bitconv.convert import convert  # noqa: E402
from bitconv.readers import open_source  # noqa: E402
from bitconv.verify import verify  # noqa: E402
from bitconv.verify.act_schemes import get_scheme  # noqa: E402
from bitconv.verify.forward import logits_for  # noqa: E402
from bitconv.verify.sparsity import SparsityStats  # noqa: E402
import waiting  # noqa: E402

DEMO = "builtin:tiny-bitnet"
RUN = dict(tokens=2048, ctx=256)  # 8 windows of the shipped eval text
METRICS = ("source_perplexity", "artifact_perplexity", "ppl_change", "mean_kl", "max_kl", "top1_agreement")


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    art = tmp_path_factory.mktemp("a48") / "tiny.gguf"
    convert(DEMO, art, layout="tq2_0", allow_engine_mismatch=True)
    return art


@pytest.fixture(scope="module")
def runs(demo):
    return {
        "default": verify(demo, DEMO, **RUN),
        "a8": verify(demo, DEMO, act="a8", **RUN),
        "a8_float": verify(demo, DEMO, act="a8", fast=False, **RUN),
        "a4.8": verify(demo, DEMO, act="a4.8", **RUN),
        "a4.8_kv3": verify(demo, DEMO, act="a4.8", kv_bits=3, **RUN),
    }


def test_act_a8_gives_the_default_numbers_exactly(runs):
    d, a8 = runs["default"], runs["a8"]
    assert [getattr(a8, m) for m in METRICS] == [getattr(d, m) for m in METRICS]
    assert a8.passed and a8.act == "a8" and a8.kv_bits is None
    # the fused int8 kernels ran a8 and never hand the quantized input back: no sparsity
    # report (the default report is unchanged); the float backend collects it
    assert a8.sparsity is None and d.sparsity is None
    assert runs["a8_float"].sparsity["activations_collected"]
    assert runs["a8_float"].sparsity["total"]["linears"]["attn_q"]["weight_zero_fraction"] > 0.2


def test_a8_scheme_collecting_statistics_computes_the_same_logits(ckpt_factory):
    """The statistics only count: the a8 scheme with a collector gives the built-in float
    path's logits bit for bit."""
    ck = open_source(ckpt_factory("relu2", vocab=300, hidden=64, intermediate=128, layers=2, heads=4, kv_heads=2))
    tokens = torch.randint(0, 300, (2, 12), generator=torch.Generator().manual_seed(0))
    st = SparsityStats()
    got = logits_for(ck, tokens, scheme=get_scheme("a8", stats=st), int_path=False)
    assert torch.equal(got, logits_for(ck, tokens, act_quant=True, int_path=False))
    assert st.report()["activations_collected"]


def test_a48_costs_what_was_measured_on_the_demo(runs):
    """Measured (tokens=2048, ctx=256, tq2_0 demo): a4.8 ppl +0.413%, mean KL 4.30e-3, top-1
    0.943; with a 3-bit KV cache +2.35%, 1.83e-2, 0.914. Bounds keep a 3x margin."""
    a8, a48, kv3 = runs["a8"], runs["a4.8"], runs["a4.8_kv3"]
    assert a48.source_perplexity == a8.source_perplexity  # the source keeps its own semantics
    assert 0.00413 / 3 < a48.ppl_change < 0.00413 * 3
    assert 4.30e-3 / 3 < a48.mean_kl < 4.30e-3 * 3
    assert 1 - 3 * (1 - 0.943) < a48.top1_agreement < 0.99
    # the 3-bit KV cache costs more on top (direction), by roughly the measured size
    assert kv3.ppl_change > a48.ppl_change and kv3.mean_kl > a48.mean_kl
    assert 0.0235 / 3 < kv3.ppl_change < 0.0235 * 3
    assert 1.83e-2 / 3 < kv3.mean_kl < 1.83e-2 * 3
    assert a48.act == "a4.8" and kv3.kv_bits == 3
    assert "activation scheme 'a4.8'" in a48.compute
    assert "; the artifact with activation scheme 'a4.8' and a 3-bit KV cache on the float backend" in kv3.compute


def test_a48_sparsity_report_on_the_demo(runs):
    """Measured on the demo (a4.8, tokens=2048): q/k/v and gate inputs 11.7% zero after INT4, o_proj input
    50% (TopK), up idle 70%, down input 86% zero, 52% of linear parameters active per token;
    a8 (float backend) 61%. The paper's 7B: 12.1 / 50.0 / 71.4 / 84.2, 55.5% active."""
    rep = runs["a4.8"].sparsity
    assert rep["activations_collected"]
    tot = rep["total"]
    lin = tot["linears"]
    assert tot["sites"]["attn_out_in"]["topk_dropped_fraction"] == 0.5
    assert lin["attn_output"]["sparsity"] >= 0.5
    for kind in ("attn_q", "attn_k", "attn_v", "ffn_gate"):
        assert 0.117 / 3 < lin[kind]["sparsity"] < 0.117 * 3
    assert lin["ffn_up"]["sparsity"] == pytest.approx(tot["sites"]["ffn_down_in"]["input_zero_fraction"], rel=1e-12)
    assert lin["ffn_down"]["sparsity"] > lin["ffn_up"]["sparsity"] > 0.3  # relu² zeros, then INT8 rounding
    a48_active = tot["active_fraction"]
    a8_active = runs["a8_float"].sparsity["total"]["active_fraction"]
    assert 0.35 < a48_active < 0.7 and a48_active < a8_active < 0.9
    assert tot["params"] == sum(v["params"] for v in lin.values())
    assert [lay["layer"] for lay in rep["layers"]] == [0, 1, 2, 3]
    for lay in rep["layers"]:
        assert lay["active_fraction"] is not None
        assert all(0.2 < v["weight_zero_fraction"] < 0.5 for v in lay["linears"].values())


def test_cli_act_a48_kv_bits_json(demo):
    env = {**os.environ, "TORCHDYNAMO_DISABLE": "1"}
    cmd = [sys.executable, "-m", "bitconv.cli", "verify", str(demo), "--source", DEMO, "--tokens", "512",
           "--ctx", "128", "--act", "a4.8", "--kv-bits", "4", "--json"]
    p = waiting.run(cmd, 600, capture_output=True, text=True, env=env)
    assert p.returncode in (0, 1), p.stderr
    data = json.loads(p.stdout)
    assert data["act"] == "a4.8" and data["kv_bits"] == 4
    assert data["sparsity"]["activations_collected"]
    assert 0 < data["sparsity"]["total"]["active_fraction"] < 1
    assert data["ok"] == (p.returncode == 0)
    bad = waiting.run(cmd[:-3] + ["--kv-bits", "5"], 600, capture_output=True, text=True, env=env)
    assert bad.returncode == 2 and "--kv-bits" in bad.stderr + bad.stdout


def test_cli_prints_the_sparsity_table(demo):
    env = {**os.environ, "TORCHDYNAMO_DISABLE": "1", "COLUMNS": "200"}
    p = waiting.run([sys.executable, "-m", "bitconv.cli", "verify", str(demo), "--source", DEMO,
                     "--tokens", "256", "--ctx", "128", "--act", "a4.8"],
                    600, capture_output=True, text=True, env=env)
    assert p.returncode in (0, 1), p.stderr
    assert "artifact sparsity (a4.8)" in p.stdout
    assert "linear parameters active per token" in p.stdout


def test_act_none_reports_no_activation_quantization(ckpt_factory):
    model = ckpt_factory("relu2", vocab=300, hidden=64, intermediate=128, layers=2, heads=4, kv_heads=2)
    r = verify(model, model, act="none", tokens=64, ctx=32, min_top1=0.0, max_ppl_increase=1.0)
    assert r.act == "none" and r.act_quant is False and r.source_act_quant is True
    assert r.sparsity["activations_collected"]
