"""Hostile models (issue 10 items 2-3): configs, indexes, tokenizers and weights that disagree.

Every case converts through the CLI and asserts exit 2, one error line naming the key,
tensor or file, nothing in the output folder, and the source unchanged.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest
import torch

from hostile_helpers import assert_refused, rewrite_weights, run_cli, tree_digest


def _edit_json(path: Path, edit) -> None:
    data = json.loads(path.read_text())
    data = edit(data) or data
    path.write_text(json.dumps(data))


def _set(key, value):
    def edit(d):
        d[key] = value
    return edit


def _convert_refused(src: Path, outdir: Path, *contains, fmt: str = "gguf"):
    before = tree_digest(src)
    target = outdir / ("m.gguf" if fmt == "gguf" else "m")
    r = run_cli("convert", src, target, "--format", fmt)
    return assert_refused(r, outdir=outdir, src=src, before=before, contains=contains, keep=set())


# -- config values: wrong type, sign, size ----------------------------------------------
@pytest.mark.parametrize("key,value,expect", [
    ("hidden_size", "abc", "must be an integer"),
    ("hidden_size", -256, "out of range"),
    ("hidden_size", 256.5, "must be an integer"),
    ("hidden_size", True, "must be an integer"),
    ("num_attention_heads", 0, "out of range"),
    ("num_attention_heads", None, "is missing"),
    ("num_key_value_heads", [2], "must be an integer"),
    ("vocab_size", 10**12, "out of range"),
    ("intermediate_size", {"a": 1}, "must be an integer"),
    ("num_hidden_layers", -1, "out of range"),
    ("max_position_embeddings", 2**40, "out of range"),
    ("rms_norm_eps", "small", "rms_norm_eps"),
    ("rms_norm_eps", -1e-5, "positive"),
    ("rope_theta", float("nan"), "rope_theta"),
    ("tie_word_embeddings", "yes", "true or false"),
    ("bos_token_id", "a", "bos_token_id"),
    ("eos_token_id", [-3], "eos_token_id"),
    ("head_dim", 0, "head_dim"),
    ("hidden_act", 3, "hidden_act"),
    ("architectures", 5, "architectures"),
    ("quantization_config", ["bitnet"], "quantization_config"),
    ("rope_parameters", "fast", "rope_parameters"),
])
def test_config_value_of_wrong_type_sign_or_size(silu_ckpt, copy_ckpt, outdir, key, value, expect):
    src = copy_ckpt(silu_ckpt)
    _edit_json(src / "config.json", _set(key, value))
    line = _convert_refused(src, outdir, expect)
    assert "config.json" in line


@pytest.mark.parametrize("text", ["[1, 2]", '"config"', "null", "{bad json", "\xff\xfe"])
def test_config_json_not_an_object(silu_ckpt, copy_ckpt, outdir, text):
    src = copy_ckpt(silu_ckpt)
    (src / "config.json").write_bytes(text.encode("latin-1"))
    _convert_refused(src, outdir, "config.json")


def test_hidden_not_divisible_by_heads(silu_ckpt, copy_ckpt, outdir):
    src = copy_ckpt(silu_ckpt)
    _edit_json(src / "config.json", _set("num_attention_heads", 3))
    _convert_refused(src, outdir, "divisible", "num_attention_heads")


def test_heads_not_multiple_of_kv_heads(silu_ckpt, copy_ckpt, outdir):
    src = copy_ckpt(silu_ckpt)
    _edit_json(src / "config.json", _set("num_key_value_heads", 3))
    _convert_refused(src, outdir, "num_key_value_heads")


# -- model vs config ---------------------------------------------------------------------
def test_num_hidden_layers_smaller_than_present(silu_ckpt, copy_ckpt, outdir):
    src = copy_ckpt(silu_ckpt)
    _edit_json(src / "config.json", _set("num_hidden_layers", 1))
    _convert_refused(src, outdir, "model.layers.1.", "num_hidden_layers is 1")


def test_num_hidden_layers_larger_than_present(silu_ckpt, copy_ckpt, outdir):
    src = copy_ckpt(silu_ckpt)
    _edit_json(src / "config.json", _set("num_hidden_layers", 3))
    _convert_refused(src, outdir, "num_hidden_layers is 3", "layers 0..1")


def test_intermediate_size_disagrees_with_tensors(silu_ckpt, copy_ckpt, outdir):
    src = copy_ckpt(silu_ckpt)
    _edit_json(src / "config.json", _set("intermediate_size", 1024))
    _convert_refused(src, outdir, "mlp.", "intermediate 1024")


def test_hidden_size_disagrees_with_tensors(silu_ckpt, copy_ckpt, outdir):
    src = copy_ckpt(silu_ckpt)
    _edit_json(src / "config.json", _set("hidden_size", 512))
    _convert_refused(src, outdir, "shape", "hidden 512")


def test_vocab_disagrees_with_embedding(silu_ckpt, copy_ckpt, outdir):
    src = copy_ckpt(silu_ckpt)
    _edit_json(src / "config.json", _set("vocab_size", 600))
    _convert_refused(src, outdir, "model.embed_tokens.weight", "vocab 600")


def test_missing_linear_in_one_layer(silu_ckpt, copy_ckpt, outdir):
    src = copy_ckpt(silu_ckpt)
    rewrite_weights(src, lambda w: w.pop("model.layers.1.mlp.up_proj.weight"))
    _convert_refused(src, outdir, "blk.1.ffn_up.weight", "missing")


def test_missing_norm_in_one_layer(silu_ckpt, copy_ckpt, outdir):
    src = copy_ckpt(silu_ckpt)
    rewrite_weights(src, lambda w: w.pop("model.layers.0.input_layernorm.weight"))
    _convert_refused(src, outdir, "blk.0.attn_norm.weight", "missing")


def test_missing_embedding(silu_ckpt, copy_ckpt, outdir):
    src = copy_ckpt(silu_ckpt)
    rewrite_weights(src, lambda w: w.pop("model.embed_tokens.weight"))
    _convert_refused(src, outdir, "token_embd.weight", "missing")


def test_untied_config_without_lm_head(silu_ckpt, copy_ckpt, outdir):
    src = copy_ckpt(silu_ckpt)
    _edit_json(src / "config.json", _set("tie_word_embeddings", False))
    _convert_refused(src, outdir, "output.weight", "missing")


def test_q_proj_shape_disagrees_with_config(silu_ckpt, copy_ckpt, outdir):
    src = copy_ckpt(silu_ckpt)
    rewrite_weights(src, lambda w: w.__setitem__("model.layers.0.self_attn.q_proj.weight",
                                          torch.randn(128, 256, dtype=torch.bfloat16)))
    _convert_refused(src, outdir, "model.layers.0.self_attn.q_proj.weight", "[128, 256]", "[256, 256]")


def test_empty_linear_refused(silu_ckpt, copy_ckpt, outdir):
    src = copy_ckpt(silu_ckpt)
    rewrite_weights(src, lambda w: w.__setitem__("model.layers.0.self_attn.v_proj.weight",
                                          torch.zeros(0, 256, dtype=torch.bfloat16)))
    _convert_refused(src, outdir, "v_proj", "[0, 256]")


def test_one_dimensional_linear_refused(silu_ckpt, copy_ckpt, outdir):
    src = copy_ckpt(silu_ckpt)
    rewrite_weights(src, lambda w: w.__setitem__("model.layers.0.mlp.down_proj.weight",
                                          torch.zeros(256 * 512, dtype=torch.bfloat16)))
    _convert_refused(src, outdir, "down_proj", "shape")


def test_norm_of_wrong_length(silu_ckpt, copy_ckpt, outdir):
    src = copy_ckpt(silu_ckpt)
    rewrite_weights(src, lambda w: w.__setitem__("model.norm.weight", torch.ones(255, dtype=torch.bfloat16)))
    _convert_refused(src, outdir, "model.norm.weight", "[255]")


def test_extra_layer_beyond_config(silu_ckpt, copy_ckpt, outdir):
    src = copy_ckpt(silu_ckpt)
    rewrite_weights(src, lambda w: w.__setitem__("model.layers.7.input_layernorm.weight",
                                          torch.ones(256, dtype=torch.bfloat16)))
    _convert_refused(src, outdir, "model.layers.7.input_layernorm.weight", "num_hidden_layers is 2")


def test_safetensors_format_also_validates(silu_ckpt, copy_ckpt, outdir):
    src = copy_ckpt(silu_ckpt)
    _edit_json(src / "config.json", _set("intermediate_size", 1024))
    _convert_refused(src, outdir, "intermediate 1024", fmt="safetensors")


def test_dry_run_also_validates(silu_ckpt, copy_ckpt, outdir):
    src = copy_ckpt(silu_ckpt)
    _edit_json(src / "config.json", _set("num_hidden_layers", 5))
    r = run_cli("convert", src, outdir / "m.gguf", "--dry-run")
    assert_refused(r, outdir=outdir, contains=("num_hidden_layers is 5",), keep=set())


# -- index ---------------------------------------------------------------------------------
@pytest.mark.parametrize("index", [
    {"weight_map": ["model-00001-of-00003.safetensors"]},
    {"weight_map": "model.safetensors"},
    [{"weight_map": {}}],
    {"metadata": {}},
    {"weight_map": {"model.norm.weight": 5}},
])
def test_malformed_index(sharded_ckpt, copy_ckpt, outdir, index):
    src = copy_ckpt(sharded_ckpt)
    (src / "model.safetensors.index.json").write_text(json.dumps(index))
    _convert_refused(src, outdir, "model.safetensors.index.json")


# -- tokenizer files --------------------------------------------------------------------
@pytest.mark.parametrize("edit,expect", [
    (lambda t: [t], "tokenizer.json"),
    (lambda t: t["added_tokens"].append({"content": "<x>", "special": True}), "id"),
    (lambda t: t["added_tokens"].append({"id": 10**9, "content": "<x>", "special": True}), "1000000000"),
    (lambda t: t["added_tokens"].append({"id": -4, "content": "<x>", "special": True}), "-4"),
    (lambda t: t["model"].__setitem__("vocab", ["a", "b"]), "vocab"),
    (lambda t: t["model"]["vocab"].__setitem__("hello", "seven"), "hello"),
    (lambda t: t["model"]["vocab"].__setitem__("hello", 10**9), "1000000000"),
    (lambda t: t["model"].__setitem__("merges", [1, 2]), "merges"),
    (lambda t: t.__setitem__("added_tokens", {"a": 1}), "added_tokens"),
    (lambda t: t.__setitem__("model", "BPE"), "model"),
])
def test_malformed_tokenizer_json(silu_ckpt, copy_ckpt, outdir, edit, expect):
    src = copy_ckpt(silu_ckpt)
    _edit_json(src / "tokenizer.json", edit)
    line = _convert_refused(src, outdir, expect)
    assert "tokenizer.json" in line


@pytest.mark.parametrize("cfg", [[1], {"add_bos_token": "yes"}, {"chat_template": 5}, {"bos_token": 5}])
def test_malformed_tokenizer_config(silu_ckpt, copy_ckpt, outdir, cfg):
    src = copy_ckpt(silu_ckpt)
    (src / "tokenizer_config.json").write_text(json.dumps(cfg))
    _convert_refused(src, outdir, "tokenizer_config.json")


def _spm_piece(piece: bytes, score: bytes, kind: int) -> bytes:
    body = b"\x0a" + bytes([len(piece)]) + piece + b"\x15" + score + b"\x18" + bytes([kind])
    return b"\x0a" + bytes([len(body)]) + body


@pytest.mark.parametrize("data,expect", [
    (_spm_piece(b"<unk>", struct.pack("<f", 0.0), 2)[:-5], "tokenizer.model"),  # truncated score
    (_spm_piece(b"a", struct.pack("<f", 0.0), 1) + b"\x0a\xff\xff\xff\xff\x0f", "tokenizer.model"),
    (b"\x0a\x03\x0a\x01\xff", "tokenizer.model"),  # a piece that is not UTF-8
    (b"\x0f" * 16, "tokenizer.model"),  # unsupported wire type
    (b"", "no pieces"),
])
def test_malformed_sentencepiece_model(silu_ckpt, copy_ckpt, outdir, data, expect):
    src = copy_ckpt(silu_ckpt)
    (src / "tokenizer.json").unlink()
    (src / "tokenizer.model").write_bytes(data)
    _convert_refused(src, outdir, expect)
