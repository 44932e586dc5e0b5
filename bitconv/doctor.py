"""`bitconv doctor`: check any GGUF (bitconv's or another tool's) for what makes engines
refuse it or, worse, silently compute another function.

The checks read the header, the tensor index and only the bytes they need: the scale
slot of each bitnet.cpp tensor, the scale fields of each TQ/Q2_0 block, and the 2-bit
code fields for code 3. Each check returns `Finding`s; one unexpected failure inside a
check becomes a finding instead of a crash, so a hostile file always gets a report.
Severity: `error` = an engine would miscompute or refuse the file (exit 1); `warning` =
runs but is not what the user likely wants; `info` = something the bytes cannot tell.
An unreadable header or index exits 2 (CorruptFileError from the reader).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np

from .errors import UsageError
from .ggml_types import FLOAT_TYPES
from .model import LINEAR_KINDS, kind_of
from .readers.gguf_file import GGUFFile, GGUFTensorInfo

ENGINES = ("llama.cpp", "bitnet.cpp")
LLAMA_CPP, BITNET_CPP = ENGINES

# What each engine reads a tensor type id as (FORMATS.md §2, §6b; FORMATS-NOTES §5.6).
# bitnet.cpp: the Nov-2024 release knows 36-39; its 2026 fork (llama.cpp 390c307) moved
# TL2 to 42. Upstream llama.cpp: 36-38 unknown, 39 MXFP4, 42 Q2_0.
ENGINE_TYPE = {
    LLAMA_CPP: {34: "TQ1_0", 35: "TQ2_0", 39: "MXFP4", 40: "NVFP4", 41: "Q1_0", 42: "Q2_0"},
    BITNET_CPP: {34: "TQ1_0", 35: "TQ2_0", 36: "I2_S", 38: "TL1", 39: "TL2", 42: "TL2 (2026 fork)"},
}
# general.file_type meanings that differ between the engines
ENGINE_FTYPE = {
    LLAMA_CPP: {36: "MOSTLY_TQ1_0", 37: "MOSTLY_TQ2_0", 38: "MOSTLY_MXFP4_MOE", 39: "MOSTLY_NVFP4",
                40: "MOSTLY_Q1_0", 41: "MOSTLY_Q2_0"},
    BITNET_CPP: {36: "MOSTLY_TQ1_0", 37: "MOSTLY_TQ2_0", 38: "MOSTLY_TL1", 39: "MOSTLY_TL2", 40: "MOSTLY_I2_S"},
}

def _ftype_of_reading() -> dict[str, int]:
    """The file_type that goes with each ternary reading of the linears ("TQ2_0": 37, ...),
    asked of `pack/`'s GGUF layouts, so a layout added there is known here."""
    from .pack import layout_class, layout_names

    classes = (layout_class(n) for n in layout_names())
    return {c.name.upper(): c.file_type for c in classes if c.ggml_type is not None and c.file_type is not None}

AMBIGUOUS_TYPES = (39, 42)
SILU_ARCHES = ("bitnet", "llama")  # graphs that compute a SiLU-gated FFN
RELU2_ARCHES = ("bitnet-b1.58", "bitnet-25")
RELU2_NAMES = ("relu2", "relu_squared", "squared_relu", "relu^2", "relu²")
RELU2_MODELS = ("bitnet-b1.58-2b", "bitnet-b1.58-2b-4t", "bitnet-2b")  # known relu² checkpoints

INVERTED_FACTOR = 100.0  # "orders of magnitude": a scale this far from the others is suspect


@dataclass
class Finding:
    """One problem: what it concerns (a tensor name or a metadata key), what is wrong,
    and what to do about it."""

    code: str
    severity: str  # "error" | "warning" | "info"
    subject: str
    message: str
    action: str

    def line(self) -> str:
        return f"{self.severity}: {self.subject}: {self.message}; {self.action}"


@dataclass
class DoctorReport:
    path: str
    engine: str | None
    engine_inferred: bool
    arch: str | None
    file_type: int | None
    tensors: int
    readings: dict[str, list[str]] = field(default_factory=dict)  # ambiguous type id -> supported readings
    findings: list[Finding] = field(default_factory=list)

    @property
    def errors(self) -> list[Finding]:
        return [f for f in self.findings if f.severity == "error"]

    @property
    def exit_code(self) -> int:
        return 1 if self.errors else 0

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["ok"] = not self.errors
        d["exit_code"] = self.exit_code
        return d


