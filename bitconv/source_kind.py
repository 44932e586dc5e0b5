"""What each source tensor is, decided once per checkpoint and obeyed everywhere.

| kind             | what it is                                          | what convert / verify do    |
|------------------|-----------------------------------------------------|-----------------------------|
| `packed_ternary` | ternary on disk (HF uint8 + weight_scale, a GGUF)   | its own `t` and scales      |
| `exact_ternary`  | float weights that are exactly `s·t` per group      | `t` and scales recovered    |
| `bitnet_latent`  | latent weights of a BitNet model (ternarized online)| absmean, as the model does  |
| `plain_float`    | a float linear of any other model                   | refused, unless --ternarize |
| `float`          | not a linear: embedding, output layer, norm         | kept as floats (f16/f32...) |

A BitNet model is one whose family is a BitNet architecture or whose config carries a
bitnet `quantization_config`: transformers ternarizes its float weights with absmean at
run time, so that is what bitconv does. In any other model (a plain Llama or Qwen3) a
float linear must be exact ternary, or the model is not a ternary model at all and
converting it would silently post-training-ternarize it: refused with exit 2 unless the
user asks for that with `--ternarize`. Embeddings and the output layer of plain families
are checked too: Bonsai-style models keep them ternary with group scales
(`ternary_embeddings`).

`decide_source_kinds` reads each float linear of a plain family once (memory-mapped, one
tensor at a time; the first rows first, so a float model is refused after a few rows).
"""

from __future__ import annotations

from collections import Counter
from enum import Enum
from typing import TYPE_CHECKING, Any

from .errors import InputError
from .exact_ternary import Detection, block_stats, detect, recover, RTOL
from .model import EMBEDDING, LINEAR, OUTPUT, ModelSpec, SourceTensor

if TYPE_CHECKING:  # pragma: no cover
    from .readers.checkpoint import Checkpoint

PROBE_ROWS = 64  # rows read first to reject a float tensor cheaply


class SourceKind(str, Enum):
    PACKED = "packed_ternary"
    EXACT = "exact_ternary"
    LATENT = "bitnet_latent"
    FLOAT = "plain_float"  # a float *linear* of a model that is neither BitNet nor ternary
    KEPT_FLOAT = "float"  # not a linear (embedding, output layer, norm): floats, kept as floats

    def __str__(self) -> str:  # JSON and messages show the value
        return self.value


def is_bitnet_model(spec: ModelSpec) -> bool:
    """A model whose float linears are BitNet latent weights (ternarized by absmean at run
    time): a BitNet family, or a bitnet `quantization_config` (online, or float weights under
    an offline one, which transformers would ternarize the same way)."""
    from .archs import architecture_for
    from .archs.base import _ARCHS

    cls = _ARCHS.get(spec.family)
    family = cls() if cls is not None else (architecture_for(spec.config) if spec.config else None)
    if family is not None and family.bitnet_graph:
        return True
    return (spec.quantization or {}).get("quant_method") == "bitnet"


def declares_int8_activations(spec: ModelSpec) -> bool:
    """A compressed-tensors folder whose config groups quantize input activations to 8-bit
    ints (W2A8, what bitconv writes for a BitNet model): the model it holds quantizes them."""
    q = spec.quantization or {}
    if q.get("quant_method") != "compressed-tensors" or not isinstance(q.get("config_groups"), dict):
        return False
    acts = [(g or {}).get("input_activations") for g in q["config_groups"].values() if isinstance(g, dict)]
    return any(isinstance(a, dict) and a.get("num_bits") == 8 and a.get("type", "int") == "int" for a in acts)


def source_act_quant(ckpt: "Checkpoint") -> bool:
    """Whether the source model quantizes activations to 8 bits when it runs: BitNet models
    and ternary files do (their engines quantize); a plain family runs in float."""
    if is_bitnet_model(ckpt.spec) or declares_int8_activations(ckpt.spec):
        return True
    return ckpt.spec.source.kind == "gguf" and any(
        t.role == LINEAR and t.kind == SourceKind.PACKED for t in ckpt.tensors)


def _probe_is_float(st: SourceTensor) -> bool:
    """True when the first rows already show that the tensor is not ternary in any group."""
    if st._load_rows is None or len(st.shape) != 2 or st.shape[0] <= PROBE_ROWS:
        return False
    rows = st.load_rows(0, PROBE_ROWS)
    return block_stats(rows, RTOL.get(st.dtype, RTOL["f32"])) is None


