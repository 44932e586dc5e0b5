"""`verify()`: run an artifact and its source on the same text and measure what the
conversion cost.

The artifact (any GGUF bitconv writes, or a packed safetensors folder) is read back through
bitconv's own unpackers and run by the forward pass in `forward.py`; the source runs with
the same code, its float latent linears ternarized on the fly exactly as `convert` does
(with the artifact's scale groups), tensors already ternary on disk as they are. Both
stream layer by layer in lockstep, so every weight is read once: each linear is compared
(ternary values must be identical, dequantized weights within `max_weight_error`), then
every window of text goes through both layers. Perplexity, KL(source || artifact) of the
next-token distributions and top-1 agreement are computed from final hidden states a
chunk of rows at a time.

Thresholds never raise: the report says `passed` and lists `failures` (the CLI exits 1).
Bad input raises `InputError` and its subclasses.
"""

from __future__ import annotations

import json
import math
import time
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import numpy as np

from ..errors import CorruptFileError, InputError, SourceNotFoundError, UsageError
from ..model import LINEAR, LINEAR_KINDS, kind_of, layer_of
from ..source_kind import SourceKind, decide_source_kinds, source_act_quant

if TYPE_CHECKING:  # pragma: no cover
    from rich.console import Console

DATA_DIR = Path(__file__).resolve().parent.parent / "data"
DEFAULT_TEXT = DATA_DIR / "eval.txt"
ProgressFn = Callable[[str, int, int], None]  # (stage, done, total): "layer" i/n, "metrics" 0/1 then 1/1

_HP_COMPARED = ("num_heads", "num_kv_heads", "head_dim", "hidden_act", "rope_theta", "rms_eps", "sub_norms", "qk_norm",
                "linear_norms")
_DTYPES = {"float32": "float32", "f32": "float32", "fp32": "float32", "bfloat16": "bfloat16", "bf16": "bfloat16",
           "float16": "float16", "f16": "float16", "fp16": "float16"}


@dataclass
class TensorCheck:
    """One tensor of the artifact against the source weight verify computes with."""

    name: str
    role: str
    shape: tuple[int, ...]
    artifact_type: str
    source_type: str
    rel_error: float  # ||A - S|| / ||S|| of the dequantized weights
    max_error: float  # max|A - S| / max|S|
    mismatched: int | None = None  # ternary values that differ (linears)
    rel_error_fp: float | None = None  # reference="fp": ||A - W|| / ||W|| against the float source
    problem: str | None = None

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["shape"] = list(self.shape)
        return _finite(d)


@dataclass
class VerifyReport:
    artifact: str
    source: str
    artifact_layouts: list[str]
    device: str
    dtype: str
    act_quant: bool  # the artifact's activations quantized to 8 bits
    source_act_quant: bool  # the source's (BitNet models: yes; a plain family: no)
    reference: str
    tokenizer: str
    text: str
    sequences: int
    ctx: int
    tokens: int  # scored positions
    source_perplexity: float
    artifact_perplexity: float
    ppl_change: float  # artifact / source - 1
    mean_kl: float
    max_kl: float
    top1_agreement: float
    fp_perplexity: float | None
    tokens_per_s: float  # artifact forward: processed tokens / seconds
    seconds: float
    artifact_seconds: float
    source_seconds: float
    tensors: list[TensorCheck]
    thresholds: dict[str, Any]
    passed: bool
    failures: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    compute: str = ""  # what the forward passes computed with (verify's `fast` path or the float path)
    act: str = "a8"  # the artifact side's activation scheme (act_schemes)
    kv_bits: int | None = None  # its KV-cache bits (None: float)
    # act_schemes.SparsityStats.report() of the artifact side: zero weights, activation zeros at
    # each linear's input, parameters active per token (None: nothing collected)
    sparsity: dict[str, Any] | None = None

    @property
    def max_rel_error(self) -> float:
        lin = [t.rel_error for t in self.tensors if t.role == LINEAR]
        return max(lin) if lin else 0.0

    def to_dict(self) -> dict[str, Any]:
        d = {k: v for k, v in asdict(self).items() if k != "tensors"}
        d["tensors"] = [t.to_dict() for t in self.tensors]
        d["max_rel_error"] = self.max_rel_error
        return _finite(d)

    def to_json(self, **kw) -> str:
        return json.dumps(self.to_dict(), **kw)


