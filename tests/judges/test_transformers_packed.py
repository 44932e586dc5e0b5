"""Judge: transformers loads the packed safetensors folders bitconv writes and computes
what the source computes (issue 4).

Each case builds a seeded random checkpoint with bitconv.synth (hidden 256, 2 layers),
converts it with `convert(..., format="safetensors")`, loads the folder with transformers'
own `from_pretrained` (BitNetForCausalLM, or LlamaForCausalLM for the Llama family; its
linears become `BitLinear` with uint8 codes) and compares the logits over 160 tokens of the
eval text with the float SOURCE loaded by transformers in online mode (`autobitlinear` + `online`: f32/bf16
master weights ternarized on the fly). The two transformers modes quantize activations
slightly differently (x_q / (input_scale · weight_scale) vs ActQuant(x) @ (s·t)ᵀ) and a
bf16 source stores 1/s in bf16, so they are close but not equal. The models have a trained
model's logit scale (`synth.SANE_LOGIT_STD`), where those differences show. The gates are
per family (tests/judges/_reference.py TRANSFORMERS_GATES: mean KL and top-1, each 3x beyond
the worst measured; the values are there): tight for the Llama family (no sub-norms, KL
1e-4, top-1 0.94), looser for the BitNet families, whose 8-bit activation rounding after
each sub-norm flips more argmaxes of these near-uniform random models. Relative L2 of the
logits is no longer a gate: it separated nothing the KL gate did not (issue 22). Which
planted defects these judges catch is pinned by test_mutations.py. Another model (another
seed) lands at KL ~3.5, 580x the largest KL gate.

Both packed conventions are also judged as SOURCE: a `bitlinear` folder (weight_scale =
1/s, HF1BitLLM-style) and an `autobitlinear` offline folder (weight_scale = s, tied
embeddings, bf16, as microsoft/bitnet-b1.58-2B-4T ships), written here with bitconv's
hf2bit packer from the same float weights. Converting those must give exactly the folder
bitconv writes from the float checkpoint (same codes; same scales up to the source's own
bf16 rounding), and transformers must compute the same as it does on the packed source.

The SiLU family (1bitLLM BitnetForCausalLM) has no transformers class: bitconv writes it as
BitNetForCausalLM with hidden_act "silu" and the sub-norms renamed; the float reference is
the source renamed the same way (tests/judges/test_forward_transformers.py does the same).
"""

from __future__ import annotations

import os

os.environ["TORCHDYNAMO_DISABLE"] = "1"

import json  # noqa: E402
import shutil  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from hostile_helpers import read_tensors  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402

from bitconv.convert import convert  # noqa: E402
from bitconv.pack.hf2bit import HF2Bit  # noqa: E402
from bitconv.quant import ternarize  # noqa: E402
from bitconv.synth import SANE_LOGIT_STD, make_checkpoint  # noqa: E402

from ._metrics import mean_kl  # noqa: E402
from ._reference import TRANSFORMERS_GATES, Gates, Verdict, judge, load_transformers, text_ids  # noqa: E402

transformers = pytest.importorskip("transformers")
pytest.importorskip("accelerate")

pytestmark = pytest.mark.judge

ONLINE = {"quant_method": "bitnet", "linear_class": "autobitlinear", "quantization_mode": "online"}
DIMS = dict(hidden=256, intermediate=512, layers=2, heads=4, kv_heads=2, vocab=512)
# Against the float source: the per-family gates shared with the mutation check
# (_reference.TRANSFORMERS_GATES, measured values there). Against transformers' own run of an
# offline autobitlinear source, which it can only run in bf16: measured KL <= 1.8e-3, top-1
# >= 0.944 (bf16 activations); gates 3x.
BF16_GATES = Gates(max_kl=6e-3, min_top1=0.83)
APART = 100  # another model must be this many (largest) KL gates away (measured 3.98 = 660x)
LINEAR_SUFFIXES = ("q_proj.weight", "k_proj.weight", "v_proj.weight", "o_proj.weight",
                   "gate_proj.weight", "up_proj.weight", "down_proj.weight")