def _needs_detection(st: SourceTensor, bitnet: bool) -> bool:
    """The tensors `decide_source_kinds` reads: float linears and embeddings of a plain family."""
    if st.kind == SourceKind.EXACT or st.is_ternary or bitnet:
        return False
    return st.role in (LINEAR, EMBEDDING, OUTPUT)


def _detections(todo: list[SourceTensor]):
    """`detect_tensor` of each tensor, in order, on the conversion pipeline's workers.

    Each detection runs torch on one thread (`serial_torch`) and the workers are the
    parallelism: torch's own OpenMP team, started for every small op of the chunked scan,
    spun between ops (issue 23: 9 CPU-s and 24 s wall for what one thread does in 1.9 s,
    on 2 loaded cores). The pipeline's memory budget bounds the float32 copies in flight."""
    from .pipeline import memory_budget, ordered_map
    from .quant import serial_torch

    def job(st: SourceTensor) -> Detection | None:
        with serial_torch():
            return detect_tensor(st)

    def cost(st: SourceTensor) -> int:  # the bytes read + the float32 copy `detect` scans
        n = 4
        for d in st.shape:
            n *= int(d)
        return n + int(st.source_nbytes)

    return ordered_map(job, todo, cost=cost, budget=memory_budget())


def detect_tensor(st: SourceTensor) -> Detection | None:
    """Exact-ternary detection of one float source tensor (reads it once)."""
    if len(st.shape) != 2 or st.dtype not in ("bf16", "f16", "f32"):
        return None
    if _probe_is_float(st):
        return None
    return detect(st.load(), st.dtype)


def mark_exact(st: SourceTensor, found: Detection) -> None:
    """Record an exact-ternary tensor: its group, and `load_ternary` recovering t and s."""
    st.kind = SourceKind.EXACT
    st.detection = found
    st.group = found.group
    loader = st._load

    def load_ternary():
        return recover(loader(), found.group, found.exact)

    st._load_ternary = load_ternary


def not_ternary_error(ckpt: "Checkpoint", st: SourceTensor) -> InputError:
    spec = ckpt.spec
    return InputError(
        f"{spec.source.location}: {st.source_name} is a {st.dtype} weight that is not ternary (no tensor, row or "
        f"32..256 block group holds only -a, 0, +a) and {spec.family} without a bitnet quantization_config is not "
        "a BitNet model: this is a float model, not a ternary one",
        hint="pass --ternarize to ternarize it post-training on purpose; "
             "`bitconv verify --reference fp` then reports what that costs",
    )


def decide_source_kinds(ckpt: "Checkpoint", *, ternarize: bool = False) -> list[str]:
    """Attach a `SourceKind` to every tensor of CKPT (once; later calls return at once).

    Raises `InputError` (exit 2) on the first float linear of a plain family that is not
    exact ternary, unless `ternarize`. Returns notes for the plan (what was found)."""
    if ckpt.source_kinds_decided:
        return list(ckpt.source_kind_notes)
    bitnet = is_bitnet_model(ckpt.spec)
    notes: list[str] = []
    todo = [st for st in ckpt.tensors if _needs_detection(st, bitnet)]
    with _detections(todo) as found_in_order:
        for st in ckpt.tensors:
            if st.kind == SourceKind.EXACT:  # a reader that had to decode the floats already found it
                continue
            if _needs_detection(st, bitnet):  # the tensors of `todo`, in its order
                found = next(found_in_order)
                if found is not None:
                    mark_exact(st, found)
                elif st.role != LINEAR:
                    st.kind = SourceKind.KEPT_FLOAT
                elif not ternarize:
                    raise not_ternary_error(ckpt, st)
                else:
                    st.kind = SourceKind.FLOAT
            elif st.is_ternary:
                st.kind = SourceKind.PACKED
            else:  # a BitNet model's linear, or no linear at all
                st.kind = SourceKind.LATENT if st.role == LINEAR else SourceKind.KEPT_FLOAT
    exact = [t for t in ckpt.tensors if t.kind == SourceKind.EXACT]
    if exact:
        groups = Counter(str(t.group) for t in exact)
        rounded = [t for t in exact if t.detection is not None and not t.detection.exact]
        notes.append(f"{len(exact)} tensor(s) are exact ternary floats (group "
                     + ", ".join(f"{g}: {n}" for g, n in sorted(groups.items()))
                     + "): their own t and scales are kept, never re-ternarized"
                     + (f"; {len(rounded)} within the dtype's rounding" if rounded else ""))
    if ternarize and any(t.kind == SourceKind.FLOAT and t.role == LINEAR for t in ckpt.tensors):
        notes.append("--ternarize: float linears of a non-BitNet model are ternarized post-training (absmean); "
                     "`bitconv verify --reference fp` reports what that costs")
    ckpt.source_kinds_decided = True
    ckpt.source_kind_notes = notes
    return list(notes)


