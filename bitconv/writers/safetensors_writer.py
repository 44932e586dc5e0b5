"""Packed Hugging Face safetensors folders (`--format safetensors`, FORMATS.md §7).

The folder is what transformers' bitnet quantizer loads with `from_pretrained`:

* every linear as packed uint8 `[ceil(M/4), K]` codes (`transformers.integrations.bitnet.
  pack_weights` byte for byte) under its Hugging Face name, plus `<name>_scale`
  (`...q_proj.weight_scale`) holding the **reciprocal** `1/s` (`linear_class: bitlinear`,
  which computes `(x_q @ tᵀ) / (input_scale · weight_scale)`), in the source's float dtype
  (bf16 sources: `1/s` is rounded to bf16, a real loss of up to 2^-9 relative per linear);
* every other tensor in its source dtype under its Hugging Face name;
* config.json copied from the source with `quantization_config = {quant_method: bitnet,
  linear_class: bitlinear, quantization_mode: offline}` (plus `bitconv_group_size` when the
  scales are not per tensor), tokenizer files and generation_config.json copied;
* one `model.safetensors`, or `model-0000i-of-0000N.safetensors` shards and
  `model.safetensors.index.json` when the tensors exceed `max_shard_size`.

Families: `BitNetForCausalLM` (relu²), `LlamaForCausalLM` and `Qwen3ForCausalLM` keep
their architecture (transformers' bitnet quantizer replaces every linear but lm_head with a
BitLinear in any model class). A `use_rms_norm` source keeps its per-linear input norms
(`...proj.rms_norm.weight`) and `use_rms_norm` / `rms_norm_eps` in the written
quantization_config. The
1bitLLM `BitnetForCausalLM` (SiLU) has no transformers class; its graph is transformers'
`BitNetForCausalLM` with `hidden_act: silu` (BitNetMLP applies `ACT2FN[hidden_act]`), so it
is written as that class, its sub-norms renamed `inner_attn_ln` -> `attn_sub_norm` and
`ffn_layernorm` -> `ffn_sub_norm`, `auto_map` dropped and the original architectures kept in
`bitconv_source_architectures`.

Streaming: every tensor's header entry (dtype, shape, byte offsets) is computed at plan
time, so the headers are written first and each tensor's bytes go to their final offsets
as they arrive; only one tensor is in memory at a time. Inside a shard the data is laid out
by element size (4-byte, then 2-byte, then 1-byte tensors; names sorted within a size) so
every tensor starts aligned to its element size, as safetensors' own writer lays it out.
JSON headers use sorted keys and are padded with spaces to 8 bytes: the bytes depend only
on the source and the options.
"""

from __future__ import annotations

import json
import shutil
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from .. import __version__, float_range
from ..errors import BadWeightsError, ConversionError, InputError, UsageError
from ..ggml_types import FLOAT_BY_NAME, float_to_bytes
from ..model import LINEAR, OUTPUT, SourceTensor, kind_of, layer_of
from ..pack.hf2bit import HF2Bit
from ..plan import ConversionPlan, ConvertOptions, TensorPlan
from ..quant import GroupSize, Ternary, kernel_view, raise_nonfinite
from ..archs import Architecture, architecture_for
from ..readers.checkpoint import Checkpoint
from .base import Encoded, Payload, Writer
from ..source_kind import kind_summary

LINEAR_CLASS = "bitlinear"
QUANTIZATION_CONFIG = {"quant_method": "bitnet", "linear_class": LINEAR_CLASS, "quantization_mode": "offline"}
GROUP_KEY = "bitconv_group_size"  # quantization_config key recording non-per-tensor scales
SCALE_SUFFIX = "_scale"  # `...proj.weight` -> `...proj.weight_scale`
SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
COPIED_FILES = ("tokenizer.json", "tokenizer.model", "tokenizer_config.json", "special_tokens_map.json",
                "added_tokens.json", "vocab.json", "merges.txt", "chat_template.jinja", "chat_template.json",
                "generation_config.json")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json")

