#!/usr/bin/env python3
"""Train the tiny ternary BitNet b1.58 demo model shipped as `builtin:tiny-bitnet`.

Everything runs on the CPU with plain torch; the model code below is
self-contained and matches transformers' `BitNetForCausalLM` forward pass
(RMSNorm, RoPE with the rotate_half convention, grouped-query attention with a
causal mask, `attn_sub_norm` before `o_proj`, squared-ReLU gated FFN with
`ffn_sub_norm` before `down_proj`, tied input/output embeddings) in the
"autobitlinear / online" quantization mode: every projection (q, k, v, o,
gate, up, down) keeps a latent weight W and uses, in its forward pass,

    s   = max(mean|W|, 1e-5)                 (absmean, per tensor)
    W_q = clip(round(W / s), -1, 1) * s      (ternary weight)
    x_q = clip(round(x * 127 / g), -128, 127) * g / 127,  g = max|x| per token

with straight-through estimators for both roundings (quantization-aware
training as in BitNet b1.58).  Embeddings, norms and the (tied) output head
stay in full precision.

Steps:
  1. train a byte-level BPE tokenizer (GPT-2 style ByteLevel pre-tokenizer and
     decoder) on the training text, specials <|begin_of_text|> and
     <|end_of_text|>;
  2. train the model (AdamW, linear warm-up + cosine decay, seeded);
  3. round the master weights to bfloat16 (what is shipped), report the
     held-out perplexity on the evaluation text with those weights;
  4. write a Hugging Face folder: config.json, generation_config.json,
     model.safetensors (bf16), tokenizer.json, tokenizer_config.json,
     special_tokens_map.json.

Reproduce the shipped model:
    python scripts/gen_demo_text.py
    python scripts/train_demo.py            # ~10 min on 2 CPU cores
    TORCHDYNAMO_DISABLE=1 python scripts/eval_demo_transformers.py
"""

from __future__ import annotations

import argparse
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

ROOT = Path(__file__).resolve().parent.parent
BOS = "<|begin_of_text|>"
EOS = "<|end_of_text|>"


# ---------------------------------------------------------------------------
# tokenizer
# ---------------------------------------------------------------------------
def train_tokenizer(text_path: Path, vocab_size: int):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE())
    # GPT-2 byte-level pre-tokenization (GPT-2 regex, no prefix space): the
    # same split llama.cpp applies for its "gpt2" pre-tokenizer.
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=[BOS, EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train([str(text_path)], trainer)
    bos_id, eos_id = tok.token_to_id(BOS), tok.token_to_id(EOS)
    # like Llama 3: byte-level offsets + a BOS prepended by the post-processor
    tok.post_processor = processors.Sequence([
        processors.ByteLevel(trim_offsets=False),
        processors.TemplateProcessing(
            single=f"{BOS} $A",
            # one BOS for a pair too: gguf-py's SpecialVocab reads a BOS between A and B as an
            # unknown separator and warns on every GGUF conversion (the demo never encodes pairs)
            pair=f"{BOS} $A $B",
            special_tokens=[(BOS, bos_id)],
        ),
    ])
    return tok


def encode_plain(tok, text: str) -> list[int]:
    """Token ids of `text` without any special token."""
    return tok.encode(text, add_special_tokens=False).ids


def write_tokenizer_files(tok, out: Path, max_len: int) -> None:
    tok.save(str(out / "tokenizer.json"))
    special = {"bos_token": BOS, "eos_token": EOS}
    cfg = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": BOS,
        "eos_token": EOS,
        "add_bos_token": True,
        "add_eos_token": False,
        "clean_up_tokenization_spaces": False,
        "model_max_length": max_len,
        "model_input_names": ["input_ids", "attention_mask"],
    }
    (out / "tokenizer_config.json").write_text(json.dumps(cfg, indent=2) + "\n")
    (out / "special_tokens_map.json").write_text(json.dumps(special, indent=2) + "\n")


# ---------------------------------------------------------------------------
# model (mirrors transformers.models.bitnet.modeling_bitnet)
# ---------------------------------------------------------------------------
@dataclass
class Cfg:
    vocab_size: int = 1024
    hidden_size: int = 256
    intermediate_size: int = 768
    num_hidden_layers: int = 4
    num_attention_heads: int = 4
    num_key_value_heads: int = 2
    max_position_embeddings: int = 512
    rope_theta: float = 10000.0
    rms_norm_eps: float = 1e-5

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads


