"""`--format mlx` and `--format compressed-tensors` plans and refusals (issue 20, items 1, 2, 6).

The engines' own verdicts are in tests/judges/test_mlx.py and test_compressed_tensors.py;
these tests need neither engine installed: they read the folders with safetensors and check
the layout each format promises, and that every refusal names its reason and writes nothing.
"""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from hostile_helpers import edited_copy, read_tensors

from bitconv.convert import convert
from bitconv.errors import LayoutError, UsageError
from bitconv.pack.ct_int2 import CTInt2
from bitconv.pack.mlx_affine import MLXAffine2
from bitconv.quant import ternarize

EXACT = dict(weights="exact", dtype="f32")


def test_mlx_folder_layout(ckpt_factory, tmp_path, hf_float_weights):
    src = ckpt_factory("qwen3", seed=4, tie=False, ternary_group=64, ternary_embeddings=128, **EXACT)
    res = convert(src, tmp_path / "m", format="mlx")
    cfg = json.loads((tmp_path / "m" / "config.json").read_text())
    assert cfg["quantization"] == {"group_size": 64, "bits": 2, "mode": "affine"}  # the source's groups: 64
    assert cfg["model_type"] == "qwen3" and "quantization_config" not in cfg and cfg["tie_word_embeddings"] is False
    st, source = read_tensors(tmp_path / "m"), hf_float_weights(src)
    for name in ("model.layers.0.self_attn.q_proj", "model.embed_tokens", "lm_head"):
        w = source[name + ".weight"]
        words, s, b = st[name + ".weight"], st[name + ".scales"], st[name + ".biases"]
        assert words.dtype == np.uint32 and words.shape == (w.shape[0], w.shape[1] // 16)
        assert s.dtype == np.float32 and s.shape == (w.shape[0], w.shape[1] // 64) and np.array_equal(b, -s)
        back = MLXAffine2(64).read(words, s, b, w.shape[1])
        assert np.array_equal(back.dequantize(), w), name  # q = t + 1, scale s, bias -s: s·t exactly
    assert "model.norm.weight" in st and "model.norm.scales" not in st  # floats stay floats
    assert res.plan.engine == "mlx-lm" and res.plan.arch == "qwen3"


def test_compressed_tensors_folder_layout(ckpt_factory, tmp_path, hf_float_weights):
    src = ckpt_factory("llama", seed=6, tie=False, ternary_group="row", **EXACT)
    res = convert(src, tmp_path / "c", format="compressed-tensors")
    cfg = json.loads((tmp_path / "c" / "config.json").read_text())
    q = cfg["quantization_config"]
    assert q["quant_method"] == "compressed-tensors" and q["format"] == "pack-quantized"
    assert q["quantization_status"] == "compressed" and q["ignore"] == ["lm_head"]
    (group,) = q["config_groups"].values()
    assert group["targets"] == ["Linear"] and group["input_activations"] is None  # W2A16: a plain ternary model
    assert group["weights"]["num_bits"] == 2 and group["weights"]["strategy"] == "channel"
    assert group["weights"]["symmetric"] is True and group["weights"]["type"] == "int"
    st, source = read_tensors(tmp_path / "c"), hf_float_weights(src)
    name = "model.layers.1.mlp.down_proj"
    w = source[name + ".weight"]
    assert st[name + ".weight_packed"].dtype == np.int32 and list(st[name + ".weight_shape"]) == list(w.shape)
    back = CTInt2().read(st[name + ".weight_packed"], st[name + ".weight_scale"], w.shape)
    assert np.array_equal(back.dequantize(), w)
    assert "lm_head.weight" in st and st["lm_head.weight"].dtype == np.float32
    assert res.plan.layout_metadata["scheme"] == "W2A16"


def test_compressed_tensors_declares_w2a8_for_a_bitnet_model(llama_ckpt, tmp_path):
    res = convert(llama_ckpt, tmp_path / "c", format="compressed-tensors", dry_run=True)
    (group,) = res.plan.layout_metadata["quantization_config"]["config_groups"].values()
    assert group["input_activations"] == {**group["input_activations"], "num_bits": 8, "type": "int",
                                          "strategy": "token", "dynamic": True, "symmetric": True}
    assert res.plan.layout_metadata["scheme"] == "W2A8" and not (tmp_path / "c").exists()


def test_mixed_scale_groups_get_one_config_group_each(ckpt_factory, tmp_path):
    """A source whose linears have different own groups: modules named per config group."""
    src = ckpt_factory("llama", seed=8, tie=True, ternary_group=64, **EXACT)
    import torch

    name = "model.layers.0.mlp.up_proj.weight"

    def row_scaled(w):
        w[name] = torch.from_numpy(ternarize(w[name].float().numpy(), "row", name).dequantize())

    mixed = edited_copy(src, tmp_path / "mixed", row_scaled, tensors="torch")
    q = convert(mixed, tmp_path / "c", format="compressed-tensors").plan.layout_metadata["quantization_config"]
    by = {g["weights"]["strategy"]: g for g in q["config_groups"].values()}
    assert by["channel"]["targets"] == ["model.layers.0.mlp.up_proj"]
    assert len(by["group"]["targets"]) == 13 and by["group"]["weights"]["group_size"] == 64


def test_refusals_name_the_reason_and_write_nothing(ckpt_factory, silu_ckpt, relu2_ckpt, tmp_path):
    out = tmp_path / "x"
    with pytest.raises(UsageError, match="sub-norms"):
        convert(silu_ckpt, out, format="mlx")
    for fam in (silu_ckpt, relu2_ckpt):
        with pytest.raises(UsageError, match="vLLM has no BitNet architecture"):
            convert(fam, out, format="compressed-tensors")
    narrow = ckpt_factory("llama", seed=2, hidden=48, intermediate=96, heads=2, kv_heads=1, **EXACT)
    with pytest.raises(LayoutError, match="K=48 is not a multiple of 32"):
        convert(narrow, out, format="mlx")
    norms = ckpt_factory("llama", seed=3, use_rms_norm=True)
    for fmt in ("mlx", "compressed-tensors"):
        with pytest.raises(LayoutError, match="use_rms_norm"):
            convert(norms, out, format=fmt)
    with pytest.raises(LayoutError, match="one weight_scale per tensor"):
        convert(relu2_ckpt, out, format="mlx", group_size="row")
    assert not out.exists()


def test_rotated_model_is_refused(ckpt_factory, copy_ckpt, tmp_path):
    src = copy_ckpt(ckpt_factory("qwen3", seed=4, **EXACT))
    cfg = json.loads((src / "config.json").read_text())
    cfg.update(model_type="prism_hadamard_qwen35", modules=[{"path": "layers.0.mlp.down_proj", "block": 512}])
    (src / "config.json").write_text(json.dumps(cfg))
    for fmt in ("mlx", "compressed-tensors"):
        with pytest.raises(LayoutError, match="Hadamard rotation"):
            convert(src, tmp_path / fmt, format=fmt)
        assert not (tmp_path / fmt).exists()
    # a real pack's base architecture (Qwen3.5) is not one bitconv reads: the rotation is still what is said
    cfg["architectures"] = ["Qwen3_5ForConditionalGeneration"]
    (src / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(LayoutError, match="Hadamard rotation"):
        convert(src, tmp_path / "y", format="mlx")


def test_bf16_scales_rounding_is_said(llama_ckpt, tmp_path):
    """A packed source whose scales are float32 (bitconv's --format safetensors of a bf16 model
    stores 1/s in bf16, read back as a float32 s) goes into a bf16 folder: the plan says so."""
    packed = tmp_path / "packed"
    convert(llama_ckpt, packed, format="safetensors")
    res = convert(packed, tmp_path / "m", format="mlx", dry_run=True)
    assert any("may not hold exactly" in w and "2^-9" in w for w in res.plan.warnings)


def test_cli_writes_both_and_is_deterministic(ckpt_factory, tmp_path):
    src = ckpt_factory("llama", seed=9, **EXACT)
    for fmt in ("mlx", "compressed-tensors"):
        for i in (1, 2):
            r = subprocess.run([sys.executable, "-m", "bitconv.cli", "convert", str(src), str(tmp_path / f"{fmt}{i}"),
                                "--format", fmt], capture_output=True, text=True)
            assert r.returncode == 0, r.stderr
        assert (tmp_path / f"{fmt}1" / "model.safetensors").read_bytes() == \
            (tmp_path / f"{fmt}2" / "model.safetensors").read_bytes()
    r = subprocess.run([sys.executable, "-m", "bitconv.cli", "convert", str(ckpt_factory("relu2", seed=1)),
                        str(tmp_path / "bad"), "--format", "compressed-tensors"], capture_output=True, text=True)
    assert r.returncode == 2 and "vLLM has no BitNet architecture" in r.stderr + r.stdout
