"""Tokenizer -> GGUF `tokenizer.*` keys, from tokenizer.json or tokenizer.model, as the
engines' own converters write them.

tokenizer.json is read as JSON (vocab, added tokens, pre-tokenizer); a SentencePiece
tokenizer.model is read by a minimal protobuf decoder of the fields an engine needs (piece,
score, type). Nothing is unpickled and no tokenizer code is imported from the model repo.
Special token ids, add_*_token flags, BPE merges and the chat template come from gguf-py's
own `SpecialVocab` (tokenizer_config.json tokens resolved through tokenizer.json's added
tokens, then config.json's `*_token_id`), which both converters call.

Where the converters differ, a file gets what the converter of its engine writes:
- bitnet.cpp (`utils/convert-hf-to-gguf-bitnet.py`, 4645960 and HEAD): SentencePiece vocab
  padded with `[PAD1]`..`[PADn]` (score -1000, UNUSED); BPE holes and padding `[PAD{id}]`
  typed USER_DEFINED.
- llama.cpp (`convert_hf_to_gguf.py`): SentencePiece ids without a piece `[PAD{id}]` (score
  -10000, UNUSED) and tokenizer_config's `added_tokens_decoder` applied over the pieces;
  BPE holes and padding `[PAD{id}]` typed UNUSED; added tokens that look special (`<|...|>`)
  are CONTROL.
Both write `tokenizer.ggml.pre = "default"` for SentencePiece, type SentencePiece's
user-defined pieces NORMAL, and list scores before token types.
"""

from __future__ import annotations

import json
import struct
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..config_values import read_json_object
from ..errors import CorruptFileError

NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6
BITNET_CPP, LLAMA_CPP = "bitnet.cpp", "llama.cpp"

_LLAMA3_REGEX_MARK = "(?i:'s|'t|'re|'ve|'m|'ll|'d)"
# SentencePiece piece type -> GGUF token type, as the converters map it (is_unknown,
# is_control, is_unused, is_byte; anything else, user-defined pieces included, is NORMAL)
_SPM_TYPES = {UNKNOWN: UNKNOWN, CONTROL: CONTROL, UNUSED: UNUSED, BYTE: BYTE}


@dataclass
class TokenizerData:
    model: str  # "gpt2" (byte-level BPE) or "llama" (SentencePiece)
    pre: str | None
    tokens: list[str]
    token_types: list[int]
    scores: list[float] | None
    special: Any  # gguf.SpecialVocab: special ids, add_*_token, merges (BPE), chat template
    warnings: list[str] = field(default_factory=list)  # what SpecialVocab logged (e.g. an id out of range)

    def add_to_gguf(self, w: Any) -> None:
        """Write the keys in the converters' order (model, pre, tokens, scores, types, specials)."""
        w.add_tokenizer_model(self.model)
        if self.pre is not None:
            w.add_tokenizer_pre(self.pre)
        w.add_token_list(self.tokens)
        if self.scores is not None:
            w.add_token_scores(self.scores)
        w.add_token_types(self.token_types)
        self.special.add_to_gguf(w, quiet=True)


def load_tokenizer(folder: Path, vocab_size: int, bos: int | None, eos: int | None,
                   engine: str = LLAMA_CPP) -> TokenizerData | None:
    """Read the folder's tokenizer, padded to the model's vocab_size the way `engine`'s converter pads.

    `bos`/`eos` (the model's hparams) fill in only what SpecialVocab did not find.
    """
    tj, tm = folder / "tokenizer.json", folder / "tokenizer.model"
    if tj.exists() or tm.exists():
        check_tokenizer_config(folder / "tokenizer_config.json")
    if tj.exists():
        data = _from_tokenizer_json(tj, folder, vocab_size, engine)
    elif tm.exists():
        data = _from_sentencepiece(tm, folder, vocab_size, engine)
    else:
        return None
    data.special = _special_vocab(folder, bpe=data.model == "gpt2", n_vocab=len(data.tokens), warnings=data.warnings)
    for typ, value in (("bos", bos), ("eos", eos)):
        if isinstance(value, int) and 0 <= value < len(data.tokens):
            data.special.special_token_ids.setdefault(typ, value)
    return data


