"""Read GGUF files, including bitnet.cpp's I2_S/TL1/TL2 that the `gguf` package rejects.

A small parser of the GGUF container (header, key/values, tensor index) over a memory
map; tensor bytes are decoded by the same layout classes that wrote them. A ternary GGUF
is a valid SOURCE: its linears come back as their own ternary values and scales and are
repacked, never re-quantized.
"""

from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gguf
import numpy as np

from ..config_values import MISSING
from ..errors import CorruptFileError, InputError, SourceNotFoundError
from ..exact_ternary import detect
from ..source_kind import mark_exact
from ..ggml_types import F32, FLOAT_TYPES, bytes_to_float, dequantize_upstream, tensor_nbytes, type_name, upstream_type
from ..model import EMBEDDING, LINEAR, OUTPUT, ModelSpec, SourceInfo, SourceTensor, StoredBytes, kind_of
from ..pack import Layout, get_layout, layout_class, layout_for_ggml_type
from ..quant import parse_group_size
from ..archs import architecture_for
from .checkpoint import Checkpoint, GGUFReadOptions
from ..validate import validate_checkpoint
from .type_ids import AMBIGUOUS, resolve

VT = gguf.GGUFValueType
_SCALARS = {
    VT.UINT8: "<B", VT.INT8: "<b", VT.UINT16: "<H", VT.INT16: "<h", VT.UINT32: "<I", VT.INT32: "<i",
    VT.FLOAT32: "<f", VT.BOOL: "<?", VT.UINT64: "<Q", VT.INT64: "<q", VT.FLOAT64: "<d",
}
_NUMPY = {VT.UINT8: np.uint8, VT.INT8: np.int8, VT.UINT16: np.uint16, VT.INT16: np.int16,
          VT.UINT32: np.uint32, VT.INT32: np.int32, VT.FLOAT32: np.float32, VT.BOOL: np.bool_,
          VT.UINT64: np.uint64, VT.INT64: np.int64, VT.FLOAT64: np.float64}

# GGUF arch string -> the Hugging Face family it came from
_INT_TYPES = (VT.UINT8, VT.INT8, VT.UINT16, VT.INT16, VT.UINT32, VT.INT32, VT.UINT64, VT.INT64)
_MAX_ARRAY_DEPTH = 8
_MAX_DIMS = 4  # GGML_MAX_DIMS

ARCH_FAMILY = {"bitnet": "BitnetForCausalLM", "bitnet-b1.58": "BitNetForCausalLM",
               "bitnet-25": "BitNetForCausalLM", "llama": "LlamaForCausalLM", "qwen3": "Qwen3ForCausalLM"}


@dataclass
class GGUFTensorInfo:
    name: str
    shape: tuple[int, ...]  # bitconv orientation: [M, K] for matrices (ggml ne reversed)
    ggml_type: int
    offset: int  # absolute offset in the file
    nbytes: int | None  # None: a type bitconv cannot size (only with strict=False)
    layout: str | None = None  # the reading of an id engines disagree on (type_ids.py)

    @property
    def type_name(self) -> str:
        return self.layout.upper() if self.layout else type_name(self.ggml_type)


@dataclass
class Truncation:
    """A file that ends before its tensor index says its data does: where it ends, the
    tensors whose data starts at or past that byte, and the one it ends inside (if known).
    Said once for the whole file, so no intact tensor is blamed for the bytes that are
    missing after it (a TL2 tensor's span otherwise looks wrong when its neighbours are gone)."""

    file_end: int
    past: list[str]
    cut: str | None = None
    total: int = 0  # tensors in the index

    def subject(self) -> str:
        return self.cut or (self.past[0] if self.past else "file")

    def message(self) -> str:
        parts = []
        if self.past:
            shown = ", ".join(self.past[:4]) + (f" and {len(self.past) - 4} more" if len(self.past) > 4 else "")
            parts.append(f"{len(self.past)} of {self.total} tensors lie past it ({shown})")
        if self.cut:
            parts.append(f"{self.cut} is cut short")
        return f"the file ends at byte {self.file_end}; " + (" and ".join(parts) or "tensor data lies past it")


