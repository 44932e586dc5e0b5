"""What bitconv knows about a model, independent of the file it came from.

Readers produce a `ModelSpec` and a stream of `SourceTensor`s named with GGUF's canonical
tensor names (`blk.N.attn_q.weight`), whatever the source's own names were, so planning,
writing and verify deal with one vocabulary.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from .quant import Ternary

# Roles decide what happens to a tensor: linears are ternary, the rest keep a float type.
LINEAR, EMBEDDING, OUTPUT, NORM = "linear", "embedding", "output", "norm"

LINEAR_KINDS = ("attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down")
NORM_KINDS = ("attn_norm", "attn_sub_norm", "ffn_norm", "ffn_sub_norm")


@dataclass
class HParams:
    """Hyperparameters an engine needs to run the model (the GGUF `<arch>.*` keys)."""

    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    context_length: int
    rope_theta: float
    rms_eps: float
    hidden_act: str  # "relu2" | "silu"
    tie_embeddings: bool
    sub_norms: bool  # BitNet attn_sub_norm / ffn_sub_norm present
    qk_norm: bool = False  # per-head RMSNorm of q and k before rope (Qwen3)
    linear_norms: bool = False  # an RMSNorm before every ternary linear (use_rms_norm)
    linear_norm_eps: float = 1e-6
    bos_token_id: int | None = None
    eos_token_id: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class SourceInfo:
    """Where a model came from, for provenance in metadata and manifests."""

    kind: str  # "hub" | "folder" | "gguf" | "builtin"
    location: str  # repo id, path or builtin name as the user gave it
    path: Path  # the local folder or file actually read
    revision: str | None = None  # requested revision
    commit: str | None = None  # resolved commit hash (hub)

    @property
    def public_location(self) -> str:
        """The location as it may be published: a Hub id or builtin name as given, a local
        folder or file only by its name (a path like /home/<user>/models/x is private)."""
        if self.kind in ("hub", "builtin"):
            return self.location
        return Path(self.path).resolve().name or str(self.location)


@dataclass
class ModelSpec:
    family: str  # registered architecture name, e.g. "BitNetForCausalLM"
    name: str  # human name (general.name)
    hparams: HParams
    source: SourceInfo
    config: dict[str, Any] = field(default_factory=dict)
    tokenizer_dir: Path | None = None  # folder with tokenizer.json / tokenizer.model
    packed: bool = False  # linears are ternary on disk (HF bitnet packed or a ternary GGUF)
    quantization: dict[str, Any] = field(default_factory=dict)  # the source's quantization_config
    gguf_metadata: dict[str, Any] = field(default_factory=dict)  # GGUF sources: their KV pairs


class StoredBytes:
    """Where a packed tensor's bytes are (file, offset, length), how to map them (`read`), and
    what the reader does to the decoded rows (`rope_heads`: GGUF `llama` q/k rows are in
    llama.cpp's rope order; `archs.llama.from_llama_rows` puts them back)."""

    def __init__(self, path: Path, offset: int, nbytes: int, read: Callable[[], np.ndarray],
                 rope_heads: int | None = None) -> None:
        self.path, self.offset, self.nbytes, self.read, self.rope_heads = path, offset, nbytes, read, rope_heads


@dataclass
class SourceTensor:
    """One tensor, not yet read. `load()` reads it as float32; `load_ternary()` returns the
    ternary values and scales of a tensor already ternary on disk (never re-quantized)."""

    name: str
    shape: tuple[int, ...]
    role: str
    dtype: str  # source dtype: "bf16", "f16", "f32" or a ternary layout name
    source_name: str
    _load: Callable[[], np.ndarray] | None = None
    _load_ternary: Callable[[], Ternary] | None = None
    source_nbytes: int = 0
    group: Any = None  # ternary sources: the group of their own scales ("tensor", "row", N)
    _load_rows: Callable[[int, int], np.ndarray] | None = None  # rows [a, b) as float32 (cheap probes)
    kind: Any = None  # a `source_kind.SourceKind`, decided once per checkpoint
    detection: Any = None  # exact-ternary floats: the `exact_ternary.Detection` that found them
    _load_raw: Callable[[], np.ndarray] | None = None  # the values as stored (see load_raw)
    _load_raw_rows: Callable[[int, int], np.ndarray] | None = None  # rows [a, b) as stored
    # floats an engine computes from a lossy quantized tensor (a stock `mlx_lm.convert` 2-bit or
    # compressed-tensors int2 folder): "mlx" / "compressed-tensors"; None for stored values
    computed_from: str | None = None
    # a packed tensor's bytes as the file stores them, for a consumer that decodes them itself
    # (verify decodes TQ2_0 where it multiplies: on a GPU, or into its fused CPU matrices)
    stored: "StoredBytes | None" = None

    @property
    def is_ternary(self) -> bool:
        return self._load_ternary is not None

    def load(self) -> np.ndarray:
        if self._load is not None:
            return self._load()
        return self.load_ternary().dequantize()

    def load_raw(self) -> np.ndarray:
        """The float values as the file stores them, not widened: float32 or float16 arrays,
        bfloat16 as its uint16 bits (mapped, where the reader maps the file). Ternarization
        widens them itself, in the same pass as its first walk over the weights; readers
        that have no cheaper form give `load()`'s float32."""
        if self._load_raw is not None:
            return self._load_raw()
        return self.load()

    def load_raw_rows(self, start: int, stop: int) -> np.ndarray:
        """Rows [start, stop) as `load_raw` gives them, reading only those rows where the
        reader can (a pass over a 1 GB table then holds one chunk of it, not all of it)."""
        if self._load_raw_rows is not None:
            return self._load_raw_rows(start, stop)
        return self.load_raw()[start:stop]

    def load_rows(self, start: int, stop: int) -> np.ndarray:
        """Rows [start, stop) as float32, without reading the rest when the reader can."""
        if self._load_rows is not None:
            return self._load_rows(start, stop)
        return self.load()[start:stop]

    def load_ternary(self) -> Ternary:
        if self._load_ternary is None:
            raise TypeError(f"{self.name} is not ternary on disk")
        return self._load_ternary()


_BLOCK = re.compile(r"blk\.([0-9]{1,9})\.([^.]+)(\..*)?", re.S)


def layer_of(name: str) -> int | None:
    """`blk.7.attn_q.weight` -> 7; tensors outside the blocks (or malformed names) -> None."""
    m = _BLOCK.fullmatch(name)
    return int(m.group(1)) if m else None


def kind_of(name: str) -> str:
    """`blk.7.attn_q.weight` -> `attn_q`; `token_embd.weight` -> `token_embd`."""
    m = _BLOCK.fullmatch(name)
    return m.group(2) if m else name.split(".")[0]
