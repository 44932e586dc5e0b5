"""`Runner`: streams one checkpoint through the decoder layer (`graph.py`), one layer at a time.

Weights stream: a runner loads one decoder layer from the checkpoint (memory-mapped by the
readers, `load.py`), prepares it for its backend, runs every sequence through it and frees
it, so peak memory is one layer plus activations. Which backend computes a layer is decided
by the weights it was prepared as (`backend_for`): int8 codes with row scales and the "a8"
scheme -> an int8 backend (numba-fused on the CPU in float32, torch ops elsewhere), anything
else -> the float backend. The head and the logits statistics live in `head.py`.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from typing import Any, Callable, Mapping

import numpy as np
import torch

from ..errors import InputError, UsageError
from ..model import LINEAR_KINDS, HParams, SourceTensor
from ..quant import GroupSize, Ternary
from ..readers.checkpoint import Checkpoint
from .act_schemes import A8, NoQuant, is_int8_fused
from .backends.float32 import FloatBackend
from .backends.int8_cpu import Int8CpuBackend
from .backends.int8_torch import Int8TorchBackend
from .graph import decoder_layer
from .head import HeadMixin
from .load import LayerLoader
from .ops import Kernels, adjacent, as_tokens, pack2, rms_norm, rope_inv_freq, want_compile
from .source_ref import absmean_ternary
from .staging import Stager
from .weights import (ATTN, FFN_IN, IN_NORM, LAYER_IN_NORMS, LAYER_NORMS, LAYER_QK_NORMS,
                      LAYER_SUB_NORMS, Groups, LayerWeights, Linear, Payload, TTernary)

REFERENCES = ("ternary", "fp")
_GROUPS = (("qkv", ATTN), ("o", ("attn_output",)), ("gate_up", FFN_IN), ("down", ("ffn_down",)))


def resolve_device(device: str | torch.device) -> torch.device:
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise UsageError(f"--device must be cpu or cuda (or cuda:N), got {device!r}") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda: no CUDA device is available to torch",
                         hint="use --device cpu, or install a CUDA build of torch")
    if dev.type not in ("cpu", "cuda"):
        raise UsageError(f"--device must be cpu or cuda, got {device!r}")
    if dev.type == "cuda" and dev.index is None:
        dev = torch.device("cuda", torch.cuda.current_device())
    return dev


class Runner(LayerLoader, HeadMixin):
    """Streams one checkpoint through the forward pass, one decoder layer at a time.

    `reference`: "ternary" ternarizes float latent linears with absmean (`source_ref`, not
    the converter's quantizer; per tensor unless `groups` says otherwise) and takes tensors already ternary
    on disk as they are; "fp" uses float weights as they are (ternary tensors dequantized).
    `keep=True` keeps every prepared layer on the device (ternary codes 2-bit packed on the
    int path), for repeated forwards; the default frees each layer after use.
    `micro_batch` runs that many sequences at a time through each layer. `int_path`
    (default: on CUDA) computes ternary linears from int8 codes with `torch._int_mm`, q/k/v
    and gate/up fused, rescaling fused with what follows; without it linears run in
    transformers' float operation order (bit-identical logits on the CPU). `compile` (default: on CUDA when triton is there and
    BITCONV_COMPILE is not 0) compiles the fused helpers. `head_dtype` (default: `dtype`) is
    the dtype of the output projection alone; `head_math="bf16"` runs a float32 head as a
    bfloat16 GEMM and recomputes each row's largest logits in float32 (verify's fast CPU
    path). `stage` (default: on CUDA) reads and copies layers through `staging.Stager` and
    decodes TQ2_0 with the torch decoder, as on a GPU.
    """

    def __init__(self, ckpt: Checkpoint, *, act_quant: bool = True, scheme: Any = None, reference: str = "ternary",
                 device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32,
                 groups: Groups = None, keep: bool = False, micro_batch: int | None = None,
                 int_path: bool | None = None, compile: bool | None = None,
                 head_dtype: torch.dtype | None = None, head_math: str | None = None,
                 stage: bool | None = None) -> None:
        if reference not in REFERENCES:
            raise UsageError(f"--reference must be one of {', '.join(REFERENCES)}, got {reference!r}")
        self.ckpt = ckpt
        self.hp: HParams = ckpt.spec.hparams
        # the activation scheme of every linear input and the KV cache (act_schemes.py);
        # `act_quant` alone picks "a8" or none
        self.scheme = scheme if scheme is not None else (A8() if act_quant else NoQuant())
        self.reference = reference
        self.device = resolve_device(device)
        self.dtype = dtype
        self.head_dtype = head_dtype or dtype  # the output projection's dtype (logits statistics stay float32)
        self._head_cast: torch.Tensor | None = None
        self._head_lo: torch.Tensor | None = None  # head_math="bf16": the head in bfloat16
        self._head_packed: Any = None  # ... and packed for oneDNN (False: packing unavailable)
        # "bf16": the float32 head runs as a bfloat16 GEMM with each row's largest logits
        # recomputed in float32 (`_head_bf16`); None: plain `head_dtype` math
        self.head_math = head_math
        self.groups = groups
        self.keep = keep
        self.micro_batch = micro_batch
        self.cuda = self.device.type == "cuda"
        self.int_path = self.cuda if int_path is None else int_path
        # the int path on the CPU in float32 runs its element-wise work as fused row kernels
        self.fused_cpu = (not self.cuda and self.int_path and dtype == torch.float32
                          and os.environ.get("BITCONV_VERIFY_FUSED", "1") != "0")
        self.k = Kernels(want_compile(self.device, compile))
        self.by_name: dict[str, SourceTensor] = {t.name: t for t in ckpt.tensors}
        self._cache: dict[int, LayerWeights] = {}
        # CUDA streams layers through pinned staging buffers; stage=True runs that same loading
        # code on the CPU (how CI tests the GPU path's pure functions without a GPU)
        self._stager = Stager(self.device) if (self.cuda if stage is None else stage) else None
        self._check_tensors()
        self._rope = rope_inv_freq(self.hp, ckpt.spec.config)
        self._head: torch.Tensor | None = None
        self._float = FloatBackend(self.hp, dtype, self.scheme)
        self._int: Any = None  # made on first use (an int8 backend refuses any scheme but a8)
        self.notes: list[str] = []
        if not self.hp.tie_embeddings and "output.weight" not in self.by_name:
            self.notes.append("untied model without output.weight: token_embd is used as the output layer, "
                              "as engines do")

    # -- tensors -------------------------------------------------------------------------
    def _check_tensors(self) -> None:
        hp = self.hp
        need = ["token_embd.weight", "output_norm.weight"]
        for i in range(hp.num_layers):
            need += [f"blk.{i}.{k}.weight" for k in LINEAR_KINDS + LAYER_NORMS]
        missing = [n for n in need if n not in self.by_name]
        if missing:
            raise InputError(
                f"{self.ckpt.spec.source.location}: {len(missing)} tensor(s) missing, e.g. {missing[0]}",
                hint="the file is incomplete or not a decoder model bitconv knows",
            )

    def group_of(self, name: str) -> GroupSize:
        g = self.groups
        if g is None:
            return "tensor"
        if isinstance(g, Mapping):
            return g.get(name, "tensor")
        return g

    # -- preparing weights ---------------------------------------------------------------
    def as_ternary(self, name: str, raw: Payload) -> TTernary | None:
        """The ternary form this runner computes with (None with reference="fp" on floats)."""
        if isinstance(raw, TTernary):
            return raw
        if isinstance(raw, Ternary):
            return TTernary.from_numpy(raw, "cpu")
        if self.reference == "fp":
            return None
        # the model's own absmean written apart from the converter's quantizer (`source_ref`):
        # a bug in the conversion's scales cannot then be on both sides of the comparison
        return absmean_ternary(raw, self.group_of(name))

    def _to_dev(self, t: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
        if t.device.type == "cpu" and self._stager is not None:
            t = self._stager.put(t)
        return t if dtype is None else t.to(dtype)

    def _float_weight(self, raw: Payload) -> torch.Tensor:
        if isinstance(raw, TTernary):
            return self._to_dev(raw.dequantize(self.dtype))
        if isinstance(raw, Ternary):
            return self._to_dev(TTernary.from_numpy(raw).dequantize(self.dtype))
        return self._to_dev(torch.from_numpy(raw), self.dtype)

    def prepare_layer(self, i: int, raw: dict[str, Payload]) -> LayerWeights:
        """Layer i's weights on the device, in the form its backend multiplies by: fused int8
        codes with row scales when every linear can run on an int8 backend (ternary with
        row or tensor scales, no per-linear input norm, the "a8" scheme), else float s·t."""
        lw = LayerWeights()
        for kind in LAYER_NORMS + LAYER_SUB_NORMS + LAYER_QK_NORMS + LAYER_IN_NORMS:
            if kind in raw:
                lw.norms[kind] = self._to_dev(torch.from_numpy(np.asarray(raw[kind], dtype=np.float32)), self.dtype)
        terns = {k: self.as_ternary(f"blk.{i}.{k}.weight", raw[k]) if self.reference == "ternary" else None
                 for k in LINEAR_KINDS}
        as_int = (self.int_path and is_int8_fused(self.scheme) and not any(k + IN_NORM in lw.norms for k in terns)
                  and all(t is not None and t.row_scales() is not None for t in terns.values()))
        for attr, kinds in _GROUPS:
            if as_int:
                setattr(lw, attr, self._int_linear([terns[k] for k in kinds]))
            else:
                out = [self._float_linear(terns[k], raw[k], lw.norms.get(k + IN_NORM)) for k in kinds]
                setattr(lw, attr, out if len(out) > 1 else out[0])
        return lw

    def _int_linear(self, terns: list[TTernary]) -> Linear:
        """Linears sharing one input fused into one int8 matrix (2-bit packed with keep=True)."""
        parts = [self._to_dev(t.values) for t in terns]
        if len(parts) > 1 and adjacent(parts):  # decoded into one buffer (`_fused_buffers`)
            codes = parts[0]._base
        elif len(parts) > 1 and not self.cuda:  # one memcpy per part; torch.cat splits it over threads
            codes = torch.from_numpy(np.concatenate([p.numpy() for p in parts]))
        else:
            codes = torch.cat(parts) if len(parts) > 1 else parts[0]
        rows = torch.cat([self._to_dev(t.row_scales()) for t in terns])
        if self.keep:
            codes = pack2(codes)
        return Linear(codes=codes, row_scale=rows, k=terns[0].shape[1], packed=self.keep)

    def _float_linear(self, tern: TTernary | None, raw: Payload, in_norm: torch.Tensor | None) -> Linear:
        w = self._to_dev(tern.dequantize(self.dtype)) if tern is not None else self._float_weight(raw)
        return Linear(weight=w, k=w.shape[1], in_norm=in_norm)

    @contextmanager
    def layer_io(self):
        """Bracket everything one layer copies to the device (load + prepare); callers that
        drive `load_layer`/`prepare_layer` themselves (verify) use it per layer."""
        if self._stager is not None:
            self._stager.begin()
        try:
            yield
        finally:
            if self._stager is not None:
                self._stager.end()

    def layer_weights(self, i: int, raw: dict[str, Payload] | None = None) -> LayerWeights:
        if i in self._cache:
            return self._cache[i]
        with self.layer_io():
            lw = self.prepare_layer(i, raw if raw is not None else self.load_layer(i))
        if self.keep:
            self._cache[i] = lw
        return lw

    # -- the graph -----------------------------------------------------------------------
    def embed(self, tokens: torch.Tensor | np.ndarray) -> torch.Tensor:
        tokens = as_tokens(tokens, self.hp.vocab_size)
        emb = self._embedding()
        return emb[tokens.to(emb.device)].to(self.device, self.dtype)

    def _embedding(self) -> torch.Tensor:
        """token_embd on the device. On CUDA a tied head keeps it for the final projection; on
        the CPU it is read again at the end, so it is not held while the layers stream."""
        if self._head is not None and self.head_is_embedding():
            return self._head
        t = torch.from_numpy(np.asarray(self.load_raw("token_embd.weight"), dtype=np.float32))
        t = t.to(self.device, self.dtype)
        if self.head_is_embedding() and (self.cuda or self.keep):
            self._head = t
        return t

    def release(self) -> None:
        """Drop cached weights and close the artifact file (the runner can still be used)."""
        self._head = None
        self._head_cast = None
        self._head_lo = None
        self._head_packed = None
        self._cache.clear()
        if self._stager is not None:
            self._stager.close()

    def rope(self, t: int) -> tuple[torch.Tensor, torch.Tensor]:
        pos = torch.arange(t, dtype=torch.float32, device=self.device)
        freqs = pos[:, None] * self._rope.to(self.device)[None, :]
        emb = torch.cat((freqs, freqs), dim=-1)
        return emb.cos().to(self.dtype), emb.sin().to(self.dtype)

    def rms(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        return rms_norm(x, w, self.hp.rms_eps)

    def backend_for(self, lw: LayerWeights):
        """The backend that computes a prepared layer: an int8 one when its linears are int8."""
        if not lw.all_int():
            return self._float
        if self._int is None:
            self._int = Int8CpuBackend(self.hp, self.dtype, self.scheme) if self.fused_cpu else \
                Int8TorchBackend(self.hp, self.dtype, self.scheme, self.k)
        return self._int

    def run_layer(self, x: torch.Tensor, lw: LayerWeights, rope: tuple[torch.Tensor, torch.Tensor],
                  layer: int = 0) -> torch.Tensor:
        """Decoder layer `layer` over a batch [B, T, H] (micro-batched over B if asked)."""
        be = self.backend_for(lw)
        run = lambda xs: decoder_layer(be, xs, lw, rope, layer)  # noqa: E731
        cores = min(torch.get_num_threads(), x.shape[0]) if isinstance(be, Int8CpuBackend) else 1
        if cores > 1:  # one chain of sequences per core (`cpu_kernels.per_core` says why)
            from .cpu_kernels import per_core

            bounds = [x.shape[0] * c // cores for c in range(cores + 1)]
            return torch.cat(per_core([lambda s=s, e=e: self._micro_batched(run, x[s:e])
                                       for s, e in zip(bounds, bounds[1:])]))
        return self._micro_batched(run, x)

    def _micro_batched(self, run: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        mb = self.micro_batch or x.shape[0]
        if mb >= x.shape[0]:
            return run(x)
        for b in range(0, x.shape[0], mb):
            x[b:b + mb] = run(x[b:b + mb])
        return x

    def final_norm(self, x: torch.Tensor) -> torch.Tensor:
        w = torch.from_numpy(np.asarray(self.load_raw("output_norm.weight"), dtype=np.float32))
        return self.rms(x, w.to(self.device, self.dtype))

    @torch.inference_mode()
    def hidden(self, tokens: torch.Tensor | np.ndarray,
               on_layer: Callable[[int, int], None] | None = None) -> torch.Tensor:
        """Final normed hidden states [B, T, H] on the device, streaming layer by layer.

        Layer i's kernels are queued first; layer i+1 is then read, decoded and copied while
        the device runs them (on CUDA nothing in between waits for the GPU)."""
        x = self.embed(tokens)
        rope = self.rope(x.shape[1])
        n = self.hp.num_layers
        lw = self.layer_weights(0) if n else None
        for i in range(n):
            x = self.run_layer(x, lw, rope, i)
            lw = self.layer_weights(i + 1) if i + 1 < n else None
            if on_layer is not None:
                on_layer(i + 1, n)
        return self.final_norm(x)