def find_truncation(raw: list, start: int, size: int, nbytes) -> Truncation | None:
    """RAW: (name, shape, type, relative offset) per tensor; NBYTES(type, shape) -> size or
    None when the type alone cannot tell (ids engines disagree on). None: nothing missing."""
    spans = sorted((start + off, name, nbytes(t, shape)) for name, shape, t, off in raw)
    past = [name for at, name, _ in spans if at >= size]
    cut = None
    inside = [(at, name, n) for at, name, n in spans if at < size]
    if inside:
        at, name, n = inside[-1]
        later = [a for a, _, _ in spans if a > at]
        if n is not None:
            if at + n > size:
                cut = name
        elif later and later[0] > size:  # its data runs to the next tensor, which starts past the end
            cut = name
    if not past and cut is None:
        return None
    return Truncation(size, past, cut, len(raw))


class _Refused(Exception):
    """Carries a typed InputError out of the parser's catch-all for malformed bytes."""

    def __init__(self, error: InputError) -> None:
        super().__init__(str(error))
        self.error = error


class GGUFFile:
    """Parsed GGUF: `kv` maps key -> (value, value type, array item type).

    `strict` (sources): every tensor must have a type bitconv can size and lie inside the
    file. `strict=False` (doctor): tensors of unknown types get `nbytes=None` and nothing is
    checked against the file size, so a damaged or foreign file can still be described.
    `index` lists every tensor info in file order (duplicates included); `tensors` maps each
    name to its first info.
    """

    def __init__(self, path: str | Path, *, strict: bool = True) -> None:
        self.path = Path(path)
        self.strict = strict
        if self.path.is_dir():  # a user's mistake, said in words rather than as [Errno 21]
            raise InputError(f"{self.path}: is a folder, not a GGUF file", hint=_folder_hint(self.path))
        if not self.path.exists():
            raise SourceNotFoundError(f"{self.path}: no such file")
        from ..source_files import HeldFile, require_regular

        require_regular(self.path, "GGUF file")  # a FIFO would block the open below forever
        # sources read tensor bytes through a held descriptor (source_files: a mapped file that
        # shrinks is a SIGBUS; a replaced one would be read by path); the header is parsed
        # from a map of that same descriptor
        self.held = HeldFile(self.path) if strict else None
        try:
            if self.held is not None:
                with open(self.held.fd, "rb", closefd=False) as fobj:
                    self.data = np.memmap(fobj, dtype=np.uint8, mode="r")
            else:
                self.data = np.memmap(self.path, dtype=np.uint8, mode="r")
        except (OSError, ValueError) as exc:
            why = getattr(exc, "strerror", None) or str(exc)
            if self.path.is_file() and self.path.stat().st_size == 0:  # numpy: "cannot mmap an empty file"
                why = "the file is empty"
            raise CorruptFileError(f"{self.path}: cannot open ({why})") from None
        self._bytes = memoryview(self.data)  # header parsing slices this: a memmap slice costs ~4 us
        self._pos = 0
        try:
            self._parse()
        except _Refused as exc:
            raise exc.error from None
        except (struct.error, IndexError, UnicodeDecodeError, ValueError, OverflowError, RecursionError,
                MemoryError) as exc:
            raise CorruptFileError(
                f"{self.path}: not a readable GGUF file ({type(exc).__name__}: {exc})",
                hint="the file is truncated or corrupt; write it again",
            ) from None

    # -- low-level ---------------------------------------------------------------------
    def _take(self, n: int) -> bytes:
        if self._pos + n > self.data.size:
            raise ValueError(f"unexpected end of file at byte {self._pos}")
        b = self._bytes[self._pos:self._pos + n].tobytes()
        self._pos += n
        return b

    def _scalar(self, fmt: str):
        return struct.unpack(fmt, self._take(struct.calcsize(fmt)))[0]

    def _string(self) -> str:
        return self._take(self._scalar("<Q")).decode("utf-8")

    def _strings(self, n: int) -> list[str]:
        """n strings (a vocabulary): `_string` n times, without its per-call overhead."""
        view, size, pos, out = self._bytes, self.data.size, self._pos, []
        unpack = struct.Struct("<Q").unpack_from
        for _ in range(n):
            if pos + 8 > size:
                raise ValueError(f"unexpected end of file at byte {pos}")
            (length,) = unpack(view, pos)
            pos += 8
            if pos + length > size:
                raise ValueError(f"unexpected end of file at byte {pos}")
            out.append(str(view[pos:pos + length], "utf-8"))
            pos += length
            self._pos = pos
        return out

    def _value(self, vtype: int, depth: int = 0):
        vtype = VT(vtype)
        if vtype == VT.STRING:
            return self._string(), None
        if vtype == VT.ARRAY:
            if depth >= _MAX_ARRAY_DEPTH:
                raise ValueError(f"arrays nested deeper than {_MAX_ARRAY_DEPTH} at byte {self._pos}")
            sub = VT(self._scalar("<I"))
            n = self._scalar("<Q")
            if n > self.data.size - self._pos:  # every item takes at least one byte
                raise ValueError(f"array of {n} items at byte {self._pos} is longer than the file")
            if sub == VT.STRING:
                return self._strings(n), sub
            if sub in _NUMPY:
                dt = np.dtype(_NUMPY[sub]).newbyteorder("<")
                arr = np.frombuffer(self._take(n * dt.itemsize), dtype=dt)
                return arr.tolist(), sub
            return [self._value(sub, depth + 1)[0] for _ in range(n)], sub
        return self._scalar(_SCALARS[vtype]), None

    def _parse(self) -> None:
        if self._take(4) != b"GGUF":
            raise ValueError("bad magic (not a GGUF file)")
        version = self._scalar("<I")
        if version not in (2, 3):
            raise ValueError(f"unsupported GGUF version {version}")
        n_tensors, n_kv = self._scalar("<Q"), self._scalar("<Q")
        self.kv: dict[str, tuple[Any, VT, VT | None]] = {}
        for _ in range(n_kv):
            key = self._string()
            vtype = VT(self._scalar("<I"))
            value, sub = self._value(vtype)
            if key in self.kv:
                raise ValueError(f"metadata key {key!r} appears twice")
            self.kv[key] = (value, vtype, sub)
        raw = []
        names: set[str] = set()
        for _ in range(n_tensors):
            name = self._string()
            if name in names and self.strict:
                raise ValueError(f"tensor name {name!r} appears twice")
            names.add(name)
            ndim = self._scalar("<I")
            if not 1 <= ndim <= _MAX_DIMS:
                raise ValueError(f"tensor {name!r} has {ndim} dimensions (GGUF allows 1 to {_MAX_DIMS})")
            ne = [self._scalar("<Q") for _ in range(ndim)]
            if math.prod(ne) >= 1 << 63 or any(d >= 1 << 63 for d in ne):
                raise ValueError(f"tensor {name!r} has dimensions {ne}, too large for any file")
            raw.append((name, tuple(reversed(ne)), self._scalar("<I"), self._scalar("<Q")))
        align = self.alignment()
        self.data_start = start = (self._pos + align - 1) // align * align
        self.index: list[GGUFTensorInfo] = []
        self.truncation = find_truncation(raw, start, self.data.size, _size_or_none)
        if self.truncation is not None and self.strict:
            raise _Refused(CorruptFileError(f"{self.path}: {self.truncation.message()}",
                                            hint="the file is truncated: download or write it again"))
        self.readings = self._resolve_ambiguous(raw, start, align)
        self.tensors: dict[str, GGUFTensorInfo] = {}
        for name, shape, t, off in raw:
            layout = self.readings[t][0] if t in self.readings else None
            try:
                if layout is None and t in AMBIGUOUS:  # lenient: no reading fits, so no size either
                    raise ValueError(t)
                n = tensor_nbytes(t, shape) if layout is None else get_layout(layout).nbytes(shape)
            except ValueError as exc:
                if self.strict:
                    if str(exc).startswith("ne[0]"):
                        raise ValueError(f"tensor {name!r}: {exc}") from None
                    raise ValueError(f"tensor {name!r} has GGML type {t}, which bitconv does not read") from None
                n = None
            if off % align and self.strict:
                raise ValueError(f"tensor {name!r} starts at data offset {off}, not a multiple of the "
                                 f"alignment {align}")
            info = GGUFTensorInfo(name, shape, t, start + off, n, layout)
            if self.strict and info.offset + n > self.data.size:
                raise ValueError(
                    f"tensor {name!r} ends at byte {info.offset + n} but the file has {self.data.size} bytes"
                )
            self.index.append(info)
            self.tensors.setdefault(name, info)
        if not self.strict:  # doctor reports overlaps (and duplicates) as findings
            return
        end = 0
        prev = None
        for info in sorted(self.tensors.values(), key=lambda i: (i.offset, i.nbytes)):
            if info.offset < end:
                raise ValueError(f"tensors {prev!r} and {info.name!r} overlap in the file")
            end, prev = info.offset + info.nbytes, info.name

    def alignment(self) -> int:
        if "general.alignment" not in self.kv:
            return 32
        value, vtype, _ = self.kv["general.alignment"]
        if vtype not in _INT_TYPES or not 1 <= value <= 1 << 30 or value & (value - 1):
            raise ValueError(f"general.alignment must be a power-of-two integer, got {value!r:.40}")
        return value

    def _resolve_ambiguous(self, raw: list, start: int, align: int) -> dict[int, tuple[str, str]]:
        """Type id -> (layout, why) for the ids engines disagree on (readers/type_ids.py).

        Each tensor's span runs to the next tensor's offset (or the end of the file); a tensor
        starting past the end has span 0 (the range check below then names it)."""
        ends = sorted({off for *_, off in raw} | {self.data.size - start})
        spans = {a: b - a for a, b in zip(ends, ends[1:])}  # an offset past the end has no span: 0
        meta = self.bitconv_metadata()
        # a truncated file (doctor reads it leniently): the tensors the end took away say nothing
        missing = set() if self.truncation is None else {*self.truncation.past, self.truncation.cut}
        out = {}
        for t in sorted({t for _, _, t, _ in raw} & set(AMBIGUOUS)):
            whole = [(n, s, spans.get(o, 0)) for n, s, tt, o in raw if tt == t and n not in missing]
            if not whole:
                continue
            try:
                out[t] = resolve(self.path, t, whole, meta, align)
            except InputError as exc:  # a typed refusal, not "corrupt"
                if self.strict:
                    raise _Refused(exc) from None
        return out

    # -- access ------------------------------------------------------------------------
    def get(self, key: str, default: Any = None) -> Any:
        return self.kv[key][0] if key in self.kv else default

    def raw(self, name: str) -> np.ndarray:
        info = self.tensors[name]
        if info.nbytes is None or info.offset + info.nbytes > self.data.size:
            raise CorruptFileError(f"{self.path}: tensor {name!r} ({info.type_name}) cannot be read",
                                   hint="run `bitconv doctor` on the file for details")
        if self.held is not None:  # a copy through the held descriptor: a truncation is a typed error
            return self.held.read_at(info.offset, info.nbytes, np.uint8, f"tensor {name!r}")
        return self.data[info.offset:info.offset + info.nbytes]

    def bitconv_metadata(self) -> dict[str, Any]:
        out = {}
        for key, (value, _, _) in self.kv.items():
            if key.startswith("bitconv."):
                k = key[len("bitconv."):]
                if isinstance(value, str) and value[:1] in "[{":
                    try:
                        value = json.loads(value)
                    except (ValueError, RecursionError):
                        pass
                out[k] = value
        return out


