"""`bitconv check` must not trust the manifest it checks.

Why: a manifest is a file anyone can hand you. Before this module, an artifact path of
`../../etc` or `/usr` was followed and hashed, a source root of `/` was walked, and a list
where an object belongs crashed. Now the manifest is validated against its JSON schema
before any path in it is touched (by the `jsonschema` library, a runtime dependency: a
hand-written subset validator was one more thing to keep in step with the schema), and every recorded path is resolved strictly inside the
folder it is relative to: no absolute paths, no `..`, no symlink that leads out, no device,
FIFO or socket where a file belongs. A violation is an `InputError` (exit 2) naming the path.
"""

from __future__ import annotations

import json
import os
import re
import stat
from pathlib import Path, PurePosixPath
from typing import Any

from .config_values import parse_json
from .errors import CorruptFileError, InputError

SCHEMA_PATH = Path(__file__).parent / "schemas" / "manifest.schema.json"
MAX_MANIFEST_BYTES = 64 << 20


def schema_errors(value: Any, schema: dict[str, Any]) -> list[str]:
    """Every violation of `schema` (JSON Schema 2020-12, checked by the `jsonschema` library),
    one short message each, naming where in the document it is (`$.artifacts[0].sha256`)."""
    from jsonschema import Draft202012Validator

    errs = sorted(Draft202012Validator(schema).iter_errors(value), key=lambda e: [str(p) for p in e.absolute_path])
    return [_message(e) for e in errs]


def _message(err) -> str:
    where = "$" + "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in err.absolute_path)
    if err.validator == "type":
        want = err.validator_value if isinstance(err.validator_value, list) else [err.validator_value]
        return f"{where} must be {' or '.join(want)}, got {_kind(err.instance)}"
    if err.validator == "enum":
        return f"{where} must be one of {', '.join(map(json.dumps, err.validator_value))}, got {_short(err.instance)}"
    if err.validator == "required":  # the message names the key; the instance may be large
        return f"{where} lacks required key {err.message.split(' is a required property')[0]}"
    if err.validator == "pattern":
        return f"{where} does not match {err.validator_value}: {_short(err.instance)}"
    if err.validator == "minimum":
        return f"{where} must be >= {err.validator_value}, got {err.instance}"
    return f"{where}: {err.message[:200]}"


def _kind(value: Any) -> str:
    return {dict: "an object", list: "an array", str: "a string", bool: "a boolean", type(None): "null",
            int: "an integer", float: "a number"}.get(type(value), type(value).__name__)


def _short(value: Any) -> str:
    text = json.dumps(value) if not isinstance(value, float) else repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def load_manifest(path: Path) -> dict[str, Any]:
    """Read and schema-validate a manifest; nothing it names has been touched yet."""
    try:
        st = path.stat()
    except FileNotFoundError:
        raise InputError(f"{path}: no such manifest") from None
    except OSError as exc:
        raise InputError(f"{path}: cannot read the manifest ({exc.strerror or exc})") from None
    if not stat.S_ISREG(st.st_mode):
        raise InputError(f"{path}: a manifest is a JSON file, this is not a regular file")
    if st.st_size > MAX_MANIFEST_BYTES:
        raise CorruptFileError(f"{path}: {st.st_size} bytes is too large for a bitconv manifest")
    try:
        m = parse_json(path.read_text(encoding="utf-8"), path)
    except ValueError as exc:  # UnicodeDecodeError
        raise CorruptFileError(f"{path}: not valid JSON ({exc})") from None
    except OSError as exc:
        raise InputError(f"{path}: cannot read the manifest ({exc.strerror or exc})") from None
    try:
        errs = schema_errors(m, json.loads(SCHEMA_PATH.read_text()))
    except RecursionError:  # parsed, but nested deeper than the schema check can walk
        raise CorruptFileError(f"{path}: not a bitconv manifest: JSON nested too deeply") from None
    if errs:
        more = f" (and {len(errs) - 1} more)" if len(errs) > 1 else ""
        raise CorruptFileError(f"{path}: not a bitconv manifest: {errs[0]}{more}",
                               hint=f"it must follow {SCHEMA_PATH.name}")
    return m


def member(root: Path, rel: str, what: str, manifest: Path, *, allowed: Path | None = None,
           folder: bool = False) -> Path:
    """ROOT/REL for a path the manifest recorded, refusing anything that is not strictly inside.

    `allowed` widens where symlinks may lead (a Hub snapshot's files link into the cache's
    blobs folder). `folder`: the path may be a directory (a packed safetensors artifact).
    A path that does not exist is returned as is; the caller reports it missing.
    """
    p = PurePosixPath(rel)
    if (not rel or "\0" in rel or "\\" in rel or p.is_absolute() or re.match(r"^[A-Za-z]:", rel)
            or ".." in p.parts or str(p) == "." or len(rel) > 4096
            or any(len(os.fsencode(part)) > 255 for part in p.parts)):
        raise InputError(f"{manifest}: {what} path {rel!r:.80} is not a plain path inside {root}; refusing it",
                         hint="a manifest may only name files inside its own folder (or the source's)")
    full = root / p
    try:
        if not os.path.lexists(full):
            return full
        real = full.resolve(strict=True)
    except (OSError, RuntimeError) as exc:  # too long, a symlink loop
        raise InputError(f"{manifest}: {what} path {rel!r:.80} cannot be resolved ({exc})") from None
    bounds = [root.resolve()] + ([allowed.resolve()] if allowed is not None else [])
    if not any(real == b or b in real.parents for b in bounds):
        raise InputError(f"{manifest}: {what} {rel!r:.80} leads outside {root} (to {real}); refusing to read it",
                         hint="a symlink out of the folder is not part of the release")
    mode = real.stat().st_mode
    if not (stat.S_ISREG(mode) or (folder and stat.S_ISDIR(mode))):
        raise InputError(f"{manifest}: {what} {rel!r:.80} is not a regular file; refusing to read it")
    if stat.S_ISDIR(mode):
        for dirpath, dirnames, filenames in os.walk(full):
            for name in dirnames + filenames:
                inner = Path(dirpath) / name
                if inner.is_symlink() or not (inner.is_dir() or inner.is_file()):
                    raise InputError(f"{manifest}: {what} {rel!r:.80} holds {inner.relative_to(full)}, "
                                     "a symlink or special file; refusing to read it")
    return full


def source_root_ok(root: Path, manifest: Path) -> None:
    """A recorded source root must be a real folder, never the file system root."""
    try:
        real = root.resolve()
        is_file = real.exists() and not real.is_dir()
    except (OSError, RuntimeError, ValueError) as exc:  # too long, a loop, a NUL byte
        raise InputError(f"{manifest}: source folder {str(root)[:80]!r} cannot be resolved ({exc})") from None
    if real == Path(real.anchor):
        raise InputError(f"{manifest}: the source folder is the file system root {real}; refusing to read it",
                         hint="pass --source with the folder the release was converted from")
    if is_file:
        raise InputError(f"{manifest}: source folder {root} is not a folder")
