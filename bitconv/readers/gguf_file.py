"""Read GGUF files, including bitnet.cpp's I2_S/TL1/TL2 that the `gguf` package rejects.

A small parser of the GGUF container (header, key/values, tensor index) over a memory
map; tensor bytes are decoded by the same layout classes that wrote them. A ternary GGUF
is a valid SOURCE: its linears come back as their own ternary values and scales and are
repacked, never re-quantized.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gguf
import numpy as np

from ..errors import CorruptFileError, InputError
from ..ggml_types import FLOAT_TYPES, bytes_to_float, tensor_nbytes, type_name
from ..model import LINEAR, ModelSpec, SourceInfo, SourceTensor, kind_of
from ..pack import Layout, get_layout, layout_for_ggml_type
from ..quant import parse_group_size
from ..archs import architecture_for
from .checkpoint import Checkpoint

VT = gguf.GGUFValueType
_SCALARS = {
    VT.UINT8: "<B", VT.INT8: "<b", VT.UINT16: "<H", VT.INT16: "<h", VT.UINT32: "<I", VT.INT32: "<i",
    VT.FLOAT32: "<f", VT.BOOL: "<?", VT.UINT64: "<Q", VT.INT64: "<q", VT.FLOAT64: "<d",
}
_NUMPY = {VT.UINT8: np.uint8, VT.INT8: np.int8, VT.UINT16: np.uint16, VT.INT16: np.int16,
          VT.UINT32: np.uint32, VT.INT32: np.int32, VT.FLOAT32: np.float32, VT.BOOL: np.bool_,
          VT.UINT64: np.uint64, VT.INT64: np.int64, VT.FLOAT64: np.float64}

# GGUF arch string -> the Hugging Face family it came from
ARCH_FAMILY = {"bitnet": "BitnetForCausalLM", "bitnet-b1.58": "BitNetForCausalLM",
               "bitnet-25": "BitNetForCausalLM", "llama": "LlamaForCausalLM"}


@dataclass
class GGUFTensorInfo:
    name: str
    shape: tuple[int, ...]  # bitconv orientation: [M, K] for matrices (ggml ne reversed)
    ggml_type: int
    offset: int  # absolute offset in the file
    nbytes: int

    @property
    def type_name(self) -> str:
        return type_name(self.ggml_type)


class GGUFFile:
    """Parsed GGUF: `kv` maps key -> (value, value type, array item type)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        try:
            self.data = np.memmap(self.path, dtype=np.uint8, mode="r")
        except (OSError, ValueError) as exc:
            raise CorruptFileError(f"{self.path}: cannot open ({exc})") from None
        self._pos = 0
        try:
            self._parse()
        except (struct.error, IndexError, UnicodeDecodeError, ValueError) as exc:
            raise CorruptFileError(
                f"{self.path}: not a readable GGUF file ({type(exc).__name__}: {exc})",
                hint="the file is truncated or corrupt; write it again",
            ) from None

    # -- low-level ---------------------------------------------------------------------
    def _take(self, n: int) -> bytes:
        if self._pos + n > self.data.size:
            raise ValueError(f"unexpected end of file at byte {self._pos}")
        b = self.data[self._pos:self._pos + n].tobytes()
        self._pos += n
        return b

    def _scalar(self, fmt: str):
        return struct.unpack(fmt, self._take(struct.calcsize(fmt)))[0]

    def _string(self) -> str:
        return self._take(self._scalar("<Q")).decode("utf-8")

    def _value(self, vtype: int):
        vtype = VT(vtype)
        if vtype == VT.STRING:
            return self._string(), None
        if vtype == VT.ARRAY:
            sub = VT(self._scalar("<I"))
            n = self._scalar("<Q")
            if sub == VT.STRING:
                return [self._string() for _ in range(n)], sub
            if sub in _NUMPY:
                dt = np.dtype(_NUMPY[sub]).newbyteorder("<")
                arr = np.frombuffer(self._take(n * dt.itemsize), dtype=dt)
                return arr.tolist(), sub
            return [self._value(sub)[0] for _ in range(n)], sub
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
            self.kv[key] = (value, vtype, sub)
        raw = []
        for _ in range(n_tensors):
            name = self._string()
            ndim = self._scalar("<I")
            ne = [self._scalar("<Q") for _ in range(ndim)]
            raw.append((name, tuple(reversed(ne)), self._scalar("<I"), self._scalar("<Q")))
        align = int(self.get("general.alignment", 32))
        start = (self._pos + align - 1) // align * align
        self.tensors: dict[str, GGUFTensorInfo] = {}
        for name, shape, t, off in raw:
            try:
                n = tensor_nbytes(t, shape)
            except ValueError:
                raise ValueError(f"tensor {name!r} has GGML type {t}, which bitconv does not read") from None
            info = GGUFTensorInfo(name, shape, t, start + off, n)
            if info.offset + n > self.data.size:
                raise ValueError(
                    f"tensor {name!r} ends at byte {info.offset + n} but the file has {self.data.size} bytes"
                )
            self.tensors[name] = info

    # -- access ------------------------------------------------------------------------
    def get(self, key: str, default: Any = None) -> Any:
        return self.kv[key][0] if key in self.kv else default

    def raw(self, name: str) -> np.ndarray:
        info = self.tensors[name]
        return self.data[info.offset:info.offset + info.nbytes]

    def bitconv_metadata(self) -> dict[str, Any]:
        out = {}
        for key, (value, _, _) in self.kv.items():
            if key.startswith("bitconv."):
                k = key[len("bitconv."):]
                if isinstance(value, str) and value[:1] in "[{":
                    try:
                        value = json.loads(value)
                    except ValueError:
                        pass
                out[k] = value
        return out