def _size_or_none(ggml_type: int, shape: tuple[int, ...]) -> int | None:
    """Bytes of a tensor when its type alone tells (not for ids engines disagree on)."""
    if ggml_type in AMBIGUOUS:
        return None
    try:
        return tensor_nbytes(ggml_type, shape)
    except ValueError:
        return None


def _folder_hint(folder: Path) -> str:
    """What to pass instead of FOLDER: the .gguf files it holds, else what reads such a folder."""
    try:
        ggufs = sorted(p.name for p in folder.iterdir() if p.suffix == ".gguf" and p.is_file())
    except OSError:
        ggufs = []
    if ggufs:
        more = f" (or one of {len(ggufs) - 1} more .gguf files there)" if len(ggufs) > 1 else ""
        return f"name the .gguf file inside it: {folder / ggufs[0]}{more}"
    return ("it holds no .gguf file; a safetensors, MLX or compressed-tensors folder is read by "
            f"bitconv inspect {folder}")


def _float32(raw: np.ndarray, ggml_type: int, shape: tuple[int, ...]) -> np.ndarray:
    """A float tensor's bytes -> a new float32 array (F16/BF16 widened in one compiled pass)."""
    out = bytes_to_float(raw, ggml_type, shape)
    return out.copy() if ggml_type == F32 else out  # F32 is a view of the file's bytes


