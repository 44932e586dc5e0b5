"""The forward pass verify runs, shared by artifact and source: its public entry points.

Where things are (each file one job; ARCHITECTURE.md draws the flow):
* `graph.py` — the decoder layer, written once for every family and backend;
* `backends/` — its arithmetic: `float32` (transformers' operation order, any activation
  scheme), `int8_torch` (exact int8 GEMMs in torch ops: CUDA, and the CPU outside float32),
  `int8_cpu` (the same with fused numba row kernels: the CPU in float32, verify's default);
* `act_schemes.py` — how linear inputs and the KV cache are quantized ("a8": BitNet b1.58's
  per-token absmax int8, FORMATS.md §1: `γ = max|x|` (≥ 1e-5), `x_q = clip(round(x·127/γ),
  -128, 127)`, `y = (x_q @ tᵀ)·s·γ/127`);
* `runner.py` — `Runner`, which streams a checkpoint through the layer one layer at a time;
  `load.py` reads a layer, `weights.py` holds it, `staging.py` copies it to a GPU, `head.py`
  makes logits and log-probabilities a chunk of rows at a time.

The int8 and float backends compute the same function and differ only in float rounding
(~1e-7 relative), which can still flip an occasional activation across an 8-bit rounding
boundary (FORMATS.md §5).

`logits_for` returns full logits (for tests and small inputs). Metrics over long inputs
use `Runner.hidden` + `Runner.logit_chunks`, or `token_logprobs_and_stats`, which never
hold more than a chunk of rows x vocab at once.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from ..readers.checkpoint import Checkpoint
from .head import HEAD_EXACT
from .ops import as_tokens
from .runner import Runner
from .weights import Groups, TTernary

__all__ = ["logits_for", "token_logprobs_and_stats", "TokenScores", "Runner", "TTernary", "HEAD_EXACT"]


def logits_for(ckpt: Checkpoint, tokens: torch.Tensor | np.ndarray, *, act_quant: bool = True, scheme=None,
               reference: str = "ternary", device: str = "cpu", dtype: torch.dtype = torch.float32,
               groups: Groups = None, micro_batch: int | None = None, int_path: bool | None = None,
               compile: bool | None = None) -> torch.Tensor:
    """Logits float32 [B, T, vocab] on the CPU for int64 tokens [B, T].

    reference="ternary": float latent linears are absmean-ternarized on the fly (per tensor,
    or per `groups`), tensors already ternary on disk are used as they are; reference="fp":
    float weights as they are. `act_quant` applies BitNet's per-token 8-bit activation
    quantization to every linear. `int_path` (default: on CUDA only) selects the int8 path;
    the CPU default is transformers' operation order; see the module docstring.
    """
    runner = Runner(ckpt, act_quant=act_quant, scheme=scheme, reference=reference, device=device, dtype=dtype,
                    groups=groups, micro_batch=micro_batch, int_path=int_path, compile=compile)
    return runner.logits(tokens)


@dataclass
class TokenScores:
    """Per-token log-probabilities of the next token and their summary."""

    logprobs: torch.Tensor  # float32 [B, T-1]: log p(tokens[:, t+1] | tokens[:, :t+1])
    argmax: torch.Tensor  # int64 [B, T-1]: the model's top-1 next token
    nll: float  # mean negative log-likelihood over the scored positions
    tokens: int  # number of scored positions

    @property
    def perplexity(self) -> float:
        return math.exp(self.nll)


@torch.inference_mode()
def token_logprobs_and_stats(ckpt_or_runner: Checkpoint | Runner, tokens: torch.Tensor | np.ndarray, *,
                             score_from: int = 0, **runner_kwargs) -> TokenScores:
    """Perplexity-style scores without materializing [B, T, vocab]: logits are made chunk by
    chunk from the final hidden states. Positions before `score_from` are not scored."""
    runner = ckpt_or_runner if isinstance(ckpt_or_runner, Runner) else Runner(ckpt_or_runner, **runner_kwargs)
    tok = as_tokens(tokens, runner.hp.vocab_size)
    h = runner.hidden(tok)
    b, t, hd = h.shape
    flat = h[:, :-1].reshape(-1, hd)
    targets = tok[:, 1:].reshape(-1).to(h.device)
    lp = torch.empty(flat.shape[0], dtype=torch.float32, device=h.device)
    am = torch.empty(flat.shape[0], dtype=torch.int64, device=h.device)
    for s, lp_c, am_c in runner.logprob_chunks(flat, targets):
        lp[s:s + lp_c.shape[0]], am[s:s + lp_c.shape[0]] = lp_c, am_c
    lp, am = lp.cpu(), am.cpu()
    lp, am = lp.reshape(b, t - 1), am.reshape(b, t - 1)
    scored = lp[:, score_from:]
    n = scored.numel()
    nll = float(-scored.to(torch.float64).sum() / max(n, 1))
    return TokenScores(lp, am, nll, n)