class _Collect(logging.Handler):
    def __init__(self, sink: list[str]) -> None:
        super().__init__(logging.WARNING)
        self.sink = sink

    def emit(self, record: logging.LogRecord) -> None:
        self.sink.append(f"tokenizer: {record.getMessage()}")


def _special_vocab(folder: Path, bpe: bool, n_vocab: int, warnings: list[str]) -> Any:
    """gguf-py's SpecialVocab as the converters build it (BPE: with merges).

    Unlike the converters' BPE path, `n_vocab` is always given, so an id beyond the
    vocabulary is dropped with a warning instead of written for the engine to reject. Its
    log warnings become plan warnings instead of bare stderr lines.
    """
    import gguf

    logger = logging.getLogger("gguf.vocab")
    handler, propagate = _Collect(warnings), logger.propagate
    logger.addHandler(handler)
    logger.propagate = False
    try:
        return gguf.SpecialVocab(folder, load_merges=bpe, n_vocab=n_vocab)
    except (ValueError, TypeError, AttributeError, OSError, UnicodeDecodeError, RecursionError) as exc:
        raise CorruptFileError(
            f"{folder}: tokenizer_config.json / tokenizer.json / config.json special tokens unreadable "
            f"({type(exc).__name__}: {exc})".splitlines()[0]
        ) from None
    finally:
        logger.removeHandler(handler)
        logger.propagate = propagate


def _read_json(path: Path) -> dict[str, Any] | None:
    return read_json_object(path) if path.exists() else None


def detect_pre(tok: dict[str, Any]) -> str:
    """llama.cpp's name for the pre-tokenizer regex; `default` when it is not a known one."""
    pre = tok.get("pre_tokenizer") or {}
    text = json.dumps(pre)
    if _LLAMA3_REGEX_MARK in text:
        return "llama-bpe"
    if isinstance(pre, dict) and pre.get("type") == "ByteLevel" and pre.get("use_regex", True):
        return "gpt-2"
    return "default"


def _looks_special(text: str) -> bool:
    """llama.cpp's `does_token_look_special`: added tokens typed CONTROL even if not marked special."""
    return (text in ("<pad>", "<mask>", "<2mass>", "[@BOS@]")
            or (text.startswith("<|") and text.endswith("|>"))
            or (text.startswith("<\uff5c") and text.endswith("\uff5c>"))
            or (text.startswith("<unused") and text.endswith(">")))


def _too_many(path: Path, n: int, vocab_size: int) -> CorruptFileError:
    return CorruptFileError(f"{path}: tokenizer has {n} tokens but config.json vocab_size is {vocab_size}")


def _from_tokenizer_json(path: Path, folder: Path, vocab_size: int, engine: str) -> TokenizerData:
    tok = _read_json(path) or {}
    model = tok.get("model") or {}
    if not isinstance(model, dict):
        raise CorruptFileError(f"{path}: model must be an object, got a {type(model).__name__}")
    if model.get("type") != "BPE":
        raise CorruptFileError(
            f"{path}: tokenizer model {model.get('type')!r:.40} is not supported (byte-level BPE, or a "
            "SentencePiece tokenizer.model)"
        )
    vocab, added = _checked_ids(path, model, tok, vocab_size)
    size = max([*vocab.values(), *added.keys()], default=-1) + 1
    if size > vocab_size:
        raise _too_many(folder, size, vocab_size)
    hole = USER_DEFINED if engine == BITNET_CPP else UNUSED
    tokens = [f"[PAD{i}]" for i in range(vocab_size)]
    types = [hole] * vocab_size
    for text, i in vocab.items():
        tokens[i], types[i] = text, NORMAL
    for i, a in added.items():
        text = a["content"]
        special = bool(a.get("special")) or (engine == LLAMA_CPP and _looks_special(text))
        if not special and engine == LLAMA_CPP:
            text = text.replace("\u2581", " ")  # llama.cpp pre-normalizes user-defined spaces
        tokens[i], types[i] = text, CONTROL if special else USER_DEFINED
    return TokenizerData(model="gpt2", pre=detect_pre(tok), tokens=tokens, token_types=types, scores=None,
                         special=None)


