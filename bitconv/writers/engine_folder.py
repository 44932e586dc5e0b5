"""What the MLX and compressed-tensors writers share: a Hugging Face-named safetensors
folder (the container `SafetensorsWriter` already streams), the float dtype the model runs
in, and whether a stored scale dtype holds the source's scales exactly.

Each of those writers owns its config keys and tensor entries; this module only keeps the
container steps they would otherwise copy (shard split, headers, copied tokenizer files).
"""

from __future__ import annotations

import json
import math
from typing import Any

from ..errors import ConversionError
from ..model import EMBEDDING, OUTPUT
from ..plan import TensorPlan
from ..quant import Ternary
from ..plan import ConvertOptions
from .base import Encoded, Payload
from ..readers.checkpoint import Checkpoint
from ..source_kind import SourceKind, kind_summary
from .safetensors_writer import (INDEX_FILE, Entry, FolderLayout, _copied_files, _metadata, build_shards, _CONFIG_DTYPE,
                                 _FLOATS, float_bytes)

# the Hugging Face classes both engines run as their own models, and those models' model_type
MODEL_TYPE = {"LlamaForCausalLM": "llama", "Qwen3ForCausalLM": "qwen3"}
# relative rounding of a scale stored in a narrower float (half an ulp)
ROUNDING = {"bf16": 2.0 ** -9, "f16": 2.0 ** -11, "f32": 0.0}


def model_dtype(ckpt: Checkpoint) -> str:
    """The float dtype the model runs in: its config's dtype, else its embedding's, else f32.
    Scales are stored in it, because both engines compute in the model's dtype (mlx-lm's
    quantized_matmul takes scales in the activations' dtype; compressed-tensors creates
    `weight_scale` in the weight's dtype and copies a stored scale into it)."""
    cfg = ckpt.spec.config or {}
    named = _CONFIG_DTYPE.get(str(cfg.get("dtype") or cfg.get("torch_dtype") or "").lower())
    if named:
        return named
    for t in ckpt.tensors:
        if t.role == EMBEDDING and t.dtype in _FLOATS:
            return t.dtype
    return "f32"


def scale_exact_in(src_dtype: str, kind: Any, dtype: str) -> bool:
    """Whether `dtype` holds a source tensor's scales exactly, known before reading them: an
    exact-ternary float tensor's `s` is one of its stored values (s·1), so its own dtype or a
    wider one holds it; every scale fits float32 (bitconv keeps scales in float32)."""
    if dtype == "f32":
        return True
    if kind == SourceKind.EXACT:
        return src_dtype == dtype
    return False


def rounding_warning(names: list[str], dtype: str, fmt: str) -> str:
    return (f"{len(names)} tensor(s) ({', '.join(names[:3])}{', ...' if len(names) > 3 else ''}) have scales that "
            f"{dtype} may not hold exactly: {fmt} stores them in the model's dtype {dtype}, rounding each to "
            f"nearest (at most {ROUNDING[dtype]:.3g} relative, i.e. 2^{int(math.log2(ROUNDING[dtype]))})"
            "; convert from a float32 model to keep them exact")


def folder_layout(ckpt: Checkpoint, units: list[list[Entry]], tensors, options: ConvertOptions,
                  config: dict[str, Any], extra_metadata: dict[str, str]) -> FolderLayout:
    """Shards, headers and copied files of a folder whose entries the writer chose."""
    metadata = _metadata(ckpt, options, [])
    metadata.pop("bitconv.linear_class", None)
    metadata.pop("bitconv.group_size", None)
    metadata.update(extra_metadata)
    metadata["bitconv.source.kinds"] = json.dumps(kind_summary(tp.source for tp in tensors), sort_keys=True)
    shards = build_shards(units, options.max_shard_size, metadata)
    entries = {}
    for tp, unit in zip(tensors, units):
        entries[tp.name] = unit
    return FolderLayout(shards=shards, entries=entries, config=config, copied=_copied_files(ckpt), metadata=metadata)