def weight_quant(w: torch.Tensor) -> torch.Tensor:
    """Absmean ternarization with straight-through gradient (transformers' WeightQuant)."""
    wf = w.float()
    scale = 1.0 / wf.abs().mean().clamp(min=1e-5)  # 1/s
    q = ((wf * scale).round().clamp(-1, 1) / scale).to(w.dtype)  # s * t
    return w + (q - w).detach()


def act_quant(x: torch.Tensor) -> torch.Tensor:
    """Per-token absmax int8 fake-quantization with straight-through gradient (ActQuant)."""
    xf = x.float()
    scale = 127 / xf.abs().amax(dim=-1, keepdim=True).clamp(min=1e-5)
    q = ((xf * scale).round().clamp(-128, 127) / scale).to(x.dtype)
    return x + (q - x).detach()


class BitLinear(nn.Linear):
    def __init__(self, fan_in: int, fan_out: int):
        super().__init__(fan_in, fan_out, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(act_quant(x), weight_quant(self.weight))


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dt = x.dtype
        xf = x.float()
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * xf.to(dt)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x[..., : x.shape[-1] // 2], x[..., x.shape[-1] // 2:]
    return torch.cat((-x2, x1), dim=-1)


class Attention(nn.Module):
    def __init__(self, c: Cfg):
        super().__init__()
        self.c = c
        hd = c.head_dim
        self.q_proj = BitLinear(c.hidden_size, c.num_attention_heads * hd)
        self.k_proj = BitLinear(c.hidden_size, c.num_key_value_heads * hd)
        self.v_proj = BitLinear(c.hidden_size, c.num_key_value_heads * hd)
        self.o_proj = BitLinear(c.num_attention_heads * hd, c.hidden_size)
        self.attn_sub_norm = RMSNorm(c.hidden_size, c.rms_norm_eps)

    def forward(self, x, cos, sin):
        b, t, _ = x.shape
        hd = self.c.head_dim
        q = self.q_proj(x).view(b, t, -1, hd).transpose(1, 2)
        k = self.k_proj(x).view(b, t, -1, hd).transpose(1, 2)
        v = self.v_proj(x).view(b, t, -1, hd).transpose(1, 2)
        q = q * cos + rotate_half(q) * sin
        k = k * cos + rotate_half(k) * sin
        rep = self.c.num_attention_heads // self.c.num_key_value_heads
        k = k.repeat_interleave(rep, dim=1)
        v = v.repeat_interleave(rep, dim=1)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=hd ** -0.5)
        y = y.transpose(1, 2).reshape(b, t, -1)
        return self.o_proj(self.attn_sub_norm(y))


class MLP(nn.Module):
    def __init__(self, c: Cfg):
        super().__init__()
        self.gate_proj = BitLinear(c.hidden_size, c.intermediate_size)
        self.up_proj = BitLinear(c.hidden_size, c.intermediate_size)
        self.down_proj = BitLinear(c.intermediate_size, c.hidden_size)
        self.ffn_sub_norm = RMSNorm(c.intermediate_size, c.rms_norm_eps)

    def forward(self, x):
        h = F.relu(self.gate_proj(x)) ** 2 * self.up_proj(x)  # relu2 gate
        return self.down_proj(self.ffn_sub_norm(h))


class Layer(nn.Module):
    def __init__(self, c: Cfg):
        super().__init__()
        self.self_attn = Attention(c)
        self.mlp = MLP(c)
        self.input_layernorm = RMSNorm(c.hidden_size, c.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(c.hidden_size, c.rms_norm_eps)

    def forward(self, x, cos, sin):
        x = x + self.self_attn(self.input_layernorm(x), cos, sin)
        return x + self.mlp(self.post_attention_layernorm(x))


class Inner(nn.Module):
    def __init__(self, c: Cfg):
        super().__init__()
        self.embed_tokens = nn.Embedding(c.vocab_size, c.hidden_size)
        self.layers = nn.ModuleList(Layer(c) for _ in range(c.num_hidden_layers))
        self.norm = RMSNorm(c.hidden_size, c.rms_norm_eps)


class TinyBitNet(nn.Module):
    """Parameter names equal transformers' BitNetForCausalLM (`model.` prefix)."""

    def __init__(self, c: Cfg):
        super().__init__()
        self.c = c
        self.model = Inner(c)
        hd = c.head_dim
        inv_freq = 1.0 / (c.rope_theta ** (torch.arange(0, hd, 2, dtype=torch.float) / hd))
        self.register_buffer("inv_freq", inv_freq, persistent=False)

    def rope(self, t: int, dtype):
        pos = torch.arange(t, dtype=torch.float)
        freqs = pos[:, None] * self.inv_freq[None, :]
        emb = torch.cat((freqs, freqs), dim=-1)
        return emb.cos().to(dtype), emb.sin().to(dtype)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        x = self.model.embed_tokens(ids)
        cos, sin = self.rope(ids.shape[1], x.dtype)
        for layer in self.model.layers:
            x = layer(x, cos, sin)
        x = self.model.norm(x)
        return F.linear(x, self.model.embed_tokens.weight)  # tied lm_head


def init_weights(model: TinyBitNet, std: float = 0.02) -> None:
    for name, p in model.named_parameters():
        if name.endswith("norm.weight") or "layernorm" in name:
            nn.init.ones_(p)
        else:
            nn.init.normal_(p, mean=0.0, std=std)


# ---------------------------------------------------------------------------
# evaluation
# ---------------------------------------------------------------------------
@torch.no_grad()
def windowed_perplexity(logits_fn, ids: list[int], bos_id: int, window: int = 256) -> tuple[float, int]:
    """Non-overlapping windows of `window` tokens: BOS + (window-1) text tokens,
    every text token scored (the first one given only BOS). `logits_fn` maps input ids
    [1, T] to logits [1, T, vocab], so this model and transformers' are scored alike."""
    n = window - 1
    nll, count = 0.0, 0
    for i in range(0, len(ids), n):
        chunk = ids[i:i + n]
        if len(chunk) < 2:
            break
        x = torch.tensor([[bos_id] + chunk])
        logits = logits_fn(x[:, :-1]).float()
        nll += F.cross_entropy(logits[0], x[0, 1:], reduction="sum").item()
        count += len(chunk)
    return math.exp(nll / count), count


def perplexity(model: TinyBitNet, ids: list[int], bos_id: int, window: int = 256) -> tuple[float, int]:
    model.eval()
    result = windowed_perplexity(model, ids, bos_id, window)
    model.train()
    return result


# ---------------------------------------------------------------------------
# export
# ---------------------------------------------------------------------------
def hf_config(c: Cfg, bos_id: int, eos_id: int) -> dict:
    return {
        "architectures": ["BitNetForCausalLM"],
        "model_type": "bitnet",
        "vocab_size": c.vocab_size,
        "hidden_size": c.hidden_size,
        "intermediate_size": c.intermediate_size,
        "num_hidden_layers": c.num_hidden_layers,
        "num_attention_heads": c.num_attention_heads,
        "num_key_value_heads": c.num_key_value_heads,
        "head_dim": c.head_dim,
        "hidden_act": "relu2",
        "max_position_embeddings": c.max_position_embeddings,
        "rms_norm_eps": c.rms_norm_eps,
        "rope_theta": c.rope_theta,
        "rope_parameters": {"rope_type": "default", "rope_theta": c.rope_theta},
        "rope_scaling": None,
        "attention_bias": False,
        "attention_dropout": 0.0,
        "initializer_range": 0.02,
        "tie_word_embeddings": True,
        "use_cache": True,
        "bos_token_id": bos_id,
        "eos_token_id": eos_id,
        "pad_token_id": None,
        "torch_dtype": "bfloat16",
        "quantization_config": {
            "quant_method": "bitnet",
            "linear_class": "autobitlinear",
            "quantization_mode": "online",
        },
    }


def export(model: TinyBitNet, tok, out: Path, bos_id: int, eos_id: int) -> None:
    from safetensors.torch import save_file

    out.mkdir(parents=True, exist_ok=True)
    c = model.c
    tensors = {k: v.detach().to(torch.bfloat16).contiguous()
               for k, v in model.state_dict().items()}
    save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})
    (out / "config.json").write_text(json.dumps(hf_config(c, bos_id, eos_id), indent=2) + "\n")
    gen = {"bos_token_id": bos_id, "eos_token_id": eos_id, "do_sample": False}
    (out / "generation_config.json").write_text(json.dumps(gen, indent=2) + "\n")
    write_tokenizer_files(tok, out, c.max_position_embeddings)


