"""Lazy access to single or sharded safetensors files, one tensor at a time.

Opens headers only; a tensor's bytes are read (memory-mapped) when asked for, so peak
memory follows the largest tensor, not the model. The shard index is validated before
anything is read: every shard must exist inside the model folder (an index that points
elsewhere is refused, never followed).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterator

import numpy as np
from safetensors import safe_open

from ..errors import CorruptFileError, InputError, SourceNotFoundError
from ..source_files import FileIdentity, HeldFile

INDEX_NAME = "model.safetensors.index.json"
_DTYPES = {"BF16": "bf16", "F16": "f16", "F32": "f32", "U8": "u8", "I8": "i8", "F64": "f64",
           "U32": "u32", "I32": "i32", "I64": "i64"}  # 32/64-bit ints: MLX and compressed-tensors folders
_NP_DTYPES = {"BF16": np.dtype("<u2"), "F16": np.dtype("<f2"), "F32": np.dtype("<f4"), "U8": np.dtype("u1"),
              "I8": np.dtype("i1"), "F64": np.dtype("<f8"), "U32": np.dtype("<u4"), "I32": np.dtype("<i4"),
              "I64": np.dtype("<i8")}


def _safe_join(folder: Path, rel: str, index_path: Path) -> Path:
    # Checked on the name, not on the resolved path: in the Hugging Face cache every file of
    # a snapshot is a symlink into ../../blobs, and that is the normal, safe case.
    p = Path(rel)
    if not rel or p.is_absolute() or ".." in p.parts or p == Path("."):
        raise CorruptFileError(
            f"{index_path}: shard {rel!r} is outside the model folder; refusing to read it",
            hint="an index may only name files inside its own folder",
        )
    return folder / p


class ShardSet:
    """All safetensors files of one model folder, addressed by tensor name."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._where: dict[str, Path] = {}
        self._handles: dict[Path, object] = {}
        self._headers: dict[Path, tuple[int, dict]] = {}
        self._held: dict[Path, HeldFile] = {}
        index = folder / INDEX_NAME
        if index.exists():
            try:
                weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
            except (ValueError, KeyError, TypeError, RecursionError) as exc:
                raise CorruptFileError(f"{index}: not a valid safetensors index ({type(exc).__name__}: {exc})",
                                       hint="it must be an object with a weight_map of tensor name -> file") from None
            if not isinstance(weight_map, dict):
                raise CorruptFileError(f"{index}: weight_map must map tensor names to files, got a "
                                       f"{type(weight_map).__name__}")
            for name, rel in weight_map.items():
                if not isinstance(rel, str):
                    raise CorruptFileError(f"{index}: entry for {name!r} is not a file name")
                self._where[name] = _safe_join(folder, rel, index)
            for path in sorted(set(self._where.values())):
                try:
                    exists = path.is_file()
                except (OSError, ValueError):  # a name too long or with a NUL byte
                    exists = False
                if not exists:
                    raise SourceNotFoundError(
                        f"{index}: shard {path.name} is listed but missing",
                        hint="the download is incomplete; fetch the model again",
                    )
            self.files = sorted(set(self._where.values()))
            self._check_index_covers()
        else:
            self.files = sorted(folder.glob("*.safetensors"))
            if not self.files:
                if any(folder.glob("*.bin")) or any(folder.glob("*.pt")) or any(folder.glob("*.pth")):
                    raise InputError(
                        f"{folder}: only pickle weights (*.bin/*.pt) found; bitconv reads safetensors and never unpickles",
                        hint="convert the weights to safetensors with a tool you trust",
                    )
                raise SourceNotFoundError(f"{folder}: no *.safetensors files found")
            for path in self.files:
                for name in self._open(path).keys():
                    if name in self._where:
                        raise CorruptFileError(f"{path}: tensor {name!r} also appears in {self._where[name].name}")
                    self._where[name] = path

    def _check_index_covers(self) -> None:
        for path in self.files:
            names = set(self._open(path).keys())
            listed = {n for n, p in self._where.items() if p == path}
            missing = listed - names
            if missing:
                raise CorruptFileError(
                    f"{path}: index lists {len(missing)} tensor(s) not in this shard, e.g. {sorted(missing)[0]!r}",
                    hint="the index and shards come from different versions; fetch the model again",
                )

    def held(self, path: Path) -> HeldFile:
        """The descriptor this set reads PATH's tensors through, opened on first use (at
        open time: `_open` validates every file's header through it)."""
        h = self._held.get(path)
        if h is None:
            h = self._held[path] = HeldFile(path)
        return h

    def identities(self) -> dict[Path, FileIdentity]:
        return {p: h.identity for p, h in self._held.items()}

    def _open(self, path: Path):
        h = self._handles.get(path)
        if h is None:
            self.held(path)  # a FIFO is refused here, before safe_open would block on it
            try:
                h = safe_open(str(path), framework="numpy")  # headers only: no torch import
            except Exception as exc:  # safetensors raises its own error type for bad headers
                raise CorruptFileError(
                    f"{path}: not a readable safetensors file ({exc})",
                    hint="the file is truncated or corrupt; download it again",
                ) from None
            self._handles[path] = h
        return h

    def names(self) -> Iterator[str]:
        return iter(self._where)

    def __contains__(self, name: str) -> bool:
        return name in self._where

    def path_of(self, name: str) -> Path:
        return self._where[name]

    def info(self, name: str) -> tuple[tuple[int, ...], str]:
        sl = self._open(self._where[name]).get_slice(name)
        return tuple(sl.get_shape()), _DTYPES.get(sl.get_dtype(), sl.get_dtype().lower())

    def _entries(self, path: Path) -> tuple[int, dict]:
        """(start of the data buffer, the header's tensor entries) of one file, read once.

        `safe_open` has validated this header (offsets inside the file, no overlaps)."""
        cached = self._headers.get(path)
        if cached is None:
            self._open(path)  # validation
            held = self.held(path)
            n = int(held.read_at(0, 1, "<u8", "the header length")[0])
            try:
                header = json.loads(held.read_at(8, n, np.uint8, "the header").tobytes())
            except (ValueError, RecursionError) as exc:  # not what safe_open validated: changed since
                raise CorruptFileError(f"{path}: header unreadable ({type(exc).__name__})") from None
            cached = (8 + n, header)
            self._headers[path] = cached
        return cached

    def raw(self, name: str, rows: tuple[int, int] | None = None) -> np.ndarray:
        """The tensor's bytes as stored (ROWS [start, stop) only, when given), read from the
        file's held descriptor into a new array (`source_files`: a mapped source that shrinks
        kills the process with SIGBUS; a read of it is a typed error): float32/float16/
        uint8/int8 arrays, bfloat16 as uint16."""
        path = self._where[name]
        start, header = self._entries(path)
        entry = header[name]
        dt = _NP_DTYPES.get(entry["dtype"])
        if dt is None:
            raise CorruptFileError(f"{path}: tensor {name!r} has unsupported dtype {entry['dtype']}")
        shape = tuple(int(d) for d in entry["shape"])
        begin, end = (int(x) for x in entry["data_offsets"])
        first = 0
        if rows is not None and shape:
            lo, hi = (max(0, min(int(r), shape[0])) for r in rows)
            per_row = int(np.prod(shape[1:], dtype=np.int64))
            first, shape = lo * per_row, (max(hi - lo, 0), *shape[1:])
        count = int(np.prod(shape, dtype=np.int64))
        if count == 0:
            return np.zeros(shape, dtype=dt)
        data = self.held(path).read_at(start + begin + first * dt.itemsize, count, dt, f"tensor {name!r}")
        return data.reshape(shape)

    def get_rows(self, name: str, start: int, stop: int) -> np.ndarray:
        """Rows [start, stop) of a tensor as `get` returns it; only those rows are read."""
        kind = self._entries(self._where[name])[1][name]["dtype"]
        return _widen(self.raw(name, (start, stop)), kind, np.float32)

    def get(self, name: str, dtype=np.float32) -> np.ndarray:
        """The tensor as a numpy array: floats as `dtype` (float32: the file's own bytes when
        they already are float32, no copy), integers as stored."""
        return _widen(self.raw(name), self._entries(self._where[name])[1][name]["dtype"], dtype)


def _widen(raw: np.ndarray, kind: str, dtype=np.float32) -> np.ndarray:
    """Stored values -> floats as `dtype` (float32 bytes are returned as they are), integers as stored."""
    if kind in ("BF16", "F16"):
        from ..kernels.floats import widened

        out = widened(raw, bf16=kind == "BF16")  # exact, one compiled pass
        return out if dtype == np.float32 else out.astype(dtype)
    if kind in ("F32", "F64"):
        return raw.astype(dtype, copy=False) if raw.dtype != np.dtype(dtype) else raw
    return raw