# family read -> (architecture written, transformers model_type)
OUTPUT_FAMILY = {
    "BitNetForCausalLM": ("BitNetForCausalLM", "bitnet"),
    "BitnetForCausalLM": ("BitNetForCausalLM", "bitnet"),  # 1bitLLM: runs as transformers' BitNet
    "LlamaForCausalLM": ("LlamaForCausalLM", "llama"),
    "Qwen3ForCausalLM": ("Qwen3ForCausalLM", "qwen3"),
}

_FLOATS = ("bf16", "f16", "f32")
_ST_DTYPE = {"bf16": "BF16", "f16": "F16", "f32": "F32", "u8": "U8", "u32": "U32", "i32": "I32", "i64": "I64"}
_ITEMSIZE = {"bf16": 2, "f16": 2, "f32": 4, "u8": 1, "u32": 4, "i32": 4, "i64": 8}
_CONFIG_DTYPE = {"bfloat16": "bf16", "float16": "f16", "float32": "f32", "half": "f16", "float": "f32"}


# ---------------------------------------------------------------------------------------
# names
def hf_name_map(arch: Architecture) -> dict[str, str]:
    """GGUF canonical kind/name -> Hugging Face name pattern, the inverse of `arch.map_name`.

    Global tensors map name -> name (`token_embd.weight` -> `model.embed_tokens.weight`),
    layer tensors kind -> suffix (`attn_q` -> `self_attn.q_proj.weight`).
    """
    out = {gguf_name: hf for hf, (gguf_name, _role) in arch.global_names.items()}
    out.update({kind: suffix for suffix, kind in arch.layer_names.items()})
    return out


def hf_name(name: str, arch: Architecture) -> str:
    """`blk.3.attn_sub_norm.weight` -> `model.layers.3.self_attn.attn_sub_norm.weight` in ARCH's names."""
    names = hf_name_map(arch)
    layer = layer_of(name)
    if layer is None:
        hf = names.get(name)
    else:
        suffix = names.get(kind_of(name)) or arch.hf_layer_name(kind_of(name))
        hf = f"model.layers.{layer}.{suffix}" if suffix and name.endswith(".weight") else None
    if hf is None or arch.map_name(hf) is None or arch.map_name(hf)[0] != name:
        raise InputError(f"tensor {name!r} has no Hugging Face name in a {arch.hf_names[0]} model",
                         hint="bitconv writes only the tensors of the model's graph")
    return hf


def scale_shape(shape: tuple[int, int], group: GroupSize, name: str) -> tuple[int, ...]:
    """Shape of `weight_scale` for a linear [M, K]: [1], [M, 1] or [M, K // g]."""
    m, k = shape
    if group == "tensor":
        return (1,)
    if group == "row":
        return (m, 1)
    g = int(group)
    if k % g:
        raise UsageError(
            f"{name}: K={k} is not a multiple of --group-size {g}",
            hint="choose a group size that divides every linear's input width, or 'row'",
        )
    return (m, k // g)


# ---------------------------------------------------------------------------------------
# the folder layout, fixed at plan time
@dataclass
class Entry:
    """One tensor of one shard: where its bytes go."""

    name: str
    dtype: str  # bf16 | f16 | f32 | u8 (| u32 i32 i64: the MLX and compressed-tensors writers)
    shape: tuple[int, ...]
    shard: int = 0
    offset: int = 0  # from the start of the shard's data buffer

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) * _ITEMSIZE[self.dtype]


@dataclass
class Shard:
    file: str
    entries: list[Entry] = field(default_factory=list)
    header: bytes = b""  # 8-byte length + padded JSON

    @property
    def data_size(self) -> int:
        return sum(e.nbytes for e in self.entries)


@dataclass
class FolderLayout:
    """Everything `write` needs, decided before a tensor is read."""

    shards: list[Shard]
    entries: dict[str, list[Entry]]  # TensorPlan.name -> [weight] or [weight, weight_scale]
    config: dict[str, Any]
    copied: list[Path]  # source files copied into the folder
    metadata: dict[str, str]  # safetensors __metadata__

    @property
    def total_size(self) -> int:
        return sum(s.data_size for s in self.shards)

    def files(self) -> list[str]:
        names = [s.file for s in self.shards] + ["config.json"] + [p.name for p in self.copied]
        return sorted(names + ([INDEX_FILE] if len(self.shards) > 1 else []))


