"""GGUF output through the `gguf` package, streamed: all tensor infos first, then each
tensor's bytes as soon as it is packed, so only one tensor is in memory at a time."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterator

import gguf
import numpy as np

from .. import __version__
from ..errors import CorruptFileError, LayoutError
from ..embedding_types import TERNARY_TYPES as TERNARY_EMBEDDING_TYPES
from ..embedding_types import resolve as resolve_embedding_type
from ..ggml_types import F32, FLOAT_BY_NAME, check_narrowed, float_to_bytes
from ..model import EMBEDDING, LINEAR, OUTPUT, kind_of
from ..pack import Layout, get_layout
from ..plan import ConversionPlan, ConvertOptions, TensorPlan
from ..quant import Ternary, kernel_view, raise_nonfinite
from ..archs.base import family_of
from ..archs.llama import to_llama_rope_order
from ..readers.checkpoint import Checkpoint
from .base import Encoded, Payload, Writer
from ..source_kind import check_own_group, refuse_linear_norms, ternary_written_as_float
from .tokenizer import load_tokenizer

QUANTIZATION_VERSION = 2


def make_layout(options: ConvertOptions) -> Layout:
    """The layout instance with the options that apply to it."""
    name = options.layout
    if name == "i2_s":
        return get_layout(name, variant=options.i2s_variant)
    if name in ("tl1", "tl2") and options.kernel_config is not None:
        from ..pack.tiles import read_kernel_config

        return get_layout(name, kernel_config=read_kernel_config(options.kernel_config))
    return get_layout(name)


class GGUFWriter(Writer, format="gguf"):
    def plan(self, ckpt: Checkpoint, output: Path, options: ConvertOptions) -> ConversionPlan:
        spec, hp = ckpt.spec, ckpt.spec.hparams
        _check_float32_hparams(hp)
        layout = make_layout(options)
        if layout.ggml_type is None:
            raise LayoutError(f"layout {layout.name} is not a GGUF layout", hint="use --format safetensors")
        family = family_of(spec)
        engine = layout.engine
        arch = family.gguf_arch(hp, engine)
        has_output = any(t.role == OUTPUT for t in ckpt.tensors) and not hp.tie_embeddings
        warnings = family.check_engine(hp, engine, layout.name, has_output, options.allow_engine_mismatch)
        drop_output = arch == "bitnet"  # the `bitnet` graph has no output tensor (FORMATS.md §8)
        if drop_output and has_output:
            warnings.append("dropped output.weight: the 'bitnet' graph uses token_embd as the output layer")
        refuse_linear_norms(ckpt)
        if spec.gguf_metadata:
            check_carried_keys(ckpt, spec.gguf_metadata)
            if spec.tokenizer_dir is None and "tokenizer.ggml.tokens" not in spec.gguf_metadata:
                warnings.append("the source GGUF has no tokenizer (no tokenizer.ggml.tokens): the output has none "
                                "either, and llama.cpp / bitnet.cpp will not load it until one is added")
        tensors: list[TensorPlan] = []
        for src in ckpt.tensors:
            if src.role == OUTPUT and (hp.tie_embeddings or drop_output):
                continue
            if src.role == LINEAR:
                group = src.group if src.is_ternary else options.group_size
                if src.is_ternary and group != options.group_size and options.group_size != "tensor":
                    warnings.append(f"{src.name}: kept the source's own {group} scales (already ternary)")
                check_own_group(layout, src, group)
                tensors.append(TensorPlan(src.name, src.shape, LINEAR, layout.name,
                                          layout.nbytes(src.shape), src, group))
            elif src.role in (EMBEDDING, OUTPUT):
                flag = "--embedding-type" if src.role == EMBEDDING else "--output-type"
                requested = options.embedding_type if src.role == EMBEDDING else options.output_type
                out = resolve_embedding_type(src, requested, layout.name, flag)
                if out in TERNARY_EMBEDDING_TYPES:
                    tensors.append(TensorPlan(src.name, src.shape, src.role, out,
                                              get_layout(out).nbytes(src.shape), src, src.group or "tensor"))
                else:
                    tp = _float_plan(src, out)
                    tp.note = ternary_written_as_float(src, out, flag)
                    if tp.note:
                        warnings.append(f"{src.name}: {tp.note}")
                    tensors.append(tp)
            else:
                tensors.append(_float_plan(src, "f32"))
        return ConversionPlan(spec=spec, output=output, format="gguf", options=options, tensors=tensors,
                              arch=arch, engine=engine, warnings=warnings, layout_metadata=layout.metadata(),
                              layout=layout)

    def write(self, tmp: Path, plan: ConversionPlan, tensors: Iterator[tuple[TensorPlan, Payload]]) -> None:
        layout = plan.layout  # the instance that checked (and tiled) every tensor at plan time
        w = ArrayPackingGGUFWriter(path=str(tmp), arch=plan.arch)
        _write_metadata(w, plan, layout)
        ternary_layouts = {t: get_layout(t) for t in TERNARY_EMBEDDING_TYPES}  # token_embd / output as Q2_0
        for tp in plan.tensors:
            if tp.role == LINEAR:
                w.add_tensor_info(tp.name, list(tp.shape), np.dtype(np.int8), tp.nbytes, raw_dtype=layout.ggml_type)
            elif tp.out_type in ternary_layouts:
                w.add_tensor_info(tp.name, list(tp.shape), np.dtype(np.int8), tp.nbytes,
                                  raw_dtype=ternary_layouts[tp.out_type].ggml_type)
            elif tp.out_type == "bf16":
                w.add_tensor_info(tp.name, list(tp.shape), np.dtype(np.int8), tp.nbytes,
                                  raw_dtype=gguf.GGMLQuantizationType.BF16)
            else:
                w.add_tensor_info(tp.name, list(tp.shape), np.dtype(np.float32 if tp.out_type == "f32" else np.float16),
                                  tp.nbytes)
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_ti_data_to_file()
        for tp, payload in tensors:
            w.write_tensor_data(self.encoded(plan, tp, payload)[0])
        w.close()

    def direct_bytes(self, plan: ConversionPlan, tp: TensorPlan) -> int | None:
        if not self._direct(tp):
            return None
        n = int(np.prod(tp.source.shape, dtype=np.int64))  # the F16 output, and the source's bytes as read
        return 2 * n + (tp.source.source_nbytes or (4 if tp.source.dtype == "f32" else 2) * n)

    @staticmethod
    def _direct(tp: TensorPlan) -> bool:
        src = tp.source
        return not (tp.role == LINEAR or tp.out_type != "f16" or src.is_ternary
                    or src.dtype not in ("f32", "f16", "bf16"))

    def encode_source(self, plan: ConversionPlan, tp: TensorPlan) -> Encoded | None:
        """Float tensors written as F16: one compiled pass from the source values as stored
        (float32, float16 or bfloat16 bits) to float16, counting NaN/Inf on the way, read a
        chunk of rows at a time (`readers.chunked`: only the F16 result is whole); the
        bytes equal `encode`'s (float32 widening is exact, then the same rounding)."""
        src = tp.source
        if not self._direct(tp):
            return None
        from ..kernels.floats import narrow_f16
        from ..readers.chunked import raw_chunks

        out = np.empty(int(np.prod(src.shape, dtype=np.int64)), dtype=np.int16)
        bad = over = 0
        first_over = first_under = -1
        amax = umax = 0.0
        for a, part in raw_chunks(src):  # one chunk of the source in memory at a time
            view = kernel_view(part, part.dtype == np.uint16, tp.name)  # bfloat16 as its uint16 bits
            b, o, fo, am, um, fu = narrow_f16(view, out[a:a + view.size])
            bad, over = bad + int(b), over + int(o)
            if fo >= 0 and first_over < 0:
                first_over = a + int(fo)
            amax = max(amax, float(am))
            if float(um) > umax:  # the first input of the largest size that rounds to 0
                umax, first_under = float(um), a + int(fu)
        if bad:
            raise_nonfinite(tp.name, int(bad), tuple(src.shape))
        check_narrowed(tp.name, "f16", _RawValues(src, tp.name), over, first_over, float(amax), float(umax),
                       first_under, _type_flag(tp), widen_one=_widen_one)  # 1e5 -> inf, all-tiny -> 0: never written
        return Encoded([out.view(np.uint8)])

    def encode(self, plan: ConversionPlan, tp: TensorPlan, payload: Payload) -> Encoded:
        if isinstance(payload, Ternary):
            if plan.arch == "llama" and kind_of(tp.name) in ("attn_q", "attn_k"):
                hp = plan.spec.hparams
                heads = hp.num_heads if kind_of(tp.name) == "attn_q" else hp.num_kv_heads
                payload = to_llama_rope_order(payload, heads)
            layout = plan.layout if tp.role == LINEAR else get_layout(tp.out_type)  # token_embd/output as Q2_0
            return Encoded([layout.pack(payload, tp.name)])
        return Encoded([float_to_bytes(payload, FLOAT_BY_NAME[tp.out_type], tp.name, _type_flag(tp))])