def _checked_ids(path: Path, model: dict[str, Any], tok: dict[str, Any],
                 vocab_size: int) -> tuple[dict[str, int], dict[int, dict[str, Any]]]:
    """model.vocab and added_tokens with every id an integer in [0, vocab_size), checked before
    any list is sized by them (an id of 10**9 must not allocate a billion entries)."""
    def check_id(i: Any, what: str) -> int:
        if isinstance(i, bool) or not isinstance(i, int) or not 0 <= i < vocab_size:
            raise CorruptFileError(f"{path}: {what} has id {i!r:.40}; ids must be integers in [0, {vocab_size})",
                                   hint="the tokenizer does not match the model's vocab_size")
        return i

    vocab = model.get("vocab") or {}
    if not isinstance(vocab, dict):
        raise CorruptFileError(f"{path}: model.vocab must map token strings to ids, got a {type(vocab).__name__}")
    for text, i in vocab.items():
        check_id(i, f"model.vocab token {text!r:.40}")
    added_list = tok.get("added_tokens") or []
    if not isinstance(added_list, list):
        raise CorruptFileError(f"{path}: added_tokens must be a list, got a {type(added_list).__name__}")
    added: dict[int, dict[str, Any]] = {}
    for n, a in enumerate(added_list):
        if not isinstance(a, dict) or "id" not in a or not isinstance(a.get("content"), str):
            raise CorruptFileError(f"{path}: added_tokens[{n}] needs an integer id and a string content")
        added[check_id(a["id"], f"added_tokens[{n}]")] = a
    merges = model.get("merges") or []
    if not isinstance(merges, list) or not all(
            isinstance(m, str) or (isinstance(m, list) and all(isinstance(x, str) for x in m)) for m in merges):
        raise CorruptFileError(f"{path}: model.merges must be a list of \"a b\" strings or [a, b] pairs")
    return vocab, added


def tokenizer_json_size(path: Path) -> int:
    """Number of token ids a tokenizer.json defines (inspect), with the same checks as a conversion."""
    from ..config_values import LIMITS

    tok = _read_json(path) or {}
    model = tok.get("model") or {}
    if not isinstance(model, dict):
        raise CorruptFileError(f"{path}: model must be an object, got a {type(model).__name__}")
    vocab, added = _checked_ids(path, model, tok, LIMITS["vocab_size"])
    return max([*vocab.values(), *added.keys()], default=-1) + 1


def check_tokenizer_config(path: Path) -> None:
    """tokenizer_config.json's fields a GGUF records, of the types they must have (SpecialVocab
    would otherwise write "yes" as add_bos_token = true, or skip a numeric bos_token silently)."""
    cfg = _read_json(path)
    if not cfg:
        return
    for key in ("add_bos_token", "add_eos_token"):
        if cfg.get(key) is not None and not isinstance(cfg[key], bool):
            raise CorruptFileError(f"{path}: {key} must be true or false, got {cfg[key]!r:.40}")
    template = cfg.get("chat_template")
    if template is not None and not isinstance(template, (str, list)):
        raise CorruptFileError(f"{path}: chat_template must be a string, got {type(template).__name__}")
    for key in ("bos_token", "eos_token", "pad_token", "unk_token"):
        tok = cfg.get(key)
        tok = tok.get("content") if isinstance(tok, dict) else tok
        if tok is not None and not isinstance(tok, str):
            raise CorruptFileError(f"{path}: {key} must be a token string, got {tok!r:.40}")


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
        if shift > 63:
            raise ValueError(f"varint longer than 10 bytes at byte {pos}")


def _fields(buf: bytes):
    pos = 0
    while pos < len(buf):
        key, pos = _varint(buf, pos)
        num, wire = key >> 3, key & 7
        if wire == 0:
            val, pos = _varint(buf, pos)
        elif wire in (1, 2, 5):
            if wire == 2:
                n, pos = _varint(buf, pos)
            else:
                n = 8 if wire == 1 else 4
            if pos + n > len(buf):
                raise ValueError(f"field {num} of {n} bytes at byte {pos} runs past the end (truncated)")
            val, pos = buf[pos:pos + n], pos + n
        else:
            raise ValueError(f"unsupported protobuf wire type {wire}")
        yield num, wire, val