def _layout_shard(shard: Shard, metadata: dict[str, str]) -> None:
    """Assign offsets (aligned by element size) and build the header."""
    shard.entries.sort(key=lambda e: (-_ITEMSIZE[e.dtype], e.name))
    header: dict[str, Any] = {"__metadata__": metadata}
    pos = 0
    for e in shard.entries:
        e.offset = pos
        header[e.name] = {"dtype": _ST_DTYPE[e.dtype], "shape": list(e.shape), "data_offsets": [pos, pos + e.nbytes]}
        pos += e.nbytes
    js = json.dumps(header, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode("ascii")
    js += b" " * (-len(js) % 8)  # the data buffer starts 8-byte aligned
    shard.header = struct.pack("<Q", len(js)) + js


def _split_shards(units: list[list[Entry]], max_size: int) -> list[list[Entry]]:
    """Greedy, in plan order; a linear and its scale stay together; an oversized unit gets a shard."""
    shards: list[list[Entry]] = [[]]
    size = 0
    for unit in units:
        n = sum(e.nbytes for e in unit)
        if shards[-1] and size + n > max_size:
            shards.append([])
            size = 0
        shards[-1].extend(unit)
        size += n
    return shards


def build_shards(units: list[list[Entry]], max_size: int, metadata: dict[str, str]) -> list[Shard]:
    """The shards of a folder: units split in plan order, each shard named the way
    transformers' index expects (one file, or `model-0000i-of-0000n`), its entries placed
    and its header built. Every safetensors-container writer (transformers, MLX,
    compressed-tensors) lays its folder out through here."""
    parts = _split_shards(units, max_size)
    shards = []
    for i, part in enumerate(parts):
        file = SINGLE_FILE if len(parts) == 1 else f"model-{i + 1:05d}-of-{len(parts):05d}.safetensors"
        shard = Shard(file, part)
        for e in part:
            e.shard = i
        _layout_shard(shard, metadata)
        shards.append(shard)
    return shards


# ---------------------------------------------------------------------------------------
class SafetensorsWriter(Writer, format="safetensors"):
    is_folder = True

    def plan(self, ckpt: Checkpoint, output: Path, options: ConvertOptions) -> ConversionPlan:
        spec, hp = ckpt.spec, ckpt.spec.hparams
        if options.max_shard_size <= 0:
            raise UsageError(f"--max-shard-size must be positive, got {options.max_shard_size}")
        if spec.family not in OUTPUT_FAMILY:
            raise UsageError(f"{spec.family} models cannot be written as transformers safetensors; "
                             f"supported: {', '.join(sorted(OUTPUT_FAMILY))}")
        out_arch, model_type = OUTPUT_FAMILY[spec.family]
        arch = architecture_for({"architectures": [out_arch]})
        warnings: list[str] = []
        has_output = any(t.role == OUTPUT for t in ckpt.tensors)
        tied = bool(hp.tie_embeddings) or not has_output
        if not hp.tie_embeddings and not has_output:
            warnings.append("the source has no output tensor (token_embd is its output layer): "
                            "wrote tie_word_embeddings = true")
        if spec.family != out_arch:
            warnings.append(f"{spec.family} has no transformers class: wrote it as {out_arch} with hidden_act "
                            f"{hp.hidden_act} and its sub-norms renamed attn_sub_norm / ffn_sub_norm (same graph)")
        scale_dtypes = _ScaleDtypes(ckpt)
        tensors: list[TensorPlan] = []
        entries: dict[str, list[Entry]] = {}
        groups: list[GroupSize] = []
        for src in ckpt.tensors:
            if src.role == OUTPUT and tied:
                continue
            name = hf_name(src.name, arch)
            if name in entries:
                raise InputError(f"two source tensors map to {name!r}")
            if src.role == LINEAR:
                shape = (int(src.shape[0]), int(src.shape[1]))
                group = src.group if src.is_ternary else options.group_size
                if src.is_ternary and group != options.group_size and options.group_size != "tensor":
                    warnings.append(f"{src.name}: kept the source's own {group} scales (already ternary)")
                groups.append(group)
                ents = [Entry(name, "u8", HF2Bit.packed_shape(shape)),
                        Entry(name + SCALE_SUFFIX, scale_dtypes.of(src), scale_shape(shape, group, name))]
                if shape[0] % 4:
                    warnings.append(f"{name}: {shape[0]} rows is not a multiple of 4; transformers' BitLinear "
                                    "expects out_features // 4 packed rows and will not load it")
                tensors.append(TensorPlan(name, shape, LINEAR, "hf2bit", sum(e.nbytes for e in ents), src, group))
            else:
                dt, note = src.dtype, None
                if src.dtype not in _FLOATS:
                    if not (src.is_ternary and len(src.shape) == 2):
                        raise InputError(f"{src.source_name}: a {src.role} tensor of type {src.dtype} cannot be "
                                         "written as a float safetensors tensor")
                    # a ternary embedding/head (Q2_0 GGUF, MLX, int2): its values s·t, in the model's dtype
                    dt = scale_dtypes.default
                    note = (f"ternary in the source ({src.dtype}, group {src.group}) but written as {dt}, "
                            "dequantized: transformers' bitnet format keeps embeddings as floats")
                    warnings.append(f"{name}: {note}")
                ents = [Entry(name, dt, tuple(int(x) for x in src.shape))]
                tensors.append(TensorPlan(name, tuple(src.shape), src.role, dt, ents[0].nbytes, src, note=note))
            entries[name] = ents
        distinct = sorted({str(g) for g in groups})
        if distinct and distinct != ["tensor"]:
            warnings.append("transformers' BitLinear loads only per-tensor scales ([1]); this folder's "
                            f"{'/'.join(distinct)} scales are read by bitconv (convert, verify) "
                            "but not by transformers")
        metadata = _metadata(ckpt, options, distinct)
        metadata["bitconv.source.kinds"] = json.dumps(kind_summary(tp.source for tp in tensors), sort_keys=True)
        shards = build_shards([entries[tp.name] for tp in tensors], options.max_shard_size, metadata)
        config = _config(ckpt, out_arch, model_type, tied, distinct)
        copied = _copied_files(ckpt)
        if not any(p.name in TOKENIZER_FILES for p in copied):
            warnings.append("the source has no tokenizer files: the folder has none (load a tokenizer separately)")
        layout = FolderLayout(shards=shards, entries=entries, config=config, copied=copied, metadata=metadata)
        return ConversionPlan(
            spec=spec, output=output, format="safetensors", options=options, tensors=tensors, arch=out_arch,
            engine="transformers", warnings=warnings, layout=layout,
            layout_metadata={"linear_class": LINEAR_CLASS, "scale": "reciprocal (1/s)",
                             "quantization_config": config["quantization_config"], "files": layout.files()},
        )

    def write(self, tmp: Path, plan: ConversionPlan, tensors: Iterator[tuple[TensorPlan, Payload]]) -> None:
        layout: FolderLayout = plan.layout
        tmp.mkdir()
        handles = []
        try:
            for shard in layout.shards:
                f = open(tmp / shard.file, "wb")
                handles.append(f)
                f.write(shard.header)
                f.truncate(len(shard.header) + shard.data_size)  # every byte is written below
            pending = {tp.name for tp in plan.tensors}
            for tp, payload in tensors:
                ents = layout.entries[tp.name]
                for entry, data in zip(ents, self.encoded(plan, tp, payload)):
                    if data.nbytes != entry.nbytes:
                        raise ConversionError(f"{entry.name}: {data.nbytes} bytes to write, {entry.nbytes} planned")
                    f = handles[entry.shard]
                    f.seek(len(layout.shards[entry.shard].header) + entry.offset)
                    f.write(memoryview(np.ascontiguousarray(data)).cast("B"))
                pending.discard(tp.name)
            if pending:
                raise ConversionError(
                    f"{len(pending)} planned tensor(s) were never written, e.g. {sorted(pending)[0]}")
        finally:
            for f in handles:
                f.close()
        (tmp / "config.json").write_text(json.dumps(layout.config, indent=2) + "\n")
        if len(layout.shards) > 1:
            weight_map = {e.name: s.file for s in layout.shards for e in s.entries}
            index = {"metadata": {"total_size": layout.total_size}, "weight_map": weight_map}
            (tmp / INDEX_FILE).write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
        for path in layout.copied:
            shutil.copyfile(path, tmp / path.name)


    def direct_bytes(self, plan: ConversionPlan, tp: TensorPlan) -> int | None:
        # the source's own bytes, read into memory (source_files: sources are read, not mapped)
        return tp.source.source_nbytes or 0 if self._direct(plan, tp) else None

    @staticmethod
    def _direct(plan: ConversionPlan, tp: TensorPlan) -> bool:
        src = tp.source
        ents = plan.layout.entries[tp.name]
        return not (tp.role == LINEAR or src.is_ternary or src.dtype not in ("f32", "f16", "bf16") or len(ents) != 1
                    or ents[0].dtype != src.dtype or tuple(ents[0].shape) != tuple(src.shape))

    def encode_source(self, plan: ConversionPlan, tp: TensorPlan) -> Encoded | None:
        """A float tensor written in the dtype the source stores it in (a bf16 embedding
        into a bf16 folder): the source's own bytes, after a NaN/Inf count, instead of a
        float32 copy narrowed back (0.2 s of a 1 s conversion of a 2 GB bf16 model). The
        bytes equal `encode`'s: widening is exact and narrowing a value the narrow type
        holds gives it back."""
        src = tp.source
        if not self._direct(plan, tp):
            return None
        raw = src.load_raw()
        if raw.dtype.itemsize != _ITEMSIZE[src.dtype] or raw.dtype.byteorder == ">":
            return None  # a reader without the stored form hands over float32: the usual path
        from ..kernels.floats import count_nonfinite

        view = kernel_view(raw, src.dtype == "bf16", tp.name)
        bad = int(count_nonfinite(view.reshape(-1)))
        if bad:
            raise_nonfinite(tp.name, bad, tuple(src.shape))
        return Encoded([np.ascontiguousarray(raw).reshape(-1).view(np.uint8)])

    def encode(self, plan: ConversionPlan, tp: TensorPlan, payload: Payload) -> Encoded:
        return Encoded(_encode(tp, payload, plan.layout.entries[tp.name]))


# ---------------------------------------------------------------------------------------
def float_bytes(tp: TensorPlan, payload: Payload, entry: Entry) -> np.ndarray:
    """A tensor a folder keeps as floats, in its planned dtype; a shape that differs from the
    plan is refused rather than written under the planned header. (The one float entry of a
    tensor carries the tensor's name.)"""
    arr = np.asarray(payload)
    if tuple(arr.shape) != tuple(entry.shape):
        raise ConversionError(f"{tp.name}: got shape {list(arr.shape)}, planned {list(entry.shape)}")
    return float_to_bytes(arr, FLOAT_BY_NAME[entry.dtype], entry.name)


def _encode(tp: TensorPlan, payload: Payload, ents: list[Entry]) -> list[np.ndarray]:
    """The bytes of each entry of one planned tensor (weight codes and reciprocal scale)."""
    if tp.role != LINEAR:
        return [float_bytes(tp, payload, ents[0])]
    if not isinstance(payload, Ternary):
        raise ConversionError(f"{tp.name}: a linear must arrive ternary, got {type(payload).__name__}")
    if tuple(payload.shape) != tuple(tp.shape):
        raise ConversionError(f"{tp.name}: got shape {list(payload.shape)}, planned {list(tp.shape)}")
    codes = HF2Bit().pack_codes(payload.values)
    s = np.asarray(payload.scales, dtype=np.float32)
    want = ents[1].shape
    if s.size != int(np.prod(want)) or (len(want) == 2 and tuple(s.shape) != tuple(want)):
        raise ConversionError(f"{tp.name}: scales of shape {list(s.shape)} do not fit the planned {list(want)}")
    if not np.all(np.isfinite(s)) or not np.all(s > 0):
        raise BadWeightsError(f"{tp.name}: scale must be finite and positive, got {s.reshape(-1)[:4].tolist()}",
                              hint="the checkpoint is corrupt; nothing was written")
    inv64 = 1.0 / s.astype(np.float64)
    bad = float_range.first_lost(inv64, ents[1].dtype, scale=True)  # f16 1/s = 1e-9 -> 0, 1/1e-39 -> inf
    if bad is not None:
        others = [t for t in float_range.holders(bad[1], scale=True) if t != ents[1].dtype]
        raise BadWeightsError(
            f"{tp.name}: weight_scale 1/s = {bad[1]:.6g} does not fit its {ents[1].dtype} dtype (it would be "
            f"stored as {float_range.describe(bad[1], ents[1].dtype)})",
            hint=(f"a source stored in {' or '.join(others)} writes it in that dtype; " if others else "")
            + "or write a GGUF: --layout i2_s, tl1 or tl2 keep a float32 scale",
        )
    inv = inv64.astype(np.float32).reshape(want)
    data = float_to_bytes(inv, FLOAT_BY_NAME[ents[1].dtype], ents[1].name)
    return [codes, data]


class _ScaleDtypes:
    """The float dtype each linear's weight_scale is written in: the linear's own dtype when
    it is a float latent weight; for one already packed in a Hugging Face folder, the dtype
    of its source weight_scale; otherwise the config's dtype, else f32 (GGUF sources)."""

    def __init__(self, ckpt: Checkpoint) -> None:
        self.ckpt = ckpt
        self._shards = None
        cfg = ckpt.spec.config or {}
        self.default = _CONFIG_DTYPE.get(str(cfg.get("dtype") or cfg.get("torch_dtype") or "").lower(), "f32")

    def of(self, src: SourceTensor) -> str:
        if src.dtype in _FLOATS:
            return src.dtype
        folder = self.ckpt.spec.source.path
        if src.dtype == "hf2bit" and folder is not None and Path(folder).is_dir():
            if self._shards is None:
                from ..readers.safetensors_files import ShardSet

                self._shards = ShardSet(Path(folder))
            name = src.source_name + SCALE_SUFFIX
            if name in self._shards:
                dt = self._shards.info(name)[1]
                if dt in _FLOATS:
                    return dt
        return self.default


def _metadata(ckpt: Checkpoint, options: ConvertOptions, groups: list[str]) -> dict[str, str]:
    src = ckpt.spec.source
    md = {
        "format": "pt",
        "bitconv.version": __version__,
        "bitconv.options": json.dumps(options.recorded(), sort_keys=True),
        "bitconv.family": ckpt.spec.family,
        "bitconv.linear_class": LINEAR_CLASS,
        "bitconv.group_size": ",".join(groups) if groups else "tensor",
        "bitconv.source.kind": src.kind,
        "bitconv.source.location": src.public_location,  # no private local path
    }
    if src.revision:
        md["bitconv.source.revision"] = str(src.revision)
    if src.commit:
        md["bitconv.source.commit"] = str(src.commit)
    return md


def _config(ckpt: Checkpoint, out_arch: str, model_type: str, tied: bool, groups: list[str]) -> dict[str, Any]:
    spec, hp = ckpt.spec, ckpt.spec.hparams
    cfg = json.loads(json.dumps(spec.config or {}))
    if spec.family != out_arch:
        cfg["bitconv_source_architectures"] = cfg.get("architectures") or [spec.family]
        cfg.pop("auto_map", None)  # remote code for a class this folder no longer uses
    cfg.pop("quantization", None)  # an MLX source's quantization block (mlx-lm would read it)
    cfg["architectures"] = [out_arch]
    cfg["model_type"] = model_type
    cfg.setdefault("hidden_act", hp.hidden_act)
    cfg["tie_word_embeddings"] = tied
    q = dict(QUANTIZATION_CONFIG)
    if hp.linear_norms:  # the per-linear input norms are written; transformers applies them with these
        q["use_rms_norm"] = True
        q["rms_norm_eps"] = hp.linear_norm_eps
    if groups and groups != ["tensor"]:
        q[GROUP_KEY] = _group_value(groups[0]) if len(groups) == 1 else "mixed"
    cfg["quantization_config"] = q
    return cfg


def _group_value(g: str) -> Any:
    return int(g) if g.isdigit() else g


def _copied_files(ckpt: Checkpoint) -> list[Path]:
    spec = ckpt.spec
    folders = []
    for d in (spec.source.path, spec.tokenizer_dir):
        if d is not None and Path(d).is_dir() and Path(d) not in folders:
            folders.append(Path(d))
    found: dict[str, Path] = {}
    for d in folders:
        for name in COPIED_FILES:
            if name not in found and (d / name).is_file():
                found[name] = d / name
    return [found[n] for n in sorted(found)]
