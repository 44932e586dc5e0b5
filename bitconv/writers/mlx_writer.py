"""MLX folders for mlx-lm (`--format mlx`): `mlx_lm.load(path)` runs them on Apple silicon.

Llama and Qwen3 ternary models (mlx-lm's `llama` and `qwen3` models) are written in MLX's
own affine 2-bit storage, exactly (pack/mlx_affine.py): every ternary linear as `.weight`
(uint32 [M, K/16], q = t + 1), `.scales` (s) and `.biases` (−s) per group of G values,
G ∈ {128, 64, 32} the largest that divides every K and holds every tensor's own scale group
(a tensor or row scale is repeated per group); `config.json` gets
`"quantization": {"group_size": G, "bits": 2, "mode": "affine"}`. mlx-lm quantizes exactly
the modules that have `.scales` in the file, so float tensors stay float; a ternary
embedding / head (Ternary-Bonsai style) is quantized the same way (mlx-lm's
QuantizedEmbedding, whose `as_linear` is the tied head). Scales and biases are stored in the
model's dtype, where mlx-lm computes (`engine_folder.model_dtype`); when that may round a
source scale the plan says by how much.

The relu² BitNet family (transformers' BitNetForCausalLM) has its own mlx-lm model,
`bitnet`, which reads the Hugging Face packed format (`quant_method: bitnet`, uint8 codes +
`weight_scale`): that folder is written here as `--format safetensors` writes it. mlx-lm's
BitLinear holds one scale per tensor and no per-linear input norm, so other scale groups and
`use_rms_norm` are refused. Its matmul is a Metal kernel: mlx-lm runs that folder only on
Apple silicon.

The 1bitLLM SiLU family (`BitnetForCausalLM`) is refused: its sub-norms (`inner_attn_ln`,
`ffn_layernorm`) are not in mlx-lm's `llama` graph, and mlx-lm's `bitnet` model is relu²
only. A model pre-rotated by a Hadamard transform is refused too (mlx-lm's llama/qwen3 would
not apply the rotation).

mlx-lm runs activations in the model's float dtype (W2A16). A BitNet model (8-bit per-token
activations in its own graph) therefore computes slightly differently there: the plan warns.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ..archs import architecture_for
from ..errors import LayoutError, UsageError
from ..float_range import check_scales as range_check
from ..ggml_types import FLOAT_BY_NAME, float_to_bytes
from ..model import EMBEDDING, LINEAR, OUTPUT
from ..pack.mlx_affine import MLXAffine2, choose_group_size
from ..pack.words2 import group_fits
from ..plan import ConversionPlan, ConvertOptions, TensorPlan
from ..readers.checkpoint import Checkpoint
from ..source_kind import is_bitnet_model
from .base import Encoded, Payload
from .engine_folder import (MODEL_TYPE, encode_float, engine_config, float_plan, folder_layout, model_dtype,
                            output_tying, require_ternary, rounding_warning, scale_exact_in)
from .safetensors_writer import Entry, SafetensorsWriter, hf_name
from ..rotation import refuse_rotated

BITNET = "BitNetForCausalLM"
LAYOUT = "mlx_affine2"


class MLXWriter(SafetensorsWriter, format="mlx"):
    is_folder = True

    def plan(self, ckpt: Checkpoint, output: Path, options: ConvertOptions) -> ConversionPlan:
        spec, hp = ckpt.spec, ckpt.spec.hparams
        refuse_rotated(ckpt, "mlx")
        if spec.family == BITNET:
            return self._plan_bitnet(ckpt, output, options)
        if spec.family == "BitnetForCausalLM":
            raise UsageError(
                "BitnetForCausalLM (1bitLLM, SiLU with sub-norms inner_attn_ln / ffn_layernorm) cannot be written "
                "for mlx-lm: its `llama` model has no sub-norms and its `bitnet` model is relu² only, so either "
                "would compute another function",
                hint="use --format gguf (llama.cpp / bitnet.cpp) or --format safetensors (transformers)")
        if spec.family not in MODEL_TYPE:
            raise UsageError(f"{spec.family} models cannot be written for mlx-lm; supported: "
                             f"{', '.join(sorted([*MODEL_TYPE, BITNET]))}")
        if hp.linear_norms:
            raise LayoutError(
                f"{spec.source.location}: the model has an RMSNorm before every ternary linear (use_rms_norm) and "
                f"mlx-lm's {MODEL_TYPE[spec.family]} model does not apply them: it would compute another function",
                hint="use --format safetensors (transformers loads it with the same quantization_config)")
        arch = architecture_for({"architectures": [spec.family]})
        dtype = model_dtype(ckpt)
        tied, warnings = output_tying(ckpt)
        kept = [s for s in ckpt.tensors if not (s.role == OUTPUT and tied)]

        def own_group(src) -> Any:
            return src.group if src.is_ternary else options.group_size

        quantized = [(src.name, tuple(int(x) for x in src.shape), own_group(src)) for src in kept if src.role == LINEAR]
        # ternary embedding / head (exact-ternary floats or a packed source): quantized when G holds them
        tables = {src.name for src in kept if src.role in (EMBEDDING, OUTPUT) and src.is_ternary}
        g = choose_group_size(quantized) if quantized else 64
        layout = MLXAffine2(g)
        tensors: list[TensorPlan] = []
        units: list[list[Entry]] = []
        inexact: list[str] = []
        for src in kept:
            name = hf_name(src.name, arch)
            shape = tuple(int(x) for x in src.shape)
            quantize = src.role == LINEAR or (src.name in tables and shape[1] % g == 0 and group_fits(src.group, g))
            if quantize:
                group = own_group(src)
                layout.check(name, shape, group)
                base = name[: -len(".weight")]
                ents = [Entry(name, "u32", (shape[0], shape[1] // 16)), Entry(base + ".scales", dtype, (shape[0], shape[1] // g)),
                        Entry(base + ".biases", dtype, (shape[0], shape[1] // g))]
                if src.is_ternary and not scale_exact_in(src.dtype, src.kind, dtype):
                    inexact.append(name)
                tp = TensorPlan(name, shape, src.role, LAYOUT, sum(e.nbytes for e in ents), src,
                                group if src.role == LINEAR else src.group)
            else:
                why = f": MLX groups of {g} cannot hold its scales (K={shape[1]})" if src.name in tables else None
                tp, ents = float_plan(src, name, shape, dtype, why, warnings)
            tensors.append(tp)
            units.append(ents)
        if inexact:
            warnings.append(rounding_warning(inexact, dtype, "mlx"))
        if is_bitnet_model(spec):
            warnings.append(f"mlx-lm runs activations in {dtype} (W2A16); this BitNet model quantizes them to int8 "
                            "per token in its own graph, so mlx-lm's logits differ slightly from the source's")
        quant = {"group_size": g, "bits": 2, "mode": "affine"}
        config = engine_config(ckpt, tied, "quantization_config")
        config["quantization"] = quant
        folder = folder_layout(ckpt, units, tensors, options, config,
                               {"format": "mlx", "bitconv.mlx.group_size": str(g)})
        return ConversionPlan(
            spec=spec, output=output, format="mlx", options=options, tensors=tensors, arch=MODEL_TYPE[spec.family],
            engine="mlx-lm", warnings=warnings, layout=folder,
            layout_metadata={"mlx_format": "affine", "quantization": quant, "scale_dtype": dtype,
                             "files": folder.files()},
        )

    def _plan_bitnet(self, ckpt: Checkpoint, output: Path, options: ConvertOptions) -> ConversionPlan:
        """relu² BitNet: the Hugging Face packed folder, which mlx-lm's `bitnet` model reads."""
        hp = ckpt.spec.hparams
        if hp.linear_norms:
            raise LayoutError(f"{ckpt.spec.source.location}: mlx-lm's bitnet model has no per-linear input norms "
                              "(use_rms_norm); it would compute another function",
                              hint="use --format safetensors (transformers applies them)")
        plan = SafetensorsWriter.plan(self, ckpt, output, options)
        for tp in plan.tensors:
            if tp.role == LINEAR:
                if tp.group != "tensor":
                    raise LayoutError(
                        f"{tp.name}: mlx-lm's bitnet BitLinear holds one weight_scale per tensor; this linear has "
                        f"{tp.group} scales", hint="use --group-size tensor, or --format safetensors / gguf")
                if tp.shape[0] % 4:
                    raise LayoutError(f"{tp.name}: {tp.shape[0]} rows is not a multiple of 4, which mlx-lm's bitnet "
                                      "BitLinear needs (it packs 4 rows a byte)")
        plan.warnings = [w for w in plan.warnings if "BitLinear expects" not in w]
        plan.warnings.append("mlx-lm's bitnet model runs its linears with a Metal kernel: this folder runs in mlx-lm "
                             "on Apple silicon only, with activations in the model's float dtype (W2A16)")
        # mlx-lm's bitnet model builds its BitLinears with invert_weight_scales=False whatever the
        # config says (bitnet_quantize only replaces nn.Linear), so it multiplies by weight_scale:
        # the folder stores s, as `autobitlinear` (microsoft/bitnet-b1.58-2B-4T's convention, which
        # transformers loads too), not `bitlinear`'s 1/s.
        q = plan.layout.config["quantization_config"]
        q["linear_class"] = "autobitlinear"
        plan.layout_metadata["quantization_config"] = q
        plan.layout_metadata["linear_class"] = "autobitlinear"
        plan.layout_metadata["scale"] = "s (autobitlinear)"
        plan.layout.metadata["bitconv.linear_class"] = "autobitlinear"
        from .safetensors_writer import _layout_shard

        for shard in plan.layout.shards:
            _layout_shard(shard, plan.layout.metadata)
        plan.format, plan.engine, plan.arch = "mlx", "mlx-lm", "bitnet"
        plan.layout_metadata["mlx_format"] = "bitnet-packed"
        return plan

    def encode(self, plan: ConversionPlan, tp: TensorPlan, payload: Payload) -> Encoded:
        ents = plan.layout.entries[tp.name]
        if plan.layout_metadata.get("mlx_format") != "affine":
            if tp.role != LINEAR:
                return super().encode(plan, tp, payload)
            return self._encode_bitnet(tp, payload, ents)
        if tp.out_type != LAYOUT:
            return encode_float(tp, payload, ents[0])
        payload = require_ternary(tp, payload)
        layout = MLXAffine2(plan.layout_metadata["quantization"]["group_size"])
        words = layout.pack_codes(payload.values, tp.name)
        s, b = layout.scales_biases(payload, tp.name)
        dt = ents[1].dtype
        range_check(tp.name, s, dt, "MLX's")  # issue 25: 1e5 -> inf, 1e-9 -> 0 in f16 refused, never written
        range_check(tp.name, b, dt, "MLX's bias")
        return Encoded([words.reshape(-1).view(np.uint8), float_to_bytes(s, FLOAT_BY_NAME[dt], tp.name),
                        float_to_bytes(b, FLOAT_BY_NAME[dt], tp.name)])

    @staticmethod
    def _encode_bitnet(tp: TensorPlan, payload: Payload, ents: list[Entry]) -> Encoded:
        """Hugging Face 2-bit codes and weight_scale = s (autobitlinear), for mlx-lm's bitnet."""
        from ..pack.hf2bit import HF2Bit
        from ..pack.words2 import check_scales

        payload = require_ternary(tp, payload)
        s = np.asarray(payload.scales, dtype=np.float32).reshape(ents[1].shape)
        check_scales(s, tp.name)
        range_check(tp.name, s, ents[1].dtype, "MLX bitnet's")  # f16 overflow / underflow refused
        return Encoded([HF2Bit().pack_codes(payload.values, tp.name),
                        float_to_bytes(s, FLOAT_BY_NAME[ents[1].dtype], tp.name)])