def layout_for(f: GGUFFile, ggml_type: int) -> Layout:
    """The layout instance that unpacks this file's tensors of `ggml_type`."""
    cls = layout_for_ggml_type(ggml_type)
    if cls is None:
        raise InputError(f"{f.path}: GGML type {ggml_type} is not a ternary layout bitconv reads")
    meta = f.bitconv_metadata()
    if cls.name == "i2_s":
        return get_layout("i2_s", variant=meta.get("i2s_variant", "x86-act"))
    if hasattr(cls, "from_metadata"):
        return cls.from_metadata(meta)
    return cls()


def hparams_config(f: GGUFFile) -> tuple[str, dict[str, Any]]:
    """An HF-style config.json equivalent rebuilt from the GGUF keys."""
    arch = f.get("general.architecture")
    if arch not in ARCH_FAMILY and f.get("bitconv.family") is None:
        raise InputError(
            f"{f.path}: GGUF arch {arch!r} is not one bitconv reads; supported: {', '.join(sorted(ARCH_FAMILY))}"
        )
    family = f.get("bitconv.family") or ARCH_FAMILY[arch]

    def k(name: str, default: Any = None) -> Any:
        return f.get(f"{arch}.{name}", default)

    heads = int(k("attention.head_count"))
    hidden = int(k("embedding_length"))
    tokens = f.get("tokenizer.ggml.tokens")
    vocab = k("vocab_size") or (len(tokens) if tokens else f.tensors["token_embd.weight"].shape[0])
    act = f.get("bitconv.hidden_act") or k("hidden_activation") or (
        "relu2" if family == "BitNetForCausalLM" else "silu")
    tie = f.get("bitconv.tie_embeddings")
    if tie is None:
        tie = "output.weight" not in f.tensors
    config = {
        "architectures": [family],
        "hidden_size": hidden,
        "intermediate_size": int(k("feed_forward_length")),
        "num_hidden_layers": int(k("block_count")),
        "num_attention_heads": heads,
        "num_key_value_heads": int(k("attention.head_count_kv", heads)),
        "head_dim": int(k("rope.dimension_count", hidden // heads)),
        "max_position_embeddings": int(k("context_length", 2048)),
        "rope_theta": float(k("rope.freq_base", 10000.0)),
        "rms_norm_eps": float(k("attention.layer_norm_rms_epsilon", 1e-5)),
        "vocab_size": int(vocab),
        "hidden_act": act,
        "tie_word_embeddings": bool(tie),
        "bos_token_id": f.get("tokenizer.ggml.bos_token_id"),
        "eos_token_id": f.get("tokenizer.ggml.eos_token_id"),
    }
    return arch, config


def open_gguf(path: Path, source: SourceInfo) -> Checkpoint:
    from ..archs.llama import from_llama_rope_order

    f = GGUFFile(path)
    arch, config = hparams_config(f)
    family = architecture_for(config, str(path))
    hp = family.hparams(config)
    group = parse_group_size(f.get("bitconv.group_size", "tensor"))
    tensors: list[SourceTensor] = []
    layouts: dict[int, Layout] = {}
    for info in f.tensors.values():
        kind = kind_of(info.name)
        role = {"token_embd": "embedding", "output": "output", "output_norm": "norm"}.get(
            kind, "norm" if kind.endswith("norm") else LINEAR)
        if info.ggml_type in FLOAT_TYPES:
            def load(i=info):
                if arch == "llama" and kind_of(i.name) in ("attn_q", "attn_k"):
                    raise InputError(f"{path}: float q/k tensors in a llama GGUF are not supported as a source")
                return np.array(bytes_to_float(f.raw(i.name), i.ggml_type, i.shape), dtype=np.float32)

            tensors.append(SourceTensor(info.name, info.shape, role, info.type_name.lower(), info.name,
                                        _load=load, source_nbytes=info.nbytes))
            continue
        layout = layouts.setdefault(info.ggml_type, layout_for(f, info.ggml_type))

        def load_t(i=info, lay=layout):
            kw = {"group": group} if lay.name.startswith("tq") else {}
            tern = lay.unpack(np.asarray(f.raw(i.name)), i.shape, i.name, **kw)
            if arch == "llama" and kind_of(i.name) in ("attn_q", "attn_k"):
                heads = hp.num_heads if kind_of(i.name) == "attn_q" else hp.num_kv_heads
                tern = from_llama_rope_order(tern, heads)
            return tern

        tensors.append(SourceTensor(info.name, info.shape, LINEAR, layout.name, info.name,
                                    _load_ternary=load_t, source_nbytes=info.nbytes,
                                    group=group if layout.name.startswith("tq") else "tensor"))
    spec = ModelSpec(
        family=family.hf_names[0], name=f.get("general.name") or path.stem, hparams=hp, source=source,
        config=config, tokenizer_dir=None, packed=bool(layouts),
        gguf_metadata={k: v for k, v in f.kv.items() if k.startswith("tokenizer.")},
    )
    return Checkpoint(spec=spec, tensors=tensors, files=[path])
