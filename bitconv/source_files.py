"""The files a conversion reads, held still: regular files only, tensor bytes read through
a held descriptor, and every file checked unchanged before an output is committed.

Why (issue 25 item 3): a `model.safetensors` replaced 0.9 s into a run gave an output
mixing 15 linears of the old file with 69 of the new, exit 0 (each tensor was mapped by
*path*), and a release manifest then vouched for the new file; a source truncated mid-run
killed the process with SIGBUS. What is done about each, and why it is reliable:

* **Replaced** (a rename over the path, as every downloader and `cp`-then-`mv` does):
  tensors are read through a descriptor opened when the checkpoint is opened, so every
  byte comes from the one file that was opened, and `SourceSnapshot.verify` (identity:
  device, inode, size, mtime and ctime, of every source file, before the output is
  committed and after a release hashed the sources) fails the run with exit 1 and removes
  the temporary output. ctime cannot be set from user space, so an in-place rewrite that
  restores size and mtime is still seen.
* **Truncated** (or shrunk in place): a memory map of a file that shrinks raises SIGBUS
  on the next page touched, and CPython cannot recover from that: a Python-level SIGBUS
  handler only runs between bytecodes, after the C handler returned to the faulting
  load, which faults again (an endless loop), and faulthandler can only print and die. So
  source tensors are not mapped: `read_at` copies them with `pread` from the held
  descriptor, where a shrunk file is a short read, turned into `SourceChangedError`. The
  copy costs one memcpy from the page cache per tensor (the pipeline held one tensor per
  job anyway). What is left mapped is header parsing at open time (GGUF), which takes
  milliseconds and happens before any output exists.
* **Not a regular file** (a FIFO, a device): opening one for reading blocks until a writer
  appears, so `require_regular` refuses it by `stat`, before any open.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import numpy as np

from .errors import InputError, SourceChangedError


def require_regular(path: Path, what: str = "file") -> os.stat_result:
    """`stat` PATH (following links) and refuse anything that is not a regular file:
    reading a FIFO blocks forever, a device never ends."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise InputError(f"{path}: no such {what}") from None
    except OSError as exc:
        raise InputError(f"{path}: cannot read ({exc.strerror or exc})") from None
    if not stat.S_ISREG(st.st_mode):
        kind = ("a FIFO" if stat.S_ISFIFO(st.st_mode) else "a folder" if stat.S_ISDIR(st.st_mode)
                else "a socket" if stat.S_ISSOCK(st.st_mode) else "a device" if
                (stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode)) else "not a regular file")
        raise InputError(f"{path}: is {kind}, not a regular {what}", hint="bitconv reads regular files only")
    return st


@dataclass(frozen=True)
class FileIdentity:
    dev: int
    ino: int
    size: int
    mtime_ns: int
    ctime_ns: int

    @classmethod
    def of(cls, st: os.stat_result) -> "FileIdentity":
        return cls(st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)

    def difference(self, now: "FileIdentity | None") -> str | None:
        """How NOW differs from this identity, in words, or None."""
        if now is None:
            return "it was removed"
        if (now.dev, now.ino) != (self.dev, self.ino):
            return "it was replaced by another file"
        if now.size != self.size:
            return f"its size changed from {self.size} to {now.size} bytes"
        if (now.mtime_ns, now.ctime_ns) != (self.mtime_ns, self.ctime_ns):
            return "it was modified"
        return None


def identity(path: Path) -> FileIdentity | None:
    try:
        return FileIdentity.of(os.stat(path))
    except OSError:
        return None


class HeldFile:
    """A source file opened once; tensor bytes are read from this descriptor (`read_at`),
    so a later rename over the path cannot mix two files into one conversion. `identity`
    is the opened file's own (fstat), the one a snapshot compares the path with."""

    def __init__(self, path: Path) -> None:
        require_regular(path, "source file")
        self.path = Path(path)
        try:
            self.fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
        except OSError as exc:
            raise InputError(f"{path}: cannot open ({exc.strerror or exc})") from None
        self.identity = FileIdentity.of(os.fstat(self.fd))

    def read_at(self, offset: int, count: int, dtype: np.dtype | str, what: str) -> np.ndarray:
        """COUNT items of DTYPE at byte OFFSET, as a new array; a file now too short for them
        (truncated during the conversion) is a `SourceChangedError`, never a SIGBUS."""
        dt = np.dtype(dtype)
        out = np.empty(int(count), dtype=dt)
        n = out.nbytes
        if n == 0:
            return out
        view = memoryview(out.view(np.uint8))
        got = 0
        while got < n:
            try:
                k = os.preadv(self.fd, [view[got:]], offset + got)
            except OSError as exc:
                raise SourceChangedError(f"{self.path}: cannot read {what} ({exc.strerror or exc})") from None
            if k <= 0:
                raise SourceChangedError(
                    f"{self.path}: the file ends at byte {offset + got} but {what} needs bytes up to "
                    f"{offset + n}: it was truncated during the conversion",
                    hint="the source changed while it was read; nothing was written, run again")
            got += k
        return out

    def close(self) -> None:
        fd, self.fd = self.fd, -1
        if fd >= 0:
            try:
                os.close(fd)
            except OSError:
                pass

    def __del__(self) -> None:
        self.close()


class SourceSnapshot:
    """The identity of every source file when it was opened; `verify` fails the run when
    any of them is no longer that file (replaced, truncated, rewritten or removed)."""

    def __init__(self, files: dict[Path, FileIdentity]) -> None:
        self.files = dict(files)

    @classmethod
    def take(cls, paths: Iterable[Path], held: dict[Path, FileIdentity] | None = None) -> "SourceSnapshot":
        """Regular files among PATHS (folders skipped); HELD gives the identity of files a
        reader already opened (their descriptor's, which is what was read)."""
        held = held or {}
        files: dict[Path, FileIdentity] = {}
        for p in paths:
            p = Path(p)
            if p in held:
                files[p] = held[p]
                continue
            try:
                st = os.stat(p)
            except OSError:
                continue
            if stat.S_ISREG(st.st_mode):
                files[p] = FileIdentity.of(st)
        return cls(files)

    def changes(self) -> list[str]:
        out = []
        for p, was in sorted(self.files.items()):
            why = was.difference(identity(p))
            if why:
                out.append(f"{p}: {why}")
        return out

    def verify(self) -> None:
        changed = self.changes()
        if changed:
            more = f" (and {len(changed) - 1} more)" if len(changed) > 1 else ""
            raise SourceChangedError(
                f"the source changed during the conversion: {changed[0]}{more}",
                hint="an output would mix two versions of the model; run again once the source is complete")