# ----------------------------------------------------------------------------------------
# readings of the ambiguous ids: readers/type_ids.py's table, decided here by byte span
# ----------------------------------------------------------------------------------------
def _roundup(x: int, a: int) -> int:
    return (x + a - 1) // a * a


# which reading of AMBIGUOUS[id] each engine applies
ENGINE_READING = {39: {BITNET_CPP: 0, LLAMA_CPP: 1}, 42: {LLAMA_CPP: 0, BITNET_CPP: 1}}


def _short_label(label: str) -> str:
    """'Q2_0 of upstream llama.cpp (...)' -> 'Q2_0 of upstream llama.cpp'."""
    return label.split(" (")[0]


class _Ctx:
    """What every check needs: the parsed file, slot sizes and the engine in question."""

    def __init__(self, f: GGUFFile, engine: str | None) -> None:
        self.f = f
        self.size = int(f.data.size)
        self.arch = f.get("general.architecture")
        self.engine = engine
        self.align = f.alignment()
        # the room each tensor has before the next one starts (or the file ends)
        starts = sorted({i.offset for i in f.index})
        nxt = {a: b for a, b in zip(starts, starts[1:])}
        self.slot = {id(i): max(0, nxt.get(i.offset, self.size) - i.offset) for i in f.index}
        self.last = {id(i): i.offset not in nxt for i in f.index}
        self.readings: dict[int, list[str]] = {}
        self.layouts: dict[int, list[str | None]] = {}  # ambiguous id -> the layouts of its supported readings

    def fits(self, info: GGUFTensorInfo, nbytes: int | None) -> bool:
        if nbytes is None:
            return False
        slot = self.slot[id(info)]
        if self.last[id(info)]:
            return nbytes <= slot < _roundup(nbytes, self.align) + self.align
        return nbytes <= slot < nbytes + self.align

    def matrix(self, info: GGUFTensorInfo) -> tuple[int, int] | None:
        s = info.shape
        if len(s) == 2:
            return int(s[0]), int(s[1])
        if len(s) > 2 and all(d == 1 for d in s[:-2]):
            return int(s[-2]), int(s[-1])
        return None

    def key(self, name: str) -> Any:
        return self.f.get(f"{self.arch}.{name}") if self.arch else None


def _linears(f: GGUFFile) -> list[GGUFTensorInfo]:
    return [i for i in f.tensors.values() if kind_of(i.name) in LINEAR_KINDS and i.name.endswith(".weight")]


def _short(names: list[str], n: int = 3) -> str:
    return ", ".join(names[:n]) + (f" and {len(names) - n} more" if len(names) > n else "")


# ----------------------------------------------------------------------------------------
# checks
# ----------------------------------------------------------------------------------------
def check_container(c: _Ctx) -> Iterable[Finding]:
    """Duplicate names, misaligned, truncated and overlapping tensor data, unknown types."""
    f = c.f
    seen: set[str] = set()
    for info in f.index:
        if info.name in seen:
            yield Finding("duplicate-tensor", "error", info.name, "the tensor index lists this name twice",
                          "engines refuse the file; write it again with a correct tool")
        seen.add(info.name)
        if (info.offset - f.data_start) % c.align:
            yield Finding("misaligned-data", "error", info.name,
                          f"its data offset {info.offset - f.data_start} is not a multiple of the alignment "
                          f"{c.align}", "llama.cpp refuses the file; write it again")
        if info.nbytes is None and info.ggml_type not in AMBIGUOUS_TYPES:
            yield Finding("unknown-type", "error", info.name,
                          f"GGML type {info.ggml_type} is not a type bitconv knows for shape {list(info.shape)}",
                          "engines that do not know it refuse the file; check which tool wrote it")
    ordered = sorted((i for i in f.index if i.nbytes is not None), key=lambda i: i.offset)
    cut = getattr(f, "truncation", None)
    if cut is not None:  # once for the file: where it ends and every tensor past it (any type)
        yield Finding("truncated", "error", cut.subject(), cut.message(),
                      "the file is truncated: download or write it again")
    for info in ordered:
        end = info.offset + info.nbytes
        if end > c.size and cut is None:
            yield Finding("truncated", "error", info.name,
                          f"its {info.type_name} data needs {info.nbytes} bytes from byte {info.offset} "
                          f"but the file ends at {c.size}", "the file is truncated: download or write it again")
    for a, b in zip(ordered, ordered[1:]):
        if a.offset + a.nbytes > b.offset:
            yield Finding("overlapping-data", "error", b.name,
                          f"its data starts at byte {b.offset}, inside {a.name} (bytes {a.offset}.."
                          f"{a.offset + a.nbytes})", "the tensor index is corrupt: write the file again")