class _RawValues:
    """`values[i:i + 1]` of a source tensor as the F16 pass read it, reading only the row
    that holds it (a refusal names one value; the pass kept no copy of the source)."""

    def __init__(self, src, name: str) -> None:
        self.src, self.name = src, name

    def __getitem__(self, sl: slice) -> np.ndarray:
        shape = tuple(int(d) for d in self.src.shape)
        if len(shape) < 2:
            raw, k = self.src.load_raw(), int(sl.start)
        else:
            per_row = int(np.prod(shape[1:], dtype=np.int64))
            row, k = divmod(int(sl.start), per_row)
            raw = self.src.load_raw_rows(row, row + 1)
        flat = np.ascontiguousarray(raw).reshape(-1)
        return kernel_view(flat, flat.dtype == np.uint16, self.name)[k:k + 1]


def _widen_one(raw: np.ndarray) -> float:
    from ..kernels.floats import widen

    one = np.empty(1, dtype=np.float32)
    widen(np.ascontiguousarray(raw), one)
    return float(one[0])


def _type_flag(tp: TensorPlan) -> str | None:
    """The option that chose a float tensor's type (named when the type cannot hold a value)."""
    return {EMBEDDING: "--embedding-type", OUTPUT: "--output-type"}.get(tp.role)


class ArrayPackingGGUFWriter(gguf.GGUFWriter):
    """gguf's writer, with long metadata arrays packed in one step.

    `GGUFWriter._pack_val` packs an array one element at a time through recursion and
    `struct.pack` (~5 µs each): a 32k-token vocabulary (tokens, scores, types) took 0.3 s,
    a 256k one over a second, on the main thread while the pipeline waits for it. Here an
    array whose elements all have one plain Python type is packed by numpy or one
    `bytes.join`, giving the same bytes (tests compare with the base class); anything
    else (mixed or numpy scalars, out-of-range values, big-endian files) goes to the base
    class, which also raises its own errors for bad arrays."""

    _NUMERIC = {
        gguf.GGUFValueType.UINT8: "<u1", gguf.GGUFValueType.INT8: "<i1", gguf.GGUFValueType.UINT16: "<u2",
        gguf.GGUFValueType.INT16: "<i2", gguf.GGUFValueType.UINT32: "<u4", gguf.GGUFValueType.INT32: "<i4",
        gguf.GGUFValueType.UINT64: "<u8", gguf.GGUFValueType.INT64: "<i8", gguf.GGUFValueType.FLOAT32: "<f4",
        gguf.GGUFValueType.FLOAT64: "<f8",
    }
    _MIN_FAST = 64

    def _pack_val(self, val: Any, vtype: gguf.GGUFValueType, add_vtype: bool,
                  sub_type: gguf.GGUFValueType | None = None) -> bytes:
        if vtype == gguf.GGUFValueType.ARRAY and isinstance(val, (list, tuple)) and not val and sub_type is not None:
            # an empty array is valid GGUF (ggml reads n = 0); gguf-py refuses to write one,
            # so a source's empty array is written here: item type, count 0
            head = self._pack("I", vtype) if add_vtype else b""
            return head + self._pack("I", sub_type) + self._pack("Q", 0)
        if (vtype == gguf.GGUFValueType.ARRAY and isinstance(val, list) and len(val) >= self._MIN_FAST
                and self.endianess == gguf.GGUFEndian.LITTLE):
            body = self._pack_array(val, sub_type)
            if body is not None:
                head = self._pack("I", vtype) if add_vtype else b""
                return head + body
        return super()._pack_val(val, vtype, add_vtype, sub_type)

    def _pack_array(self, val: list, sub_type: gguf.GGUFValueType | None) -> bytes | None:
        kind = type(val[0])
        if kind not in (str, float, int) or any(type(x) is not kind for x in val):
            return None  # bool, bytes, nested lists, numpy scalars, mixed: the base class
        ltype = sub_type if sub_type is not None else gguf.GGUFValueType.get_type(val[0])
        head = self._pack("I", ltype) + self._pack("Q", len(val))
        if ltype == gguf.GGUFValueType.STRING and kind is str:
            encoded = [x.encode("utf-8") for x in val]
            return head + b"".join(len(b).to_bytes(8, "little") + b for b in encoded)
        dtype = self._NUMERIC.get(ltype)
        if dtype is None or kind is str:
            return None
        if kind is int:
            info = np.iinfo(dtype) if np.dtype(dtype).kind in "iu" else None
            if info is None or min(val) < info.min or max(val) > info.max:
                return None  # struct.pack would raise (or a float type was asked): let it
        with np.errstate(over="ignore"):
            arr = np.asarray(val, dtype=dtype)
        if arr.dtype.kind == "f" and not np.all(np.isfinite(arr)) and np.all(np.isfinite(np.asarray(val, dtype=np.float64))):
            return None  # a finite float64 that overflows float32: struct.pack raises, so must we
        return head + arr.tobytes()


