"""Typed reads of values from untrusted config files (config.json, GGUF metadata, tokenizer files).

Why: `int(config["hidden_size"])` turns "abc" into a ValueError, `None` into a TypeError and
-256 or 10**12 into a model that crashes or allocates without bound later. Every number a
file gives bitconv passes through here first: right type, right sign, below a bound a real
model never reaches, or a `CorruptFileError` naming the file and key (exit 2).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from .errors import CorruptFileError

MISSING = object()


def parse_json(text: str | bytes, where: str | Path) -> Any:
    """json.loads for text from a file bitconv did not write: invalid JSON, and JSON nested
    too deep for the parser (100,000 brackets raise RecursionError, not ValueError), are
    one `CorruptFileError` naming WHERE."""
    try:
        return json.loads(text)
    except ValueError as exc:  # includes UnicodeDecodeError
        raise CorruptFileError(f"{where}: not valid JSON ({exc})") from None
    except RecursionError:
        raise CorruptFileError(f"{where}: JSON nested too deeply to read",
                               hint="no real config, tokenizer, index or manifest nests like this") from None


def read_json_object(path: Path) -> dict[str, Any]:
    """A JSON file that must hold an object (config.json, tokenizer files): any failure is one
    `CorruptFileError` naming the file, never a bare ValueError or a list where a dict is used."""
    try:
        value = parse_json(path.read_text(encoding="utf-8"), path)
    except ValueError as exc:  # UnicodeDecodeError
        raise CorruptFileError(f"{path}: not valid JSON ({exc})") from None
    except OSError as exc:
        raise CorruptFileError(f"{path}: cannot read ({exc.strerror or exc})") from None
    if not isinstance(value, dict):
        raise CorruptFileError(f"{path}: expected a JSON object, got {type(value).__name__}")
    return value

# Bounds far above any real model, low enough that nothing sized by them can exhaust memory
# before the shapes are checked against the tensors actually in the files.
LIMITS = {
    "vocab_size": 1 << 24,
    "hidden_size": 1 << 20,
    "intermediate_size": 1 << 22,
    "num_hidden_layers": 1 << 14,
    "num_attention_heads": 1 << 14,
    "num_key_value_heads": 1 << 14,
    "head_dim": 1 << 16,
    "max_position_embeddings": (1 << 32) - 1,  # GGUF's context_length is a uint32
}
DEFAULT_LIMIT = (1 << 32) - 1  # the GGUF keys these values become are uint32


def _where(source: str, key: str) -> str:
    return f"{source}: {key}"


def get_int(config: dict[str, Any], key: str, source: str, *, default: Any = MISSING, minimum: int = 1,
            maximum: int | None = None, limit_key: str | None = None) -> int:
    """An integer (an integral float like 256.0 is accepted; bools and strings are not)."""
    if key not in config or config[key] is None:
        if default is MISSING:
            raise CorruptFileError(f"{_where(source, key)} is missing", hint="the model's config needs this value")
        return default
    return as_int(config[key], key, source, minimum=minimum,
                  maximum=maximum if maximum is not None else LIMITS.get(limit_key or key, DEFAULT_LIMIT))


def as_int(value: Any, key: str, source: str, *, minimum: int = 1, maximum: int = DEFAULT_LIMIT) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise CorruptFileError(f"{_where(source, key)} must be an integer, got {_short(value)}")
    if isinstance(value, float):
        if not math.isfinite(value) or value != int(value):
            raise CorruptFileError(f"{_where(source, key)} must be an integer, got {_short(value)}")
        value = int(value)
    if not minimum <= value <= maximum:
        raise CorruptFileError(f"{_where(source, key)} = {value} is out of range [{minimum}, {maximum}]")
    return int(value)


def get_float(config: dict[str, Any], key: str, source: str, *, default: Any = MISSING,
              positive: bool = True) -> float:
    if key not in config or config[key] is None:
        if default is MISSING:
            raise CorruptFileError(f"{_where(source, key)} is missing")
        return default
    v = config[key]
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or (positive and v <= 0):
        raise CorruptFileError(f"{_where(source, key)} must be a {'positive ' if positive else ''}finite number, "
                               f"got {_short(v)}")
    return float(v)


def get_bool(config: dict[str, Any], key: str, source: str, *, default: bool = False) -> bool:
    v = config.get(key, default)
    if v is None:
        return default
    if not isinstance(v, bool):
        raise CorruptFileError(f"{_where(source, key)} must be true or false, got {_short(v)}")
    return v


def get_str(config: dict[str, Any], key: str, source: str, *, default: Any = MISSING) -> str:
    if key not in config or config[key] is None:
        if default is MISSING:
            raise CorruptFileError(f"{_where(source, key)} is missing")
        return default
    v = config[key]
    if not isinstance(v, str):
        raise CorruptFileError(f"{_where(source, key)} must be a string, got {_short(v)}")
    return v


def get_dict(config: dict[str, Any], key: str, source: str) -> dict[str, Any]:
    v = config.get(key)
    if v is None:
        return {}
    if not isinstance(v, dict):
        raise CorruptFileError(f"{_where(source, key)} must be an object, got {_short(v)}")
    return v


def get_token_id(config: dict[str, Any], key: str, source: str) -> int | None:
    """bos/eos ids: an integer, null, or (eos) a list of integers whose first is used."""
    v = config.get(key)
    if isinstance(v, list):
        if not v:
            return None
        v = v[0]
    if v is None:
        return None
    return as_int(v, key, source, minimum=0, maximum=LIMITS["vocab_size"])


def _short(v: Any) -> str:
    text = repr(v)
    return text if len(text) <= 40 else text[:37] + "..."