def ternary_embeddings(ckpt: "Checkpoint") -> list[SourceTensor]:
    """Embedding / output tensors that are exact ternary with their own group scales
    (Bonsai-style). A writer with a layout for them (`--embedding-type q2_0`) writes
    `st.load_ternary()`; one without says that it writes them as floats."""
    return [t for t in ckpt.tensors if t.role in (EMBEDDING, OUTPUT) and t.kind == SourceKind.EXACT]


def kind_summary(tensors) -> dict[str, Any]:
    """{kind: count} and {kind: {group: count}} of source tensors, for metadata and manifests."""
    counts: Counter = Counter()
    groups: dict[str, Counter] = {}
    for t in tensors:
        k = str(t.kind) if t.kind is not None else "undecided"
        counts[k] += 1
        if t.kind in (SourceKind.EXACT, SourceKind.PACKED):
            groups.setdefault(k, Counter())[str(t.group or "tensor")] += 1
    return {"counts": dict(sorted(counts.items())),
            "groups": {k: dict(sorted(v.items())) for k, v in sorted(groups.items())}}


def _group_words(group) -> str:
    return f"group-{group}" if isinstance(group, int) else f"per-{group}"


def _reason(layout, exc: Exception) -> str:
    """The rule a layout check broke, without the tensor name and the layout's own hint."""
    if layout.tensor_scale_only:
        return "it stores one scale per tensor"
    msg = getattr(exc, "message", str(exc))
    return msg.rsplit(": ", 1)[-1] if ": " in msg else msg


def check_own_group(layout, st: SourceTensor, group) -> None:
    """`layout.check`, but a ternary source whose own scales the layout cannot hold is refused
    naming the tensor, its group and the layouts that can hold it (never averaged)."""
    from .errors import LayoutError
    from .pack.base import layouts_holding

    if not st.is_ternary or group in (None, "tensor"):
        layout.check(st.name, st.shape, group)
        return
    try:
        layout.check(st.name, st.shape, group)
    except InputError as exc:
        can = [n for n in layouts_holding(tuple(st.shape), group) if n != layout.name]
        where = (f"layouts that can: {', '.join(can)}; " if can else "no GGUF layout can; ") + \
            "--format safetensors keeps them too"
        raise LayoutError(
            f"{st.name}: the source is {st.kind or 'ternary'} with its own {_group_words(group)} scales, which "
            f"{layout.name} cannot hold ({_reason(layout, exc)}); bitconv keeps a ternary source's scales "
            "and never averages them",
            hint=where,
        ) from None


def refuse_linear_norms(ckpt: "Checkpoint") -> None:
    """GGUF: no engine graph applies an RMSNorm before every linear (use_rms_norm), so such a
    model would compute another function there: refused, naming the tensors."""
    from .archs.base import INPUT_NORM_SUFFIX
    from .errors import LayoutError

    norms = [t.source_name for t in ckpt.tensors if t.name.endswith(INPUT_NORM_SUFFIX + ".weight")]
    if norms:
        raise LayoutError(
            f"{ckpt.spec.source.location}: the model has an RMSNorm before every ternary linear "
            f"(quantization_config use_rms_norm; {len(norms)} tensors: {', '.join(norms[:3])}, ...) and no GGUF "
            "engine graph (llama.cpp, bitnet.cpp) applies them: written as GGUF it would compute another function",
            hint="use --format safetensors (transformers loads it with the same quantization_config)",
        )


def ternary_written_as_float(st: SourceTensor, out_type: str, flag: str = "--embedding-type") -> str | None:
    """The note a writer records when an exact-ternary embedding/output goes out as floats
    (never silently: the plan's warnings and the tensor's `note` say it)."""
    if st.kind != SourceKind.EXACT or out_type not in ("f16", "bf16", "f32"):
        return None
    from .pack import get_layout

    try:
        get_layout("q2_0").check(st.name, tuple(st.shape), st.group or "tensor")
        keep = f"{flag} q2_0 keeps it ternary"
    except (InputError, KeyError):
        keep = "no ternary type can hold it"
    return (f"exact ternary in the source ({_group_words(st.group)} scales) but written as {out_type}, "
            f"dequantized (same values, 8-16x the bytes); {keep}")
