"""Build GGUF files the way OTHER tools write them, for the foreign-source and doctor tests.

- llama.cpp's `convert_hf_to_gguf.py --outtype tq1_0/tq2_0`: gguf-py's GGUFWriter and
  gguf.quants on the ternarized float weights (s·t), q/k rows permuted for arch `llama`,
  linears whose K is not a multiple of 256 left F16, token_embd F16, norms F32, no bitconv keys.
- bitnet.cpp's `llama-quantize ... I2_S 1`: type 36 written by the rules of FORMATS.md §2
  (implemented here independently of bitconv's packer), the 28 bytes after the scale
  filled with garbage as the C quantizer leaves them, file_type 40, arch `bitnet-b1.58` /
  `bitnet-25` / `bitnet` / `llama`, no `tokenizer.ggml.pre` (as in the official file).

A `Model` is the ternary model the tool started from: hparams, tensors (ternary values
and scales for linears, floats otherwise) and tokenizer keys, in GGUF names and [M, K].
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gguf
import numpy as np

from bitconv.model import LINEAR, kind_of

GT = gguf.GGMLQuantizationType


@dataclass
class Model:
    hp: dict[str, Any]  # hidden, intermediate, layers, heads, kv_heads, vocab, ctx, eps, theta, act, tie
    linears: dict[str, tuple[np.ndarray, float]]  # name -> (int8 t [M, K], scale)
    floats: dict[str, np.ndarray]  # token_embd / output / norms, float32
    tokenizer: dict[str, Any] = field(default_factory=dict)  # key -> value (gpt2 style)

    def dense(self, name: str) -> np.ndarray:
        t, s = self.linears[name]
        return t.astype(np.float32) * np.float32(s)


def model_from_checkpoint(folder: Path) -> Model:
    """Ternarize a (synthetic) HF checkpoint with bitconv, keep its tokenizer keys."""
    from bitconv.quant import ternarize
    from bitconv.readers import open_source
    from bitconv.writers.tokenizer import load_tokenizer

    ck = open_source(folder)
    h = ck.spec.hparams
    hp = dict(hidden=h.hidden_size, intermediate=h.intermediate_size, layers=h.num_layers, heads=h.num_heads,
              kv_heads=h.num_kv_heads, vocab=h.vocab_size, ctx=h.context_length, eps=h.rms_eps,
              theta=h.rope_theta, act=h.hidden_act, tie=h.tie_embeddings, head_dim=h.head_dim)
    linears, floats = {}, {}
    for t in ck.tensors:
        if t.role == LINEAR:
            tern = ternarize(t.load(), "tensor", t.name)
            linears[t.name] = (tern.values, tern.scale)
        elif not (t.role == "output" and h.tie_embeddings):
            floats[t.name] = np.asarray(t.load(), dtype=np.float32)
    tok = load_tokenizer(ck.spec.tokenizer_dir, h.vocab_size, h.bos_token_id, h.eos_token_id)
    sv = tok.special  # gguf.SpecialVocab, as llama.cpp's converter uses it
    kv = {"tokenizer.ggml.model": tok.model, "tokenizer.ggml.tokens": tok.tokens,
          "tokenizer.ggml.token_type": tok.token_types, "tokenizer.ggml.merges": list(sv.merges),
          "tokenizer.ggml.pre": "default"}
    for name, tid in sorted(sv.special_token_ids.items()):
        if name in ("bos", "eos"):
            kv[f"tokenizer.ggml.{name}_token_id"] = tid
    if "bos" in sv.add_special_token:
        kv["tokenizer.ggml.add_bos_token"] = bool(sv.add_special_token["bos"])
    return Model(hp, linears, floats, kv)


def random_model(*, hidden=256, intermediate=512, layers=1, heads=4, kv_heads=2, vocab=64, act="silu",
                 tie=True, seed=0, sub_norms=True) -> Model:
    """A small ternary model straight from numpy (doctor tests: nothing runs it)."""
    rng = np.random.default_rng(seed)
    hp = dict(hidden=hidden, intermediate=intermediate, layers=layers, heads=heads, kv_heads=kv_heads,
              vocab=vocab, ctx=256, eps=1e-5, theta=10000.0, act=act, tie=tie, head_dim=hidden // heads)
    kvd = kv_heads * hidden // heads
    shapes = {"attn_q": (hidden, hidden), "attn_k": (kvd, hidden), "attn_v": (kvd, hidden),
              "attn_output": (hidden, hidden), "ffn_gate": (intermediate, hidden),
              "ffn_up": (intermediate, hidden), "ffn_down": (hidden, intermediate)}
    linears, floats = {}, {"token_embd.weight": rng.standard_normal((vocab, hidden)).astype(np.float32),
                           "output_norm.weight": np.ones(hidden, np.float32)}
    for i in range(layers):
        for k, shp in shapes.items():
            linears[f"blk.{i}.{k}.weight"] = (rng.integers(-1, 2, size=shp).astype(np.int8),
                                              float(rng.uniform(0.01, 0.03)))
        norms = [("attn_norm", hidden), ("ffn_norm", hidden)]
        norms += [("attn_sub_norm", hidden), ("ffn_sub_norm", intermediate)] if sub_norms else []
        for k, n in norms:
            floats[f"blk.{i}.{k}.weight"] = (1 + 0.1 * rng.standard_normal(n)).astype(np.float32)
    if not tie:
        floats["output.weight"] = rng.standard_normal((vocab, hidden)).astype(np.float32)
    tokens = [f"t{i}" for i in range(vocab)]
    kv = {"tokenizer.ggml.model": "gpt2", "tokenizer.ggml.pre": "default", "tokenizer.ggml.tokens": tokens,
          "tokenizer.ggml.token_type": [1] * vocab, "tokenizer.ggml.merges": ["t 0"],
          "tokenizer.ggml.bos_token_id": 0, "tokenizer.ggml.eos_token_id": 1}
    return Model(hp, linears, floats, kv)


# ----------------------------------------------------------------------------------------
# layouts, written from the FORMATS.md rules (not with bitconv's packers)
# ----------------------------------------------------------------------------------------
def i2s_bytes(t: np.ndarray, scale: float, variant: str = "x86-act", garbage: np.random.Generator | None = None
              ) -> np.ndarray:
    """FORMATS.md §2: value j of a block of 128 (x86-act) / 64 (arm) at byte b·(blk/4) + j mod (blk/4),
    bits 6 − 2·(j div (blk/4)); then the float32 scale and 28 tail bytes (garbage, as the C
    quantizer leaves them, when `garbage` is given)."""
    blk = {"x86-act": 128, "arm": 64}[variant]
    q = (t.reshape(-1, 4, blk // 4).astype(np.uint8) + 1)
    codes = (q[:, 0] << 6) | (q[:, 1] << 4) | (q[:, 2] << 2) | q[:, 3]
    tail = np.zeros(32, np.uint8)
    if garbage is not None:
        tail[4:] = garbage.integers(0, 256, 28, dtype=np.uint8)
    tail[:4] = np.frombuffer(struct.pack("<f", scale), np.uint8)
    return np.concatenate([codes.reshape(-1).astype(np.uint8), tail])


def q2_0_bytes(t: np.ndarray, scale: float) -> np.ndarray:
    """FORMATS.md §6b: blocks of 64 along K, fp16 d then 16 bytes, value j at byte j/4 bits (j%4)·2."""
    q = (t.reshape(-1, 16, 4).astype(np.uint8) + 1)
    qs = q[:, :, 0] | (q[:, :, 1] << 2) | (q[:, :, 2] << 4) | (q[:, :, 3] << 6)
    d = np.full((qs.shape[0], 1), scale, np.float16).view(np.uint8)
    return np.concatenate([d, qs], axis=1).reshape(-1)


def llama_permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp convert_hf_to_gguf LlamaModel.permute: [n_head, 2, d/2, K] -> swap axes 1, 2."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _heads_for(m: Model, name: str) -> int | None:
    return {"attn_q": m.hp["heads"], "attn_k": m.hp["kv_heads"]}.get(kind_of(name))


# ----------------------------------------------------------------------------------------
# writers
# ----------------------------------------------------------------------------------------
def _header(w: gguf.GGUFWriter, m: Model, arch: str, file_type: int, *, rope_scaling: bool, name: str) -> None:
    hp = m.hp
    w.add_name(name)
    w.add_file_type(file_type)
    w.add_quantization_version(2)
    w.add_context_length(hp["ctx"])
    w.add_embedding_length(hp["hidden"])
    w.add_feed_forward_length(hp["intermediate"])
    w.add_block_count(hp["layers"])
    w.add_head_count(hp["heads"])
    w.add_head_count_kv(hp["kv_heads"])
    w.add_rope_freq_base(hp["theta"])
    w.add_layer_norm_rms_eps(hp["eps"])
    w.add_rope_dimension_count(hp["head_dim"])
    w.add_vocab_size(hp["vocab"])
    if rope_scaling:  # upstream BitnetModel.set_gguf_parameters
        w.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        w.add_rope_scaling_factor(1.0)
    for key, value in m.tokenizer.items():
        if key == "tokenizer.ggml.model":
            w.add_tokenizer_model(value)
        elif key == "tokenizer.ggml.pre":
            w.add_tokenizer_pre(value)
        elif key == "tokenizer.ggml.tokens":
            w.add_token_list(value)
        elif key == "tokenizer.ggml.token_type":
            w.add_token_types(value)
        elif key == "tokenizer.ggml.merges":
            w.add_token_merges(value)
        elif key.endswith("_token_id"):
            w.add_uint32(key, int(value))
        elif key == "tokenizer.ggml.add_bos_token":
            w.add_add_bos_token(bool(value))
        else:
            raise KeyError(key)


def _float_tensors(m: Model, emb: str = "f16") -> dict[str, np.ndarray]:
    out = {}
    for name, a in m.floats.items():
        if name in ("token_embd.weight", "output.weight"):
            out[name] = a.astype(np.float16 if emb == "f16" else np.float32)
        else:
            out[name] = a.astype(np.float32)
    return out


def _ordered(m: Model) -> list[str]:
    from bitconv.readers.checkpoint import canonical_order

    return sorted([*m.linears, *m.floats], key=canonical_order)


def write_llamacpp_tq(path: Path, m: Model, *, qtype: str = "tq2_0", arch: str = "bitnet",
                      extra_kv: dict[str, Any] | None = None, drop_kv: tuple[str, ...] = ()) -> Path:
    """What convert_hf_to_gguf.py --outtype tq1_0|tq2_0 writes (gguf-py + gguf.quants)."""
    gt = {"tq1_0": GT.TQ1_0, "tq2_0": GT.TQ2_0}[qtype]
    m = _without(m, drop_kv)
    w = gguf.GGUFWriter(str(path), arch)
    _header(w, m, arch, {"tq1_0": 36, "tq2_0": 37}[qtype], rope_scaling=arch == "bitnet", name="foreign-tq")
    for k, v in (extra_kv or {}).items():
        w.add_string(k, v) if isinstance(v, str) else w.add_uint32(k, v)
    floats = _float_tensors(m)
    for name in _ordered(m):
        if name in m.linears:
            d = m.dense(name)
            heads = _heads_for(m, name)
            if arch == "llama" and heads:
                d = llama_permute(d, heads)
            if d.shape[1] % 256 == 0:
                w.add_tensor(name, gguf.quants.quantize(d, gt), raw_dtype=gt)
            else:  # upstream falls back to F16 for rows that do not fill 256-blocks
                w.add_tensor(name, d.astype(np.float16))
        else:
            w.add_tensor(name, floats[name])
    _finish(w)
    return path


def write_bitnetcpp_i2s(path: Path, m: Model, *, arch: str = "bitnet-b1.58", variant: str = "x86-act",
                        seed: int = 0, patch: dict[str, np.ndarray] | None = None,
                        types: dict[str, tuple[int, np.ndarray]] | None = None,
                        drop_kv: tuple[str, ...] = ("tokenizer.ggml.pre",), file_type: int = 40) -> Path:
    """What bitnet.cpp's llama-quantize I2_S writes: type 36 with garbage tails, file_type 40.

    `patch` replaces a tensor's bytes; `types` gives a tensor another (type id, bytes)."""
    rng = np.random.default_rng(seed)
    m = _without(m, drop_kv)
    w = gguf.GGUFWriter(str(path), arch)
    _header(w, m, arch, file_type, rope_scaling=False, name="foreign-i2s")
    floats = _float_tensors(m)
    data: list[np.ndarray] = []
    for name in _ordered(m):
        if types and name in types:
            t_id, raw = types[name]
            shape = m.linears[name][0].shape if name in m.linears else m.floats[name].shape
            w.add_tensor_info(name, list(shape), np.dtype(np.int8), raw.size, raw_dtype=t_id)
            data.append(raw)
        elif name in m.linears:
            t, s = m.linears[name]
            heads = _heads_for(m, name)
            if arch == "llama" and heads:
                t = llama_permute(t, heads)
            raw = patch[name] if patch and name in patch else i2s_bytes(t, s, variant, rng)
            w.add_tensor_info(name, list(t.shape), np.dtype(np.int8), raw.size, raw_dtype=36)
            data.append(raw)
        else:
            a = floats[name]
            w.add_tensor_info(name, list(a.shape), a.dtype, a.nbytes)
            data.append(a.reshape(-1).view(np.uint8))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_ti_data_to_file()
    for raw in data:
        w.write_tensor_data(raw)
    w.close()
    return path


def _without(m: Model, keys: tuple[str, ...]) -> Model:
    return Model(m.hp, m.linears, m.floats, {k: v for k, v in m.tokenizer.items() if k not in keys})


def _finish(w: gguf.GGUFWriter) -> None:
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


# ----------------------------------------------------------------------------------------
# byte-level damage, for container defects
# ----------------------------------------------------------------------------------------
def offset_field(path: Path, name: str) -> int:
    """File position of the u64 data offset in tensor `name`'s info entry."""
    blob = path.read_bytes()
    key = struct.pack("<Q", len(name)) + name.encode()
    pos = blob.index(key) + len(key)
    ndim = struct.unpack_from("<I", blob, pos)[0]
    return pos + 4 + 8 * ndim + 4


def patch_bytes(path: Path, pos: int, new: bytes) -> None:
    with open(path, "r+b") as fh:
        fh.seek(pos)
        fh.write(new)