def source_config(ckpt: Checkpoint) -> dict[str, Any]:
    """A deep copy of the source's config.json (GGUF sources: the keys a Hugging Face config
    of the family needs, from the hyperparameters)."""
    spec, hp = ckpt.spec, ckpt.spec.hparams
    if spec.config:
        return json.loads(json.dumps(spec.config))
    return {"hidden_size": hp.hidden_size, "intermediate_size": hp.intermediate_size,
            "num_hidden_layers": hp.num_layers, "num_attention_heads": hp.num_heads,
            "num_key_value_heads": hp.num_kv_heads, "head_dim": hp.head_dim, "vocab_size": hp.vocab_size,
            "max_position_embeddings": hp.context_length, "rope_theta": hp.rope_theta, "rms_norm_eps": hp.rms_eps,
            "hidden_act": hp.hidden_act, "tie_word_embeddings": hp.tie_embeddings,
            "bos_token_id": hp.bos_token_id, "eos_token_id": hp.eos_token_id}


def has_output(ckpt: Checkpoint) -> bool:
    return any(t.role == OUTPUT for t in ckpt.tensors)


def output_tying(ckpt: Checkpoint) -> tuple[bool, list[str]]:
    """Whether the folder ties its head to the embedding, and the warning to show when the
    source forces it: a source with no output tensor uses token_embd as its output layer, so
    the folder must say `tie_word_embeddings = true` even where the source config did not."""
    tie = bool(ckpt.spec.hparams.tie_embeddings)
    out_present = has_output(ckpt)
    warnings = []
    if not tie and not out_present:
        warnings.append("the source has no output tensor (token_embd is its output layer): "
                        "wrote tie_word_embeddings = true")
    return tie or not out_present, warnings


def float_plan(src, name: str, shape: tuple[int, ...], dtype: str, why: str | None,
               warnings: list[str]) -> tuple[TensorPlan, list[Entry]]:
    """A tensor the folder keeps as floats: in its own float dtype, else the model's DTYPE. WHY
    (a ternary tensor the format cannot quantize): why it is written dequantized, said in the
    plan's note and warnings."""
    out = src.dtype if src.dtype in _FLOATS else dtype
    ents = [Entry(name, out, shape)]
    note = None
    if why is not None:
        note = f"ternary in the source (group {src.group}) but written as {out}, dequantized{why}"
        warnings.append(f"{name}: {note}")
    return TensorPlan(name, shape, src.role, out, ents[0].nbytes, src, note=note), ents


def engine_config(ckpt: Checkpoint, tied: bool, foreign_quantization: str) -> dict[str, Any]:
    """The source's config for an MLX or compressed-tensors folder of a Llama / Qwen3 model:
    no `auto_map` (no remote code runs it) and no FOREIGN_QUANTIZATION block (the other
    format's; the writer sets its own, in place where the source had one), the model's class
    and model_type, and whether the head is tied."""
    family = ckpt.spec.family
    config = source_config(ckpt)
    config.pop(foreign_quantization, None)
    config.pop("auto_map", None)
    config["architectures"] = [family]
    config["model_type"] = MODEL_TYPE[family]
    config["tie_word_embeddings"] = tied
    return config


def encode_float(tp: TensorPlan, payload: Payload, entry: Entry) -> Encoded:
    """A tensor the folder keeps as floats, in its planned dtype (`float_bytes`)."""
    return Encoded([float_bytes(tp, payload, entry)])


def require_ternary(tp: TensorPlan, payload: Payload) -> Ternary:
    """The payload of a planned ternary linear, refused if the reader handed anything else."""
    if not isinstance(payload, Ternary) or tuple(payload.shape) != tuple(tp.shape):
        raise ConversionError(f"{tp.name}: expected a ternary [{tp.shape[0]}, {tp.shape[1]}] tensor")
    return payload


__all__ = ["INDEX_FILE", "model_dtype", "scale_exact_in", "rounding_warning", "folder_layout", "source_config",
           "has_output", "output_tying", "encode_float", "require_ternary", "float_plan", "engine_config",
           "MODEL_TYPE"]