# ---------------------------------------------------------------------------
# training
# ---------------------------------------------------------------------------
def lr_at(step: int, total: int, peak: float, warmup: int, floor: float) -> float:
    if step < warmup:
        return peak * (step + 1) / warmup
    p = (step - warmup) / max(1, total - warmup)
    return floor + (peak - floor) * 0.5 * (1 + math.cos(math.pi * p))


def main() -> None:
    ap = argparse.ArgumentParser(description="train the tiny ternary BitNet demo model")
    ap.add_argument("--train", default=str(ROOT / "scripts/data/train.txt"))
    ap.add_argument("--eval", default=str(ROOT / "bitconv/data/eval.txt"))
    ap.add_argument("--out", default=str(ROOT / "bitconv/data/tiny-bitnet"))
    ap.add_argument("--steps", type=int, default=800)
    ap.add_argument("--batch", type=int, default=12)
    ap.add_argument("--seq", type=int, default=256, help="tokens per training window, BOS included")
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--min-lr", type=float, default=1e-4)
    ap.add_argument("--warmup", type=int, default=60)
    ap.add_argument("--weight-decay", type=float, default=0.05)
    ap.add_argument("--vocab", type=int, default=1024, choices=[1024, 2048])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--log-every", type=int, default=50)
    ap.add_argument("--eval-every", type=int, default=0, help="0: only at the end")
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    t0 = time.time()

    # 1. tokenizer + data
    tok = train_tokenizer(Path(args.train), args.vocab)
    bos_id, eos_id = tok.token_to_id(BOS), tok.token_to_id(EOS)
    train_ids = torch.tensor(encode_plain(tok, Path(args.train).read_text(encoding="utf-8")))
    eval_ids = encode_plain(tok, Path(args.eval).read_text(encoding="utf-8"))
    print(f"tokenizer: vocab {tok.get_vocab_size()}, bos {bos_id}, eos {eos_id}; "
          f"train {len(train_ids)} tokens, eval {len(eval_ids)} tokens "
          f"({time.time() - t0:.1f}s)", flush=True)

    # 2. model
    c = Cfg(vocab_size=tok.get_vocab_size())
    model = TinyBitNet(c)
    init_weights(model)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"model: {n_params / 1e6:.2f}M parameters "
          f"({n_params * 2 / 2**20:.1f} MiB in bf16)", flush=True)

    decay = [p for n, p in model.named_parameters() if n.endswith("proj.weight")]
    no_decay = [p for n, p in model.named_parameters() if not n.endswith("proj.weight")]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": args.weight_decay},
         {"params": no_decay, "weight_decay": 0.0}],
        lr=args.lr, betas=(0.9, 0.95), eps=1e-8)

    g = torch.Generator().manual_seed(args.seed + 1)
    n_text = args.seq - 1
    bos_col = torch.full((args.batch, 1), bos_id, dtype=torch.long)
    model.train()
    ema = None
    t_train = time.time()
    for step in range(args.steps):
        lr = lr_at(step, args.steps, args.lr, args.warmup, args.min_lr)
        for grp in opt.param_groups:
            grp["lr"] = lr
        # windows at random offsets; half of them start with BOS (as at
        # evaluation), the other half are plain text, so both work.
        starts = torch.randint(0, len(train_ids) - args.seq - 1, (args.batch,), generator=g)
        win = torch.stack([train_ids[s:s + args.seq + 1] for s in starts.tolist()])
        with_bos = torch.rand(args.batch, generator=g) < 0.5
        win_bos = torch.cat([bos_col, win[:, :n_text + 1]], dim=1)
        win = torch.where(with_bos[:, None], win_bos, win)
        x, y = win[:, :-1], win[:, 1:]
        logits = model(x)
        loss = F.cross_entropy(logits.reshape(-1, c.vocab_size), y.reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        ema = loss.item() if ema is None else 0.9 * ema + 0.1 * loss.item()
        if (step + 1) % args.log_every == 0 or step == 0:
            el = time.time() - t_train
            print(f"step {step + 1:5d}/{args.steps}  loss {loss.item():.4f}  "
                  f"ema {ema:.4f}  lr {lr:.2e}  {el:.0f}s", flush=True)
        if args.eval_every and (step + 1) % args.eval_every == 0 and step + 1 < args.steps:
            ppl, _ = perplexity(model, eval_ids, bos_id)
            print(f"  held-out ppl {ppl:.3f}", flush=True)
    train_time = time.time() - t_train

    # 3. ship bf16 master weights; evaluate exactly those
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(p.to(torch.bfloat16).float())
    ppl, n_tok = perplexity(model, eval_ids, bos_id)
    print(f"training time {train_time:.0f}s ({args.steps} steps, "
          f"{args.steps * args.batch * args.seq} tokens)")
    print(f"held-out perplexity (bf16 weights, ternary online): {ppl:.3f} over {n_tok} "
          f"tokens; uniform baseline {c.vocab_size}", flush=True)

    # 4. export
    out = Path(args.out)
    export(model, tok, out, bos_id, eos_id)
    for f in sorted(out.iterdir()):
        print(f"  {f}  {f.stat().st_size} bytes")
    print(f"total time {time.time() - t0:.0f}s")


if __name__ == "__main__":
    main()