def _finite(obj: Any) -> Any:
    """NaN/inf -> None so --json output is strict JSON."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


# ----------------------------------------------------------------------------------------
# tokens
# ----------------------------------------------------------------------------------------
def _gguf_value(spec, key: str, default=None):
    v = spec.gguf_metadata.get(key)
    return v[0] if isinstance(v, tuple) else (default if v is None else v)


def load_tokenizer(*ckpts) -> tuple[Any, str, bool]:
    """(tokenizers.Tokenizer, description, add_bos) from the first checkpoint that has one:
    a tokenizer.json next to the model, else a GGUF's byte-level BPE vocabulary."""
    from tokenizers import Tokenizer

    for ck in ckpts:
        d = ck.spec.tokenizer_dir
        if d is not None and (Path(d) / "tokenizer.json").exists():
            path = Path(d) / "tokenizer.json"
            try:
                tok = Tokenizer.from_file(str(path))
            except Exception as exc:  # tokenizers raises its own untyped Exception for bad files
                raise CorruptFileError(f"{path}: not a tokenizer the tokenizers library reads ({exc})") from None
            add_bos = None
            cfg = Path(d) / "tokenizer_config.json"
            if cfg.exists():
                try:
                    cfg_data = json.loads(cfg.read_text())
                except (ValueError, OSError):
                    cfg_data = None
                add_bos = cfg_data.get("add_bos_token") if isinstance(cfg_data, dict) else None
            if add_bos is None:  # the post-processor decides (Llama-3 adds <|begin_of_text|>)
                add_bos = len(tok.encode("a").ids) > len(tok.encode("a", add_special_tokens=False).ids)
            return tok, str(path), bool(add_bos)
    for ck in ckpts:
        if _gguf_value(ck.spec, "tokenizer.ggml.model") == "gpt2" and _gguf_value(ck.spec, "tokenizer.ggml.tokens"):
            from tokenizers import decoders, models, pre_tokenizers

            tokens = _gguf_value(ck.spec, "tokenizer.ggml.tokens")
            merges = _gguf_value(ck.spec, "tokenizer.ggml.merges", [])
            if not isinstance(tokens, list) or not isinstance(merges, list) or not all(
                    isinstance(x, str) for x in [*tokens, *merges]):
                raise CorruptFileError(f"{ck.spec.source.path}: tokenizer.ggml.tokens/merges must be string arrays")
            merges = [tuple(m.split(" ", 1)) for m in merges]
            try:
                tok = Tokenizer(models.BPE({t: i for i, t in enumerate(tokens)}, merges))
            except Exception as exc:  # tokenizers' own untyped error for inconsistent merges
                raise CorruptFileError(f"{ck.spec.source.path}: the GGUF vocabulary is not a valid BPE ({exc})") from None
            tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
            tok.decoder = decoders.ByteLevel()
            add_bos = bool(_gguf_value(ck.spec, "tokenizer.ggml.add_bos_token", False))
            return tok, f"{ck.spec.source.location} (GGUF byte-level BPE)", add_bos
    raise InputError(
        "no tokenizer: neither the source nor the artifact has a tokenizer.json (or a GGUF byte-level BPE vocabulary)",
        hint="verify against a source folder that holds tokenizer.json",
    )


def make_windows(ids: list[int], ctx: int, bos: int | None) -> list[list[int]]:
    """Split token ids into windows of `ctx` tokens (a BOS first when given); a text shorter
    than one window gives one shorter window."""
    step = ctx - (1 if bos is not None else 0)
    n = len(ids) // step
    if n == 0:
        chunks = [ids]
    else:
        chunks = [ids[i * step:(i + 1) * step] for i in range(n)]
    return [([bos] if bos is not None else []) + c for c in chunks]


# ----------------------------------------------------------------------------------------
# weight comparison
# ----------------------------------------------------------------------------------------
def _compare_arrays(a, s) -> tuple[float, float]:
    import torch

    a = a.to(torch.float32)
    s = s.to(a.device, torch.float32)
    diff = a - s
    ns = float(torch.linalg.vector_norm(s))
    rel = float(torch.linalg.vector_norm(diff)) / ns if ns > 0 else float(torch.linalg.vector_norm(diff))
    ms = float(s.abs().max()) if s.numel() else 0.0
    md = float(diff.abs().max()) if diff.numel() else 0.0
    return rel, (md / ms if ms > 0 else md)