def check_type_ids(c: _Ctx) -> Iterable[Finding]:
    """Type ids that mean different things in different engines, and which reading the
    bytes support (by the room each tensor has in the file)."""
    from .readers.type_ids import AMBIGUOUS, _fits

    f = c.f
    present = sorted({i.ggml_type for i in f.index})
    for t in present:
        infos = [i for i in f.index if i.ggml_type == t]
        if t in AMBIGUOUS:
            supported = []
            for r in AMBIGUOUS[t]:
                mks = [c.matrix(i) for i in infos]
                if all(mk is not None and _fits(r.nbytes(*mk), c.slot[id(i)], c.align) for mk, i in zip(mks, infos)):
                    supported.append(r)
            c.readings[t] = [_short_label(r.label) for r in supported]
            c.layouts[t] = [r.layout for r in supported]
            engine_reading = {e: AMBIGUOUS[t][ix] for e, ix in ENGINE_READING[t].items()}
            what = "; ".join(f"{e} reads it as {_short_label(r.label)}" for e, r in engine_reading.items())
            names = [_short_label(r.label) for r in supported]
            bytes_say = ("the bytes fit " + " or ".join(names)) if names else "the bytes fit none of these readings"
            subject = f"{len(infos)} tensor(s) of type {t} ({infos[0].name}...)"
            if c.engine is None:
                sev = "warning"
                action = "run it only in an engine that reads it as " + (" or ".join(names) or "intended")
            elif engine_reading[c.engine] in supported:
                continue
            else:
                sev = "error"
                action = (f"{c.engine} would compute garbage; run it in the engine that reads "
                          f"{' or '.join(names) or 'it'}, or repack: bitconv convert FILE out.gguf --layout tq2_0")
            if not supported:
                sev = "error"
            yield Finding("type-id-ambiguous", sev, subject, f"type {t} means different things: {what}; {bytes_say}",
                          action)
        elif c.engine == LLAMA_CPP and t in (36, 37, 38):
            name = ENGINE_TYPE[BITNET_CPP].get(t, f"type {t}")
            relu2 = c.arch in RELU2_ARCHES or _activation(c)[0] == "relu2"
            yield Finding("engine-lacks-type", "error", f"{len(infos)} tensor(s) of type {t} ({infos[0].name}...)",
                          f"type {t} is bitnet.cpp's {name}; llama.cpp does not know it and refuses the file",
                          "run it in bitnet.cpp: a relu² model has no llama.cpp graph, so no repack runs there"
                          if relu2 else "repack for llama.cpp: bitconv convert FILE out.gguf --layout tq2_0")
    ft = f.get("general.file_type")
    if not isinstance(ft, int) or ft not in ENGINE_FTYPE[LLAMA_CPP] and ft not in ENGINE_FTYPE[BITNET_CPP]:
        return
    readings = _linear_readings(c)
    if not readings:
        return
    engines = [c.engine] if c.engine else list(ENGINES)
    ftype_of = _ftype_of_reading()
    for e in engines:
        meaning = ENGINE_FTYPE[e].get(ft)
        expected = {ftype_of.get(r.split(" ")[0]) for r in readings}
        if meaning is not None and ft not in expected and (c.engine or _engine_for(readings) == e):
            yield Finding("file-type-mismatch", "warning", "general.file_type",
                          f"{ft} means {meaning} in {e}, but the linears are {'/'.join(sorted(readings))}",
                          "tools that trust file_type mislabel the file; repack with bitconv convert to fix the label")


def _linear_readings(c: _Ctx) -> set[str]:
    out = set()
    for i in _linears(c.f):
        if i.ggml_type in FLOAT_TYPES:
            continue
        if i.ggml_type in c.readings:
            out.update(c.readings[i.ggml_type][:1])
        else:
            out.add(i.type_name)
    return out


def _engine_for(readings: set[str]) -> str | None:
    for r in readings:
        if r in ("I2_S", "TL1", "TL2") or r.startswith("TL2"):
            return BITNET_CPP
    return LLAMA_CPP if readings else None