def _meta_str(f: GGUFFile, key: str, default: str) -> str:
    from ..config_values import get_str

    return get_str({k: v for k, (v, _, _) in f.kv.items()}, key, str(f.path), default=default)


def layout_for(f: GGUFFile, ggml_type: int, options: GGUFReadOptions | None = None) -> Layout:
    """The layout instance that unpacks this file's tensors of `ggml_type`.

    Ids engines disagree on (39, 42) take the reading the file's byte sizes support
    (type_ids.py). bitconv's files record the layout options (I2_S code order, TL tiles) as
    bitconv.* keys. Other tools' files do not: their I2_S code order is taken from `options`
    (default x86-act, the order of the official files and every x86 build), and their TL
    tiles from the kernel config of the build that wrote them, without which they are refused.
    """
    options = options or GGUFReadOptions()
    reading = getattr(f, "readings", {}).get(ggml_type)
    cls = layout_class(reading[0]) if reading else layout_for_ggml_type(ggml_type)
    if cls is None:
        raise InputError(f"{f.path}: GGML type {ggml_type} is not a ternary layout bitconv reads")
    meta = f.bitconv_metadata()
    if cls.name == "i2_s":
        return get_layout("i2_s", variant=meta.get("i2s_variant") or options.i2s_variant or "x86-act")
    if cls.name in ("tl1", "tl2") and not meta.get("tiles"):
        if options.kernel_config is not None:
            return get_layout(cls.name, kernel_config=options.kernel_config)
        return _stock_tiles_or_refuse(f, ggml_type, cls.name)
    if hasattr(cls, "from_metadata"):
        return cls.from_metadata(meta)
    return cls()


