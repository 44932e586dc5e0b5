"""`verify()`: run an artifact and its source on the same text and measure what the
conversion cost.

The artifact (any GGUF bitconv writes, or a packed safetensors folder) is read back through
the readers and `pack/` and run by the decoder layer in `graph.py`; the source runs with the
same layer, its float latent linears ternarized on the fly by the model's own absmean rule
(`source_ref.py`, written apart from the converter's quantizer) with the artifact's scale
groups, tensors already ternary on disk as they are. Both stream layer by layer in lockstep
(`stream.py`), so every weight is read once: each linear is compared (`checks.py`: ternary
values must be identical, dequantized weights within `max_weight_error`), then every window
of text goes through both layers. Perplexity, KL(source || artifact) of the next-token
distributions and top-1 agreement are computed from final hidden states a chunk of rows at a
time (`score.py`, `metrics.py`) and reported (`report.py`).

Thresholds never raise: the report says `passed` and lists `failures` (the CLI exits 1).
Bad input raises `InputError` and its subclasses.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

from ..errors import SourceNotFoundError, UsageError
from ..model import LINEAR
from .report import TensorCheck, VerifyReport, render_report
from .tokens import DEFAULT_TEXT, load_tokenizer, make_windows

ProgressFn = Callable[[str, int, int], None]  # (stage, done, total): "layer" i/n, "metrics" 0/1 then 1/1

_DTYPES = {"float32": "float32", "f32": "float32", "fp32": "float32", "bfloat16": "bfloat16", "bf16": "bfloat16",
           "float16": "float16", "f16": "float16", "fp16": "float16"}


def _check_options(reference: str, tokens: int, ctx: int, score_from: int, max_ppl_increase: float,
                   min_top1: float, max_weight_error: float, dtype) -> str:
    """Bad options fail before any file is opened; returns the canonical dtype name."""
    from .runner import REFERENCES

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
    dtype_name = _DTYPES.get(str(dtype).replace("torch.", ""))
    if dtype_name is None:
        raise UsageError(f"dtype must be float32, bfloat16 or float16, got {dtype!r}")
    return dtype_name


def _open_pair(artifact, source, revision, token, source_i2s_variant, kernel_config):
    """The artifact and the source, opened by the readers; different models are refused."""
    from ..readers import open_source
    from ..readers.checkpoint import gguf_read_options
    from .checks import _check_shapes

    art_path = Path(str(artifact)).expanduser()
    if not art_path.exists():
        raise SourceNotFoundError(f"{artifact}: no such artifact (a .gguf file, or a safetensors, MLX or "
                                  "compressed-tensors folder)")
    foreign = gguf_read_options(source_i2s_variant, kernel_config)  # GGUFs other tools wrote
    art = open_source(art_path, gguf_options=foreign)
    src = open_source(source, revision=revision, token=token, gguf_options=foreign)
    _check_shapes(art, src)
    return art, src


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
    each row's largest logits recomputed in float32 (`head.py`); off, linears run in transformers' float
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

    from .act_schemes import get_scheme
    from .checks import hparam_failures
    from .runner import resolve_device
    from .score import gate_failures, score
    from .sides import make_sides
    from .stream import Clock, flush_denormals, stream_layers
    from .tokens import read_windows

    t_start = time.perf_counter()
    dtype_name = _check_options(reference, tokens, ctx, score_from, max_ppl_increase, min_top1, max_weight_error,
                                dtype)
    art_scheme = get_scheme(act, kv_bits) if (act != "a8" or kv_bits is not None) else None
    dev = resolve_device(device)
    art, src = _open_pair(artifact, source, revision, token, source_i2s_variant, kernel_config)
    hs = src.spec.hparams
    failures = hparam_failures(art, src)
    notes: list[str] = []
    wtok, tok_desc, text_path = read_windows(text, tokens, ctx, (src, art), hs.bos_token_id, hs.vocab_size, notes)
    b, t = wtok.shape
    if score_from >= t - 1:
        raise UsageError(f"score_from {score_from} leaves nothing to score in windows of {t} tokens")
    sides = make_sides(art, src, dev=dev, dtype_name=dtype_name, act_quant=act_quant, art_scheme=art_scheme,
                       reference=reference, fast=fast, micro_batch=micro_batch)
    notes += sides.notes
    clock = Clock((lambda: torch.cuda.synchronize(dev)) if dev.type == "cuda" else (lambda: None))
    with torch.inference_mode(), flush_denormals(sides.fast and dev.type == "cpu"):
        run = stream_layers(sides, wtok, hs.num_layers, max_weight_error, clock, progress)
        pair, singles = score(sides, run, wtok, score_from, clock, progress)
    for r in sides.runners():
        r.release()
    failures += run.failures + gate_failures(pair, run.checks, max_ppl_increase=max_ppl_increase,
                                             min_top1=min_top1, max_kl=max_kl)
    secs = clock.seconds
    return VerifyReport(
        artifact=str(artifact), source=str(source),
        artifact_layouts=sorted({st.dtype for st in art.tensors if st.role == LINEAR}),
        device=str(dev), dtype=dtype_name, act_quant=sides.art_aq, source_act_quant=sides.src_aq,
        reference=reference, tokenizer=tok_desc, text=str(text_path), sequences=b, ctx=t, tokens=pair.tokens,
        source_perplexity=pair.source.perplexity, artifact_perplexity=pair.artifact.perplexity,
        ppl_change=pair.ppl_change, mean_kl=pair.mean_kl, max_kl=pair.kl_max, top1_agreement=pair.top1_agreement,
        fp_perplexity=singles["fp"].perplexity if "fp" in singles else None,
        tokens_per_s=(b * t) / secs["artifact"] if secs["artifact"] > 0 else float("nan"),
        seconds=time.perf_counter() - t_start, artifact_seconds=secs["artifact"], source_seconds=secs["source"],
        tensors=run.checks,
        thresholds={"max_ppl_increase": max_ppl_increase, "min_top1": min_top1,
                    "max_weight_error": max_weight_error, "max_kl": max_kl},
        passed=not failures, failures=failures, notes=notes, compute=sides.compute, act=act, kv_bits=kv_bits,
        # only where the activations were seen (a scheme on the float backend): the default report,
        # and the manifests release writes from it, stay as they were
        sparsity=sides.stats.report() if sides.stats is not None and sides.stats.sites else None,
    )


__all__ = ["verify", "VerifyReport", "TensorCheck", "render_report", "load_tokenizer", "make_windows", "DEFAULT_TEXT",
           "ProgressFn"]
