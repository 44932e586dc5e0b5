"""The output projection of a `Runner` and the statistics made from it a chunk of rows at a
time: logits, or log p(target) + argmax fused with a bfloat16 head on the CPU (`head_kernels`)."""

from __future__ import annotations

from typing import Iterator

import numpy as np
import torch
import torch.nn.functional as F

from .metrics import DEFAULT_CHUNK_ELEMENTS

HEAD_EXACT = 8  # head_math="bf16": logits per row recomputed in float32 (the largest ones)
LOGIT_CHUNK_ELEMENTS = DEFAULT_CHUNK_ELEMENTS  # rows x vocab per logits chunk on the CPU (32 MiB of float32; 16x on CUDA)


class HeadMixin:
    """Mixin of `Runner`: the head (uses hp, by_name, device, dtype, head_dtype, head_math,
    cuda, k, _head, _head_cast, _head_lo, _head_packed, load_raw, _embedding, hidden)."""

    def head_is_embedding(self) -> bool:
        """Whether token_embd is the output layer (tied, or untied without output.weight)."""
        return self.hp.tie_embeddings or "output.weight" not in self.by_name

    def head(self) -> torch.Tensor:
        """The output projection [vocab, hidden] on the device, in `head_dtype`."""
        if self._head is None:
            if self.head_is_embedding():
                self._head = self._embedding()
            else:
                arr = self.load_raw("output.weight")
                self._head = torch.from_numpy(np.asarray(arr, dtype=np.float32)).to(self.device, self.dtype)
        if self.head_dtype == self._head.dtype:
            return self._head
        if self._head_cast is None:  # kept apart: a tied head's float copy still serves embed()
            self._head_cast = self._head.to(self.head_dtype)
        return self._head_cast

    @property
    def chunk_elements(self) -> int:
        """Rows x vocab of one logits chunk on this runner's device."""
        return LOGIT_CHUNK_ELEMENTS * (16 if self.cuda else 1)

    def logit_chunks(self, hidden: torch.Tensor, rows: int | None = None,
                     float32: bool = True) -> Iterator[tuple[int, torch.Tensor]]:
        """Yield (first row, logits [n, vocab]) over the rows of hidden [N, H]: float32, or
        the head's dtype with float32=False."""
        w = self.head()
        rows = rows or max(1, self.chunk_elements // w.shape[0])
        for s in range(0, hidden.shape[0], rows):
            h = hidden[s:s + rows].to(w.dtype)
            if self.head_math == "bf16" and w.dtype == torch.float32:
                y = self._head_bf16(h, w)
            else:
                y = F.linear(h, w)
            yield s, (y.to(torch.float32) if float32 else y)

    def _head_bf16(self, h: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        """Logits [n, vocab] float32 for h [n, H] float32 and the float32 head w: one bfloat16
        GEMM, then each row's HEAD_EXACT largest logits recomputed in float32 from w and h
        (`head_kernels`).

        The bf16 GEMM rounds its output to 8 bits of mantissa; that noise on the few logits
        that carry a peaked distribution's mass (and decide its argmax) is what moved the
        demo model's perplexity by 1.6e-4 and top-1 agreement of near-uniform random models
        from 0.996 to 0.988. With those recomputed, perplexity is within ~3e-5 of the float
        path and argmax is the float32 one (a tail logit would have to beat the top ones by
        less than its rounding); the tail's rounding is unbiased and weighs little."""
        from . import head_kernels

        return head_kernels.fix_logits(self._head_gemm_bf16(h, w), w, h)

    def _head_gemm_bf16(self, h: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        """h [n, H] @ wᵀ as one bfloat16 GEMM, bfloat16 out (the weights converted, and packed
        for oneDNN where it can, once per runner)."""
        self._pack_head_bf16(w, h.shape[0])
        hb = h.to(torch.bfloat16)
        if self._head_packed is not False:
            try:
                return torch.ops.mkldnn._linear_pointwise(hb, self._head_packed, None, "none", [], "")
            except RuntimeError:
                self._head_packed = False
        if self._head_lo is None:
            self._head_lo = w.to(torch.bfloat16)
        return F.linear(hb, self._head_lo)

    def _pack_head_bf16(self, w: torch.Tensor, rows: int) -> None:
        """The bfloat16 head, packed for oneDNN's GEMM of `rows` rows where it can be."""
        if self._head_packed is None:
            self._head_lo = w.to(torch.bfloat16)
            try:
                self._head_packed = torch.ops.mkldnn._reorder_linear_weight(self._head_lo, rows)
                self._head_lo = None  # the packed copy is all the GEMM needs
            except (AttributeError, RuntimeError):
                self._head_packed = False

    def logprob_chunks(self, hidden: torch.Tensor, targets: torch.Tensor) -> Iterator[tuple[int, torch.Tensor, torch.Tensor]]:
        """Yield (first row, log p(target) float32 [n], argmax int64 [n]) over the rows of
        hidden [N, H] and targets [N]: `logit_chunks` + log-softmax, fused on the CPU's bf16
        head (`head_kernels.logprobs`: the full float32 logits are never made)."""
        w = self.head()
        if self.head_math == "bf16" and w.dtype == torch.float32 and not self.cuda:
            from . import head_kernels
            from .cpu_kernels import per_core

            rows = max(1, self.chunk_elements // w.shape[0])
            n = hidden.shape[0]
            if n == 0:  # nothing to score; packing the head for 0 rows fails and would disable it
                return

            def part(a: int, b: int) -> list[tuple[int, torch.Tensor, torch.Tensor]]:
                out = []
                for s in range(a, b, rows):
                    h = hidden[s:min(b, s + rows)].to(torch.float32)
                    out.append((s, *head_kernels.logprobs(self._head_gemm_bf16(h, w), w, h, targets[s:s + h.shape[0]])))
                return out

            # rows split over the cores as the layers are (one GEMM + kernel chain per core);
            # the weights are converted (and packed) once, here, before the threads share them
            cores = max(1, min(torch.get_num_threads(), n // 64))
            self._pack_head_bf16(w, min(rows, n))
            bounds = [n * c // cores for c in range(cores + 1)]
            for chunks in per_core([lambda a=a, b=b: part(a, b) for a, b in zip(bounds, bounds[1:])]):
                yield from chunks
            return
        for s, logits in self.logit_chunks(hidden, float32=False):
            lp, am = self.k.logprob(logits, targets[s:s + logits.shape[0]])
            yield s, lp, am

    @torch.inference_mode()
    def logits(self, tokens: torch.Tensor | np.ndarray) -> torch.Tensor:
        h = self.hidden(tokens)
        b, t, hd = h.shape
        out = torch.empty((b * t, self.hp.vocab_size), dtype=torch.float32)
        for s, chunk in self.logit_chunks(h.reshape(b * t, hd)):
            out[s:s + chunk.shape[0]] = chunk.cpu()
        return out.reshape(b, t, -1)