def check_float_linears(c: _Ctx) -> Iterable[Finding]:
    """Linears stored as F16/F32/BF16 in a file whose file_type says ternary (BN#621)."""
    ft = c.f.get("general.file_type")
    if ft not in set(_ftype_of_reading().values()):
        return
    lin = _linears(c.f)
    flt = [i.name for i in lin if i.ggml_type in FLOAT_TYPES]
    if not flt:
        return
    label = ENGINE_FTYPE[c.engine or BITNET_CPP].get(ft) or ENGINE_FTYPE[LLAMA_CPP].get(ft)
    kind = FLOAT_TYPES[c.f.tensors[flt[0]].ggml_type][0]
    yield Finding("float-linears", "warning", _short(flt),
                  f"{len(flt)} of {len(lin)} linears are stored as {kind} although general.file_type {ft} "
                  f"says {label}: they run in float (larger, slower than the label says)",
                  "if their values are ternary, repack: bitconv convert FILE out.gguf --layout i2_s (or tq2_0)")


def _activation(c: _Ctx) -> tuple[str | None, str]:
    """(relu2 | silu | None, the evidence)."""
    for key in (f"{c.arch}.hidden_activation", "bitconv.hidden_act"):
        v = c.f.get(key)
        if isinstance(v, str):
            act = "relu2" if v.lower() in RELU2_NAMES else "silu" if v.lower() in ("silu", "swish") else None
            if act:
                return act, f"{key} = {v!r}"
    biases = [n for n in c.f.tensors if n.startswith("blk.") and kind_of(n) in ("attn_q", "attn_k", "attn_v")
              and n.endswith(".bias")]
    if biases and c.arch == "bitnet":
        return "relu2", f"it has {biases[0]}, a tensor only the relu² bitnet-b1.58 graph reads"
    for key in ("general.name", "general.basename", "general.source.huggingface.repository",
                "general.base_model.0.name", "general.base_model.0.repo_url"):
        v = c.f.get(key)
        if isinstance(v, str) and any(m in v.lower() for m in RELU2_MODELS):
            return "relu2", f"{key} = {v!r} names a relu² model"
    return None, ""


def check_activation(c: _Ctx) -> Iterable[Finding]:
    """A relu² model under a graph that computes SiLU (BN#588: perplexity 99.8 instead of 17.1)."""
    act, why = _activation(c)
    if act == "relu2" and c.arch in SILU_ARCHES:
        by_key = why.startswith(f"{c.arch}.hidden_activation")
        yield Finding("relu2-under-silu", "error", "general.architecture",
                      f"the model is relu² ({why}) but arch {c.arch!r} computes a SiLU-gated FFN",
                      "repack for bitnet.cpp's relu² graph: bitconv convert FILE out.gguf --layout i2_s" if by_key else
                      "convert the original checkpoint for bitnet.cpp's relu² graph (bitconv convert MODEL out.gguf "
                      "--layout i2_s writes arch bitnet-b1.58)")
    elif act == "silu" and c.arch in RELU2_ARCHES:
        yield Finding("silu-under-relu2", "error", "general.architecture",
                      f"the model is SiLU ({why}) but arch {c.arch!r} computes a relu² FFN",
                      "repack: bitconv convert FILE out.gguf --layout tq2_0 (arch bitnet)")


def check_head(c: _Ctx) -> Iterable[Finding]:
    """An untied output layer under `bitnet`, whose graph reuses token_embd as the head."""
    if c.arch == "bitnet" and "output.weight" in c.f.tensors:
        yield Finding("untied-head-under-bitnet", "error", "output.weight",
                      "arch 'bitnet' has no output tensor: llama.cpp refuses the file (wrong number of tensors) "
                      "and the model's own head is never used",
                      "relu² models: bitconv convert FILE out.gguf --layout i2_s (arch bitnet-b1.58 keeps the head); "
                      "SiLU models: --format safetensors")


def check_norms(c: _Ctx) -> Iterable[Finding]:
    """Norm weights (and other vectors) stored in a quantized type."""
    for i in c.f.index:
        if (kind_of(i.name).endswith("norm") or len(i.shape) == 1) and i.ggml_type not in FLOAT_TYPES:
            yield Finding("quantized-norm", "error", i.name,
                          f"a norm/vector stored as {i.type_name}; engines expect F32 and compute it wrongly or refuse",
                          "convert again from the original model (norms stay F32)")