def _check_float32_hparams(hp) -> None:
    """GGUF stores rope_freq_base and the norm epsilon as float32: a config value float32
    cannot hold (1e39 overflows, 1e-50 becomes 0) is refused at plan time, not written."""
    from ..float_range import describe, holds

    for key, value in (("rope_theta", hp.rope_theta), ("rms_norm_eps", hp.rms_eps)):
        if value is not None and not holds(float(value), "f32", scale=False):
            raise CorruptFileError(f"{key} = {value!r} does not fit the GGUF's float32 value (it would be "
                                   f"stored as {describe(float(value), 'f32')})",
                                   hint="the config value is out of any real model's range; fix the source")


def _float_plan(src, out: str) -> TensorPlan:
    n = int(np.prod(src.shape)) * (4 if FLOAT_BY_NAME[out] == F32 else 2)
    return TensorPlan(src.name, src.shape, src.role, out, n, src)


def _write_metadata(w: gguf.GGUFWriter, plan: ConversionPlan, layout: Layout) -> None:
    spec, hp, opts = plan.spec, plan.spec.hparams, plan.options
    w.add_name(opts.name or spec.name)
    w.add_file_type(layout.file_type)
    w.add_quantization_version(QUANTIZATION_VERSION)
    w.add_context_length(hp.context_length)
    w.add_embedding_length(hp.hidden_size)
    w.add_feed_forward_length(hp.intermediate_size)
    w.add_block_count(hp.num_layers)
    w.add_head_count(hp.num_heads)
    w.add_head_count_kv(hp.num_kv_heads)
    w.add_rope_freq_base(hp.rope_theta)
    w.add_rope_dimension_count(hp.head_dim)
    if plan.arch == "qwen3" or hp.head_dim * hp.num_heads != hp.hidden_size:
        # llama.cpp reads the head size from these (default: embedding_length / head_count)
        w.add_key_length(hp.head_dim)
        w.add_value_length(hp.head_dim)
    w.add_layer_norm_rms_eps(hp.rms_eps)
    w.add_vocab_size(hp.vocab_size)
    w.add_string(f"{plan.arch}.hidden_activation", hp.hidden_act)
    src = spec.source
    if src.kind == "hub":
        w.add_string("general.source.huggingface.repository", src.location)
    w.add_string("bitconv.version", __version__)
    w.add_string("bitconv.family", spec.family)
    w.add_string("bitconv.hidden_act", hp.hidden_act)
    w.add_bool("bitconv.tie_embeddings", bool(hp.tie_embeddings))
    w.add_string("bitconv.layout", layout.name)
    # the scale group the linears were written with (a ternary source keeps its own); readers
    # collapse TQ block scales back into it
    groups = {str(tp.group) for tp in plan.tensors if tp.role == LINEAR and tp.group is not None}
    w.add_string("bitconv.group_size", groups.pop() if len(groups) == 1 else str(opts.group_size))
    w.add_string("bitconv.options", json.dumps(opts.recorded(), sort_keys=True))
    w.add_string("bitconv.source.kinds", json.dumps(plan.source_kinds(), sort_keys=True))
    w.add_string("bitconv.source.kind", src.kind)
    w.add_string("bitconv.source.location", src.public_location)  # no private local path
    if src.revision:
        w.add_string("bitconv.source.revision", src.revision)
    if src.commit:
        w.add_string("bitconv.source.commit", src.commit)
    for key, value in sorted(layout.metadata().items()):
        w.add_string(f"bitconv.{key}", value if isinstance(value, str) else json.dumps(value, sort_keys=True))
    _write_tokenizer(w, plan)
    if spec.gguf_metadata:
        _carry_gguf_keys(w, spec.gguf_metadata, plan.arch)


