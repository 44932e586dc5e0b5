"""Mutation fuzzer for every reader of untrusted input: only typed errors may come out.

Seeds are real files bitconv reads (a synthetic checkpoint folder, sharded and single;
GGUFs it wrote in several layouts; a release manifest). Each case mutates one input (bytes:
flips, boundary values, truncation, splices; structure: JSON values swapped for wrong
types, signs, huge numbers; GGUF key/values, tensor offsets, shapes and types rewritten
and re-serialized), feeds it to the reader a user would reach with it, and classifies the
outcome: accepted, a `BitconvError` (typed: fine), or anything else (untyped: a bug, with
the seed and case number that reproduce it).

    python bench/fuzz.py --seed 1 --count 100000            # long run, prints a table
    python bench/fuzz.py --seed 1 --count 200 --targets gguf --show 5
    python bench/fuzz.py --seed 1 --count 20000 --targets gguf,safetensors --self-check

`--self-check` (issue 25): every input a reader accepted is also converted (a random
layout or format), and an exit 0 is judged on the output, read back: every scale and
float value finite, non-zero where the source's was (a float that vanishes only next to a
tensor 2^11 times larger is rounding, not loss), within its type's rounding of the source,
the linears' ternary codes equal to the source's (packed: its own; exact ternary: sign;
latent: an independent numpy absmean), every carried head-size / expert key agreeing with
the tensors. A refusal is rendered through the CLI's error printer (markup in user data
must not crash it). A wrong file with exit 0 counts like an untyped exception.
JSON mutations include 100,000-deep nesting, numbers beyond float64 and int64, wrong types
and strings with rich markup; GGUF string values get markup too.

tests/test_hostile_fuzz.py runs a short seeded run of the same cases in CI.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import random
import resource
import shutil
import signal
import struct
import sys
import tempfile
import time
import traceback
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

INTERESTING_INTS = [0, 1, -1, 2, 3, 7, 31, 32, 33, 255, 256, 4096, 2**16, 2**31 - 1, 2**31, 2**32 - 1, 2**32,
                    2**40, 2**62, 2**63 - 1, 2**63, 2**64 - 1, -(2**31), -(2**63), 10**12]
MARKUP = ["[/x]", "[bold]", "o[/x].gguf", "[/]", "[link=file:///etc/passwd]x[/link]", "[red]e[/red][/red]"]
DEEP = "\u0000DEEP\u0000"  # replaced by 100,000-deep JSON text when serialized (json.dumps would recurse)
HUGE = "\u0000HUGE\u0000"  # replaced by a number literal beyond float64 / int64
INTERESTING_JSON = [None, True, False, 0, -1, 1, 1.5, -256, 10**12, 10**30, float("1e308"), "", "abc", "256",
                    [], [1, 2], {}, {"a": 1}, "../../etc/passwd", "/", "x" * 300, [[[[[]]]]], -0.0,
                    2**32, 2**63, 2**64, 1e39, 1e-50, 5e-324, *MARKUP, DEEP, HUGE]


# -- GGUF (de)serialization -------------------------------------------------------------
def gguf_parts(path: Path) -> tuple[list[tuple[str, int, Any, int | None]], list[list], bytes, int]:
    """(kv [(key, vtype, value, subtype)], tensors [[name, ne (ggml order), type, rel_offset]], data, align)."""
    from bitconv.readers.gguf_file import GGUFFile

    f = GGUFFile(path)
    kv = [(k, int(vt), v, None if sub is None else int(sub)) for k, (v, vt, sub) in f.kv.items()]
    align = f.alignment()
    start = min((t.offset for t in f.tensors.values()), default=len(f.data))
    tensors = [[t.name, list(reversed(t.shape)), t.ggml_type, t.offset - start] for t in f.tensors.values()]
    return kv, tensors, bytes(f.data[start:]), align


_FMT = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}


def _gguf_value(vtype: int, value: Any, sub: int | None) -> bytes:
    if vtype == 8:
        b = str(value).encode("utf-8", "surrogatepass")
        return struct.pack("<Q", len(b)) + b
    if vtype == 9:
        items = list(value) if isinstance(value, (list, tuple)) else [value]
        inner = None
        if sub == 9:  # an array of arrays: each inner array's item type from its first item
            first = next((x for v in items if isinstance(v, (list, tuple)) for x in v), 0)
            inner = 8 if isinstance(first, str) else 6 if isinstance(first, float) else 5
        return struct.pack("<IQ", sub, len(items)) + b"".join(_gguf_value(sub, v, inner) for v in items)
    fmt = _FMT[vtype]
    try:
        return struct.pack(fmt, value)
    except (struct.error, TypeError):
        return struct.pack(fmt, 0)


def gguf_bytes(kv, tensors, data: bytes, align: int = 32, version: int = 3) -> bytes:
    """Serialize parts as GGUF, padding the tensor data start to ALIGN (which may disagree with
    the file's own general.alignment when a mutation wants it to)."""
    out = bytearray(b"GGUF" + struct.pack("<IQQ", version, len(tensors), len(kv)))
    for key, vtype, value, sub in kv:
        kb = key.encode()
        out += struct.pack("<Q", len(kb)) + kb + struct.pack("<I", vtype) + _gguf_value(vtype, value, sub)
    for name, ne, ttype, off in tensors:
        nb = name.encode()
        out += struct.pack("<Q", len(nb)) + nb + struct.pack("<I", len(ne))
        out += b"".join(struct.pack("<Q", d & (2**64 - 1)) for d in ne)
        out += struct.pack("<IQ", ttype & 0xFFFFFFFF, off & (2**64 - 1))
    pad = (-len(out)) % max(align, 1)
    return bytes(out) + b"\0" * pad + data


# -- mutators ---------------------------------------------------------------------------
def mutate_bytes(rng: random.Random, data: bytes, header_bias: int | None = None) -> bytes:
    """Byte-level damage, biased toward the first HEADER_BIAS bytes (where parsers live)."""
    b = bytearray(data)
    for _ in range(rng.choice([1, 1, 1, 2, 3, 8])):
        if not b:
            b = bytearray(rng.randbytes(rng.randint(1, 64)))
        span = min(len(b), header_bias) if header_bias and rng.random() < 0.8 else len(b)
        i = rng.randrange(span)
        op = rng.randrange(7)
        if op == 0:
            b[i] ^= 1 << rng.randrange(8)
        elif op == 1:
            b[i] = rng.choice([0, 1, 0x7F, 0x80, 0xFF, rng.randrange(256)])
        elif op == 2:
            v = rng.choice(INTERESTING_INTS) & (2**64 - 1)
            w = rng.choice([4, 8])
            b[i:i + w] = struct.pack("<Q", v)[:w]
        elif op == 3:
            del b[rng.randrange(len(b)):]
        elif op == 4:
            j = rng.randrange(len(b))
            b[i:i] = b[j:j + rng.randint(1, 64)]
        elif op == 5:
            del b[i:i + rng.randint(1, 64)]
        else:
            b[i:i + 4] = rng.randbytes(4)
    return bytes(b)


def _paths(obj: Any, prefix: tuple = ()) -> list[tuple]:
    out = [prefix]
    if isinstance(obj, dict):
        for k, v in obj.items():
            out += _paths(v, prefix + (k,))
    elif isinstance(obj, list):
        for i, v in enumerate(obj[:50]):
            out += _paths(v, prefix + (i,))
    return out


def mutate_json(rng: random.Random, obj: Any, keys: list[str] | None = None) -> Any:
    """Replace, delete or retype one or a few nodes; prefer KEYS (the fields readers use)."""
    obj = copy.deepcopy(obj)
    for _ in range(rng.choice([1, 1, 2, 3])):
        paths = _paths(obj)
        if keys and rng.random() < 0.6:
            hot = [p for p in paths if p and p[-1] in keys]
            paths = hot or paths
        path = rng.choice(paths)
        if not path:
            if rng.random() < 0.3:
                obj = rng.choice([[], "x", 5, None, [obj]])
            continue
        parent = obj
        for k in path[:-1]:
            parent = parent[k]
        key = path[-1]
        r = rng.random()
        if r < 0.15 and isinstance(parent, dict):
            del parent[key]
        elif r < 0.25 and isinstance(parent[key], (int, float)) and not isinstance(parent[key], bool):
            parent[key] = rng.choice([-1, 0, 2, 10**9, 10**12, 2**63]) * (parent[key] or 1) if r < 0.2 else -parent[key]
        elif r < 0.3 and isinstance(parent[key], str):
            parent[key] = parent[key] + rng.choice(["/..", "\0", "é", "x" * 10, *MARKUP])
        elif r < 0.35 and isinstance(parent[key], list) and parent[key]:
            parent[key] = parent[key] * rng.choice([2, 0]) if rng.random() < 0.5 else parent[key][:1]
        else:
            parent[key] = copy.deepcopy(rng.choice(INTERESTING_JSON))
    return obj


def mutate_gguf(rng: random.Random, parts) -> bytes:
    kv, tensors, data, align = copy.deepcopy(parts)
    for _ in range(rng.choice([1, 1, 2])):
        op = rng.randrange(11)
        if op == 0 and kv:  # a value of another type or a boundary number
            i = rng.randrange(len(kv))
            key, vt, v, sub = kv[i]
            nvt = rng.choice([4, 5, 6, 7, 8, 10, 11, 12, 9])
            nv = rng.choice([rng.choice(INTERESTING_INTS), "abc", 1.5, True, [1, 2, 3], []])
            if nvt == 8:
                nv = str(nv)
            elif nvt == 9:
                sub = rng.choice([4, 8, 9, 6])
                nv = [] if sub == 9 else (["a", "b"] if sub == 8 else [1, 2, 3])
            kv[i] = (key, nvt, nv, sub)
        elif op == 1 and kv:  # a number out of range, same type
            i = rng.randrange(len(kv))
            key, vt, v, sub = kv[i]
            if vt in _FMT and vt not in (6, 7, 12):
                kv[i] = (key, vt, rng.choice(INTERESTING_INTS), sub)
        elif op == 2 and kv:
            del kv[rng.randrange(len(kv))]
        elif op == 3:
            kv.append(("general.alignment", rng.choice([4, 5, 8, 10]), rng.choice([0, 1, 3, 7, 8, 64, 2**31]), None))
        elif op == 4 and tensors:  # offsets: misaligned, overlapping, past the end
            t = rng.choice(tensors)
            t[3] = rng.choice([t[3] + 1, t[3] + 16, 0, len(data), len(data) + 32, 2**63, rng.choice(tensors)[3]])
        elif op == 5 and tensors:  # dimensions
            t = rng.choice(tensors)
            j = rng.randrange(len(t[1]))
            t[1][j] = rng.choice([0, 1, 3, t[1][j] * 2, t[1][j] // 2, 2**32, 2**62, 2**63])
        elif op == 6 and tensors:  # number of dimensions
            t = rng.choice(tensors)
            t[1] = rng.choice([[], [1] * 5, t[1][:1], t[1] + [1], t[1][::-1]])
        elif op == 7 and tensors:  # ggml type
            t = rng.choice(tensors)
            t[2] = rng.choice([0, 1, 30, 34, 35, 36, 38, 39, 40, 41, 42, 2, 8, 12, 1000, 2**31])
        elif op == 8 and tensors:  # duplicate or renamed tensor
            t = rng.choice(tensors)
            if rng.random() < 0.5:
                tensors.append(list(t))
            else:
                t[0] = rng.choice(["blk.0.attn_q.weight", "blk.9.attn_q.weight", "blk.x.attn_q.weight", "blk",
                                   "token_embd.weight", "weird.weight", "blk.0.unknown.weight", ""])
        elif op == 9 and tensors:
            if rng.random() < 0.5:
                del tensors[rng.randrange(len(tensors))]
            else:  # markup in a string the printers show (arch, name) or a tensor name
                i = rng.randrange(len(kv)) if kv else 0
                if kv and kv[i][1] == 8 and rng.random() < 0.7:
                    key, vt, v, sub = kv[i]
                    kv[i] = (key, vt, rng.choice([v + rng.choice(MARKUP), rng.choice(MARKUP)]), sub)
                else:
                    t = rng.choice(tensors)
                    t[0] = t[0] + rng.choice(MARKUP)
        else:  # array-valued metadata: nested, wrong item type, huge counts
            key = rng.choice(["tokenizer.ggml.tokens", "tokenizer.ggml.scores", "tokenizer.ggml.token_type",
                              "tokenizer.ggml.merges", "general.architecture"])
            kv = [x for x in kv if x[0] != key]
            kv.append((key, 9, rng.choice([[[1]], [1, 2], ["a"], []]), rng.choice([9, 4, 8, 6])))
    if rng.random() < 0.1:
        data = data[: rng.randrange(len(data) + 1)]
    out = gguf_bytes(kv, tensors, data, align)
    return mutate_bytes(rng, out, header_bias=4096) if rng.random() < 0.2 else out


# bit patterns at the edges of the float types a value or scale may hold (little-endian)
SPECIAL_F16 = [0x7C00, 0xFC00, 0x7E00, 0x0001, 0x03FF, 0x0400, 0x7BFF, 0x8001, 0x0000, 0x8000, 0x3C00]
SPECIAL_F32 = [1e5, -1e5, 1e-9, 1e-30, 1e-41, 1e-45, 3.4e38, float("inf"), float("nan"), 0.0, 65504.0, 65520.0,
               3.3e38, 6e-8, 2.0 ** -24, 2.0 ** -25]


def mutate_values(rng: random.Random, data: bytes, regions: list[tuple[int, int, str]]) -> bytes:
    """Overwrite a few values inside tensor data with edge floats (regions: start, end, dtype
    of each tensor's bytes). Headers stay valid, so the damage reaches the writers."""
    b = bytearray(data)
    for _ in range(rng.choice([1, 1, 2, 4, 16])):
        if not regions:
            break
        start, end, dt = rng.choice(regions)
        if end <= start:
            continue
        if dt in ("f32", "F32"):
            pos = start + 4 * rng.randrange(max((end - start) // 4, 1))
            b[pos:pos + 4] = struct.pack("<f", rng.choice(SPECIAL_F32))
        elif dt in ("bf16", "BF16"):
            pos = start + 2 * rng.randrange(max((end - start) // 2, 1))
            b[pos:pos + 2] = struct.pack("<f", rng.choice(SPECIAL_F32))[2:4]
        else:  # f16 values, or the fp16 scale words inside TQ/Q2_0 blocks, or any 2 bytes
            pos = start + 2 * rng.randrange(max((end - start) // 2, 1))
            b[pos:pos + 2] = struct.pack("<H", rng.choice(SPECIAL_F16))
        if rng.random() < 0.2:  # a whole run of one value: a tensor that is all tiny, all huge
            v = bytes(b[pos:pos + (4 if dt in ("f32", "F32") else 2)])
            n = min(end - start, 4096)
            b[start:start + n] = (v * (n // len(v) + 1))[:n]
    return bytes(b)


def safetensors_parts(path: Path) -> tuple[dict, bytes]:
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    return json.loads(raw[8:8 + n]), raw[8 + n:]


def safetensors_bytes(header: Any, data: bytes) -> bytes:
    h = json.dumps(header).encode()
    return struct.pack("<Q", len(h)) + h + data


# -- the cases --------------------------------------------------------------------------
@dataclass
class Seeds:
    root: Path
    folder: Path  # single-file checkpoint
    sharded: Path  # 2 shards + index
    ggufs: list[Path]
    release: Path  # folder with a manifest
    gguf_parts: dict[str, Any] = field(default_factory=dict)
    st_parts: Any = None
    config: dict = field(default_factory=dict)
    index: dict = field(default_factory=dict)
    tokenizer: dict = field(default_factory=dict)
    tokenizer_config: dict = field(default_factory=dict)
    manifest: dict = field(default_factory=dict)
    spm: bytes = b""


def make_seeds(root: Path) -> Seeds:
    from bitconv.convert import convert
    from bitconv.release import MANIFEST_NAME, release
    from bitconv.synth import make_checkpoint

    root.mkdir(parents=True, exist_ok=True)
    folder = make_checkpoint(root / "seed", family="silu", hidden=256, intermediate=256, layers=1, heads=2,
                             kv_heads=1, vocab=320, seed=0)
    sharded = make_checkpoint(root / "sharded", family="llama", hidden=256, intermediate=256, layers=1, heads=2,
                              kv_heads=1, vocab=320, seed=1, shards=2, tie=False)
    ggufs = []
    for layout in ("tq2_0", "i2_s", "tl2"):
        p = root / f"seed-{layout}.gguf"
        convert(folder, p, layout=layout)
        ggufs.append(p)
    p = root / "seed-llama-tq1_0.gguf"
    convert(sharded, p, layout="tq1_0")
    ggufs.append(p)
    rel = root / "release"
    release(folder, rel, layouts=["i2_s"], formats=["gguf", "safetensors"])
    s = Seeds(root=root, folder=folder, sharded=sharded, ggufs=ggufs, release=rel)
    s.gguf_parts = {p.name: gguf_parts(p) for p in ggufs}
    s.st_parts = safetensors_parts(folder / "model.safetensors")
    s.config = json.loads((folder / "config.json").read_text())
    s.index = json.loads((sharded / "model.safetensors.index.json").read_text())
    s.tokenizer = json.loads((folder / "tokenizer.json").read_text())
    s.tokenizer_config = json.loads((folder / "tokenizer_config.json").read_text())
    s.manifest = json.loads((rel / MANIFEST_NAME).read_text())
    s.spm = _sentencepiece_seed()
    return s


def _sentencepiece_seed() -> bytes:
    """A minimal SentencePiece ModelProto: pieces (field 1) with piece, score, type."""
    def field(num: int, wire: int, payload: bytes) -> bytes:
        return _varint(num << 3 | wire) + (_varint(len(payload)) + payload if wire == 2 else payload)

    out = b""
    for i, (piece, kind) in enumerate([("<unk>", 2), ("<s>", 3), ("</s>", 3), ("▁a", 1), ("b", 1), ("<0x41>", 6)]):
        body = field(1, 2, piece.encode()) + field(2, 5, struct.pack("<f", -float(i))) + field(3, 0, _varint(kind))
        out += field(1, 2, body)
    return out


def _varint(n: int) -> bytes:
    out = b""
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out += bytes([b | 0x80])
        else:
            return out + bytes([b])


def _load_all(ckpt) -> None:
    for t in ckpt.tensors:
        if t.is_ternary:
            t.load_ternary()
        else:
            t.load()


def _typed_ok(fn: Callable, *args: Any) -> None:
    """Run one reader whose typed refusal is fine, so the next reader still sees the input."""
    from bitconv.errors import BitconvError

    try:
        fn(*args)
    except BitconvError:
        pass


def _fresh(work: Path, src: Path) -> Path:
    """A private copy of a seed folder (hard links: cheap; replaced files are unlinked first)."""
    if work.exists():
        shutil.rmtree(work)
    shutil.copytree(src, work, copy_function=os.link)
    return work


def _write(path: Path, data: bytes | str) -> None:
    if path.exists() or path.is_symlink():
        path.unlink()
    if isinstance(data, str):
        path.write_text(data, encoding="utf-8", errors="surrogatepass")
    else:
        path.write_bytes(data)


def _dumps(obj: Any) -> str:
    text = json.dumps(obj, allow_nan=True)
    if DEEP in text or HUGE in text:  # json.dumps escapes the NULs: match its form
        text = text.replace(json.dumps(DEEP), "[" * 100_000 + "]" * 100_000)
        text = text.replace(json.dumps(HUGE), "1" + "0" * 400)
    return text


# -- self-check: convert what was accepted and judge the output --------------------------
class WrongFile(Exception):
    """A conversion exited 0 with an output that does not hold the source's values."""


def _abs_ternarize(w: np.ndarray) -> tuple[np.ndarray, np.float32]:
    """Per-tensor absmean ternarization in plain numpy (FORMATS.md §1), independent of bitconv's kernels."""
    w = np.asarray(w, dtype=np.float32)
    s = np.float32(max(np.float32(np.abs(w.astype(np.float64)).mean()), np.float32(1e-5)))
    return np.clip(np.rint(w / s), -1, 1).astype(np.int8), s


def _source_codes(st) -> tuple[np.ndarray, np.ndarray]:
    """The ternary codes and the per-value scale the source holds for a linear (or None)."""
    from bitconv.source_kind import SourceKind

    if st.is_ternary:
        t = st.load_ternary()
        return np.asarray(t.values), np.broadcast_to(t.expanded_scales(), t.shape)
    w = np.asarray(st.load(), dtype=np.float32)
    if st.kind == SourceKind.EXACT:
        return np.sign(w).astype(np.int8), np.abs(w)
    t, s = _abs_ternarize(w)
    return t, np.full(w.shape, s, np.float32)


def _check_output(src_ckpt, out_path: Path, fmt: str) -> None:
    """Raise WrongFile naming the first way OUT_PATH differs from what SRC_CKPT holds."""
    from bitconv.model import LINEAR
    from bitconv.readers import open_source
    from bitconv.source_kind import decide_source_kinds

    out = open_source(out_path)
    decide_source_kinds(out, ternarize=True)
    if fmt == "gguf":
        _check_head_keys(out)
    by_name = {t.name: t for t in src_ckpt.tensors}
    for ot in out.tensors:
        st = by_name.get(ot.name)
        if st is None:
            raise WrongFile(f"{ot.name}: in the output, not in the source")
        if ot.role == LINEAR or ot.is_ternary:
            o = ot.load_ternary()
            if not np.all(np.isfinite(o.scales)):
                raise WrongFile(f"{ot.name}: a scale is not finite")
            codes, scale = _source_codes(st)
            got = np.broadcast_to(o.expanded_scales(), o.shape)
            # t·s is the value: a negative scale (a source may have one) with -t is the same weight,
            # which an F16 copy read back as exact ternary gives (t = sign(w), s = |w|)
            mine, theirs = np.asarray(o.values) * np.sign(got), codes * np.sign(scale)
            if not np.array_equal(mine, theirs):
                raise WrongFile(f"{ot.name}: codes differ from the source's "
                                f"({int(np.count_nonzero(mine != theirs))} values)")
            got, scale = np.abs(got), np.abs(scale)
            nz = codes != 0  # a scale matters where a code is non-zero
            if np.any(nz & (got == 0) & (scale != 0)):
                raise WrongFile(f"{ot.name}: a scale is 0 where the source's is not")
            # fp16 block scales round within 2^-11 (bf16 1/s within 2^-8: safetensors of a bf16 source)
            rel = np.abs(got[nz].astype(np.float64) - scale[nz]) / np.maximum(np.abs(scale[nz]), 1e-300)
            if rel.size and rel.max() > 2.0 ** -7:
                raise WrongFile(f"{ot.name}: a scale differs from the source's by {rel.max():.3g} (relative)")
            continue
        o = np.asarray(ot.load(), dtype=np.float64)
        w = np.asarray(st.load(), dtype=np.float64)
        if o.shape != w.shape:
            raise WrongFile(f"{ot.name}: shape {o.shape} != source {w.shape}")
        fin = np.isfinite(w)
        if not np.all(np.isfinite(o[fin])):
            raise WrongFile(f"{ot.name}: a finite source value is not finite in the output")
        amax = float(np.abs(w[fin]).max()) if fin.any() else 0.0
        vanished = (w != 0) & (o == 0) & (np.abs(w) > amax * 2.0 ** -11)
        if np.any(vanished):
            raise WrongFile(f"{ot.name}: {int(vanished.sum())} value(s) vanished to 0 (largest |x| {amax:.3g})")
        err = np.abs(o - w)[fin]
        if err.size and np.any(err > np.abs(w[fin]) * 2.0 ** -8 + amax * 2.0 ** -11):  # bf16 rounding at worst
            raise WrongFile(f"{ot.name}: values differ from the source's beyond the type's rounding")


def _check_head_keys(ckpt) -> None:
    """The output's carried head-size and expert keys against its tensors (written out here,
    not bitconv's own check, so the fuzzer also judges versions that lack that check)."""
    kv = ckpt.spec.gguf_metadata or {}
    arch = (kv.get("general.architecture") or (None,))[0]
    if not isinstance(arch, str):
        raise WrongFile(f"general.architecture is {arch!r}")
    shapes = {t.name: t.shape for t in ckpt.tensors}
    hp = ckpt.spec.hparams
    for key, kind, heads in (("attention.key_length", "attn_k", hp.num_kv_heads),
                             ("attention.value_length", "attn_v", hp.num_kv_heads),
                             ("rope.dimension_count", "attn_q", hp.num_heads)):
        v = kv.get(f"{arch}.{key}", (None,))[0]
        shape = shapes.get(f"blk.0.{kind}.weight")
        if v is not None and shape is not None and heads and v * heads != shape[0]:
            raise WrongFile(f"{arch}.{key} = {v} but {kind} has {shape[0]} rows for {heads} kv head(s)")
    for key in ("expert_count", "expert_used_count"):
        v = kv.get(f"{arch}.{key}", (None,))[0]
        if v not in (None, 0):
            raise WrongFile(f"{arch}.{key} = {v} in a model without expert tensors")


def _render_error(exc: BaseException) -> None:
    """What the CLI prints for a refusal, to a buffer: markup in the message must not crash it."""
    import io

    from bitconv.output import Output

    out = Output("human")
    out.err.file = io.StringIO()
    out.error(str(exc))


def _convert_and_check(rng: random.Random, source: Path, work: Path) -> None:
    """Convert SOURCE as a user would (random layout / format) and judge an exit 0."""
    from bitconv.convert import convert
    from bitconv.errors import BitconvError
    from bitconv.readers import open_source

    fmt = rng.choice(["gguf", "gguf", "gguf", "safetensors"])
    layout = rng.choice(["tq2_0", "tq1_0", "q2_0", "i2_s", "tl1", "tl2"])
    out = work / ("out.gguf" if fmt == "gguf" else "out-st")
    if out.exists():
        shutil.rmtree(out) if out.is_dir() else out.unlink()
    try:
        res = convert(source, out, layout=layout, format=fmt, embedding_type=rng.choice(["auto", "auto", "bf16"]))
    except BitconvError as exc:
        _render_error(exc)
        raise
    if not res.written:
        return
    src = open_source(source)
    from bitconv.source_kind import decide_source_kinds

    decide_source_kinds(src, ternarize=True)
    _check_output(src, out, fmt)


def _with_self_check(rng: random.Random, read: Callable[[], Any], source: Path, work: Path,
                     self_check: bool) -> Callable[[], Any]:
    if not self_check:
        return read

    def both() -> None:
        read()
        _convert_and_check(rng, source, work)
    return both


def case_gguf(rng: random.Random, s: Seeds, work: Path, self_check: bool = False) -> None:
    from bitconv.inspect_file import inspect_path
    from bitconv.readers import open_source

    name = rng.choice(sorted(s.gguf_parts))
    r = rng.random()
    if r < 0.2:
        data = mutate_bytes(rng, (s.root / name).read_bytes(), header_bias=8192)
    elif r < 0.45:  # the index intact, values and block scales at the edges of their types
        kv, tensors, blob, align = s.gguf_parts[name]
        from bitconv.ggml_types import tensor_nbytes

        regions = []
        for tname, ne, ttype, off in tensors:
            try:
                n = tensor_nbytes(ttype, tuple(reversed(ne)))
            except ValueError:
                continue
            regions.append((off, off + n, {0: "f32", 1: "f16", 30: "bf16"}.get(ttype, "blocks")))
        data = gguf_bytes(kv, tensors, mutate_values(rng, blob, regions), align)
    else:
        data = mutate_gguf(rng, s.gguf_parts[name])
    p = work / "case.gguf"
    _write(p, data)

    def read() -> None:
        _typed_ok(inspect_path, p)
        _load_all(open_source(p))
    return _with_self_check(rng, read, p, work, self_check)


def case_safetensors(rng: random.Random, s: Seeds, work: Path, self_check: bool = False) -> None:
    from bitconv.inspect_file import inspect_path
    from bitconv.readers import open_source

    folder = _fresh(work / "st", s.folder)
    header, data = s.st_parts
    if rng.random() < 0.35:  # the header intact, values at the edges of their types
        regions = [(v["data_offsets"][0], v["data_offsets"][1], v["dtype"]) for k, v in header.items()
                   if k != "__metadata__"]
        raw = safetensors_bytes(header, mutate_values(rng, data, regions))
    elif rng.random() < 0.3:
        raw = mutate_bytes(rng, safetensors_bytes(header, data), header_bias=len(json.dumps(header)) + 8)
    else:
        h = mutate_json(rng, header, keys=["dtype", "shape", "data_offsets", "__metadata__"])
        raw = safetensors_bytes(h, data if rng.random() < 0.8 else data[: rng.randrange(len(data) + 1)])
    _write(folder / "model.safetensors", raw)

    def read() -> None:
        _typed_ok(inspect_path, folder)
        _load_all(open_source(folder))
    return _with_self_check(rng, read, folder, work, self_check)


def case_index(rng: random.Random, s: Seeds, work: Path, self_check: bool = False) -> None:  # noqa: ARG001
    from bitconv.readers import open_source

    folder = _fresh(work / "idx", s.sharded)
    idx = mutate_json(rng, s.index, keys=["weight_map", "metadata"] + list(s.index["weight_map"])[:5])
    _write(folder / "model.safetensors.index.json", _dumps(idx))
    return lambda: _load_all(open_source(folder))


def case_config(rng: random.Random, s: Seeds, work: Path, self_check: bool = False) -> None:
    from bitconv.convert import build_options
    from bitconv.inspect_file import inspect_path
    from bitconv.readers import open_source
    from bitconv.writers import get_writer

    folder = _fresh(work / "cfg", s.folder)
    keys = ["hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
            "vocab_size", "head_dim", "max_position_embeddings", "rms_norm_eps", "rope_theta", "hidden_act",
            "tie_word_embeddings", "architectures", "bos_token_id", "eos_token_id", "quantization_config",
            "rope_parameters", "rope_scaling", "quant_method", "linear_class"]
    cfg = mutate_json(rng, s.config, keys=keys)
    _write(folder / "config.json", _dumps(cfg) if rng.random() < 0.95 else mutate_bytes(rng, _dumps(cfg).encode()))
    fmt = rng.choice(["gguf", "safetensors"])
    layout = rng.choice(["tq2_0", "i2_s", "tl2"])

    def read() -> None:
        _typed_ok(inspect_path, folder)
        ckpt = open_source(folder)
        get_writer(fmt).plan(ckpt, work / "out", build_options(layout=layout, format=fmt))
    return _with_self_check(rng, read, folder, work, self_check)


def case_tokenizer(rng: random.Random, s: Seeds, work: Path, self_check: bool = False) -> None:
    from bitconv.writers.tokenizer import load_tokenizer

    folder = _fresh(work / "tok", s.folder)  # a whole model, so --self-check can convert it
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (folder / name).unlink()
    which = rng.random()
    if which < 0.5:
        keys = ["model", "vocab", "merges", "added_tokens", "id", "content", "special", "type", "pre_tokenizer"]
        _write(folder / "tokenizer.json", _dumps(mutate_json(rng, s.tokenizer, keys=keys)))
        _write(folder / "tokenizer_config.json", _dumps(s.tokenizer_config))
    elif which < 0.7:
        shutil.copyfile(s.folder / "tokenizer.json", folder / "tokenizer.json")
        keys = ["bos_token", "eos_token", "pad_token", "add_bos_token", "chat_template", "content"]
        _write(folder / "tokenizer_config.json", _dumps(mutate_json(rng, s.tokenizer_config, keys=keys)))
    else:
        _write(folder / "tokenizer.model", mutate_bytes(rng, s.spm))
    bos, eos = rng.choice([None, 0, 5]), rng.choice([None, 1])
    return _with_self_check(rng, lambda: load_tokenizer(folder, s.config["vocab_size"], bos, eos), folder, work,
                            self_check)


def case_manifest(rng: random.Random, s: Seeds, work: Path, self_check: bool = False) -> None:  # noqa: ARG001
    from bitconv.release import MANIFEST_NAME, check_manifest

    folder = _fresh(work / "rel", s.release)
    keys = ["path", "sha256", "bytes", "files", "artifacts", "source", "kind", "location", "ok", "format", "label"]
    m = mutate_json(rng, s.manifest, keys=keys)
    _write(folder / MANIFEST_NAME, _dumps(m) if rng.random() < 0.95 else mutate_bytes(rng, _dumps(m).encode()))
    return lambda: check_manifest(folder / MANIFEST_NAME)


# Each case prepares its input (outside the measured region: a mutation the serializer cannot
# write is skipped, not blamed on bitconv) and returns the reader call to judge.
TARGETS: dict[str, Callable[[random.Random, Seeds, Path, bool], Callable[[], Any]]] = {
    "gguf": case_gguf, "safetensors": case_safetensors, "index": case_index, "config": case_config,
    "tokenizer": case_tokenizer, "manifest": case_manifest,
}
# the targets whose case, given self_check=True, also converts what it accepted and judges the
# output (an index or a manifest alone is not a model: those cases ignore self_check)
SELF_CHECKED = frozenset({"gguf", "safetensors", "config", "tokenizer"})


class CaseTimeout(Exception):
    pass


def _alarm(signum, frame):  # noqa: ARG001
    raise CaseTimeout("case took too long")


@dataclass
class Report:
    cases: Counter = field(default_factory=Counter)
    skipped: Counter = field(default_factory=Counter)  # mutations that could not be written
    accepted: Counter = field(default_factory=Counter)
    typed: Counter = field(default_factory=Counter)
    untyped: dict[str, list[str]] = field(default_factory=dict)  # root cause -> example case ids
    wrong: dict[str, list[str]] = field(default_factory=dict)  # self-check: what was wrong -> case ids
    converted: Counter = field(default_factory=Counter)  # self-check: exit 0 conversions judged
    seconds: float = 0.0

    @property
    def n_untyped(self) -> int:
        return sum(len(v) for v in self.untyped.values())

    @property
    def n_wrong(self) -> int:
        return sum(len(v) for v in self.wrong.values())


def root_cause(exc: BaseException) -> str:
    """Exception type and the innermost bitconv frame: one key per crash site."""
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if "bitconv" in f.filename]
    where = f"{Path(frames[-1].filename).name}:{frames[-1].lineno}" if frames else "?"
    return f"{type(exc).__name__} at {where}: {str(exc)[:80]}"


def run(seed: int, count: int, targets: list[str], work: Path, seeds: Seeds | None = None,
        time_limit: float | None = None, case_timeout: int = 20, progress: bool = False,
        self_check: bool = False, start_case: int = 0) -> Report:
    """Run COUNT cases round-robin over TARGETS; case i uses Random(f"{seed}:{i}") (i from
    START_CASE, so a long campaign runs in chunks that never repeat a case)."""
    from bitconv.errors import BitconvError

    seeds = seeds or make_seeds(work / "seeds")
    rep = Report()
    start = time.perf_counter()
    old = signal.signal(signal.SIGALRM, _alarm) if case_timeout else None
    try:
        for i in range(start_case, start_case + count):
            if time_limit is not None and time.perf_counter() - start > time_limit:
                break
            target = targets[i % len(targets)]
            rng = random.Random(f"{seed}:{i}")
            rep.cases[target] += 1
            converts = self_check and target in SELF_CHECKED
            case_dir = work / "case"
            case_dir.mkdir(exist_ok=True)
            if case_timeout:
                signal.alarm(case_timeout)
            try:
                read = TARGETS[target](rng, seeds, case_dir, self_check=self_check)
            except (struct.error, TypeError, ValueError, OverflowError, UnicodeEncodeError):
                rep.skipped[target] += 1
                signal.alarm(0)
                continue
            try:
                read()
                rep.accepted[target] += 1
                if converts:
                    rep.converted[target] += 1
            except WrongFile as exc:  # exit 0 with a wrong output: as bad as a crash
                rep.wrong.setdefault(f"{target}: {str(exc)[:100]}", []).append(f"--seed {seed} --case {i}")
            except BitconvError:
                rep.typed[target] += 1
            except (CaseTimeout, Exception) as exc:  # noqa: BLE001 - untyped: the bug being hunted
                rep.untyped.setdefault(f"{target}: {root_cause(exc)}", []).append(f"--seed {seed} --case {i}")
            finally:
                if case_timeout:
                    signal.alarm(0)
            if progress and (i + 1) % 1000 == 0:
                print(f"  {i + 1} cases, {rep.n_untyped} untyped, {rep.n_wrong} wrong, "
                      f"{time.perf_counter() - start:.0f} s", file=sys.stderr, flush=True)
    finally:
        if case_timeout:
            signal.signal(signal.SIGALRM, old)
    rep.seconds = time.perf_counter() - start
    return rep


def print_report(rep: Report, seed: int, show: int = 3) -> None:
    total = sum(rep.cases.values())
    print(f"fuzz seed {seed}: {total} cases in {rep.seconds:.0f} s ({total / max(rep.seconds, 1e-9):.0f}/s)")
    print(f"{'target':<12}{'cases':>9}{'accepted':>10}{'typed':>9}{'untyped':>9}{'wrong':>7}{'skipped':>9}")
    for t in rep.cases:
        bad = sum(len(v) for k, v in rep.untyped.items() if k.startswith(t + ":"))
        wrong = sum(len(v) for k, v in rep.wrong.items() if k.startswith(t + ":"))
        print(f"{t:<12}{rep.cases[t]:>9}{rep.accepted[t]:>10}{rep.typed[t]:>9}{bad:>9}{wrong:>7}{rep.skipped[t]:>9}")
    print(f"untyped: {rep.n_untyped} in {len(rep.untyped)} root cause(s)")
    for cause, ids in sorted(rep.untyped.items(), key=lambda kv: -len(kv[1])):
        print(f"  {len(ids):>6}  {cause}   e.g. {'; '.join(ids[:show])}")
    if rep.converted or rep.wrong:
        print(f"self-check: {sum(rep.converted.values())} exit-0 conversions judged, {rep.n_wrong} wrong file(s)")
        for cause, ids in sorted(rep.wrong.items(), key=lambda kv: -len(kv[1])):
            print(f"  {len(ids):>6}  {cause}   e.g. {'; '.join(ids[:show])}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--count", type=int, default=10000)
    ap.add_argument("--case", type=int, default=None, help="re-run one case and show its traceback")
    ap.add_argument("--targets", default=",".join(TARGETS))
    ap.add_argument("--time-limit", type=float, default=None, help="stop after this many seconds")
    ap.add_argument("--memory-gb", type=float, default=8.0, help="address-space limit: a runaway allocation "
                    "becomes a MemoryError (counted untyped) instead of swapping the machine")
    ap.add_argument("--show", type=int, default=3)
    ap.add_argument("--self-check", action="store_true", help="convert every accepted input and judge the output")
    ap.add_argument("--start", type=int, default=0, help="first case number (chunks of one campaign)")
    ap.add_argument("--case-timeout", type=int, default=20, help="seconds before a case counts as hung (a "
                    "loaded machine compiling a kernel for the first time needs more)")
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TORCHDYNAMO_DISABLE", "1")
    limit = int(args.memory_gb * (1 << 30))
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    targets = [t.strip() for t in args.targets.split(",") if t.strip()]
    with tempfile.TemporaryDirectory(prefix="bitconv-fuzz-") as tmp:
        work = Path(tmp)
        if args.case is not None:
            from bitconv.errors import BitconvError

            seeds = make_seeds(work / "seeds")
            target = targets[args.case % len(targets)]
            (work / "case").mkdir()
            read = TARGETS[target](random.Random(f"{args.seed}:{args.case}"), seeds, work / "case",
                                   self_check=args.self_check)
            try:
                read()
                print(f"{target}: accepted")
            except WrongFile as exc:
                print(f"{target}: WRONG FILE with exit 0: {exc}")
            except BitconvError as exc:
                print(f"{target}: typed {type(exc).__name__}: {exc}")
            return 0
        rep = run(args.seed, args.count, targets, work, time_limit=args.time_limit, progress=True,
                  self_check=args.self_check, start_case=args.start, case_timeout=args.case_timeout)
    print_report(rep, args.seed, args.show)
    return 1 if rep.untyped or rep.wrong else 0


if __name__ == "__main__":
    sys.exit(main())
