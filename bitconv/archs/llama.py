"""Plain Llama with ternary linears (HF1BitLLM Llama3-8B-1.58, Falcon3-*-1.58bit)."""

from __future__ import annotations

from ..model import HParams
from .base import Architecture, register


@register("LlamaForCausalLM")
class Llama(Architecture):
    hidden_act = "silu"
    # GGUF `llama` uses llama-style rope; llama.cpp's converter reorders q/k rows for it.
    permute_qk_for_llama_arch = True

    def gguf_arch(self, hp: HParams, engine: str) -> str:
        return "llama"


def _permute(a, n_head: int, inverse: bool):
    """Reorder rows of a [n_head·d, ...] array between HF and GGUF `llama` rope order.

    llama.cpp's converter views q/k rows as [n_head, 2, d/2] and swaps the last two axes, so
    interleaved rope in the engine sees what rotate-half rope saw in transformers.
    """
    if a.ndim == 0 or a.shape[0] == 1:
        return a
    rows = a.shape[0]
    if n_head <= 0 or rows % (2 * n_head):
        from ..errors import LayoutError

        raise LayoutError(f"{rows} q/k rows are not {n_head} heads of an even number of rows each",
                          hint="the tensor's shape contradicts the model's head counts")
    half = rows // n_head // 2
    shape = (n_head, half, 2) if inverse else (n_head, 2, half)
    return a.reshape(*shape, *a.shape[1:]).swapaxes(1, 2).reshape(a.shape)


def to_llama_rope_order(tern, n_head: int):
    """Permute a q/k Ternary's rows (and row scales) into GGUF `llama` order; packing comes after."""
    from ..quant import Ternary

    scales = tern.scales if tern.scales.ndim == 0 or tern.scales.shape[0] == 1 else _permute(tern.scales, n_head, False)
    return Ternary(_permute(tern.values, n_head, False), scales, tern.group)


def from_llama_rope_order(tern, n_head: int):
    from ..quant import Ternary

    scales = tern.scales if tern.scales.ndim == 0 or tern.scales.shape[0] == 1 else _permute(tern.scales, n_head, True)
    return Ternary(_permute(tern.values, n_head, True), scales, tern.group)


def from_llama_rows(a, n_head: int):
    """GGUF `llama` rope order -> HF row order for a q/k array (numpy or torch: reshape and
    swapaxes only), e.g. values decoded on a GPU."""
    return _permute(a, n_head, inverse=True)