def _tokens(src: Path, t: int = 160) -> torch.Tensor:
    """The first `t` tokens of the eval text through the source's tokenizer, as a [1, t] batch."""
    return torch.tensor([text_ids(src, t)])


def _float_source(tmp: Path, family: str, *, seed: int, tie: bool, dtype: str = "bf16") -> Path:
    return make_checkpoint(tmp / f"{family}-src", family=family, seed=seed, tie=tie, dtype=dtype,
                           quantization_config=ONLINE, logit_std=SANE_LOGIT_STD, **DIMS)


def _packed_source(float_src: Path, dst: Path, linear_class: str) -> Path:
    """A packed checkpoint from the float one: absmean-ternarized linears (bitconv.quant),
    HF 2-bit codes, weight_scale 1/s (bitlinear) or s (autobitlinear) in the source dtype."""
    shutil.copytree(float_src, dst)
    w = load_file(str(dst / "model.safetensors"))
    out = {}
    for name, t in w.items():
        if name.endswith(LINEAR_SUFFIXES):
            tern = ternarize(t.to(torch.float32).numpy(), "tensor", name)
            out[name] = torch.from_numpy(HF2Bit().pack_codes(tern.values))
            s = np.float64(tern.scale)
            scale = 1.0 / s if linear_class == "bitlinear" else s
            out[name + "_scale"] = torch.tensor([scale], dtype=torch.float32).to(t.dtype)
        else:
            out[name] = t
    save_file(out, str(dst / "model.safetensors"), metadata={"format": "pt"})
    cfg = json.loads((dst / "config.json").read_text())
    cfg["quantization_config"] = {"quant_method": "bitnet", "linear_class": linear_class,
                                  "quantization_mode": "offline"}
    (dst / "config.json").write_text(json.dumps(cfg))
    return dst