def _layout(c: _Ctx, info: GGUFTensorInfo):
    """The `pack/` layout a tensor's bytes are read as (an ambiguous id: the first reading
    its bytes support), None for float and foreign types."""
    from .pack import get_layout, layout_for_ggml_type

    t = info.ggml_type
    if t in FLOAT_TYPES:
        return None
    if t in AMBIGUOUS_TYPES:
        names = c.layouts.get(t) or [None]
        return get_layout(names[0]) if names[0] is not None else None
    cls = layout_for_ggml_type(t)
    return cls() if cls is not None else None


def _tensor_bytes(c: _Ctx, info: GGUFTensorInfo):
    """(layout, [M, K], the tensor's bytes) for a ternary linear whose bytes are all in the
    file, else None (a truncated tensor is reported by check_container)."""
    mk = c.matrix(info)
    lay = _layout(c, info) if mk is not None else None
    if lay is None:
        return None
    try:
        n = lay.nbytes(mk)
    except (ValueError, ZeroDivisionError, ArithmeticError):
        return None
    if info.offset + n > c.size:
        return None
    return lay, mk, c.f.data[info.offset:info.offset + n]


def _scales(c: _Ctx) -> dict[str, tuple[np.ndarray, int]]:
    """tensor -> (its stored scales as float32, K) for every ternary linear whose layout
    keeps scales in its bytes (`Layout.stored_scales`)."""
    out = {}
    for info in _linears(c.f):
        got = _tensor_bytes(c, info)
        if got is None:
            continue
        lay, mk, data = got
        s = lay.stored_scales(data, mk)
        if s is not None:
            out[info.name] = (np.asarray(s, dtype=np.float32).reshape(-1), mk[1])
    return out


def check_scales(c: _Ctx) -> Iterable[Finding]:
    """Scales that are zero, negative, NaN/inf, or orders of magnitude off (inverted)."""
    scales = _scales(c)
    typical: dict[str, float] = {}
    for name, (s, k) in scales.items():
        bad_nan = int(np.count_nonzero(~np.isfinite(s)))
        bad_neg = int(np.count_nonzero(s < 0))
        if bad_nan:
            yield Finding("scale-not-finite", "error", name, f"{bad_nan} scale(s) are NaN or infinite",
                          "the tensor computes NaN; the file is corrupt: write it again")
        if bad_neg:
            yield Finding("scale-negative", "error", name, f"{bad_neg} scale(s) are negative (min {float(s.min()):.4g})",
                          "the tensor's sign is flipped; convert again from the original model")
        finite = s[np.isfinite(s)]
        if finite.size and not np.any(finite != 0):
            yield Finding("scale-zero", "error", name, "every scale of the tensor is zero: it outputs zeros",
                          "convert again from the original model")
            continue
        nz = np.abs(finite[finite != 0])
        if nz.size:
            typical[name] = float(np.median(nz)) * math.sqrt(k)  # ~ the RMS gain of the layer
    if not typical:
        return
    med = float(np.median(list(typical.values())))
    if med > INVERTED_FACTOR:
        yield Finding("scales-inverted", "error", "all linears",
                      f"scale x sqrt(K) has median {med:.3g}: weights ~{med:.0f}x larger than a trained layer's "
                      "unit gain; the converter likely stored 1/s (a bitlinear weight_scale) as the multiplier",
                      "convert again from the original checkpoint with bitconv (it applies each linear_class's rule)")
        return
    for name, v in typical.items():
        if med > 0 and (v / med > INVERTED_FACTOR or med / v > INVERTED_FACTOR):
            yield Finding("scale-inverted", "error", name,
                          f"its scale is {v / med:.3g}x the median of the other linears (orders of magnitude off): "
                          "likely an inverted (1/s) or corrupt scale",
                          "convert again from the original checkpoint")


def check_codes(c: _Ctx) -> Iterable[Finding]:
    """Code fields that decode to no ternary value, as each layout defines them
    (`Layout.invalid_codes`: 2-bit code 3 in I2_S / TQ2_0 / Q2_0, pair codes > 8 in TL1)."""
    for info in _linears(c.f):
        got = _tensor_bytes(c, info)
        if got is None:
            continue
        lay, mk, data = got
        bad = lay.invalid_codes(data, mk)
        if bad is None or not bad.count:
            continue
        yield Finding("non-ternary-codes", "error" if bad.corrupt else "warning", info.name,
                      f"{bad.count} weight(s) hold {bad.what}",
                      "the tensor is corrupt; convert again from the original model" if bad.corrupt else
                      "not a ternary model: bitconv will not repack it")


