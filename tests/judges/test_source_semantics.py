"""Judge: verify's source side computes what transformers computes, family by family
(issue 11, items 2, 3, 5, 6).

For each source kind/family, transformers runs the *source folder itself* (a plain Llama or
Qwen3 in float without activation quantization; a BitNet model with use_rms_norm through
its bitnet quantizer, online, 8-bit activations): verify's source perplexity must equal
transformers' on the same windows within 0.5%, and verify's forward must pick the same
top-1 token on >= 99% of positions. Models are seeded random ones with sane logits (the
embedding scaled so the mean NLL sits near ln(vocab), not a one-hot softmax).

The packed safetensors folders bitconv writes for Qwen3 and use_rms_norm models are loaded
by transformers with the folder's own config and compared with bitconv's forward of the
same folder.
"""

from __future__ import annotations

import json
import math
import os

os.environ.setdefault("TORCHDYNAMO_DISABLE", "1")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

from bitconv.convert import convert  # noqa: E402
from bitconv.readers import DATA_DIR, open_source  # noqa: E402
from bitconv.source_kind import decide_source_kinds, source_act_quant  # noqa: E402
from bitconv.synth import BITNET_ONLINE, make_checkpoint  # noqa: E402
from bitconv.verify import make_windows, verify  # noqa: E402
from bitconv.verify.forward import logits_for  # noqa: E402

transformers = pytest.importorskip("transformers")
pytest.importorskip("accelerate")

pytestmark = pytest.mark.judge

DIMS = dict(hidden=256, intermediate=512, layers=2, vocab=512, embed_std=0.05)
TOKENS, CTX = 1024, 256
PPL_REL = 0.005  # the issue's bar: verify's source perplexity equals transformers' within 0.5%
MIN_TOP1 = 0.99

# name -> (synth overrides, transformers class, artifact format/layout)
CASES = {
    # TriLM-style: a plain Llama whose fp16 linears are exactly s·t, untied head
    "llama-exact": (dict(family="llama", weights="exact", ternary_group="tensor", dtype="f16", tie=False,
                         heads=4, kv_heads=2), "LlamaForCausalLM", ("gguf", "tq2_0")),
    # Ternary-Bonsai-style Qwen3: row scales, q/k norms, GQA, head_dim != hidden / heads, tied
    "qwen3-exact": (dict(family="qwen3", weights="exact", ternary_group="row", heads=4, kv_heads=2, head_dim=128,
                         tie=True), "Qwen3ForCausalLM", ("gguf", "tq2_0")),
    # Qwen3 untied, MHA, group-256 scales in bf16
    "qwen3-untied": (dict(family="qwen3", weights="exact", ternary_group=256, heads=4, kv_heads=4, tie=False,
                          hidden=512), "Qwen3ForCausalLM", ("gguf", "tq1_0")),
    # transformers' BitNetQuantConfig(use_rms_norm=True): latent weights, online, a norm in every linear
    "bitnet-rmsnorm": (dict(family="relu2", use_rms_norm=True, quantization_config=BITNET_ONLINE, heads=4,
                            kv_heads=2), "BitNetForCausalLM", ("safetensors", None)),
}


def _windows(src: Path) -> list[list[int]]:
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(src / "tokenizer.json"))
    ids = tok.encode((DATA_DIR / "eval.txt").read_text(), add_special_tokens=False).ids[:TOKENS]
    return make_windows(ids, CTX, None)  # synth tokenizers: add_bos_token false


def _hf_model(folder: Path, cls: str):
    model = getattr(transformers, cls).from_pretrained(folder, dtype=torch.float32, attn_implementation="sdpa")
    return model.eval()


def _hf_logits(model, windows: list[list[int]]) -> torch.Tensor:
    with torch.no_grad():
        return torch.cat([model(torch.tensor([w])).logits[0] for w in windows])


def _ppl(logits: torch.Tensor, windows: list[list[int]]) -> float:
    nll, n, pos = 0.0, 0, 0
    for w in windows:
        lg = logits[pos:pos + len(w) - 1]
        nll += torch.nn.functional.cross_entropy(lg, torch.tensor(w[1:]), reduction="sum").item()
        n += len(w) - 1
        pos += len(w)
    return math.exp(nll / n)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("semantics")
    out = {}
    for name, (kw, _cls, _target) in CASES.items():
        out[name] = make_checkpoint(root / name, seed=70 + len(out), **{**DIMS, **kw})
    return root, out


