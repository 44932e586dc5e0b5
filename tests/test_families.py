"""The Qwen3 family and per-linear input norms (use_rms_norm): what is read, what is refused."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from bitconv.archs import architecture_for
from bitconv.convert import convert
from bitconv.errors import CorruptFileError, InputError, LayoutError, UnsupportedArchitectureError
from bitconv.readers import open_source
from bitconv.synth import BITNET_ONLINE, make_checkpoint

DIMS = dict(hidden=256, intermediate=512, layers=2, heads=4, kv_heads=2, vocab=512, embed_std=0.05)


def _edit(folder: Path, fn) -> None:
    path = folder / "model.safetensors"
    w = load_file(str(path))
    fn(w)
    save_file(w, str(path), metadata={"format": "pt"})


def _edit_config(folder: Path, **changes) -> None:
    cfg = json.loads((folder / "config.json").read_text())
    cfg.update(changes)
    (folder / "config.json").write_text(json.dumps(cfg))


def test_qwen3_names_and_hparams(tmp_path):
    src = make_checkpoint(tmp_path / "q", family="qwen3", weights="exact", head_dim=128, seed=1, **DIMS)
    ck = open_source(src)
    hp = ck.spec.hparams
    assert ck.spec.family == "Qwen3ForCausalLM" and hp.qk_norm and hp.head_dim == 128 and not hp.sub_norms
    names = [t.name for t in ck.tensors if t.name.startswith("blk.0.")]
    # q/k norms sit right after attn_k, as llama.cpp's converter lists them
    assert names[:6] == ["blk.0.attn_norm.weight", "blk.0.attn_q.weight", "blk.0.attn_k.weight",
                         "blk.0.attn_q_norm.weight", "blk.0.attn_k_norm.weight", "blk.0.attn_v.weight"]
    assert ck.get("blk.1.attn_k_norm.weight").shape == (128,)


def test_qwen3_bad_q_norm_shape_is_refused(tmp_path):
    src = make_checkpoint(tmp_path / "q", family="qwen3", weights="exact", seed=2, **DIMS)
    _edit(src, lambda w: w.__setitem__("model.layers.0.self_attn.q_norm.weight", torch.ones(32, dtype=torch.bfloat16)))
    with pytest.raises(CorruptFileError, match=r"q_norm.weight has shape \[32\], expected \[64\]"):
        open_source(src)


def test_qwen3_sliding_window_and_biases_are_refused():
    base = {"architectures": ["Qwen3ForCausalLM"], "hidden_size": 256, "intermediate_size": 512,
            "num_hidden_layers": 2, "num_attention_heads": 4, "vocab_size": 512}
    arch = architecture_for(base)
    with pytest.raises(UnsupportedArchitectureError, match="sliding-window"):
        arch.hparams({**base, "use_sliding_window": True})
    with pytest.raises(UnsupportedArchitectureError, match="sliding-window"):
        arch.hparams({**base, "layer_types": ["full_attention", "sliding_attention"]})
    with pytest.raises(UnsupportedArchitectureError, match="attention_bias"):
        arch.hparams({**base, "attention_bias": True})


def test_qwen3_is_refused_for_bitnet_cpp_layouts(tmp_path):
    src = make_checkpoint(tmp_path / "q", family="qwen3", weights="exact", seed=3, **DIMS)
    with pytest.raises(LayoutError, match="no 'qwen3' graph"):
        convert(src, tmp_path / "m.gguf", layout="i2_s")
    res = convert(src, tmp_path / "m.gguf", layout="i2_s", allow_engine_mismatch=True)
    assert res.plan.arch == "qwen3" and res.plan.warnings


def test_use_rms_norm_is_read_and_checked(tmp_path):
    src = make_checkpoint(tmp_path / "r", family="relu2", use_rms_norm=True, quantization_config=BITNET_ONLINE,
                          seed=4, **DIMS)
    ck = open_source(src)
    assert ck.spec.hparams.linear_norms and ck.spec.hparams.linear_norm_eps == 1e-6
    norms = [t for t in ck.tensors if t.name.endswith("_in_norm.weight")]
    assert len(norms) == 14 and ck.get("blk.0.ffn_down_in_norm.weight").shape == (512,)
    assert ck.get("blk.0.attn_q_in_norm.weight").source_name == "model.layers.0.self_attn.q_proj.rms_norm.weight"
    names = [t.name for t in ck.tensors]
    assert names.index("blk.0.attn_q_in_norm.weight") == names.index("blk.0.attn_q.weight") - 1

    missing = make_checkpoint(tmp_path / "m", family="relu2", use_rms_norm=True, quantization_config=BITNET_ONLINE,
                              seed=5, **DIMS)
    _edit(missing, lambda w: w.pop("model.layers.1.mlp.up_proj.rms_norm.weight"))
    with pytest.raises(InputError, match="up_proj.weight has no input norm"):
        open_source(missing)

    stray = make_checkpoint(tmp_path / "s", family="relu2", use_rms_norm=True, quantization_config=BITNET_ONLINE,
                            seed=6, **DIMS)
    _edit_config(stray, quantization_config=BITNET_ONLINE)  # the config forgot use_rms_norm
    with pytest.raises(InputError, match="does not set use_rms_norm"):
        open_source(stray)


def test_use_rms_norm_packed_folder_keeps_norms_and_config(tmp_path):
    src = make_checkpoint(tmp_path / "r", family="llama", use_rms_norm=True, seed=7, tie=False, **DIMS)
    out = tmp_path / "out"
    convert(src, out, format="safetensors")
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["quantization_config"]["use_rms_norm"] is True and cfg["quantization_config"]["rms_norm_eps"] == 1e-6
    w = load_file(str(out / "model.safetensors"))
    assert torch.equal(w["model.layers.1.self_attn.o_proj.rms_norm.weight"],
                       load_file(str(src / "model.safetensors"))["model.layers.1.self_attn.o_proj.rms_norm.weight"])
    back = open_source(out)  # and bitconv reads its own folder back
    assert back.spec.hparams.linear_norms and len([t for t in back.tensors if "_in_norm" in t.name]) == 14
