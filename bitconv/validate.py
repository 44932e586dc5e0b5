"""Model-vs-config validation: run on every opened checkpoint before anything is planned or written.

Why: an inconsistent checkpoint (a linear missing in one layer, q_proj [128, 256] for hidden
256, num_hidden_layers disagreeing with the layers present, an empty [0, K] linear) used to
convert "successfully" into a file no engine computes correctly. Every expected tensor must
be present with the shape the hyperparameters imply, and no tensor may lie outside them.
Because every shape is checked against tensors that exist in the files, everything sized
from the config (the tokenizer's padded vocabulary, GGUF arrays) is bounded by the files.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .errors import CorruptFileError
from .model import HParams, kind_of, layer_of

if TYPE_CHECKING:
    from .readers.checkpoint import Checkpoint


def expected_shapes(hp: HParams, layer_kinds: set[str]) -> dict[str, tuple[tuple[int, ...], ...]]:
    """kind -> the shapes it may have ([M, K] for matrices), from the hyperparameters."""
    q, kv, h, ff = hp.num_heads * hp.head_dim, hp.num_kv_heads * hp.head_dim, hp.hidden_size, hp.intermediate_size
    shapes = {
        "attn_norm": ((h,),), "ffn_norm": ((h,),),
        "attn_q": ((q, h),), "attn_k": ((kv, h),), "attn_v": ((kv, h),), "attn_output": ((h, q),),
        "ffn_gate": ((ff, h),), "ffn_up": ((ff, h),), "ffn_down": ((h, ff),),
        "attn_sub_norm": tuple({(h,), (q,)}), "ffn_sub_norm": ((ff,),),
        "attn_q_norm": ((hp.head_dim,),), "attn_k_norm": ((hp.head_dim,),),  # Qwen3: per-head q/k norms
    }
    out = {k: v for k, v in shapes.items() if k in layer_kinds}
    if hp.linear_norms:  # use_rms_norm: an RMSNorm over each linear's input width (archs.base.INPUT_NORM_SUFFIX)
        out.update({f"{k}_in_norm": ((shapes[k][0][1],),) for k in list(out) if len(shapes[k][0]) == 2})
    return out


def problems(ckpt: "Checkpoint", layer_kinds: set[str], *, output_required: bool) -> list[str]:
    """Every way the tensors disagree with the hyperparameters, one line each."""
    hp = ckpt.spec.hparams
    where = str(ckpt.spec.source.path)
    out: list[str] = []
    if hp.head_dim % 2:
        out.append(f"{where}: head size {hp.head_dim} is odd; rotary embeddings need an even head size")
    shapes = expected_shapes(hp, layer_kinds)
    glob = {"token_embd": ((hp.vocab_size, hp.hidden_size),), "output": ((hp.vocab_size, hp.hidden_size),),
            "output_norm": ((hp.hidden_size,),)}
    seen: set[str] = set()
    for t in ckpt.tensors:
        if t.name in seen:
            out.append(f"{where}: tensor {t.name} appears twice")
            continue
        seen.add(t.name)
        layer = layer_of(t.name)
        kind = kind_of(t.name)
        if layer is not None and layer >= hp.num_layers:
            out.append(f"{where}: tensor {t.source_name} is in layer {layer} but num_hidden_layers is "
                       f"{hp.num_layers}")
            continue
        allowed = shapes.get(kind) if layer is not None else glob.get(kind)
        if allowed is None:
            out.append(f"{where}: tensor {t.source_name} is not part of a {ckpt.spec.family} model")
            continue
        shape = tuple(int(d) for d in t.shape)
        if shape not in allowed:
            want = " or ".join(str(list(s)) for s in allowed)
            out.append(f"{where}: tensor {t.source_name} has shape {list(shape)}, expected {want} from the "
                       f"config (hidden {hp.hidden_size}, heads {hp.num_heads}/{hp.num_kv_heads} x {hp.head_dim}, "
                       f"intermediate {hp.intermediate_size}, vocab {hp.vocab_size})")
    required = ["token_embd.weight", "output_norm.weight"]
    if output_required and not hp.tie_embeddings:
        required.append("output.weight")
    required += [f"blk.{i}.{k}.weight" for i in range(hp.num_layers) for k in sorted(shapes)]
    missing = [n for n in required if n not in seen]
    present = {layer_of(n) for n in seen} - {None}
    top = max(present, default=-1) + 1  # layers 0..top-1 hold tensors
    if top < hp.num_layers:
        out.append(f"{where}: num_hidden_layers is {hp.num_layers} but the files hold tensors of "
                   + (f"layers 0..{top - 1} only" if top else "no layer"))
        missing = [n for n in missing if layer_of(n) is None or layer_of(n) < top]
    out += [f"{where}: tensor {n} is missing (the config expects it)" for n in missing]
    return out


def validate_checkpoint(ckpt: "Checkpoint", layer_kinds: set[str], *, output_required: bool = True) -> None:
    """Raise one CorruptFileError naming the first problem (and how many more there are)."""
    found = problems(ckpt, layer_kinds, output_required=output_required)
    if found:
        more = f" (and {len(found) - 1} more problem(s))" if len(found) > 1 else ""
        raise CorruptFileError(found[0] + more, hint="the checkpoint does not match its config; fix or re-export it")