# general.* keys that describe the file being written, not the model: never carried over
_OWN_KEYS = ("general.architecture", "general.file_type", "general.quantization_version", "general.alignment",
             "general.name")


def _carry_gguf_keys(w: gguf.GGUFWriter, kv: dict[str, Any], arch: str) -> None:
    """GGUF sources: carry every model key the writer did not set itself, so hparams bitconv
    does not model (rope scaling, key/value lengths, licence, base model) survive a repack.
    `<source arch>.X` becomes `<target arch>.X`; bitconv.* keys of the source are dropped
    (the new file gets its own)."""
    written = set(w.kv_data[0])
    src_arch = kv.get("general.architecture", (None,))[0]
    for key in sorted(kv):
        if key.startswith("tokenizer.") or not _is_carried(key, src_arch):  # tokenizer keys: _copy_tokenizer_kv
            continue
        value, vtype, sub = kv[key]
        if src_arch and key.startswith(src_arch + "."):
            key = f"{arch}.{key[len(src_arch) + 1:]}"
        if key in written:
            continue
        if vtype == gguf.GGUFValueType.ARRAY:
            w.add_key_value(key, value, vtype, sub_type=sub)
        else:
            w.add_key_value(key, value, vtype)
        written.add(key)


# `<arch>.X` keys bitconv carries from a GGUF source that describe the tensors: each must
# agree with them (a foreign file's contradiction would otherwise be copied into the output)
_EXPERT_KEYS = ("expert_count", "expert_used_count", "expert_shared_count", "expert_group_count")