def _check_linear(name, art_st, src_st, art_t, src_t, fp_w, max_err: float) -> "TensorCheck":
    import torch

    dev = art_t.values.device if art_t.values.device.type != "cpu" else src_t.values.device
    av, sv = art_t.values.to(dev), src_t.values.to(dev)
    mismatched = int((av != sv).sum())
    da = art_t.dequantize().to(dev)
    rel, mx = _compare_arrays(da, src_t.dequantize().to(dev))
    rel_fp = None
    if fp_w is not None:
        rel_fp, _ = _compare_arrays(da, torch.as_tensor(fp_w).to(dev))
    chk = TensorCheck(name, LINEAR, tuple(art_st.shape), art_st.dtype, src_st.dtype, rel, mx,
                      mismatched, rel_fp)
    problems = []
    if mismatched:
        problems.append(f"{mismatched} of {av.numel()} ternary values differ from the source")
    if not (mx <= max_err):
        problems.append(f"weights differ by up to {mx:.3g} of their largest magnitude (limit {max_err:g})")
    chk.problem = "; ".join(problems) or None
    return chk


def _check_float(name, role, art_st, src_st, a, s, max_err: float) -> "TensorCheck":
    import torch

    rel, mx = _compare_arrays(torch.as_tensor(a), torch.as_tensor(s))
    chk = TensorCheck(name, role, tuple(art_st.shape), art_st.dtype, src_st.dtype, rel, mx)
    if not (mx <= max_err):
        chk.problem = f"values differ by up to {mx:.3g} of their largest magnitude (limit {max_err:g})"
    return chk


def _check_shapes(art, src) -> None:
    ha, hs = art.spec.hparams, src.spec.hparams
    for key in ("vocab_size", "hidden_size", "intermediate_size", "num_layers"):
        if getattr(ha, key) != getattr(hs, key):
            raise InputError(
                f"artifact and source are different models: {key} {getattr(ha, key)} vs {getattr(hs, key)}",
                hint="verify an artifact against the source it was converted from",
            )
    src_by = {t.name: t for t in src.tensors}
    for t in art.tensors:
        s = src_by.get(t.name)
        if s is not None and tuple(s.shape) != tuple(t.shape):
            raise InputError(
                f"{t.name}: artifact shape {list(t.shape)} but source shape {list(s.shape)}",
                hint="verify an artifact against the source it was converted from",
            )


# ----------------------------------------------------------------------------------------
# verify
# ----------------------------------------------------------------------------------------
@contextmanager
def _flush_denormals(on: bool):
    """Flush float32 denormals to zero in this block (CPU fast path): values below 1.2e-38
    change no metric, but arithmetic on them is many times slower on x86 (measured 2.4x on
    a whole forward of a random model, same NLL to the last digit)."""
    import torch

    if not on or not torch.set_flush_denormal(True):  # False: this CPU cannot (nothing changed)
        yield
        return
    try:
        yield
    finally:
        torch.set_flush_denormal(False)  # torch's default