def _stock_tiles_or_refuse(f: GGUFFile, ggml_type: int, name: str) -> Layout:
    """Another tool's TL file without --kernel-config: its tiles are known only when every
    shape is one the stock bitnet.cpp builds compile (setup_env's presets, FORMATS.md §5),
    which is what the reference converter packed with; any other shape is refused."""
    from ..pack.tiles import PRESETS

    preset = PRESETS[name]
    shapes = sorted({tuple(int(d) for d in i.shape) for i in f.tensors.values() if i.ggml_type == ggml_type})
    unknown = [s for s in shapes if s not in preset]
    if unknown:
        raise InputError(
            f"{f.path}: its {name.upper()} tensors were written by another tool, and their byte order depends on "
            f"tile parameters the file does not store; shape(s) {', '.join(f'[{m}, {k}]' for m, k in unknown[:3])} "
            "are not in the stock builds' presets",
            hint="pass --kernel-config with the include/kernel_config.ini of the bitnet.cpp build the file was "
                 "made for",
        )
    return get_layout(name, kernel_config={s: preset[s] for s in shapes})


def model_family(f: GGUFFile, arch: str) -> tuple[str, str]:
    """(HF family, hidden activation) of the model in the file.

    bitconv's files say so; other tools' files are read by their arch (`bitnet-b1.58` and
    `bitnet-25` are relu² BitNetForCausalLM, `bitnet` the SiLU 1bitLLM family, `llama`
    plain Llama) unless `<arch>.hidden_activation` says relu², as upstream's key does.
    """
    from ..config_values import get_str

    kv = {key: value for key, (value, _, _) in f.kv.items()}
    src = str(f.path)
    fam = get_str(kv, "bitconv.family", src, default=None)
    declared = get_str(kv, "bitconv.hidden_act", src, default=None) or get_str(
        kv, f"{arch}.hidden_activation", src, default=None)
    act = declared.lower() if declared else None
    if act in ("relu_squared", "squared_relu", "relu^2"):
        act = "relu2"
    if fam is None:
        if arch not in ARCH_FAMILY:
            raise InputError(
                f"{f.path}: GGUF arch {arch!r} is not one bitconv reads; supported: {', '.join(sorted(ARCH_FAMILY))}"
            )
        fam = "BitNetForCausalLM" if (arch == "bitnet" and act == "relu2") else ARCH_FAMILY[arch]
    return fam, act or ("relu2" if fam == "BitNetForCausalLM" else "silu")


