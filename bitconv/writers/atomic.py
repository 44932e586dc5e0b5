"""Safe output: guards before reading, a temporary name while writing, an exclusive rename.

Why each rule exists (issue 10):

* An existing *directory* is replaced only when bitconv wrote it (`is_bitconv_output`) and
  `--force` is given; a user's folder is never deleted, with or without `--force`.
* An output that is a source, lies inside a source folder, or contains a source is refused
  (exit 2) before anything is read: `--force` must never replace the weights it converts.
* The data goes to a temporary name beside the target; the final step is one rename. Without
  `--force` it is exclusive (`renameat2(RENAME_NOREPLACE)`, or a hard link for files where
  that is unavailable): of two writers racing for one new path, one wins whole and the other
  fails with `OutputExistsError`. With `--force` it is an atomic swap
  (`RENAME_EXCHANGE`) followed by removing what was swapped out.
* An interrupted conversion (exception, Ctrl-C, SIGTERM, SIGHUP, full disk) removes its
  temporary file or folder and leaves an earlier output untouched.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import json
import os
import re
import secrets
import shutil
import signal
import struct
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Iterable, Iterator

from ..errors import BitconvError, ConversionError, InputError, OutputExistsError, UsageError

MANIFEST_NAME = "bitconv-manifest.json"
# Files the safetensors writer puts in an output folder (its "layout").
_FOLDER_FILES = {"config.json", "model.safetensors", "model.safetensors.index.json", "README.md",
                 "tokenizer.json", "tokenizer.model", "tokenizer_config.json", "special_tokens_map.json",
                 "added_tokens.json", "vocab.json", "merges.txt", "chat_template.jinja", "chat_template.json",
                 "generation_config.json"}
_SHARD = re.compile(r"^model-\d{5}-of-\d{5}\.safetensors$")
_RENAME_NOREPLACE, _RENAME_EXCHANGE = 1, 2
_HEADER_LIMIT = 100 << 20  # a safetensors header larger than this is not one bitconv wrote


class Interrupted(KeyboardInterrupt):
    """A termination signal turned into an exception, so every cleanup path runs."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


# -- guards ----------------------------------------------------------------------------
def _abs(path: Path) -> Path:
    """Absolute path with symlinks of the parent resolved, the last component kept as named."""
    path = Path(path).expanduser()
    return Path(os.path.realpath(path.parent)) / path.name if path.name else Path(os.path.realpath(path))


def _inside(child: Path, parent: Path) -> bool:
    return child == parent or parent in child.parents


def check_not_source(output: Path, sources: Iterable[Path], what: str = "output") -> None:
    """Refuse an output that is a source, is inside a source folder, or contains a source.

    Compared on both the path as named and the fully resolved one, so neither a symlink
    to the source nor a path through a symlinked folder slips through.
    """
    out_named, out_real = _abs(output), Path(os.path.realpath(Path(output).expanduser()))
    for src in sources:
        src = Path(src).expanduser()
        if not src.exists():
            continue
        for s in {_abs(src), Path(os.path.realpath(src))}:
            for o in (out_named, out_real):
                if o == s or (src.is_dir() and _inside(o, s)) or _inside(s, o):
                    where = ("is the source" if o == s else "is inside the source folder"
                             if _inside(o, s) else "contains the source")
                    raise UsageError(f"{output}: the {what} {where} {src}; refusing to write there",
                                     hint="choose an output outside the model folder")


def check_output(path: Path, force: bool, sources: Iterable[Path] = ()) -> None:
    """Everything that can be checked about an output path before the source is read."""
    path = Path(path)
    check_not_source(path, sources)
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.exists():
        raise OutputExistsError(f"{parent}: output folder does not exist", hint="create it first")
    if not parent.is_dir():
        raise InputError(f"{parent}: is not a folder; the output cannot be written inside it")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise InputError(f"{parent}: output folder is not writable", hint="choose a folder you can write to")
    if os.path.lexists(path):
        if not force:
            raise OutputExistsError(f"{path} already exists", hint="pass --force to overwrite it")
        check_replaceable(path)


def check_replaceable(path: Path) -> None:
    """With --force: a file may be replaced; a folder only when bitconv wrote it."""
    if path.is_symlink() or not path.is_dir():
        return
    try:
        if not any(os.scandir(path)):  # an empty folder holds nothing of the user's to lose
            return
    except OSError:
        pass
    if not is_bitconv_output(path):
        raise OutputExistsError(
            f"{path} is a folder bitconv did not write; refusing to replace it even with --force",
            hint="choose a new output path, or remove the folder yourself",
        )


def is_bitconv_output(folder: Path) -> bool:
    """True for a folder bitconv wrote: a release folder whose manifest lists every entry, or a
    packed-safetensors folder holding only the files the writer makes, stamped `bitconv.version`."""
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return False
    names = {e.name for e in entries}
    if MANIFEST_NAME in names:
        try:
            m = json.loads((folder / MANIFEST_NAME).read_text(encoding="utf-8"))
            listed = {str(a["path"]).split("/")[0] for a in m["artifacts"]} if isinstance(m, dict) else set()
        except (OSError, ValueError, KeyError, TypeError, RecursionError):
            return False
        if "bitconv_version" in m and names <= listed | {MANIFEST_NAME, "README.md"}:
            return True
    if not entries or any(not e.is_file(follow_symlinks=False) for e in entries):
        return False
    if any(n not in _FOLDER_FILES and not _SHARD.match(n) for n in names):
        return False
    shards = [folder / n for n in sorted(names) if n.endswith(".safetensors")]
    return bool(shards) and all(_stamped(p) for p in shards)