def verify(
    artifact: str | Path,
    source: str | Path,
    *,
    text: str | Path | None = None,
    tokens: int = 2048,
    ctx: int = 512,
    device: str = "cpu",
    act_quant: bool | None = None,
    reference: str = "ternary",
    max_ppl_increase: float = 0.01,
    min_top1: float = 0.99,
    max_weight_error: float = 1e-2,
    max_kl: float | None = None,
    score_from: int = 0,
    dtype: str = "float32",
    micro_batch: int | None = None,
    fast: bool | None = None,
    revision: str | None = None,
    token: str | None = None,
    progress: ProgressFn | None = None,
    kernel_config: str | Path | None = None,
    source_i2s_variant: str | None = None,
    act: str = "a8",
    kv_bits: int | None = None,
) -> VerifyReport:
    """Verify ARTIFACT against SOURCE on `tokens` tokens of `text` (default: the shipped
    bitconv/data/eval.txt) in windows of `ctx` tokens.

    Gates (each crossing adds to `failures`, `passed` is False): the artifact's perplexity
    more than `max_ppl_increase` (relative) above the source's; top-1 agreement below
    `min_top1`; mean KL above `max_kl` (if given); a linear whose ternary values differ from
    the source's, or any tensor whose dequantized values differ by more than
    `max_weight_error` of the tensor's largest magnitude; hyperparameters that make the
    artifact compute another function. `reference="fp"` also runs the unquantized source
    (float weights, no activation quantization) and reports its perplexity and each
    linear's error against the float weights. `score_from` skips the first positions of
    every window (llama.cpp's perplexity scores the second half: ctx // 2).
    `progress(stage, done, total)` is called per layer ("layer") and around the metrics.
    `fast` (default: on for the CPU with float32 activations) computes every ternary linear
    as an exact int8 GEMM (`x_q @ tᵀ` in int32, the same integers the float path forms, then
    the float32 rescale), keeps activations float32 (the work around the GEMMs as fused
    row kernels, `cpu_kernels`), and runs the output projection as one bfloat16 GEMM with
    each row's largest logits recomputed in float32 (`Runner._head_bf16`); off, linears run in transformers' float
    operation order with a float32 head. Both give the same metrics (perplexity within
    0.1%; measured 2.2e-5-6.1e-5 on the demo model, tests/test_verify_fast.py).

    The source side computes what the source model computes: every tensor's kind is decided
    once (`source_kind`); BitNet latent weights are ternarized on the fly with 8-bit
    activations, exact-ternary and packed weights are used as they are, and a plain family
    (no bitnet quantization_config) runs without activation quantization, as transformers
    runs it. `act_quant=None` (default) does that and runs the artifact with the same
    activation semantics as the source, so the gates measure only what the conversion cost
    (engines quantize a ternary file's activations to 8 bits: `act_quant=True` measures the
    plain family that way on both sides); True/False forces both sides.

    `act` names the artifact side's activation scheme (`act_schemes.get_scheme`, with a KV
    cache of `kv_bits` bits): "a8" (default) is the b1.58 rule above; another scheme, or a KV
    scheme, runs the artifact on the float backend with that scheme while the source keeps
    its own semantics, so the metrics show what the scheme costs on this model.
    """
    import torch

    from ..readers import open_source
    from .act_schemes import SparsityStats, get_scheme, is_int8_fused
    from .forward import HEAD_EXACT, REFERENCES, Runner, resolve_device
    from .metrics import compare

    t_start = time.perf_counter()
    if reference not in REFERENCES:
        raise UsageError(f"--reference must be one of {', '.join(REFERENCES)}, got {reference!r}")
    if tokens < 2:
        raise UsageError(f"--tokens must be at least 2, got {tokens}")
    if ctx < 2:
        raise UsageError(f"--ctx must be at least 2, got {ctx}")
    if not 0 <= score_from < ctx - 1:
        raise UsageError(f"score_from must be in [0, ctx-1), got {score_from}")
    if max_ppl_increase < 0 or not 0 <= min_top1 <= 1 or max_weight_error < 0:
        raise UsageError("thresholds: --max-ppl-increase >= 0, 0 <= --min-top1 <= 1, max_weight_error >= 0")
    art_scheme = get_scheme(act, kv_bits) if (act != "a8" or kv_bits is not None) else None
    dtype_name = _DTYPES.get(str(dtype).replace("torch.", ""))
    if dtype_name is None:
        raise UsageError(f"dtype must be float32, bfloat16 or float16, got {dtype!r}")
    tdtype = getattr(torch, dtype_name)
    dev = resolve_device(device)

    art_path = Path(str(artifact)).expanduser()
    if not art_path.exists():
        raise SourceNotFoundError(f"{artifact}: no such artifact (a .gguf file or a packed safetensors folder)")
    from ..convert import gguf_read_options

    foreign = gguf_read_options(source_i2s_variant, kernel_config)  # GGUFs other tools wrote
    art = open_source(art_path, gguf_options=foreign)
    src = open_source(source, revision=revision, token=token, gguf_options=foreign)
    _check_shapes(art, src)

    failures: list[str] = []
    notes: list[str] = []
    ha, hs = art.spec.hparams, src.spec.hparams
    for key in _HP_COMPARED:
        va, vs = getattr(ha, key), getattr(hs, key)
        if (va != vs) if not isinstance(va, float) else not math.isclose(va, vs, rel_tol=1e-6):
            failures.append(f"the artifact declares {key}={va!r} but the source has {vs!r}: "
                            "an engine reading it computes another function")

    # text -> windows
    text_path = Path(text).expanduser() if text is not None else DEFAULT_TEXT
    if not text_path.exists():
        if text is None:
            raise SourceNotFoundError(f"the default evaluation text {DEFAULT_TEXT} is missing",
                                      hint="pass --text FILE")
        raise SourceNotFoundError(f"{text}: no such text file")
    if not text_path.is_file():
        raise InputError(f"{text_path}: --text must be a text file, not a folder")
    try:
        content = text_path.read_text(encoding="utf-8", errors="replace")
    except OSError as exc:
        raise InputError(f"{text_path}: cannot read the text ({exc.strerror or exc})") from None
    tok, tok_desc, add_bos = load_tokenizer(src, art)
    ids = tok.encode(content, add_special_tokens=False).ids
    bos = hs.bos_token_id if add_bos and hs.bos_token_id is not None else None
    if len(ids) < 2:
        raise InputError(f"{text_path}: the text has {len(ids)} token(s); verify needs at least 2")
    if len(ids) < tokens:
        notes.append(f"the text has {len(ids)} tokens, fewer than the {tokens} asked for: used them all")
    windows = make_windows(ids[:tokens], ctx, bos)
    wtok = torch.tensor(windows, dtype=torch.int64)
    if int(wtok.max()) >= hs.vocab_size:
        raise InputError(f"the tokenizer ({tok_desc}) produced id {int(wtok.max())} >= vocab size {hs.vocab_size}",
                         hint="the tokenizer does not belong to this model")
    b, t = wtok.shape
    if score_from >= t - 1:
        raise UsageError(f"score_from {score_from} leaves nothing to score in windows of {t} tokens")

    # what each source tensor is (exact ternary floats are recovered, BitNet latents absmean'd,
    # floats of a plain model ternarized like --ternarize did), and how the source model runs:
    # BitNet models quantize activations to 8 bits, a plain family runs in float
    notes += decide_source_kinds(src, ternarize=True)
    src_aq = source_act_quant(src) if act_quant is None else act_quant
    # verify measures what the CONVERSION cost, so by default the artifact runs with the source's
    # activation semantics (an engine's own 8-bit activations would be a separate, model-side effect)
    art_aq = src_aq if act_quant is None else act_quant
    if not src_aq:
        notes.append(f"source: {src.spec.family} without a bitnet quantization_config runs in float without "
                     "activation quantization (as transformers runs it); the artifact runs the same way, so "
                     "only the conversion is measured (--act-quant quantizes both sides to 8 bits)")
    if any(st.role == LINEAR and st.kind == SourceKind.FLOAT for st in src.tensors):
        notes.append("source: a float model that is not ternary; its linears are ternarized with the artifact's "
                     "groups (what --ternarize wrote); --reference fp reports the float model itself")

    # runners: the artifact, the source ternarized with the artifact's groups, optionally fp
    groups = {st.name: (st.group or "tensor") for st in art.tensors if st.role == LINEAR and st.is_ternary}
    kw: dict[str, Any] = dict(device=dev, dtype=tdtype, micro_batch=micro_batch)
    compute = "int8 linears (exact), float32 activations" if dev.type == "cuda" else \
        "float32 linears (transformers' operation order), float32 head"
    if fast is None:
        fast = dev.type == "cpu" and tdtype == torch.float32
    if fast and dev.type == "cpu":
        kw.update(int_path=True)
        if tdtype == torch.float32:
            kw.update(head_math="bf16")
            compute = (f"int8 linears (exact), {dtype_name} activations, bfloat16 head with each row's "
                       f"top {HEAD_EXACT} logits in float32")
        else:
            kw.update(head_dtype=torch.bfloat16)
            compute = f"int8 linears (exact), {dtype_name} activations, bfloat16 head"
    elif dev.type == "cpu":
        compute = f"{dtype_name} linears (transformers' operation order), {dtype_name} head"
    if not art_aq:
        compute = compute.replace("int8 linears (exact)", f"{dtype_name} linears (no activation quantization)")
    if art_scheme is not None:
        art_aq = art_scheme.name != "none"  # the report's "act. quant artifact" line
        if not is_int8_fused(art_scheme):
            compute += f"; the artifact with activation scheme {act!r}" + (
                f" and a {kv_bits}-bit KV cache" if kv_bits is not None else "") + " on the float backend"
    # the artifact's sparsity: its ternary weights as they are read below, its activations
    # wherever a scheme runs on the float backend (an explicit scheme; a8 with --no-fast: the
    # int8 kernels fuse a8 and never hand the quantized input back)
    stats = SparsityStats()
    if art_scheme is not None:
        art_scheme.stats = stats
    elif art_aq:
        art_scheme = get_scheme("a8", None, stats)  # the same rule (is_int8_fused): the same numbers
    r_art = Runner(art, act_quant=art_aq, scheme=art_scheme, reference="ternary", **kw)
    r_src = Runner(src, act_quant=src_aq, reference="ternary", groups=groups, **kw)
    r_fp = Runner(src, act_quant=False, reference="fp", **kw) if reference == "fp" else None
    notes += [f"artifact: {n}" for n in r_art.notes] + [f"source: {n}" for n in r_src.notes]
    if reference == "fp" and src.spec.packed:
        notes.append("reference fp: the source is ternary on disk, so its 'unquantized' model is s·t "
                     "without activation quantization")
    if any(st.role == LINEAR and not st.is_ternary for st in art.tensors):
        notes.append("the artifact has float linears: verify ternarizes them on the fly like the source")

    sync = (lambda: torch.cuda.synchronize(dev)) if dev.type == "cuda" else (lambda: None)
    clock = {"artifact": 0.0, "source": 0.0, "fp": 0.0}
    checks: list[TensorCheck] = []

    @contextmanager
    def timed(who: str):
        """Add the block's time (device work included) to clock[who]."""
        t0 = time.perf_counter()
        yield
        sync()
        clock[who] += time.perf_counter() - t0

    with torch.inference_mode(), _flush_denormals(fast and dev.type == "cpu"):
        sync()
        with timed("artifact"):
            x_art = r_art.embed(wtok)
        with timed("source"):
            x_src = r_src.embed(wtok)
            rope = r_src.rope(t)
            x_fp = r_fp.embed(wtok) if r_fp else None
        rope_art = r_art.rope(t)

        for i in range(hs.num_layers):
            with r_src.layer_io(), r_art.layer_io(), (r_fp.layer_io() if r_fp else nullcontext()):
                with timed("source"):
                    raw_src = r_src.load_layer(i)
                    tern_src = {k: r_src.as_ternary(f"blk.{i}.{k}.weight", p) for k, p in raw_src.items()
                                if k in LINEAR_KINDS}
                with timed("artifact"):
                    raw_art = r_art.load_layer(i)
                    tern_art = {k: r_art.as_ternary(f"blk.{i}.{k}.weight", p) for k, p in raw_art.items()
                                if k in tern_src}

                for kind, payload in raw_art.items():
                    name = f"blk.{i}.{kind}.weight"
                    a_st, s_st = r_art.by_name[name], r_src.by_name.get(name)
                    if s_st is None:
                        failures.append(f"{name}: in the artifact but not in the source")
                        continue
                    if kind in LINEAR_KINDS:
                        ta = tern_art.get(kind)
                        stats.observe_weight(i, kind, ta.values if ta is not None else None, a_st.shape)
                    if kind in tern_art:
                        fp_w = raw_src[kind] if (r_fp is not None and isinstance(raw_src[kind], np.ndarray)) else None
                        checks.append(_check_linear(name, a_st, s_st, tern_art[kind], tern_src[kind], fp_w,
                                                    max_weight_error))
                    else:
                        checks.append(_check_float(name, "norm", a_st, s_st, payload, raw_src[kind],
                                                   max_weight_error))
                for kind in raw_src:
                    if kind not in raw_art:
                        failures.append(f"blk.{i}.{kind}.weight: in the source but missing from the artifact")

                with timed("source"):
                    lw_src = r_src.prepare_layer(i, {**raw_src, **tern_src})
                lw_fp = r_fp.prepare_layer(i, raw_src) if r_fp is not None else None
                with timed("artifact"):
                    lw_art = r_art.prepare_layer(i, {**raw_art, **tern_art})
                del raw_src, tern_src, raw_art, tern_art

            with timed("source"):
                x_src = r_src.run_layer(x_src, lw_src, rope, i)
            if r_fp is not None:
                with timed("fp"):
                    x_fp = r_fp.run_layer(x_fp, lw_fp, rope, i)
            with timed("artifact"):
                x_art = r_art.run_layer(x_art, lw_art, rope_art, i)
            del lw_src, lw_fp, lw_art
            if progress is not None:
                progress("layer", i + 1, hs.num_layers)

        with timed("artifact"):
            h_art = r_art.final_norm(x_art)
        h_src = r_src.final_norm(x_src)
        h_fp = r_fp.final_norm(x_fp) if r_fp else None
        del x_art, x_src, x_fp

        # global tensors: embeddings, final norm, the (effective) output layer
        for name, role in (("token_embd.weight", "embedding"), ("output_norm.weight", "norm")):
            a_st, s_st = r_art.by_name[name], r_src.by_name[name]
            checks.append(_check_float(name, role, a_st, s_st, r_art.load_raw(name), r_src.load_raw(name),
                                       max_weight_error))
        art_head_tied, src_head_tied = r_art.head_is_embedding(), r_src.head_is_embedding()
        if not (art_head_tied and src_head_tied):
            a_name = "token_embd.weight" if art_head_tied else "output.weight"
            s_name = "token_embd.weight" if src_head_tied else "output.weight"
            checks.append(_check_float("output.weight", "output", r_art.by_name[a_name], r_src.by_name[s_name],
                                       r_art.load_raw(a_name), r_src.load_raw(s_name), max_weight_error))

        if progress is not None:
            progress("metrics", 0, 1)
        sel = lambda h: h[:, score_from:t - 1].reshape(-1, h.shape[-1])  # noqa: E731
        targets = wtok[:, score_from + 1:].reshape(-1).to(dev)
        t0 = time.perf_counter()
        pair, singles = compare((r_src, sel(h_src)), (r_art, sel(h_art)), targets,
                                extra={"fp": (r_fp, sel(h_fp))} if r_fp else None,
                                chunk_elements=r_src.chunk_elements)
        sync()
        clock["artifact"] += (time.perf_counter() - t0) / (2 + (1 if r_fp else 0))
        if progress is not None:
            progress("metrics", 1, 1)
    for r in (r_art, r_src, r_fp):
        if r is not None:
            r.release()

    for c in checks:
        if c.problem:
            failures.append(f"{c.name}: {c.problem}")
    if not math.isfinite(pair.artifact.perplexity):
        failures.append("the artifact's perplexity is not finite")
    elif not (pair.ppl_change <= max_ppl_increase):
        failures.append(f"perplexity rose by {pair.ppl_change:.2%} ({pair.source.perplexity:.4g} -> "
                        f"{pair.artifact.perplexity:.4g}), more than the {max_ppl_increase:.2%} allowed")
    if not (pair.top1_agreement >= min_top1):
        failures.append(f"top-1 agreement {pair.top1_agreement:.4f} is below {min_top1}")
    if max_kl is not None and not (pair.mean_kl <= max_kl):
        failures.append(f"mean KL divergence {pair.mean_kl:.3g} exceeds {max_kl:g}")

    return VerifyReport(
        artifact=str(artifact), source=str(source),
        artifact_layouts=sorted({st.dtype for st in art.tensors if st.role == LINEAR}),
        device=str(dev), dtype=dtype_name, act_quant=art_aq, source_act_quant=src_aq, reference=reference,
        tokenizer=tok_desc, text=str(text_path), sequences=b, ctx=t, tokens=pair.tokens,
        source_perplexity=pair.source.perplexity, artifact_perplexity=pair.artifact.perplexity,
        ppl_change=pair.ppl_change, mean_kl=pair.mean_kl, max_kl=pair.kl_max, top1_agreement=pair.top1_agreement,
        fp_perplexity=singles["fp"].perplexity if "fp" in singles else None,
        tokens_per_s=(b * t) / clock["artifact"] if clock["artifact"] > 0 else float("nan"),
        seconds=time.perf_counter() - t_start, artifact_seconds=clock["artifact"], source_seconds=clock["source"],
        tensors=checks,
        thresholds={"max_ppl_increase": max_ppl_increase, "min_top1": min_top1,
                    "max_weight_error": max_weight_error, "max_kl": max_kl},
        passed=not failures, failures=failures, notes=notes, compute=compute, act=act, kv_bits=kv_bits,
        # only where the activations were seen (a scheme on the float backend): the default report,
        # and the manifests release writes from it, stay as they were
        sparsity=stats.report() if stats.sites else None,
    )