def hparams_config(f: GGUFFile) -> tuple[str, dict[str, Any]]:
    """An HF-style config.json equivalent rebuilt from the GGUF keys, each type- and range-checked."""
    from ..config_values import LIMITS, get_bool, get_float, get_int, get_str

    kv = {key: value for key, (value, _, _) in f.kv.items()}
    src = str(f.path)
    arch = get_str(kv, "general.architecture", src)
    family, act = model_family(f, arch)

    def k(name: str, hf: str, default: Any = MISSING) -> int:
        return get_int(kv, f"{arch}.{name}", src, default=default, maximum=LIMITS.get(hf))

    heads = k("attention.head_count", "num_attention_heads")
    hidden = k("embedding_length", "hidden_size")
    tokens = kv.get("tokenizer.ggml.tokens")
    if tokens is not None and (not isinstance(tokens, list) or not all(isinstance(t, str) for t in tokens)):
        raise CorruptFileError(f"{f.path}: tokenizer.ggml.tokens must be an array of strings")
    vocab = k("vocab_size", "vocab_size", None)
    if vocab is None:
        if tokens:
            vocab = len(tokens)
        elif "token_embd.weight" in f.tensors:
            vocab = f.tensors["token_embd.weight"].shape[0]
        else:
            raise CorruptFileError(f"{f.path}: no vocabulary size ({arch}.vocab_size, tokenizer.ggml.tokens "
                                   "or token_embd.weight)")
    tie = get_bool(kv, "bitconv.tie_embeddings", src, default=None) if "bitconv.tie_embeddings" in kv else None
    if tie is None:
        tie = "output.weight" not in f.tensors
    config = {
        "architectures": [family],
        "hidden_size": hidden,
        "intermediate_size": k("feed_forward_length", "intermediate_size"),
        "num_hidden_layers": k("block_count", "num_hidden_layers"),
        "num_attention_heads": heads,
        "num_key_value_heads": k("attention.head_count_kv", "num_key_value_heads", heads),
        "max_position_embeddings": k("context_length", "max_position_embeddings", 2048),
        "rope_theta": get_float(kv, f"{arch}.rope.freq_base", src, default=10000.0),
        "rms_norm_eps": get_float(kv, f"{arch}.attention.layer_norm_rms_epsilon", src, default=1e-5),
        "vocab_size": vocab,
        "hidden_act": act,
        "tie_word_embeddings": bool(tie),
        "bos_token_id": get_int(kv, "tokenizer.ggml.bos_token_id", src, default=None, minimum=0),
        "eos_token_id": get_int(kv, "tokenizer.ggml.eos_token_id", src, default=None, minimum=0),
    }
    # the head size: llama.cpp reads key_length (qwen3 writes it), else the rope dimension
    head_dim = k("attention.key_length", "head_dim", None) or k("rope.dimension_count", "head_dim", None)
    if head_dim is not None:
        config["head_dim"] = head_dim
    return arch, config


_ROLES = {"token_embd": "embedding", "output": "output", "output_norm": "norm"}


