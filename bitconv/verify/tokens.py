"""Text -> token windows for verify: the tokenizer of the source (or the artifact, or a GGUF's
own byte-level BPE vocabulary), and the evaluation text cut into windows of `ctx` tokens."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..errors import CorruptFileError, InputError, SourceNotFoundError

DATA_DIR = Path(__file__).resolve().parent.parent / "data"
DEFAULT_TEXT = DATA_DIR / "eval.txt"


def _gguf_value(spec, key: str, default=None):
    v = spec.gguf_metadata.get(key)
    return v[0] if isinstance(v, tuple) else (default if v is None else v)


def load_tokenizer(*ckpts) -> tuple[Any, str, bool]:
    """(tokenizers.Tokenizer, description, add_bos) from the first checkpoint that has one:
    a tokenizer.json next to the model, else a GGUF's byte-level BPE vocabulary."""
    from tokenizers import Tokenizer

    for ck in ckpts:
        d = ck.spec.tokenizer_dir
        if d is not None and (Path(d) / "tokenizer.json").exists():
            path = Path(d) / "tokenizer.json"
            try:
                tok = Tokenizer.from_file(str(path))
            except Exception as exc:  # tokenizers raises its own untyped Exception for bad files
                raise CorruptFileError(f"{path}: not a tokenizer the tokenizers library reads ({exc})") from None
            add_bos = None
            cfg = Path(d) / "tokenizer_config.json"
            if cfg.exists():
                try:
                    cfg_data = json.loads(cfg.read_text())
                except (ValueError, OSError):
                    cfg_data = None
                add_bos = cfg_data.get("add_bos_token") if isinstance(cfg_data, dict) else None
            if add_bos is None:  # the post-processor decides (Llama-3 adds <|begin_of_text|>)
                add_bos = len(tok.encode("a").ids) > len(tok.encode("a", add_special_tokens=False).ids)
            return tok, str(path), bool(add_bos)
    for ck in ckpts:
        if _gguf_value(ck.spec, "tokenizer.ggml.model") == "gpt2" and _gguf_value(ck.spec, "tokenizer.ggml.tokens"):
            from tokenizers import decoders, models, pre_tokenizers

            tokens = _gguf_value(ck.spec, "tokenizer.ggml.tokens")
            merges = _gguf_value(ck.spec, "tokenizer.ggml.merges", [])
            if not isinstance(tokens, list) or not isinstance(merges, list) or not all(
                    isinstance(x, str) for x in [*tokens, *merges]):
                raise CorruptFileError(f"{ck.spec.source.path}: tokenizer.ggml.tokens/merges must be string arrays")
            merges = [tuple(m.split(" ", 1)) for m in merges]
            try:
                tok = Tokenizer(models.BPE({t: i for i, t in enumerate(tokens)}, merges))
            except Exception as exc:  # tokenizers' own untyped error for inconsistent merges
                raise CorruptFileError(f"{ck.spec.source.path}: the GGUF vocabulary is not a valid BPE ({exc})") from None
            tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
            tok.decoder = decoders.ByteLevel()
            add_bos = bool(_gguf_value(ck.spec, "tokenizer.ggml.add_bos_token", False))
            return tok, f"{ck.spec.source.location} (GGUF byte-level BPE)", add_bos
    raise InputError(
        "no tokenizer: neither the source nor the artifact has a tokenizer.json (or a GGUF byte-level BPE vocabulary)",
        hint="verify against a source folder that holds tokenizer.json",
    )


def make_windows(ids: list[int], ctx: int, bos: int | None) -> list[list[int]]:
    """Split token ids into windows of `ctx` tokens (a BOS first when given); a text shorter
    than one window gives one shorter window."""
    step = ctx - (1 if bos is not None else 0)
    n = len(ids) // step
    if n == 0:
        chunks = [ids]
    else:
        chunks = [ids[i * step:(i + 1) * step] for i in range(n)]
    return [([bos] if bos is not None else []) + c for c in chunks]


# ----------------------------------------------------------------------------------------


def read_windows(text: str | Path | None, tokens: int, ctx: int, ckpts: tuple, bos_token_id: int | None,
                 vocab_size: int, notes: list[str]) -> tuple[Any, str, Path]:
    """The first `tokens` tokens of `text` (default: the shipped eval text) as int64 windows
    [B, T] (a BOS first where the tokenizer adds one), the tokenizer's description, the text's
    path. A shorter text is used whole (with a note)."""
    import torch

    text_path = Path(text).expanduser() if text is not None else DEFAULT_TEXT
    if not text_path.exists():
        if text is None:
            raise SourceNotFoundError(f"the default evaluation text {DEFAULT_TEXT} is missing",
                                      hint="pass --text FILE")
        raise SourceNotFoundError(f"{text}: no such text file")
    if not text_path.is_file():
        raise InputError(f"{text_path}: --text must be a text file, not a folder")
    try:
        content = text_path.read_text(encoding="utf-8", errors="replace")
    except OSError as exc:
        raise InputError(f"{text_path}: cannot read the text ({exc.strerror or exc})") from None
    tok, tok_desc, add_bos = load_tokenizer(*ckpts)
    ids = tok.encode(content, add_special_tokens=False).ids
    bos = bos_token_id if add_bos and bos_token_id is not None else None
    if len(ids) < 2:
        raise InputError(f"{text_path}: the text has {len(ids)} token(s); verify needs at least 2")
    if len(ids) < tokens:
        notes.append(f"the text has {len(ids)} tokens, fewer than the {tokens} asked for: used them all")
    wtok = torch.tensor(make_windows(ids[:tokens], ctx, bos), dtype=torch.int64)
    if int(wtok.max()) >= vocab_size:
        raise InputError(f"the tokenizer ({tok_desc}) produced id {int(wtok.max())} >= vocab size {vocab_size}",
                         hint="the tokenizer does not belong to this model")
    return wtok, tok_desc, text_path
