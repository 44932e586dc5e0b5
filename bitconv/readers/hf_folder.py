"""Hugging Face model folders: config.json + safetensors (+ tokenizer files).

Latent float linears are handed on to be ternarized; linears already packed in the
Hugging Face bitnet format (uint8 + weight_scale, FORMATS.md §7) are unpacked here into
their own ternary values and scales and never re-quantized.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ..config_values import read_json_object
from ..errors import BadWeightsError, InputError, SourceNotFoundError
from ..model import LINEAR, HParams, ModelSpec, SourceInfo, SourceTensor, kind_of
from ..pack.hf2bit import HF2Bit
from ..quant import Ternary
from ..validate import validate_checkpoint
from ..archs import architecture_for
from ..archs.base import INPUT_NORM_SUFFIX
from .checkpoint import Checkpoint
from .safetensors_files import ShardSet

TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "tokenizer_config.json", "special_tokens_map.json")


def read_config(folder: Path) -> dict[str, Any]:
    path = folder / "config.json"
    if not path.exists():
        raise SourceNotFoundError(
            f"{folder}: no config.json",
            hint="a model folder needs the config.json that describes its architecture",
        )
    config = read_json_object(path)
    return config


def linear_out_features(kind: str, hp: HParams) -> int:
    """M of each projection, needed to unpack HF's row-planes (their packed rows are ceil(M/4))."""
    return {
        "attn_q": hp.num_heads * hp.head_dim,
        "attn_k": hp.num_kv_heads * hp.head_dim,
        "attn_v": hp.num_kv_heads * hp.head_dim,
        "attn_output": hp.hidden_size,
        "ffn_gate": hp.intermediate_size,
        "ffn_up": hp.intermediate_size,
        "ffn_down": hp.hidden_size,
    }[kind]


def packed_scale_is_reciprocal(qconfig: dict[str, Any]) -> bool:
    """`bitlinear` stores 1/s, `autobitlinear` (offline) stores s (FORMATS.md §7)."""
    return qconfig.get("linear_class", "bitlinear") != "autobitlinear"


def group_from_scale_shape(scale_shape: tuple[int, ...], m: int, k: int, name: str) -> Any:
    n = int(np.prod(scale_shape)) if scale_shape else 1
    if n == 1:
        return "tensor"
    if len(scale_shape) == 2 and scale_shape[0] == m:
        if scale_shape[1] == 1:
            return "row"
        if k % scale_shape[1] == 0:
            return k // scale_shape[1]
    raise BadWeightsError(f"{name}: weight_scale of shape {list(scale_shape)} does not fit a [{m}, {k}] weight")


def unpack_hf_linear(codes_packed: np.ndarray, scale: np.ndarray, m: int, name: str,
                     reciprocal: bool) -> Ternary:
    """Packed uint8 + weight_scale -> Ternary, refusing invalid codes and scales by name."""
    k = codes_packed.shape[1]
    values, bad = HF2Bit().unpack_values(codes_packed, m, name)  # one kernel pass; it counts code 3
    if bad:
        raise BadWeightsError(
            f"{name}: {bad} packed code(s) equal 3, which is not a ternary code (0, 1, 2 mean -1, 0, +1)",
            hint="the checkpoint is corrupt or not in the Hugging Face bitnet format",
        )
    scale = np.asarray(scale, dtype=np.float32)
    if scale.size == 0:
        raise BadWeightsError(f"{name}: weight_scale is empty")
    if not np.all(np.isfinite(scale)) or not np.all(scale > 0):
        raise BadWeightsError(
            f"{name}: weight_scale must be finite and positive, got {scale.reshape(-1)[:4].tolist()}",
            hint="the checkpoint is corrupt; fix or re-export it",
        )
    group = group_from_scale_shape(tuple(scale.shape), m, k, name)
    s = (1.0 / scale) if reciprocal else scale
    if group == "tensor":
        s = s.reshape(())
    return Ternary(values, s.astype(np.float32), group)


def model_name(config: dict[str, Any], source: SourceInfo, folder: Path) -> str:
    """A short name for general.name and release file names: the repo or folder name."""
    if source.kind in ("builtin", "folder"):
        return folder.resolve().name
    return str(config.get("_name_or_path") or source.location).rstrip("/").split("/")[-1] or folder.name