def open_gguf(path: Path, source: SourceInfo, options: GGUFReadOptions | None = None) -> Checkpoint:
    """A GGUF as a source, bitconv's or another tool's (issue 13).

    Ternary linears come back as their own values and scales (never re-quantized); float
    linears that hold exact ternary values are recovered as such; q/k rows of `llama`
    files are returned in Hugging Face order (the writer permutes again when it needs to);
    embeddings/output in upstream quantized types (Q6_K, Q8_0, ...) are dequantized.
    """
    from ..archs.llama import _permute, from_llama_rope_order

    f = GGUFFile(path)
    arch, config = hparams_config(f)
    family = architecture_for(config, str(path))
    hp = family.hparams(config, str(path))
    group = parse_group_size(_meta_str(f, "bitconv.group_size", "tensor"))
    tensors: list[SourceTensor] = []
    layouts: dict[int, Layout] = {}

    def qk_heads(name: str) -> int | None:
        if arch != "llama":
            return None
        return {"attn_q": hp.num_heads, "attn_k": hp.num_kv_heads}.get(kind_of(name))

    for info in f.tensors.values():
        kind = kind_of(info.name)
        role = _ROLES.get(kind, "norm" if kind.endswith("norm") else LINEAR)
        heads = qk_heads(info.name)
        if heads and (len(info.shape) != 2 or info.shape[0] % (2 * heads)):
            # checked before any load: un-permuting the rope order reshapes rows into heads
            raise CorruptFileError(f"{path}: {info.name} of shape {list(info.shape)} is not {heads} heads of "
                                   f"an even number of rows each (arch llama q/k rope order)",
                                   hint="the tensor's shape contradicts the file's head counts")
        if info.ggml_type in FLOAT_TYPES or upstream_type(info.ggml_type) is not None:
            if role == LINEAR and info.ggml_type not in FLOAT_TYPES:
                raise InputError(f"{path}: {info.name} is {info.type_name}, not a ternary layout or a float type",
                                 hint="bitconv repacks ternary models; this file was quantized otherwise")

            def load(i=info):
                raw = f.raw(i.name)
                if i.ggml_type in FLOAT_TYPES:
                    w = _float32(raw, i.ggml_type, i.shape)
                else:
                    try:
                        w = dequantize_upstream(raw, i.ggml_type, i.shape)
                    except (NotImplementedError, ValueError) as exc:  # gguf-py lacks some types (Q1_0)
                        raise InputError(f"{path}: {i.name} is {i.type_name}, which bitconv cannot dequantize "
                                         f"({exc})", hint="store it as F16/F32 or a type gguf-py reads") from None
                heads = qk_heads(i.name)
                return _permute(w, heads, True) if heads else w

            found = detect(load(), info.type_name.lower()) if role == LINEAR else None
            if found is not None:
                # float storage of ternary values (llama.cpp leaves rows whose K is not a multiple
                # of 256 in F16, bitnet.cpp labels F16 files I2_S, F16/F32/BF16 exports of ternary
                # models): keep t and the scales of the group that holds them (bitconv.exact_ternary),
                # never re-ternarize; decided on the whole tensor now, read again when written
                st = SourceTensor(info.name, info.shape, LINEAR, info.type_name.lower(), info.name,
                                  _load=load, source_nbytes=info.nbytes)
                mark_exact(st, found)
                tensors.append(st)
                continue
            tensors.append(SourceTensor(info.name, info.shape, role, info.type_name.lower(), info.name,
                                        _load=load, source_nbytes=info.nbytes))
            continue
        layout = layouts.get(info.ggml_type) or layouts.setdefault(info.ggml_type,
                                                                   layout_for(f, info.ggml_type, options))
        t_role = role if role in (EMBEDDING, OUTPUT) else LINEAR  # a ternary token_embd/output (Q2_0)

        def load_t(i=info, lay=layout):
            kw = {} if lay.tensor_scale_only else {"group": group}
            tern = lay.unpack(np.asarray(f.raw(i.name)), i.shape, i.name, **kw)
            heads = qk_heads(i.name)
            return from_llama_rope_order(tern, heads) if heads else tern

        tensors.append(SourceTensor(info.name, info.shape, t_role, layout.name, info.name,
                                    _load_ternary=load_t, source_nbytes=info.nbytes,
                                    group="tensor" if layout.tensor_scale_only else group,
                                    stored=StoredBytes(path, info.offset, info.nbytes,
                                                       lambda i=info: f.raw(i.name), qk_heads(info.name))))
    spec = ModelSpec(
        family=family.hf_names[0], name=_meta_str(f, "general.name", "") or path.stem, hparams=hp, source=source,
        config=config, tokenizer_dir=None, packed=bool(layouts) or any(t.is_ternary for t in tensors),
        gguf_metadata=dict(f.kv),
    )
    ckpt = Checkpoint(spec=spec, tensors=tensors, files=[path], held={path: f.held.identity})
    # A GGUF without output.weight uses token_embd as the output layer (llama.cpp does the same).
    validate_checkpoint(ckpt, set(family.layer_names.values()), output_required=False)
    return ckpt