@pytest.mark.parametrize("name", list(CASES))
def test_verify_source_side_is_what_transformers_computes(built, name, tmp_path):
    root, srcs = built
    src = srcs[name]
    kw, cls, (fmt, layout) = CASES[name]
    art = tmp_path / ("a.gguf" if fmt == "gguf" else "a")
    convert(src, art, format=fmt, **({"layout": layout} if layout else {}))
    rep = verify(art, src, tokens=TOKENS, ctx=CTX, max_ppl_increase=1.0, min_top1=0.0)
    windows = _windows(src)
    assert sum(len(w) - 1 for w in windows) == rep.tokens

    model = _hf_model(src, cls)
    if kw.get("use_rms_norm"):  # the judge must really run transformers' per-linear norms
        lin = model.model.layers[0].self_attn.q_proj
        assert type(lin).__name__ == "AutoBitLinear" and lin.rms_norm is not None
    else:
        assert type(model.model.layers[0].self_attn.q_proj).__name__ == "Linear"
    hf = _hf_logits(model, windows)
    hf_ppl = _ppl(hf, windows)
    ck = open_source(src)
    decide_source_kinds(ck)
    ours = torch.cat([logits_for(ck, torch.tensor([w]), act_quant=source_act_quant(ck))[0] for w in windows])
    top1 = float((ours.argmax(-1) == hf.argmax(-1)).float().mean())
    rel = float(torch.linalg.vector_norm(ours - hf) / torch.linalg.vector_norm(hf))
    print(f"\n{name}: verify source ppl {rep.source_perplexity:.4f}, transformers {hf_ppl:.4f} "
          f"(ln vocab {math.log(512):.2f} -> uniform {512}), artifact {rep.artifact_perplexity:.4f}; "
          f"logits top-1 {top1:.4f}, rel L2 {rel:.2e}; notes: {rep.notes}")
    assert math.log(hf_ppl) > 0.5 * math.log(512), "not a sane-logit model: the judge would be too easy"
    assert rep.source_perplexity == pytest.approx(hf_ppl, rel=PPL_REL)
    assert top1 >= MIN_TOP1
    assert rep.source_act_quant == bool(kw.get("use_rms_norm"))  # only the BitNet model quantizes activations
    # and the artifact is close to it (it runs with the source's activation semantics)
    assert abs(rep.ppl_change) < 0.05


@pytest.mark.parametrize("name,kw", [
    ("qwen3", dict(family="qwen3", weights="exact", ternary_group="tensor", heads=4, kv_heads=2, head_dim=128,
                   tie=False)),
    ("bitnet-rmsnorm", CASES["bitnet-rmsnorm"][0]),
    ("llama-rmsnorm", dict(family="llama", use_rms_norm=True, heads=4, kv_heads=2, tie=False)),
])
def test_packed_folder_loads_in_transformers_with_its_config(name, kw, tmp_path):
    """Qwen3 / use_rms_norm packed safetensors: transformers loads the folder (bitlinear,
    per-linear norms restored) and computes what bitconv's forward computes from it."""
    src = make_checkpoint(tmp_path / "src", seed=90, **{**DIMS, **kw})
    out = tmp_path / "out"
    convert(src, out, format="safetensors")
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["quantization_config"]["linear_class"] == "bitlinear"
    assert cfg["quantization_config"].get("use_rms_norm", False) == bool(kw.get("use_rms_norm"))
    cls = cfg["architectures"][0]
    model = _hf_model(out, cls)
    q = model.model.layers[0].self_attn.q_proj
    assert type(q).__name__ == "BitLinear" and (q.rms_norm is not None) == bool(kw.get("use_rms_norm"))
    windows = _windows(src)[:2]
    hf = _hf_logits(model, windows)
    ours = torch.cat([logits_for(open_source(out), torch.tensor([w]))[0] for w in windows])
    top1 = float((ours.argmax(-1) == hf.argmax(-1)).float().mean())
    rel = float(torch.linalg.vector_norm(ours - hf) / torch.linalg.vector_norm(hf))
    print(f"\n{name} packed: top-1 {top1:.4f}, rel L2 {rel:.2e}")
    assert top1 >= 0.97 and rel < 2e-2  # bf16 1/s and 8-bit activation rounding flips only (measured <= 6.5e-3)


def test_use_rms_norm_gguf_is_refused_naming_the_tensors(tmp_path):
    from bitconv.errors import LayoutError

    src = make_checkpoint(tmp_path / "src", seed=91, **{**DIMS, **CASES["bitnet-rmsnorm"][0]})
    with pytest.raises(LayoutError) as e:
        convert(src, tmp_path / "m.gguf", layout="i2_s")
    assert "model.layers.0.self_attn.q_proj.rms_norm.weight" in str(e.value) and "--format safetensors" in str(e.value)
    assert e.value.exit_code == 2 and not (tmp_path / "m.gguf").exists()
