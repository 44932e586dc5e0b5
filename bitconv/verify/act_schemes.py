"""Activation schemes: how verify's decoder layer quantizes each ternary linear's input and
the KV cache, as one plug-in of the layer (not another copy of it).

The layer calls, for the artifact side:

* `scheme.act(x, site, layer)` on the input of each group of linears, `site` one of
  `SITES`: "attn_in" (q/k/v, after the attention norm), "attn_out_in" (o_proj, after any
  sub-norm), "ffn_in" (gate/up, after the FFN norm), "ffn_down_in" (down_proj, after the
  activation and any sub-norm). It returns the fake-quantized input (quantize, then
  dequantize) in x's shape and dtype.
* `scheme.kv(k, v, layer)` on the keys and values after rope, before attention.

`get_scheme(name, kv_bits)` builds one; `SCHEMES` is the registry (one class per scheme).

"a8" is BitNet b1.58's rule, the one verify has always used (FORMATS.md §1): per token
γ = max|x|, `x_q = clip(round(x·127/max(γ, 1e-5)), -128, 127)`, input `x_q / (127/γ)`, the
same float32 operations as before the scheme seam, so `--act a8` reproduces verify's default
numbers bit for bit (the int8 backends fuse exactly this rule: `is_int8_fused`). "none" is
no quantization (a plain family, `--no-act-quant`).

"a4.8" is BitNet a4.8 (Wang, Ma, Wei, arXiv 2411.04965, §2 "BitNet a4.8"):

* inputs to attention and FFN (attn_in, ffn_in), 4-bit absmean, per token (Eq. 4):
  `Q_INT4(X) = β/√7 · RoundClip(√7·X/(β+ε), -8, 7)`, `β = mean(|X|)`;
* the intermediate states, 8-bit absmax, per token (Eq. 3):
  `Q_INT8(X) = γ/127 · RoundClip(127·X/(γ+ε), -128, 127)`, `γ = max(|X|)`;
  the input of the attention output projection is first sparsified by TopK at 50% (the
  paper's Q-Sparse step, Table 4 "INT8 + TopK 50%"): per token the K = ⌈0.5·d⌉ entries
  of largest |x| are kept, the rest set to 0; the input of the FFN down projection is not
  TopK'd: its sparsity comes from the squared ReLU of the gated FFN (§2, Fig. 5, Table 2);
* `RoundClip(x, a, b) = max(a, min(b, round(x)))`, round half to even (torch.round, as the
  a8 rule), ε = 1e-5.
* `kv_bits` b (3, 4 or 8): keys and values after rope, absmax to b-bit signed integers,
  per token and per head (`γ = max|x|` over head_dim; `Q_b(X) = γ/Q·RoundClip(Q·X/(γ+ε),
  -Q-1, Q)`, Q = 2^(b-1)-1). The paper's Table 3 reports 4-bit and 3-bit KV; that they are
  quantized after rope with absmax is our recollection of its text, and the per-head,
  per-token granularity our reading of it.

Sources: the paper's full text could not be read from the session that wrote this. Eq. 3/4
are as a public explainer restates them, the TopK ratio and site and the KV bit widths are
from Tables 2-4 as a public review quotes them, section numbers are from memory. Eq. 4 has
an independent check: on Gaussian inputs it zeroes 12.0% of entries, the 12.0-12.1% Table 2
reports at the q/k/v and gate inputs of every a4.8 size (tests/test_act_schemes.py).

Ties at the TopK boundary: among entries of equal |x| the one with the LOWER index wins.
`torch.topk` documents no order among equal values (its kernels differ by device and
size), so the mask comes from a stable descending sort, which
keeps equal magnitudes in index order: deterministic on every device and thread count.

The a4.8 statistics (β, γ) and products are computed in float64 and the result cast to
x's dtype: the summation order of mean(|X|) (threads, devices) then cannot move a value
across a rounding boundary in practice, and an independent reference can match bit for bit.

`SparsityStats` (verify/sparsity.py) collects what a scheme sees when one is given.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import torch

from ..errors import UsageError
from .sparsity import SparsityStats

SITES = ("attn_in", "attn_out_in", "ffn_in", "ffn_down_in")
KV_BITS = (3, 4, 8)
ACT_EPS = 1e-5  # γ floor of b1.58's per-token absmax (BitNet's clamp)
EPS = 1e-5  # the paper's ε
SQRT7 = math.sqrt(7.0)
TOPK_RATIO = 0.5  # a4.8's TopK for the attention output projection's input (Table 4)



# ----------------------------------------------------------------------------------------
# the quantizers (each one equation of the paper; tests hold them to an independent reference)
# ----------------------------------------------------------------------------------------
def absmean_int4(x: torch.Tensor) -> torch.Tensor:
    """a4.8 Eq. 4, per token (last dim): β/√7 · RoundClip(√7·x/(β+ε), -8, 7), β = mean|x|."""
    xf = x.to(torch.float64)
    beta = xf.abs().mean(dim=-1, keepdim=True)
    q = (xf * (SQRT7 / (beta + EPS))).round_().clamp_(-8, 7)
    return (q * (beta / SQRT7)).to(x.dtype)


def absmax_int(x: torch.Tensor, bits: int = 8) -> torch.Tensor:
    """a4.8 Eq. 3 generalized to b bits, per row of the last dim:
    γ/Q · RoundClip(Q·x/(γ+ε), -Q-1, Q), γ = max|x|, Q = 2^(b-1)-1 (127 for 8 bits)."""
    qmax = float(2 ** (bits - 1) - 1)
    xf = x.to(torch.float64)
    gamma = xf.abs().amax(dim=-1, keepdim=True)
    q = (xf * (qmax / (gamma + EPS))).round_().clamp_(-qmax - 1, qmax)
    return (q * (gamma / qmax)).to(x.dtype)


def topk_count(d: int, ratio: float = TOPK_RATIO) -> int:
    """Entries TopK keeps of a token of width d: ⌈ratio·d⌉ (at least 1)."""
    return max(1, min(d, math.ceil(ratio * d - 1e-9)))


def topk_mask(x: torch.Tensor, k: int) -> torch.Tensor:
    """Boolean mask of the k entries of largest |x| per row (last dim); among equal |x| the
    lower index wins (stable descending sort), so the mask is the same on every device."""
    d = x.shape[-1]
    if k >= d:
        return torch.ones_like(x, dtype=torch.bool)
    order = torch.sort(x.abs(), dim=-1, descending=True, stable=True).indices[..., :k]
    return torch.zeros_like(x, dtype=torch.bool).scatter_(-1, order, True)


def topk(x: torch.Tensor, ratio: float = TOPK_RATIO) -> tuple[torch.Tensor, torch.Tensor]:
    """Q-Sparse TopK: (x with all but the ⌈ratio·d⌉ largest |x| of each token set to 0, the kept mask)."""
    mask = topk_mask(x, topk_count(x.shape[-1], ratio))
    return x * mask, mask


def absmax_int8(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """BitNet b1.58's per-token 8-bit absmax, as verify has always computed it: integer-valued
    float32 x_q = clip(round(x·127/max(γ, 1e-5)), -128, 127) and 127/γ (γ = max|x|)."""
    xf = x.to(torch.float32)
    gamma = torch.linalg.vector_norm(xf, float("inf"), dim=-1, keepdim=True)  # max|x|, one pass
    scale = 127.0 / gamma.clamp_(min=ACT_EPS)
    return (xf * scale).round_().clamp_(-128, 127), scale


def a8_quant(x: torch.Tensor) -> torch.Tensor:
    """b1.58's input to a linear: x_q / (127/γ) in x's dtype, what transformers' BitLinear
    feeds F.linear (and verify's float path always has)."""
    xq, scale = absmax_int8(x)
    return (xq / scale).to(x.dtype)


# ----------------------------------------------------------------------------------------
# the schemes
# ----------------------------------------------------------------------------------------
SCHEMES: dict[str, type["ActScheme"]] = {}


def register(cls: type["ActScheme"]) -> type["ActScheme"]:
    SCHEMES[cls.name] = cls
    return cls


class ActScheme:
    """One activation scheme. Subclasses define `_act(x, site) -> (out, kept mask | None)`."""

    name: ClassVar[str] = ""
    kv_bits: int | None = None  # class defaults: a subclass need not call __init__
    stats: SparsityStats | None = None

    def __init__(self, kv_bits: int | None = None, stats: SparsityStats | None = None) -> None:
        if kv_bits is not None and kv_bits not in KV_BITS:
            raise UsageError(f"--kv-bits must be one of {', '.join(map(str, KV_BITS))}, got {kv_bits}")
        self.kv_bits = kv_bits
        self.stats = stats

    def act(self, x: torch.Tensor, site: str, layer: int) -> torch.Tensor:
        """The fake-quantized input of the linears at `site` (same shape and dtype as x)."""
        if site not in SITES:
            raise ValueError(f"unknown activation site {site!r} (one of {', '.join(SITES)})")
        out, kept = self._act(x, site)
        if self.stats is not None:
            self.stats.record(layer, site, x, out, kept)
        return out

    def _act(self, x: torch.Tensor, site: str) -> tuple[torch.Tensor, torch.Tensor | None]:
        raise NotImplementedError

    def kv(self, k: torch.Tensor, v: torch.Tensor, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys and values after rope ([..., head_dim]), quantized per token and head to
        `kv_bits` (unchanged without)."""
        if self.kv_bits is None:
            return k, v
        return absmax_int(k, self.kv_bits), absmax_int(v, self.kv_bits)


@register
class A8(ActScheme):
    """BitNet b1.58: every linear input 8-bit absmax per token (verify's default)."""

    name = "a8"

    def _act(self, x, site):
        return a8_quant(x), None


@register
class NoQuant(ActScheme):
    """No activation quantization (a plain family as transformers runs it, `--no-act-quant`)."""

    name = "none"

    def _act(self, x, site):
        return x, None


@register
class A48(ActScheme):
    """BitNet a4.8 (arXiv 2411.04965 §2): INT4 absmean at attention/FFN inputs, TopK 50% +
    INT8 at o_proj's input, INT8 at down_proj's input (sparse from relu²)."""

    name = "a4.8"

    def __init__(self, kv_bits: int | None = None, stats: SparsityStats | None = None,
                 topk_ratio: float = TOPK_RATIO) -> None:
        super().__init__(kv_bits, stats)
        self.topk_ratio = topk_ratio

    def _act(self, x, site):
        if site in ("attn_in", "ffn_in"):
            return absmean_int4(x), None
        if site == "attn_out_in":
            sparse, kept = topk(x, self.topk_ratio)
            return absmax_int(sparse, 8), kept
        return absmax_int(x, 8), None


def get_scheme(name: str, kv_bits: int | None = None, stats: SparsityStats | None = None) -> ActScheme:
    """The scheme called `name` ("a8", "a4.8"), with a `kv_bits` KV cache (None: unquantized)."""
    cls = SCHEMES.get(name)
    if cls is None:
        raise UsageError(f"--act must be one of {', '.join(SCHEMES)}, got {name!r}")
    return cls(kv_bits=kv_bits, stats=stats)


def scheme_names() -> list[str]:
    return list(SCHEMES)


def is_int8_fused(scheme: Any) -> bool:
    """Whether the int8 backends' fused kernels compute `scheme` (plain a8, float KV cache)."""
    return type(scheme) is A8 and getattr(scheme, "kv_bits", None) is None


def require_int8_fused(scheme: Any) -> None:
    """An int8 backend's check of its scheme: ValueError unless `is_int8_fused(scheme)`."""
    if not is_int8_fused(scheme):
        raise ValueError(f"the int8 backends fuse only the a8 scheme, not {getattr(scheme, 'name', scheme)!r}")


