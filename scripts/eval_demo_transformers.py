#!/usr/bin/env python3
"""Check the demo model with Hugging Face transformers (reference implementation).

Loads `bitconv/data/tiny-bitnet` with `BitNetForCausalLM.from_pretrained`
(quantization_config: bitnet / autobitlinear / online, i.e. the bf16 master
weights are ternarized on the fly and activations fake-quantized to int8),
and prints its perplexity on `bitconv/data/eval.txt` next to the uniform
baseline (= vocabulary size).  Windows: non-overlapping, 256 tokens each,
BOS followed by 255 text tokens, every text token scored.

With --compare it also runs the self-contained model code of
scripts/train_demo.py on the same weights and reports the largest logit
difference (both in float32).

    TORCHDYNAMO_DISABLE=1 python scripts/eval_demo_transformers.py [--compare]
"""

from __future__ import annotations

import os

# transformers' BitNet layers wrap their quantizers in torch.compile; eager is
# what we want on a CPU-only box (and it is exact).
os.environ.setdefault("TORCHDYNAMO_DISABLE", "1")

import argparse  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def hf_perplexity(model, ids: list[int], bos_id: int, window: int = 256) -> tuple[float, int]:
    from train_demo import windowed_perplexity  # same windows and scoring as training's eval

    return windowed_perplexity(lambda x: model(input_ids=x).logits, ids, bos_id, window)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=str(ROOT / "bitconv/data/tiny-bitnet"))
    ap.add_argument("--eval", default=str(ROOT / "bitconv/data/eval.txt"))
    ap.add_argument("--window", type=int, default=256)
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"],
                    help="compute dtype for transformers (weights are stored in bf16)")
    ap.add_argument("--compare", action="store_true",
                    help="also compare logits with scripts/train_demo.py's model code")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from transformers import AutoTokenizer, BitNetForCausalLM
    from transformers.integrations.bitnet import AutoBitLinear

    t0 = time.time()
    tok = AutoTokenizer.from_pretrained(args.model)
    model = BitNetForCausalLM.from_pretrained(args.model, dtype=getattr(torch, args.dtype))
    model.eval()
    n_bit = sum(isinstance(m, AutoBitLinear) and m.online_quant for m in model.modules())
    print(f"loaded {args.model}: {type(model).__name__}, {n_bit} online AutoBitLinear "
          f"layers, lm_head {type(model.lm_head).__name__}, dtype {args.dtype}")

    text = Path(args.eval).read_text(encoding="utf-8")
    tok.model_max_length = 10**9  # whole text at once; windows are cut below
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert tok.bos_token_id is not None
    ppl, n = hf_perplexity(model, ids, tok.bos_token_id, args.window)
    vocab = model.config.vocab_size
    print(f"transformers perplexity on {Path(args.eval).name}: {ppl:.3f} "
          f"({n} tokens, windows of {args.window})")
    print(f"uniform baseline: {vocab}")

    rc = 0
    if args.compare:
        sys.path.insert(0, str(ROOT / "scripts"))
        from safetensors.torch import load_file
        from train_demo import Cfg, TinyBitNet, perplexity

        cfg = model.config
        ours = TinyBitNet(Cfg(
            vocab_size=cfg.vocab_size, hidden_size=cfg.hidden_size,
            intermediate_size=cfg.intermediate_size, num_hidden_layers=cfg.num_hidden_layers,
            num_attention_heads=cfg.num_attention_heads,
            num_key_value_heads=cfg.num_key_value_heads,
            max_position_embeddings=cfg.max_position_embeddings,
            rope_theta=cfg.rope_parameters["rope_theta"], rms_norm_eps=cfg.rms_norm_eps))
        sd = {k: v.float() for k, v in load_file(str(Path(args.model) / "model.safetensors")).items()}
        ours.load_state_dict(sd, strict=True)
        ours.eval()
        x = torch.tensor([[tok.bos_token_id] + ids[:args.window - 1]])
        with torch.no_grad():
            a = model(input_ids=x).logits.float()
            b = ours(x).float()
        diff = (a - b).abs().max().item()
        agree = (a.argmax(-1) == b.argmax(-1)).float().mean().item()
        print(f"max |logit difference| transformers vs train_demo.py: {diff:.3e} "
              f"(largest |logit| {b.abs().max().item():.1f}, argmax agreement {agree:.4f})")
        # The int8 activation rounding turns float32 last-ulp differences
        # (different op order) into occasional one-step flips, so the check of
        # the architecture itself runs with activation quantization off on
        # both sides (weights still ternarized).
        import train_demo
        import transformers.integrations.bitnet as hf_bitnet

        saved = hf_bitnet.ActQuant.apply, train_demo.act_quant
        hf_bitnet.ActQuant.apply = staticmethod(lambda t: t)
        train_demo.act_quant = lambda t: t
        try:
            with torch.no_grad():
                exact = (model(input_ids=x).logits.float() - ours(x).float()).abs().max().item()
        finally:
            hf_bitnet.ActQuant.apply, train_demo.act_quant = saved
        print(f"same, activation quantization off on both sides: {exact:.3e}")
        ppl_ours, _ = perplexity(ours, ids, tok.bos_token_id, args.window)
        print(f"train_demo.py perplexity on the same windows: {ppl_ours:.3f}")
        if args.dtype == "float32" and (exact > 1e-4 or abs(ppl_ours / ppl - 1) > 0.01):
            print("MISMATCH between transformers and train_demo.py")
            rc = 1
    print(f"({time.time() - t0:.1f}s)")
    if ppl >= vocab:
        rc = 1
    sys.exit(rc)


if __name__ == "__main__":
    main()