def check_carried_keys(ckpt: Checkpoint, kv: dict[str, Any]) -> None:
    """Refuse a GGUF source whose model keys contradict its tensors, before anything is
    written: key/value head sizes that are not the q/k/v rows per head, an expert count in
    a model without expert tensors, and arrays of arrays (ggml's GGUF reader rejects them,
    so a carried one makes a file no engine loads)."""
    hp = ckpt.spec.hparams
    src = str(ckpt.spec.source.path)
    src_arch = kv.get("general.architecture", (None,))[0]
    shapes = {t.name: t.shape for t in ckpt.tensors}

    def rows_per_head(kind: str, heads: int) -> int | None:
        shape = shapes.get(f"blk.0.{kind}.weight")
        return int(shape[0]) // heads if shape and heads and int(shape[0]) % heads == 0 else None

    expected: dict[str, tuple[int, str]] = {
        "attention.key_length": (rows_per_head("attn_k", hp.num_kv_heads) or hp.head_dim, "attn_k rows per kv head"),
        "attention.value_length": (rows_per_head("attn_v", hp.num_kv_heads) or hp.head_dim, "attn_v rows per kv head"),
        # bitconv writes rope.dimension_count = head size (its families rotate the whole head):
        # a source that rotates part of it would silently become another model
        "rope.dimension_count": (rows_per_head("attn_q", hp.num_heads) or hp.head_dim,
                                 "attn_q rows per head; bitconv's families rotate the whole head"),
    }
    if not any(".ffn_gate_exps." in n or ".ffn_up_exps." in n for n in shapes):
        expected.update({k: (0, "the model has no expert tensors") for k in _EXPERT_KEYS})
    for key in sorted(kv):
        value, vtype, sub = kv[key]
        if vtype == gguf.GGUFValueType.ARRAY and sub == gguf.GGUFValueType.ARRAY and _is_carried(key, src_arch):
            raise CorruptFileError(f"{src}: {key} is an array of arrays, which ggml's GGUF reader refuses",
                                   hint="no engine would load an output carrying it; remove the key from the source")
        if not (src_arch and key.startswith(src_arch + ".")):
            continue
        want = expected.get(key[len(src_arch) + 1:])
        if want is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value != want[0]:
            raise CorruptFileError(f"{src}: {key} = {value!r} contradicts the tensors ({want[1]}: {want[0]})",
                                   hint="the file's metadata does not describe its tensors; an engine would "
                                        "misread it, so it is not carried into a new file")