def _stamped(path: Path) -> bool:
    """The safetensors header's __metadata__ carries bitconv.version."""
    try:
        with open(path, "rb") as f:
            (n,) = struct.unpack("<Q", f.read(8))
            if n > _HEADER_LIMIT:
                return False
            header = json.loads(f.read(n))
        return "bitconv.version" in (header.get("__metadata__") or {})
    except (OSError, ValueError, struct.error, AttributeError, RecursionError):
        return False


# -- the temporary path and the final rename -------------------------------------------
def temp_name(path: Path) -> Path:
    """A name no other writer (process, thread or nested call) uses for the same target."""
    return path.with_name(f".{path.name}.bitconv-{os.getpid()}-{secrets.token_hex(4)}.tmp")


@contextmanager
def atomic_path(path: Path, force: bool = False) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success move it into place, else delete it."""
    path = Path(path)
    check_output(path, force)
    tmp = temp_name(path)
    try:
        with cleanup_on_signals():
            yield tmp
            _commit(tmp, path, force)
    except BitconvError:
        _remove(tmp)
        raise
    except OSError as exc:
        _remove(tmp)
        if exc.errno == errno.ENOSPC:
            raise ConversionError(f"{path}: disk full while writing; nothing was left behind",
                                  hint="free space or write elsewhere") from None
        if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
            raise InputError(f"{path}: cannot write there ({exc.strerror or exc})",
                             hint="choose a folder you can write to") from None
        raise ConversionError(f"{path}: cannot write output ({exc.strerror or exc})") from None
    except BaseException:
        _remove(tmp)
        raise


def _commit(tmp: Path, path: Path, force: bool) -> None:
    if not force:
        try:
            exclusive_rename(tmp, path)
        except FileExistsError:
            raise OutputExistsError(f"{path} appeared while this conversion was writing; it was not replaced",
                                    hint="another process wrote it; pass --force to overwrite it") from None
        return
    if not os.path.lexists(path):
        try:
            exclusive_rename(tmp, path)
            return
        except FileExistsError:
            pass  # appeared meanwhile: --force replaces it below, under the same rules
    check_replaceable(path)
    if not tmp.is_dir() and not path.is_dir():
        os.replace(tmp, path)
        return
    if _renameat2(tmp, path, _RENAME_EXCHANGE):
        _remove(tmp)  # tmp now holds what was at `path`
        return
    old = path.with_name(f".{path.name}.bitconv-old-{os.getpid()}")
    os.rename(path, old)
    try:
        os.rename(tmp, path)
    except BaseException:
        os.rename(old, path)
        raise
    _remove(old)


def exclusive_rename(src: Path, dst: Path) -> None:
    """Rename SRC to DST, raising FileExistsError if DST exists, atomically where the OS can."""
    if _renameat2(src, dst, _RENAME_NOREPLACE):
        return
    if not Path(src).is_dir():
        try:
            os.link(src, dst)  # EEXIST is atomic; then drop the temporary name
        except FileExistsError:
            raise
        except OSError:
            pass  # no hard links on this file system: the locked rename below
        else:
            os.unlink(src)
            return
    lock = dst.with_name(f".{dst.name}.bitconv-lock")
    fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)  # serializes bitconv writers
    try:
        if os.path.lexists(dst):
            raise FileExistsError(errno.EEXIST, "exists", str(dst))
        os.rename(src, dst)
    finally:
        os.close(fd)
        os.unlink(lock)


_libc = None


def _renameat2(src: Path, dst: Path, flags: int) -> bool:
    """Linux renameat2; True when done, False when the OS or file system lacks it."""
    global _libc
    if _libc is None:
        try:
            _libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
            _libc.renameat2  # noqa: B018 - raises AttributeError on libcs without it
        except (OSError, AttributeError):
            _libc = False
    if _libc is False:
        return False
    at_fdcwd = -100
    rc = _libc.renameat2(at_fdcwd, os.fsencode(src), at_fdcwd, os.fsencode(dst), flags)
    if rc == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP):
        return False
    if err == errno.EEXIST:
        raise FileExistsError(err, os.strerror(err), str(dst))
    raise OSError(err, os.strerror(err), str(dst))


def _remove(tmp: Path) -> None:
    """Remove a temporary file or folder; never raises (its error must not hide the real one)."""
    try:
        if tmp.is_dir() and not tmp.is_symlink():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            tmp.unlink()
    except OSError:
        pass


# -- signals ---------------------------------------------------------------------------
_SIGNALS = tuple(s for s in (getattr(signal, "SIGTERM", None), getattr(signal, "SIGHUP", None)) if s is not None)


def _raise(signum: int, frame) -> None:  # noqa: ARG001
    raise Interrupted(signum)


@contextmanager
def cleanup_on_signals() -> Iterator[None]:
    """Turn SIGTERM/SIGHUP into an `Interrupted` exception (as Ctrl-C is a KeyboardInterrupt)
    while the body runs, so the cleanup that handles Ctrl-C runs for them too. Only the main
    thread can install handlers; elsewhere (release writer threads) this does nothing and
    the main thread's handler raises there, which the writer threads then see."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {}
    for s in _SIGNALS:
        try:
            previous[s] = signal.signal(s, _raise)
        except (ValueError, OSError):
            pass
    try:
        yield
    finally:
        for s, h in previous.items():
            try:
                signal.signal(s, h)
            except (ValueError, OSError):
                pass