# ----------------------------------------------------------------------------------------
# rendering
# ----------------------------------------------------------------------------------------
_SHORT = {"attn_q": "q", "attn_k": "k", "attn_v": "v", "attn_output": "o", "ffn_gate": "gate",
          "ffn_up": "up", "ffn_down": "down"}


def render_report(report: VerifyReport, console: "Console") -> None:
    """Print the report as rich tables: the metrics with their gates, then the per-layer
    relative weight error of every linear (red where a tensor failed)."""
    from rich.table import Table

    ok, bad = "[green]ok[/green]", "[red]FAIL[/red]"
    th = report.thresholds
    summary = Table(title=f"bitconv verify: {report.artifact}  vs  {report.source}", show_header=True,
                    header_style="bold")
    summary.add_column("metric")
    summary.add_column("value", justify="right")
    summary.add_column("gate", justify="right")
    summary.add_column("")
    summary.add_row("source perplexity", f"{report.source_perplexity:.4f}", "", "")
    summary.add_row("artifact perplexity", f"{report.artifact_perplexity:.4f}", "", "")
    ppl_ok = math.isfinite(report.ppl_change) and report.ppl_change <= th["max_ppl_increase"]
    summary.add_row("perplexity change", f"{report.ppl_change:+.3%}", f"<= +{th['max_ppl_increase']:.2%}",
                    ok if ppl_ok else bad)
    kl_gate = f"<= {th['max_kl']:g}" if th.get("max_kl") is not None else ""
    kl_state = "" if th.get("max_kl") is None else (ok if report.mean_kl <= th["max_kl"] else bad)
    summary.add_row("mean KL (source || artifact)", f"{report.mean_kl:.3e}", kl_gate, kl_state)
    summary.add_row("max KL", f"{report.max_kl:.3e}", "", "")
    summary.add_row("top-1 agreement", f"{report.top1_agreement:.4f}", f">= {th['min_top1']}",
                    ok if report.top1_agreement >= th["min_top1"] else bad)
    weights_bad = [c for c in report.tensors if c.problem]
    summary.add_row("max linear rel. error", f"{report.max_rel_error:.3e}",
                    f"codes equal, max err <= {th['max_weight_error']:g}", bad if weights_bad else ok)
    if report.fp_perplexity is not None:
        summary.add_row("unquantized (fp) perplexity", f"{report.fp_perplexity:.4f}", "", "")
    summary.add_row("tokens scored", f"{report.tokens} ({report.sequences} x {report.ctx})", "", "")
    summary.add_row("artifact tokens/s", f"{report.tokens_per_s:,.0f}", "", "")
    summary.add_row("device / dtype", f"{report.device} / {report.dtype}", "", "")
    if report.compute:
        summary.add_row("compute", report.compute, "", "")
    onoff = lambda b: "on" if b else "off"  # noqa: E731
    summary.add_row("act. quant artifact / source / reference",
                    f"{onoff(report.act_quant)} / {onoff(report.source_act_quant)} / {report.reference}",
                    "", "")
    summary.add_row("time", f"{report.seconds:.1f} s", "", "")
    console.print(summary)

    layers: dict[int, dict[str, TensorCheck]] = {}
    for c in report.tensors:
        li = layer_of(c.name)
        if li is not None and c.role == LINEAR:
            layers.setdefault(li, {})[kind_of(c.name)] = c
    if layers:
        per = Table(title="relative weight error per linear: artifact vs source"
                          + (r" (\[in brackets]: vs the float weights)" if report.reference == "fp" else ""),
                    header_style="bold")
        per.add_column("layer", justify="right")
        kinds = [k for k in _SHORT if any(k in row for row in layers.values())]
        for k in kinds:
            per.add_column(_SHORT[k], justify="right")
        for li in sorted(layers):
            cells = []
            for k in kinds:
                c = layers[li].get(k)
                if c is None:
                    cells.append("-")
                    continue
                txt = f"{c.rel_error:.1e}"
                if c.rel_error_fp is not None:
                    txt += f" [{c.rel_error_fp:.2f}]"
                cells.append(f"[red]{txt}[/red]" if c.problem else txt)
            per.add_row(str(li), *cells)
        console.print(per)
    others = [c for c in report.tensors if c.role != LINEAR]
    if any(c.problem for c in others):
        for c in others:
            if c.problem:
                console.print(f"[red]{c.name}[/red]: {c.problem}")
    if report.sparsity and report.sparsity.get("activations_collected"):
        from .act_schemes import render_sparsity

        render_sparsity(report.sparsity, console, title=f"artifact sparsity ({report.act}"
                        + (f", {report.kv_bits}-bit KV" if report.kv_bits else "") + ")")
    for n in report.notes:
        console.print(f"[yellow]note:[/yellow] {n}")
    if report.passed:
        console.print("[bold green]PASSED[/bold green]")
    else:
        console.print("[bold red]FAILED[/bold red]")
        for f in report.failures:
            console.print(f"  [red]-[/red] {f}")


__all__ = ["verify", "VerifyReport", "TensorCheck", "render_report", "load_tokenizer", "make_windows", "DEFAULT_TEXT"]