def _is_carried(key: str, src_arch: str | None) -> bool:
    """Whether `_carry_gguf_keys` / `_copy_tokenizer_kv` copy this source key."""
    if key.startswith("bitconv.") or key in _OWN_KEYS:
        return False
    return key.startswith(("tokenizer.", "general.")) or bool(src_arch and key.startswith(src_arch + "."))


def _write_tokenizer(w: gguf.GGUFWriter, plan: ConversionPlan) -> None:
    spec, hp = plan.spec, plan.spec.hparams
    if spec.tokenizer_dir is not None:
        tok = load_tokenizer(spec.tokenizer_dir, hp.vocab_size, hp.bos_token_id, hp.eos_token_id,
                             engine=plan.engine)
        if tok is None:
            plan.warnings.append("no tokenizer.json or tokenizer.model: the file has no tokenizer")
            return
        tok.add_to_gguf(w)
        plan.warnings.extend(tok.warnings)
    elif spec.gguf_metadata:
        _copy_tokenizer_kv(w, spec.gguf_metadata)  # none: plan() warned
    else:
        plan.warnings.append("the source has no tokenizer: the file cannot be run by an engine as is")


def _copy_tokenizer_kv(w: gguf.GGUFWriter, kv: dict[str, Any]) -> None:
    """GGUF sources: carry their tokenizer keys over unchanged."""
    for key in sorted(kv):
        if not key.startswith("tokenizer."):
            continue
        value, vtype, sub = kv[key]
        if vtype == gguf.GGUFValueType.ARRAY:
            w.add_key_value(key, value, vtype, sub_type=sub)
        else:
            w.add_key_value(key, value, vtype)