def _read_pieces(path: Path) -> tuple[list[str], list[float], list[int]]:
    """ModelProto.pieces (field 1): SentencePiece{piece=1, score=2, type=3 (default NORMAL)}."""
    tokens, scores, types = [], [], []
    try:
        for num, wire, val in _fields(path.read_bytes()):
            if num != 1 or wire != 2:
                continue
            piece, score, kind = "", 0.0, NORMAL
            for n2, w2, v2 in _fields(val):
                if n2 == 1:
                    if w2 != 2:
                        raise ValueError(f"piece {len(tokens)} is not a string")
                    piece = v2.decode("utf-8")
                elif n2 == 2 and w2 == 5:
                    score = struct.unpack("<f", v2)[0]
                elif n2 == 3:
                    if w2 != 0 or not NORMAL <= v2 <= BYTE:
                        raise ValueError(f"piece {len(tokens)} has type {v2!r:.20}, not 1..6")
                    kind = v2
            tokens.append(piece)
            scores.append(score)
            types.append(_SPM_TYPES.get(kind, NORMAL))
    except (IndexError, ValueError, UnicodeDecodeError, struct.error, TypeError) as exc:
        raise CorruptFileError(f"{path}: not a readable SentencePiece model ({exc})") from None
    except OSError as exc:
        raise CorruptFileError(f"{path}: cannot read ({exc.strerror or exc})") from None
    if not tokens:
        raise CorruptFileError(f"{path}: SentencePiece model has no pieces")
    return tokens, scores, types


def _from_sentencepiece(path: Path, folder: Path, vocab_size: int, engine: str) -> TokenizerData:
    pieces, piece_scores, piece_types = _read_pieces(path)
    if len(pieces) > vocab_size:
        raise _too_many(path, len(pieces), vocab_size)
    added_json = _read_json(folder / "added_tokens.json") or {}
    if engine == BITNET_CPP:
        tokens, scores, types = pieces, piece_scores, piece_types
        for text in added_json:  # appended after the pieces unless already there
            if text not in tokens:
                tokens.append(text)
                scores.append(-1000.0)
                types.append(USER_DEFINED)
        if len(tokens) > vocab_size:
            raise _too_many(folder, len(tokens), vocab_size)
        pad = vocab_size - len(tokens)
        tokens += [f"[PAD{i}]" for i in range(1, pad + 1)]
        scores += [-1000.0] * pad
        types += [UNUSED] * pad
    else:
        tokens = [f"[PAD{i}]" for i in range(vocab_size)]
        scores = [-10000.0] * vocab_size
        types = [UNUSED] * vocab_size
        tokens[:len(pieces)], scores[:len(pieces)], types[:len(pieces)] = pieces, piece_scores, piece_types
        for text, i in added_json.items():
            if isinstance(i, int) and 0 <= i < vocab_size:
                tokens[i], scores[i], types[i] = text, -1000.0, USER_DEFINED
        decoder = (_read_json(folder / "tokenizer_config.json") or {}).get("added_tokens_decoder") or {}
        if not isinstance(decoder, dict):
            raise CorruptFileError(f"{folder / 'tokenizer_config.json'}: added_tokens_decoder must be an object")
        for key, entry in decoder.items():
            try:
                i, text = int(key), entry["content"]
                if not isinstance(text, str):
                    raise TypeError(text)
            except (ValueError, KeyError, TypeError):
                raise CorruptFileError(f"{folder / 'tokenizer_config.json'}: bad added_tokens_decoder entry "
                                       f"{key!r}") from None
            if not 0 <= i < vocab_size:
                continue
            if entry.get("special") or _looks_special(text):
                types[i] = CONTROL
            else:
                text = text.replace("\u2581", " ")
                types[i] = USER_DEFINED
            tokens[i], scores[i] = text, -1000.0
    return TokenizerData(model="llama", pre="default", tokens=tokens, token_types=types, scores=scores,
                         special=None)