def _logits(folder: Path, tokens: torch.Tensor, *, expect: str, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """transformers' logits of `folder` (SiLU BitNet renamed; `expect`: the ternary layers it
    must be running, checked by `_reference.load_transformers`)."""
    model = load_transformers(folder, expect=expect, dtype=dtype)
    with torch.no_grad():
        return model(tokens, use_cache=False).logits.float()


def _compare(case: str, got: torch.Tensor, ref: torch.Tensor, gates: Gates) -> Verdict:
    v = judge(case, ref[0].numpy(), got[0].numpy(), gates)
    print(f"\n{v}")
    assert v.passed, str(v)
    return v


# family, seed, tie, max shard size: bf16 latent weights as the released float checkpoints
# ship them; the Llama case is written in shards (transformers follows the index)
FLOAT_CASES = [("relu2", 41, True, None), ("silu", 42, True, None), ("llama", 43, False, 400_000)]


@pytest.mark.parametrize("family,seed,tie,shard", FLOAT_CASES)
def test_float_source_to_transformers(tmp_path, family, seed, tie, shard):
    src = _float_source(tmp_path, family, seed=seed, tie=tie)
    out = tmp_path / "out"
    convert(src, out, format="safetensors", **({"max_shard_size": shard} if shard else {}))
    assert (out / "model.safetensors.index.json").exists() == bool(shard)
    tokens = _tokens(src)
    ref = _logits(src, tokens, expect="online")
    got = _logits(out, tokens, expect="bitlinear")
    _compare(f"{family} float->safetensors", got, ref, TRANSFORMERS_GATES[family])


# family, seed, tie, GGUF layout of the intermediate file
GGUF_CASES = [("silu", 61, True, "tq2_0"), ("relu2", 62, False, "i2_s")]


@pytest.mark.parametrize("family,seed,tie,layout", GGUF_CASES)
def test_gguf_source_to_transformers(tmp_path, family, seed, tie, layout):
    """float -> GGUF -> safetensors: the folder built from a GGUF (config rebuilt from its
    keys, f16 embeddings, TQ2_0's f16 block scales) still computes the source's function."""
    src = _float_source(tmp_path, family, seed=seed, tie=tie)
    gguf_path, out = tmp_path / "m.gguf", tmp_path / "out"
    convert(src, gguf_path, layout=layout)
    convert(gguf_path, out, format="safetensors")
    tokens = _tokens(src)
    ref = _logits(src, tokens, expect="online")
    got = _logits(out, tokens, expect="bitlinear")
    _compare(f"{family} float->{layout}->safetensors", got, ref, TRANSFORMERS_GATES[family])


# family, seed, tie, packed convention of the SOURCE
PACKED_CASES = [("relu2", 51, False, "bitlinear"), ("llama", 52, False, "bitlinear"),
                ("relu2", 53, True, "autobitlinear"), ("silu", 54, True, "autobitlinear")]


@pytest.mark.parametrize("family,seed,tie,linear_class", PACKED_CASES)
def test_packed_source_to_transformers(tmp_path, family, seed, tie, linear_class):
    src = _float_source(tmp_path, family, seed=seed, tie=tie)
    packed = _packed_source(src, tmp_path / f"{family}-{linear_class}", linear_class)
    out, direct = tmp_path / "out", tmp_path / "direct"
    convert(packed, out, format="safetensors")
    convert(src, direct, format="safetensors")

    # the same folder as converting the float checkpoint: identical codes and float tensors;
    # scales identical for bitlinear (1/(1/s) rounds back to the same bf16), within the
    # source's own bf16 rounding of s for autobitlinear.
    a, b = read_tensors(out, "torch"), read_tensors(direct, "torch")
    assert sorted(a) == sorted(b)
    for name in a:
        assert a[name].dtype == b[name].dtype, name
        if name.endswith("_scale") and linear_class == "autobitlinear":
            torch.testing.assert_close(a[name].float(), b[name].float(), rtol=2**-7, atol=0)
        else:
            assert torch.equal(a[name], b[name]), name

    tokens = _tokens(src)
    got = _logits(out, tokens, expect="bitlinear")
    ref = _logits(src, tokens, expect="online")
    _compare(f"{family} {linear_class}->safetensors vs online", got, ref, TRANSFORMERS_GATES[family])
    if family != "silu":  # transformers cannot load a 1bitLLM-named folder
        # what transformers computes on the packed source itself
        if linear_class == "bitlinear":
            own = _logits(packed, tokens, expect="bitlinear")
        else:
            # transformers 5.23 loads an offline autobitlinear folder only in its own dtype:
            # asked for float32 it keeps embeddings and norms in bf16 and the forward fails
            own = _logits(packed, tokens, expect="offline", dtype=torch.bfloat16)
        _compare(f"{family} {linear_class}->safetensors vs packed source", got, own,
                 TRANSFORMERS_GATES[family] if linear_class == "bitlinear" else BF16_GATES)


def test_judge_tells_models_apart(tmp_path):
    """Guard the judge: the packed folder of one model against another model's source (same
    shapes, another seed) is orders of magnitude further than any case above."""
    src = _float_source(tmp_path / "a", "relu2", seed=71, tie=True)
    other = _float_source(tmp_path / "b", "relu2", seed=72, tie=True)
    out = tmp_path / "out"
    convert(src, out, format="safetensors")
    tokens = _tokens(src)
    got = _logits(out, tokens, expect="bitlinear")
    kl = mean_kl(_logits(other, tokens, expect="online"), got)
    worst = max(g.max_kl for g in [*TRANSFORMERS_GATES.values(), BF16_GATES])
    print(f"\nanother model: KL {kl:.3f} > {APART} x {worst:.0e}")
    assert kl > APART * worst