def open_folder(folder: Path, source: SourceInfo) -> Checkpoint:
    if not folder.is_dir():
        raise SourceNotFoundError(f"{folder}: not a folder")
    config = read_config(folder)
    from ..rotation import refuse_rotated_config

    refuse_rotated_config(config, str(folder))  # a Hadamard-rotated pack (issue 20): named, whatever its arch
    arch = architecture_for(config, str(folder / "config.json"))
    hp = arch.hparams(config, str(folder / "config.json"))
    from ..config_values import get_dict

    qconfig = get_dict(config, "quantization_config", str(folder / "config.json"))
    from . import engine_folders

    engine = engine_folders.engine_format(config, qconfig, str(folder / "config.json"))  # MLX / compressed-tensors
    if qconfig and qconfig.get("quant_method") not in (None, "bitnet") and engine is None:
        raise InputError(
            f"{folder / 'config.json'}: quantization method {qconfig.get('quant_method')!r} is not ternary; "
            "bitconv reads float or Hugging Face bitnet-packed checkpoints"
        )
    shards = ShardSet(folder)
    tensors: list[SourceTensor] = []
    packed_any = False
    for hf_name in shards.names():
        if hf_name.endswith(".weight_scale") or engine_folders.is_side_tensor(engine, hf_name):
            continue
        try:
            mapped = arch.map_name(engine_folders.weight_name(engine, hf_name))
        except KeyError:
            raise InputError(
                f"{shards.path_of(hf_name)}: tensor {hf_name!r} is not part of a {arch.hf_names[0]} model",
                hint="the checkpoint has extra parameters (biases, adapters) bitconv does not convert",
            ) from None
        if mapped is None:
            continue
        name, role = mapped
        if engine_folders.is_quantized(engine, shards, hf_name):
            packed_any = True
            tensors.append(engine_folders.quantized_tensor(engine, shards, hf_name, name, role, config))
            continue
        shape, dtype = shards.info(hf_name)
        if role == LINEAR and dtype == "u8":
            packed_any = True
            tensors.append(_packed_tensor(shards, hf_name, name, shape, hp, qconfig))
        else:
            if dtype not in ("bf16", "f16", "f32"):
                raise InputError(f"{shards.path_of(hf_name)}: tensor {hf_name!r} has dtype {dtype}; expected bf16/f16/f32")
            tensors.append(SourceTensor(
                name=name, shape=shape, role=role, dtype=dtype, source_name=hf_name,
                _load=(lambda n=hf_name: shards.get(n)),
                _load_rows=(lambda a, b, n=hf_name: shards.get_rows(n, a, b)),
                _load_raw=(lambda n=hf_name: shards.raw(n)),
                _load_raw_rows=(lambda a, b, n=hf_name: shards.raw(n, (a, b))),
                source_nbytes=int(np.prod(shape)) * {"bf16": 2, "f16": 2, "f32": 4}[dtype],
            ))
    _check_linear_norms(tensors, hp, folder / "config.json")
    spec = ModelSpec(
        family=arch.hf_names[0],
        name=model_name(config, source, folder),
        hparams=hp,
        source=source,
        config=config,
        tokenizer_dir=folder if any((folder / f).exists() for f in TOKENIZER_FILES) else None,
        packed=packed_any,
        quantization=dict(qconfig),  # compressed-tensors: says whether activations are int8 (W2A8)
    )
    files = sorted(set(shards.files) | {folder / "config.json"} |
                   {folder / f for f in TOKENIZER_FILES + ("model.safetensors.index.json",) if (folder / f).exists()})
    ckpt = Checkpoint(spec=spec, tensors=tensors, files=files, held=shards.identities())
    validate_checkpoint(ckpt, set(arch.layer_names.values()))
    return ckpt


def _check_linear_norms(tensors: list[SourceTensor], hp: HParams, config_path: Path) -> None:
    """use_rms_norm: every ternary linear needs its input norm, and no other model has them."""
    names = {t.name for t in tensors}
    norms = [t for t in tensors if t.name.endswith(INPUT_NORM_SUFFIX + ".weight")]
    if norms and not hp.linear_norms:
        raise InputError(
            f"{config_path}: the checkpoint has per-linear input norms ({norms[0].source_name}, ...) but its "
            "quantization_config does not set use_rms_norm: true",
            hint="transformers would ignore those tensors; fix the config or the checkpoint")
    if hp.linear_norms:
        for t in tensors:
            if t.role == LINEAR:
                want = t.name[: -len(".weight")] + INPUT_NORM_SUFFIX + ".weight"
                if want not in names:
                    raise InputError(
                        f"{config_path}: quantization_config sets use_rms_norm but {t.source_name} has no "
                        f"input norm ({t.source_name[: -len('.weight')]}.rms_norm.weight)",
                        hint="the checkpoint is incomplete")


def _packed_tensor(shards: ShardSet, hf_name: str, name: str, shape: tuple[int, ...], hp: HParams,
                   qconfig: dict[str, Any]) -> SourceTensor:
    scale_name = hf_name + "_scale"
    if scale_name not in shards:
        raise BadWeightsError(
            f"{shards.path_of(hf_name)}: packed weight {hf_name!r} has no {scale_name!r}",
            hint="a Hugging Face bitnet-packed linear needs its weight_scale; the checkpoint is incomplete",
        )
    m = linear_out_features(kind_of(name), hp)
    if len(shape) != 2 or shape[0] != (m + 3) // 4:
        raise BadWeightsError(
            f"{hf_name}: packed shape {list(shape)} does not match {m} output features "
            f"(expected [{(m + 3) // 4}, K])"
        )
    reciprocal = packed_scale_is_reciprocal(qconfig)
    group = group_from_scale_shape(shards.info(scale_name)[0], m, shape[1], scale_name)

    def load() -> Ternary:
        return unpack_hf_linear(shards.get(hf_name), shards.get(scale_name), m, hf_name, reciprocal)

    return SourceTensor(
        name=name, shape=(m, shape[1]), role=LINEAR, dtype="hf2bit", source_name=hf_name,
        _load_ternary=load, source_nbytes=int(np.prod(shape)), group=group,
    )
