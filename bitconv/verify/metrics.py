"""Perplexity, KL divergence of next-token distributions and top-1 agreement, streamed.

Nothing here holds a [tokens, vocab] array for the whole text: the accumulators take one
chunk of logits rows at a time (float32, any device) and keep float64 sums. `compare`
drives them from final hidden states and each model's output projection, so the logits of
a long evaluation exist only a chunk at a time. The plain functions at the end take full
logits (numpy or torch, e.g. from an engine) and chunk them the same way.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Iterable

import numpy as np
import torch

if TYPE_CHECKING:  # pragma: no cover
    from .forward import Runner

DEFAULT_CHUNK_ELEMENTS = 1 << 23


def _rows(vocab: int, chunk_elements: int = DEFAULT_CHUNK_ELEMENTS) -> int:
    return max(1, chunk_elements // max(vocab, 1))


@dataclass
class PerplexityStats:
    """Running mean negative log-likelihood of the target tokens."""

    tokens: int = 0
    nll_sum: float = 0.0
    top1_correct: int = 0

    def update(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Add a chunk; returns its log-softmax (callers comparing two models reuse it)."""
        ls = torch.log_softmax(logits.to(torch.float32), dim=-1)
        t = targets.to(ls.device).reshape(-1, 1)
        self.nll_sum += float(-ls.gather(1, t).to(torch.float64).sum())
        self.top1_correct += int((ls.argmax(-1, keepdim=True) == t).sum())
        self.tokens += int(t.shape[0])
        return ls

    @property
    def nll(self) -> float:
        return self.nll_sum / self.tokens if self.tokens else float("nan")

    @property
    def perplexity(self) -> float:
        return math.exp(self.nll) if self.tokens else float("nan")

    def to_dict(self) -> dict:
        return {"tokens": self.tokens, "nll": self.nll, "perplexity": self.perplexity,
                "top1_accuracy": self.top1_correct / self.tokens if self.tokens else None}


@dataclass
class PairStats:
    """Source vs artifact on the same tokens: both perplexities, KL(source || artifact) of the
    next-token distributions, and how often their top-1 tokens agree."""

    source: PerplexityStats
    artifact: PerplexityStats
    kl_sum: float = 0.0
    kl_max: float = 0.0
    top1_agree: int = 0
    tokens: int = 0

    @classmethod
    def new(cls) -> "PairStats":
        return cls(PerplexityStats(), PerplexityStats())

    def update(self, source_logits: torch.Tensor, artifact_logits: torch.Tensor, targets: torch.Tensor) -> None:
        ls = self.source.update(source_logits, targets)
        la = self.artifact.update(artifact_logits, targets)
        kl = (ls.exp() * (ls - la)).sum(-1).clamp_(min=0.0)  # rounding can dip below 0
        self.kl_sum += float(kl.to(torch.float64).sum())
        self.kl_max = max(self.kl_max, float(kl.max())) if kl.numel() else self.kl_max
        self.top1_agree += int((ls.argmax(-1) == la.argmax(-1)).sum())
        self.tokens += int(ls.shape[0])

    @property
    def mean_kl(self) -> float:
        return self.kl_sum / self.tokens if self.tokens else float("nan")

    @property
    def top1_agreement(self) -> float:
        return self.top1_agree / self.tokens if self.tokens else float("nan")

    @property
    def ppl_change(self) -> float:
        """Relative perplexity change of the artifact against the source (+0.01 = 1% worse)."""
        return self.artifact.perplexity / self.source.perplexity - 1.0

    def to_dict(self) -> dict:
        return {"tokens": self.tokens, "source_perplexity": self.source.perplexity,
                "artifact_perplexity": self.artifact.perplexity, "ppl_change": self.ppl_change,
                "mean_kl": self.mean_kl, "max_kl": self.kl_max, "top1_agreement": self.top1_agreement}


@torch.inference_mode()
def compare(source: tuple["Runner", torch.Tensor], artifact: tuple["Runner", torch.Tensor],
            targets: torch.Tensor, *, extra: dict[str, tuple["Runner", torch.Tensor]] | None = None,
            chunk_elements: int = DEFAULT_CHUNK_ELEMENTS) -> tuple[PairStats, dict[str, PerplexityStats]]:
    """Score hidden states [N, H] (the positions to score) of two models against targets [N].

    Each model's head makes logits for one chunk of rows at a time; `extra` models (e.g. the
    unquantized source) get perplexity only.
    """
    (src_run, src_h), (art_run, art_h) = source, artifact
    extra = extra or {}
    if src_h.shape[0] != art_h.shape[0] or src_h.shape[0] != targets.shape[0]:
        raise ValueError("hidden states and targets must have the same number of rows")
    rows = _rows(src_run.hp.vocab_size, chunk_elements)
    pair = PairStats.new()
    singles = {k: PerplexityStats() for k in extra}
    streams = [src_run.logit_chunks(src_h, rows), art_run.logit_chunks(art_h, rows)]
    extra_streams = {k: r.logit_chunks(h, rows) for k, (r, h) in extra.items()}
    for (s, ls), (_, la) in zip(*streams):
        t = targets[s:s + ls.shape[0]]
        pair.update(ls, la, t)
        del ls, la
        for k, it in extra_streams.items():
            _, lx = next(it)
            singles[k].update(lx, t)
    return pair, singles


# ----------------------------------------------------------------------------------------
# full-logits helpers (engine outputs, tests)
# ----------------------------------------------------------------------------------------
def _as_2d(x) -> torch.Tensor:
    t = torch.as_tensor(np.asarray(x)) if not isinstance(x, torch.Tensor) else x
    return t.reshape(-1, t.shape[-1])


def _chunks(n: int, vocab: int, chunk_elements: int) -> Iterable[slice]:
    rows = _rows(vocab, chunk_elements)
    for s in range(0, n, rows):
        yield slice(s, min(n, s + rows))


def perplexity(logits, targets, chunk_elements: int = DEFAULT_CHUNK_ELEMENTS) -> float:
    """exp(mean NLL) of targets [N] under logits [N, vocab] (row i predicts targets[i])."""
    lg, t = _as_2d(logits), torch.as_tensor(np.asarray(targets)).reshape(-1)
    st = PerplexityStats()
    for sl in _chunks(lg.shape[0], lg.shape[1], chunk_elements):
        st.update(lg[sl], t[sl])
    return st.perplexity


def compare_logits(source_logits, artifact_logits, targets=None,
                   chunk_elements: int = DEFAULT_CHUNK_ELEMENTS) -> dict:
    """Mean KL(source || artifact), top-1 agreement (and perplexities when targets given)."""
    a, b = _as_2d(source_logits), _as_2d(artifact_logits)
    if a.shape != b.shape:
        raise ValueError(f"logits shapes differ: {list(a.shape)} vs {list(b.shape)}")
    t = torch.as_tensor(np.asarray(targets)).reshape(-1) if targets is not None \
        else torch.zeros(a.shape[0], dtype=torch.int64)
    pair = PairStats.new()
    for sl in _chunks(a.shape[0], a.shape[1], chunk_elements):
        pair.update(a[sl], b[sl], t[sl])
    d = pair.to_dict()
    if targets is None:
        for k in ("source_perplexity", "artifact_perplexity", "ppl_change"):
            d.pop(k)
    return d


def mean_kl(source_logits, artifact_logits) -> float:
    return compare_logits(source_logits, artifact_logits)["mean_kl"]


def top1_agreement(source_logits, artifact_logits) -> float:
    return compare_logits(source_logits, artifact_logits)["top1_agreement"]
