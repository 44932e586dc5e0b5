"""Tokenizer -> GGUF `tokenizer.ggml.*` keys, from tokenizer.json or tokenizer.model.

tokenizer.json is read as JSON (vocab, merges, added tokens, pre-tokenizer); a
SentencePiece tokenizer.model is read by a minimal protobuf decoder of the fields an engine
needs (piece, score, type). Nothing is unpickled and no tokenizer code is imported from the
model repo.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import CorruptFileError

NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6

_LLAMA3_REGEX_MARK = "(?i:'s|'t|'re|'ve|'m|'ll|'d)"


@dataclass
class TokenizerData:
    model: str  # "gpt2" (byte-level BPE) or "llama" (SentencePiece)
    pre: str | None
    tokens: list[str]
    token_types: list[int]
    scores: list[float] | None = None
    merges: list[str] = field(default_factory=list)
    bos_id: int | None = None
    eos_id: int | None = None
    unk_id: int | None = None
    pad_id: int | None = None
    add_bos: bool | None = None
    chat_template: str | None = None


def load_tokenizer(folder: Path, vocab_size: int, bos: int | None, eos: int | None) -> TokenizerData | None:
    """Read the folder's tokenizer; pad the vocabulary to the model's vocab_size."""
    tj, tm = folder / "tokenizer.json", folder / "tokenizer.model"
    if tj.exists():
        data = _from_tokenizer_json(tj)
    elif tm.exists():
        data = _from_sentencepiece(tm)
    else:
        return None
    cfg = _read_json(folder / "tokenizer_config.json")
    if cfg:
        data.add_bos = cfg.get("add_bos_token", data.add_bos)
        if isinstance(cfg.get("chat_template"), str):
            data.chat_template = cfg["chat_template"]
        index = {t: i for i, t in enumerate(data.tokens)}
        for key, attr in (("bos_token", "bos_id"), ("eos_token", "eos_id"), ("pad_token", "pad_id")):
            tok = cfg.get(key)
            tok = tok.get("content") if isinstance(tok, dict) else tok
            if isinstance(tok, str) and tok in index and getattr(data, attr) is None:
                setattr(data, attr, index[tok])
    if bos is not None:
        data.bos_id = bos
    if eos is not None:
        data.eos_id = eos
    if len(data.tokens) > vocab_size:
        raise CorruptFileError(
            f"{folder}: tokenizer has {len(data.tokens)} tokens but config.json vocab_size is {vocab_size}"
        )
    for i in range(len(data.tokens), vocab_size):
        data.tokens.append(f"[PAD{i}]")
        data.token_types.append(UNUSED)
        if data.scores is not None:
            data.scores.append(-1000.0)
    return data


def _read_json(path: Path) -> dict[str, Any] | None:
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise CorruptFileError(f"{path}: not valid JSON ({exc})") from None


def detect_pre(tok: dict[str, Any]) -> str:
    """llama.cpp's name for the pre-tokenizer regex; `default` when it is not a known one."""
    pre = tok.get("pre_tokenizer") or {}
    text = json.dumps(pre)
    if _LLAMA3_REGEX_MARK in text:
        return "llama-bpe"
    if pre.get("type") == "ByteLevel" and pre.get("use_regex", True):
        return "gpt-2"
    return "default"


def _from_tokenizer_json(path: Path) -> TokenizerData:
    tok = _read_json(path) or {}
    model = tok.get("model") or {}
    if model.get("type") != "BPE":
        raise CorruptFileError(
            f"{path}: tokenizer model {model.get('type')!r} is not supported (byte-level BPE, or a "
            "SentencePiece tokenizer.model)"
        )
    vocab: dict[str, int] = model.get("vocab") or {}
    added = {a["id"]: a for a in tok.get("added_tokens", [])}
    size = max([*vocab.values(), *added.keys()], default=-1) + 1
    tokens = [f"[PAD{i}]" for i in range(size)]
    types = [UNUSED] * size
    for text, i in vocab.items():
        tokens[i], types[i] = text, NORMAL
    for i, a in added.items():
        tokens[i] = a["content"]
        types[i] = CONTROL if a.get("special") else USER_DEFINED
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
    return TokenizerData(model="gpt2", pre=detect_pre(tok), tokens=tokens, token_types=types, merges=merges)


# -- SentencePiece ----------------------------------------------------------------------
def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    shift = result = 0
    while True:
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, pos
        shift += 7


def _fields(buf: bytes):
    pos = 0
    while pos < len(buf):
        key, pos = _varint(buf, pos)
        num, wire = key >> 3, key & 7
        if wire == 0:
            val, pos = _varint(buf, pos)
        elif wire == 1:
            val, pos = buf[pos:pos + 8], pos + 8
        elif wire == 2:
            n, pos = _varint(buf, pos)
            val, pos = buf[pos:pos + n], pos + n
        elif wire == 5:
            val, pos = buf[pos:pos + 4], pos + 4
        else:
            raise ValueError(f"unsupported protobuf wire type {wire}")
        yield num, wire, val


def _from_sentencepiece(path: Path) -> TokenizerData:
    """ModelProto.pieces (field 1): SentencePiece{piece=1, score=2, type=3}."""
    tokens, scores, types = [], [], []
    try:
        for num, wire, val in _fields(path.read_bytes()):
            if num != 1 or wire != 2:
                continue
            piece, score, kind = "", 0.0, NORMAL
            for n2, w2, v2 in _fields(val):
                if n2 == 1:
                    piece = v2.decode("utf-8")
                elif n2 == 2 and w2 == 5:
                    score = struct.unpack("<f", v2)[0]
                elif n2 == 3:
                    kind = int(v2)
            tokens.append(piece)
            scores.append(score)
            types.append(kind)
    except (IndexError, ValueError, UnicodeDecodeError) as exc:
        raise CorruptFileError(f"{path}: not a readable SentencePiece model ({exc})") from None
    if not tokens:
        raise CorruptFileError(f"{path}: SentencePiece model has no pieces")
    unk = types.index(UNKNOWN) if UNKNOWN in types else None
    return TokenizerData(model="llama", pre=None, tokens=tokens, token_types=types, scores=scores, unk_id=unk)