def check_tokenizer(c: _Ctx) -> Iterable[Finding]:
    """A missing tokenizer or pre-tokenizer, and a vocabulary that disagrees with the embedding."""
    f = c.f
    model = f.get("tokenizer.ggml.model")
    tokens = f.get("tokenizer.ggml.tokens")
    if model is None or not tokens:
        yield Finding("no-tokenizer", "error", "tokenizer.ggml.tokens" if model else "tokenizer.ggml.model",
                      "the file has no tokenizer: engines refuse to load it",
                      "convert again from a folder with tokenizer.json")
        return
    if model == "gpt2" and f.get("tokenizer.ggml.pre") is None:
        yield Finding("no-pre-tokenizer", "warning", "tokenizer.ggml.pre",
                      "missing: llama.cpp falls back to the 'default' pre-tokenizer (\"generation quality will be "
                      "degraded\"); Llama-3 vocabularies need 'llama-bpe'",
                      "convert from the model's folder (bitconv derives the key from tokenizer.json), or add it "
                      "to this file with gguf-py")
    emb = f.tensors.get("token_embd.weight")
    n_tok = len(tokens)
    rows = int(emb.shape[0]) if emb is not None and len(emb.shape) >= 2 else None
    if rows is not None and rows != n_tok:
        yield Finding("vocab-mismatch", "error", "tokenizer.ggml.tokens",
                      f"{n_tok} tokens but token_embd.weight has {rows} rows",
                      "the tokenizer belongs to another model: convert again with the model's own tokenizer")
    vs = c.key("vocab_size")
    if isinstance(vs, int) and rows is not None and vs != rows:
        yield Finding("vocab-mismatch", "error", f"{c.arch}.vocab_size",
                      f"{vs} but token_embd.weight has {rows} rows", "fix the key or convert again")
    for key in ("tokenizer.ggml.bos_token_id", "tokenizer.ggml.eos_token_id"):
        v = f.get(key)
        if isinstance(v, int) and not 0 <= v < n_tok:
            yield Finding("token-id-out-of-range", "error", key, f"{v} is not a token id (vocabulary of {n_tok})",
                          "fix the key or convert again")


def check_arch(c: _Ctx) -> Iterable[Finding]:
    """An arch string the chosen engine does not know."""
    if c.arch in RELU2_ARCHES and c.engine == LLAMA_CPP:
        yield Finding("engine-lacks-arch", "error", "general.architecture",
                      f"arch {c.arch!r} exists only in bitnet.cpp; llama.cpp refuses the file",
                      "relu² BitNet models have no llama.cpp graph: run it in bitnet.cpp")
    elif c.arch is None:
        yield Finding("no-arch", "error", "general.architecture", "missing: no engine can load the file",
                      "write the file again with a converter")
    elif not isinstance(c.arch, str):  # engines read it as a string; any other type fails to load
        yield Finding("no-arch", "error", "general.architecture",
                      f"not a string ({type(c.arch).__name__} {str(c.arch)[:40]}): no engine can load the file",
                      "write the file again with a converter")


def check_i2s_order(c: _Ctx) -> Iterable[Finding]:
    """I2_S has two code orders under one type id; a foreign file does not say which (the id
    and the metadata key bitconv records it under are asked of the layout in `pack/`)."""
    from .pack import get_layout

    i2s = get_layout("i2_s")
    keys = [f"bitconv.{k}" for k in i2s.metadata()]
    if any(i.ggml_type == i2s.ggml_type for i in c.f.index) and all(c.f.get(k) is None for k in keys):
        yield Finding("i2s-order-unknown", "info", "I2_S tensors",
                      "the file does not record its I2_S code order: x86 builds and the official files use "
                      "128-value blocks (x86-act), ARM builds since 2025 64-value blocks (arm)",
                      "if it came from an ARM build, pass --source-i2s-variant arm when converting it")


def check_forks(c: _Ctx) -> Iterable[Finding]:
    """Hadamard-rotation keys and fork-claimed type ids (43, 142, 143): bitconv/doctor_forks.py."""
    from .doctor_forks import fork_findings

    return fork_findings(c)


