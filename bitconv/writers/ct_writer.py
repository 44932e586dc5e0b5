"""compressed-tensors folders (`--format compressed-tensors`): the `pack-quantized` int2
format llm-compressor writes and transformers / vLLM load with `quant_method:
compressed-tensors`.

Every ternary linear is `<name>.weight_packed` (int32, pack/ct_int2.py: bytes equal to
compressed-tensors' own `pack_to_int32(t, 2)`), `<name>.weight_scale` (s: [M, 1] for
`strategy: channel`, [M, K/G] for `strategy: group` with the source's own group G; a
per-tensor scale repeated per row) and `<name>.weight_shape` (int64 [M, K]). config.json
keeps the model class and gets `quantization_config`:

* `quant_method: compressed-tensors`, `format: pack-quantized`,
  `quantization_status: compressed`;
* one config group per scale strategy, weights `{num_bits: 2, type: int, symmetric: true,
  strategy: channel | group, group_size, dynamic: false}`, targeting `Linear` (one group)
  or the modules by name (several);
* `ignore`: every float linear (the head, unless it is ternary in the source);
* `input_activations`: what the source model does to activations. A plain ternary Llama /
  Qwen3 (exact-ternary floats, Bonsai style) runs them in float: **W2A16**, `null`. A BitNet
  model (a bitnet quantization_config: activations absmax-quantized to int8 per token)
  declares **W2A8**: `{num_bits: 8, type: int, strategy: token, dynamic: true, symmetric:
  true}`. compressed-tensors' own forward (transformers) then quantizes with
  `scale = max|x| / 127.5` where BitNet uses `max|x| / 127`: one 0.4% wider step (measured
  by the judges as part of the logits gate).

Embeddings are never quantized by this format: a ternary embedding is written as the floats
it holds (same values, in its dtype) and the plan says so. Scales are stored in the model's
dtype, the dtype compressed-tensors creates `weight_scale` in; when that may round a source
scale, the plan says by how much.

Families: Llama and Qwen3 (transformers and vLLM have both). BitNet families
(BitNetForCausalLM relu², 1bitLLM BitnetForCausalLM) are refused: vLLM has no BitNet
architecture and compressed-tensors no sub-norm, so no engine that reads this format runs
them. `use_rms_norm` models likewise (no per-linear input norm in either engine).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ..archs import architecture_for
from ..errors import ConversionError, LayoutError, UsageError
from ..float_range import check_scales as range_check
from ..ggml_types import FLOAT_BY_NAME, float_to_bytes
from ..model import LINEAR, OUTPUT
from ..pack.ct_int2 import CTInt2, strategy_of
from ..pack.words2 import n_words
from ..plan import ConversionPlan, ConvertOptions, TensorPlan
from ..readers.checkpoint import Checkpoint
from ..rotation import refuse_rotated
from ..source_kind import declares_int8_activations, is_bitnet_model
from .base import Encoded, Payload
from .engine_folder import (encode_float, engine_config, float_plan, folder_layout, model_dtype, output_tying,
                            require_ternary, rounding_warning, scale_exact_in)
from .safetensors_writer import Entry, SafetensorsWriter, hf_name

FAMILIES = ("LlamaForCausalLM", "Qwen3ForCausalLM")
LAYOUT = "ct_int2"
FORMAT = "pack-quantized"
W2A8_ACTIVATIONS = {"num_bits": 8, "type": "int", "symmetric": True, "strategy": "token", "dynamic": True,
                    "group_size": None, "block_structure": None, "actorder": None, "observer": None,
                    "observer_kwargs": {}}
PACKED, SCALE, SHAPE = ".weight_packed", ".weight_scale", ".weight_shape"


def weight_args(strategy: str, group: int | None) -> dict[str, Any]:
    return {"num_bits": 2, "type": "int", "symmetric": True, "strategy": strategy, "group_size": group,
            "dynamic": False, "block_structure": None, "actorder": None, "observer": None, "observer_kwargs": {}}


class CompressedTensorsWriter(SafetensorsWriter, format="compressed-tensors"):
    is_folder = True

    def plan(self, ckpt: Checkpoint, output: Path, options: ConvertOptions) -> ConversionPlan:
        spec, hp = ckpt.spec, ckpt.spec.hparams
        refuse_rotated(ckpt, "compressed-tensors")
        if spec.family not in FAMILIES:
            raise UsageError(
                f"{spec.family} models cannot be written as compressed-tensors: vLLM has no BitNet architecture and "
                "compressed-tensors no BitNet sub-norms, so no engine that reads the format would run it"
                if spec.family in ("BitNetForCausalLM", "BitnetForCausalLM") else
                f"{spec.family} models cannot be written as compressed-tensors; supported: {', '.join(FAMILIES)}",
                hint="use --format gguf (bitnet.cpp / llama.cpp) or --format safetensors (transformers)")
        if hp.linear_norms:
            raise LayoutError(
                f"{spec.source.location}: the model has an RMSNorm before every ternary linear (use_rms_norm), which "
                "neither transformers' nor vLLM's compressed-tensors path applies: it would compute another function",
                hint="use --format safetensors (transformers loads it with the same quantization_config)")
        arch = architecture_for({"architectures": [spec.family]})
        dtype = model_dtype(ckpt)
        tied, warnings = output_tying(ckpt)
        layout = CTInt2()
        tensors: list[TensorPlan] = []
        units: list[list[Entry]] = []
        inexact: list[str] = []
        groups: dict[tuple[str, int | None], list[str]] = {}
        ignore: list[str] = []
        head_ternary = False
        for src in ckpt.tensors:
            if src.role == OUTPUT and tied:
                continue
            name = hf_name(src.name, arch)
            shape = tuple(int(x) for x in src.shape)
            quantize = src.role == LINEAR or (src.role == OUTPUT and src.is_ternary)
            if quantize:
                group = src.group if src.is_ternary else options.group_size
                layout.check(name, shape, group)
                strategy, g = strategy_of(group)
                base = name[: -len(".weight")]
                ns = 1 if strategy == "channel" else shape[1] // g
                ents = [Entry(base + PACKED, "i32", (shape[0], n_words(shape[1]))),
                        Entry(base + SCALE, dtype, (shape[0], ns)), Entry(base + SHAPE, "i64", (2,))]
                if src.is_ternary and not scale_exact_in(src.dtype, src.kind, dtype):
                    inexact.append(name)
                groups.setdefault((strategy, g), []).append(base)
                head_ternary |= src.role == OUTPUT
                tp = TensorPlan(name, shape, src.role, LAYOUT, sum(e.nbytes for e in ents), src, group)
            else:
                why = (" (same values): compressed-tensors' pack-quantized format quantizes Linear modules only"
                       if src.is_ternary and src.role != LINEAR else None)
                tp, ents = float_plan(src, name, shape, dtype, why, warnings)
            tensors.append(tp)
            units.append(ents)
        if not head_ternary:
            ignore.append("lm_head")  # a float head (or the tied embedding) is a Linear the config must skip
        if inexact:
            warnings.append(rounding_warning(inexact, dtype, "compressed-tensors"))
        a8 = is_bitnet_model(spec) or declares_int8_activations(spec)  # a W2A8 folder read back stays W2A8
        acts = dict(W2A8_ACTIVATIONS) if a8 else None
        config_groups = {}
        for i, ((strategy, g), modules) in enumerate(sorted(groups.items(), key=lambda kv: (kv[0][0], kv[0][1] or 0))):
            config_groups[f"group_{i}"] = {
                "targets": ["Linear"] if len(groups) == 1 else sorted(modules),
                "weights": weight_args(strategy, g), "input_activations": acts, "output_activations": None,
                "format": FORMAT}
        qconfig = {"quant_method": "compressed-tensors", "format": FORMAT, "quantization_status": "compressed",
                   "config_groups": config_groups, "ignore": ignore, "kv_cache_scheme": None,
                   "global_compression_ratio": None, "sparsity_config": {}, "transform_config": {}}
        config = engine_config(ckpt, tied, "quantization")  # drops an MLX source's own quantization block
        config.setdefault("torch_dtype", {"bf16": "bfloat16", "f16": "float16", "f32": "float32"}[dtype])
        config["quantization_config"] = qconfig
        scheme = "W2A8" if a8 else "W2A16"
        folder = folder_layout(ckpt, units, tensors, options, config,
                               {"format": "pt", "bitconv.compressed_tensors.scheme": scheme})
        return ConversionPlan(
            spec=spec, output=output, format="compressed-tensors", options=options, tensors=tensors,
            arch=config["model_type"], engine="vLLM / transformers (compressed-tensors)", warnings=warnings,
            layout=folder,
            layout_metadata={"scheme": scheme, "quantization_config": qconfig, "scale_dtype": dtype,
                             "files": folder.files()},
        )

    def encode(self, plan: ConversionPlan, tp: TensorPlan, payload: Payload) -> Encoded:
        ents = plan.layout.entries[tp.name]
        if tp.out_type != LAYOUT:
            return encode_float(tp, payload, ents[0])
        payload = require_ternary(tp, payload)
        layout = CTInt2()
        packed = layout.pack_codes(payload.values, tp.name)
        s = layout.weight_scale(payload, tp.name)
        if tuple(s.shape) != tuple(ents[1].shape):
            raise ConversionError(f"{tp.name}: scales of shape {list(s.shape)} do not fit the planned "
                                  f"{list(ents[1].shape)}")
        dt = ents[1].dtype
        range_check(tp.name, s, dt, "compressed-tensors'")  # issue 25: f16 overflow / underflow refused
        shape = np.asarray(tp.shape, dtype="<i8")
        return Encoded([packed.reshape(-1).view(np.uint8), float_to_bytes(s, FLOAT_BY_NAME[dt], tp.name),
                        shape.view(np.uint8)])