CHECKS: tuple[Callable[[_Ctx], Iterable[Finding]], ...] = (
    check_container, check_type_ids, check_arch, check_float_linears, check_activation, check_head,
    check_norms, check_scales, check_codes, check_tokenizer, check_i2s_order, check_forks,
)


def infer_engine(c: _Ctx) -> str | None:
    if c.arch in RELU2_ARCHES:
        return BITNET_CPP
    return _engine_for(_linear_readings(c))


def doctor(path: str | Path, engine: str | None = None, kernel_config: str | Path | None = None) -> DoctorReport:
    """Check a GGUF file. Raises CorruptFileError (exit 2) only when its header or tensor
    index cannot be parsed; everything else becomes a Finding."""
    if engine is not None and engine not in ENGINES:
        raise UsageError(f"--engine must be one of {', '.join(ENGINES)}, got {engine!r}")
    path = Path(path)
    f = GGUFFile(path, strict=False)
    c = _Ctx(f, engine)
    findings: list[Finding] = []
    for check in CHECKS:
        try:
            findings.extend(check(c))
        except Exception as exc:  # a hostile file must get a report, never a traceback
            findings.append(Finding("check-failed", "error", check.__name__.removeprefix("check_"),
                                    f"could not be checked ({type(exc).__name__}: {exc})",
                                    "the file is damaged in a way bitconv does not describe; write it again"))
        if check is check_type_ids and engine is None:
            c.engine = infer_engine(c)  # decided once the ambiguous type ids were read by size
    if kernel_config is not None:
        findings.extend(kernel_config_findings(path, Path(kernel_config)))
    ft = f.get("general.file_type")
    return DoctorReport(
        path=str(path), engine=c.engine, engine_inferred=engine is None, arch=c.arch,
        file_type=ft if isinstance(ft, int) else None, tensors=len(f.index),
        readings={str(k): v for k, v in c.readings.items()}, findings=findings,
    )


def kernel_config_findings(path: Path, kernel_config: Path) -> list[Finding]:
    """TL tiles of the file against a bitnet.cpp build's kernel_config.ini, through
    bitconv.kernel_check (issue 15): a tensor whose tiles differ from the build's, or whose
    shape the build lacks, computes garbage there without any error."""
    try:
        from .kernel_check import MISSING_SHAPE, UNKNOWN_TILES, check_kernel_config
    except ImportError:
        raise UsageError("--kernel-config needs bitconv.kernel_check, which this version does not have") from None
    from .errors import InputError

    try:
        result = check_kernel_config(path, kernel_config)
    except InputError as exc:
        if "no TL1/TL2 tensors" not in exc.message:
            raise
        return [Finding("kernel-config-not-applicable", "info", "--kernel-config", exc.message,
                        "a kernel config only concerns TL1/TL2 files")]
    out = []
    for p in result.problems:
        if p.reason == UNKNOWN_TILES:
            out.append(Finding("tiles-unknown", "info", p.tensor, p.message(),
                               "another tool wrote it: only the build it was made for can tell"))
        else:
            out.append(Finding("kernel-config-mismatch", "error", p.tensor, p.message(),
                               "regenerate the kernels (bitconv convert --emit-kernel-config prints the codegen "
                               "command) or convert again with --kernel-config" if p.reason != MISSING_SHAPE else
                               "this build has no kernel for the shape: regenerate kernels for this model"))
    return out


def render(report: DoctorReport, console) -> None:
    """Human output: a summary line, then one line per finding."""
    eng = f"{report.engine} (inferred)" if report.engine and report.engine_inferred else (report.engine or "any")
    console.print(f"[bold]{report.path}[/bold]: arch {report.arch}, file_type {report.file_type}, "
                  f"{report.tensors} tensors, engine {eng}")
    colors = {"error": "red", "warning": "yellow", "info": "cyan"}
    for fd in report.findings:
        console.print(f"[{colors[fd.severity]}]{fd.severity}[/{colors[fd.severity]}] [bold]{fd.subject}[/bold]: "
                      f"{fd.message}. Do: {fd.action}", soft_wrap=True, highlight=False, markup=True)
    n_err = len(report.errors)
    if not report.findings:
        console.print("[green]no findings[/green]")
    else:
        console.print(f"{n_err} error(s), {len(report.findings) - n_err} other finding(s)")
