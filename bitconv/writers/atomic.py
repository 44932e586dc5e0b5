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
from typing import Any, Callable, Iterable, Iterator

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
                                     hint="choose an output outside the model folder" if src.is_dir()
                                     else "choose another output path")


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
    with staged(force) as stage:
        yield stage.file(path)


class Stage:
    """Every file one write step makes, main outputs and side files alike (kernel configs,
    manifests, model cards): each is checked when added, written under a temporary name,
    and renamed into place by `commit` in the order added; `discard` removes the temps.

    One guard for all of them (issue 25): exclusive create; with `--force` a main output
    replaces a file (or a folder bitconv wrote), a side file only a file bitconv wrote
    (`ours`), never a symlink or folder, so a user's own README.md or a hand-written
    manifest beside the output is refused even with `--force`."""

    def __init__(self, force: bool) -> None:
        self.force = force
        self._items: list[tuple[Path, Path, Callable[[Path], bool] | None, str]] = []

    def file(self, path: Path, *, ours: Callable[[Path], bool] | None = None, what: str = "output") -> Path:
        """Check PATH (as `check_output`, or `check_side_file` when `ours` is given) and
        return the temporary path to write it under."""
        path = Path(path)
        if ours is None:
            check_output(path, self.force)
        else:
            check_side_file(path, self.force, ours, what)
        tmp = temp_name(path)
        self._items.append((tmp, path, ours, what))
        return tmp

    def text(self, path: Path, text: str, *, ours: Callable[[Path], bool], what: str) -> None:
        """Stage a small text side file with its content."""
        tmp = self.file(path, ours=ours, what=what)
        with open(tmp, "x", encoding="utf-8") as f:
            f.write(text)

    def commit(self) -> None:
        """Rename every staged file into place, signals held until the last rename is done
        (so a message can say exactly what is on disk). If one fails, the ones this commit
        created are removed again and the rest of the temps are discarded."""
        done: list[tuple[Path, bool]] = []
        with hold_signals():
            try:
                for tmp, path, ours, what in self._items:
                    done.append((path, _commit(tmp, path, self.force, ours, what)))
                    _WRITTEN.append(path)
            except BaseException:
                for path, created in done:
                    if created:
                        _remove(path)
                        _WRITTEN.remove(path)
                self.discard()
                raise

    def discard(self) -> None:
        with hold_signals(reraise=False):
            for tmp, *_ in self._items:
                _remove(tmp)


@contextmanager
def staged(force: bool = False) -> Iterator[Stage]:
    """A `Stage` whose files are committed when the body succeeds and removed when it fails
    for any reason (exception, Ctrl-C, SIGTERM, SIGHUP, full disk)."""
    stage = Stage(force)
    try:
        with cleanup_on_signals():
            yield stage
            stage.commit()
    except BitconvError:
        stage.discard()
        raise
    except OSError as exc:
        stage.discard()
        path = exc.filename or (stage._items[0][1] if stage._items else "output")
        if exc.errno == errno.ENOSPC:
            raise ConversionError(f"{path}: disk full while writing; nothing was left behind",
                                  hint="free space or write elsewhere") from None
        if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
            raise InputError(f"{path}: cannot write there ({exc.strerror or exc})",
                             hint="choose a folder you can write to") from None
        raise ConversionError(f"{path}: cannot write output ({exc.strerror or exc})") from None
    except BaseException:
        stage.discard()
        raise


def check_side_file(path: Path, force: bool, ours: Callable[[Path], bool], what: str) -> None:
    """A side file (`what`: e.g. "model card") may be created; with --force it may replace
    only a regular file that `ours` recognizes as bitconv's."""
    path = Path(path)
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise UsageError(f"{path}: the folder for the {what} ({parent}) does not exist", hint="create it first")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise InputError(f"{parent}: folder is not writable (the {what} goes there)",
                         hint="choose a folder you can write to")
    if not os.path.lexists(path):
        return
    if path.is_symlink() or not path.is_file():
        kind = "a symlink" if path.is_symlink() else "a folder" if path.is_dir() else "not a regular file"
        raise OutputExistsError(f"{path} is {kind}; bitconv writes the {what} there and never replaces it, "
                                f"even with --force", hint="remove it yourself or choose another path")
    if not force:
        raise OutputExistsError(f"{path} already exists; bitconv writes the {what} there",
                                hint="pass --force to replace one bitconv wrote, or move it")
    if not ours(path):
        raise OutputExistsError(f"{path} exists and bitconv did not write it; the {what} would replace it, "
                                f"which bitconv refuses even with --force",
                                hint="move it, or write the outputs to another folder")


def _commit(tmp: Path, path: Path, force: bool, ours: Callable[[Path], bool] | None = None,
            what: str = "output") -> bool:
    """Move TMP to PATH under the stage's rules; True when PATH did not exist before."""
    if not force:
        try:
            exclusive_rename(tmp, path)
        except FileExistsError:
            raise OutputExistsError(f"{path} appeared while this conversion was writing; it was not replaced",
                                    hint="another process wrote it; pass --force to overwrite it") from None
        return True
    if not os.path.lexists(path):
        try:
            exclusive_rename(tmp, path)
            return True
        except FileExistsError:
            pass  # appeared meanwhile: --force replaces it below, under the same rules
    if ours is None:
        check_replaceable(path)
    else:
        check_side_file(path, force, ours, what)
    if not tmp.is_dir() and not path.is_dir():
        os.replace(tmp, path)
        return False
    was_empty = _empty_dir(path)
    if _renameat2(tmp, path, _RENAME_EXCHANGE):
        if not was_empty:
            _remove(tmp)  # tmp now holds what was at `path`: bitconv's earlier output
        elif not _rmdir(tmp):
            _renameat2(tmp, path, _RENAME_EXCHANGE)  # files appeared in it: swap back, lose nothing
            raise _gained_files(path)
        return False
    old = path.with_name(f".{path.name}.bitconv-old-{os.getpid()}")
    os.rename(path, old)
    if was_empty and not _rmdir(old):
        os.rename(old, path)
        raise _gained_files(path)
    try:
        os.rename(tmp, path)
    except BaseException:
        if not was_empty:
            os.rename(old, path)
        raise
    if not was_empty:
        _remove(old)
    return False


def _empty_dir(path: Path) -> bool:
    try:
        return path.is_dir() and not path.is_symlink() and next(os.scandir(path), None) is None
    except OSError:
        return False


def _rmdir(path: Path) -> bool:
    try:
        os.rmdir(path)
        return True
    except OSError:
        return False


def _gained_files(path: Path) -> OutputExistsError:
    return OutputExistsError(f"{path}: files appeared in the empty folder while this conversion was writing; "
                             f"it was not replaced", hint="choose another output path")


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


def _install(previous: dict[int, Any], signals: tuple[int, ...], handler, *, skip_ignored: bool = False) -> None:
    """Set `handler` for each of `signals` the platform lets Python set, recording each handler
    it replaces in `previous` as it goes (filled in place, so a signal arriving half way
    through still leaves `_restore` the full list). With `skip_ignored`, a signal that is
    ignored (SIG_IGN, e.g. under nohup) or whose handler was set outside Python (None: it
    could not be put back) is left alone."""
    for s in signals:
        try:
            if skip_ignored:
                current = signal.getsignal(s)
                if current is None or current is signal.SIG_IGN:
                    continue
            previous[s] = signal.signal(s, handler)
        except (ValueError, OSError):
            pass


def _restore(previous: dict[int, Any]) -> None:
    """Put back the handlers `_install` replaced."""
    for s, h in previous.items():
        try:
            signal.signal(s, h)
        except (ValueError, OSError):
            pass


@contextmanager
def cleanup_on_signals() -> Iterator[None]:
    """Turn SIGTERM/SIGHUP into an `Interrupted` exception (as Ctrl-C is a KeyboardInterrupt)
    while the body runs, so the cleanup that handles Ctrl-C runs for them too. Only the main
    thread can install handlers; elsewhere (release writer threads) this does nothing and
    the main thread's handler raises there, which the writer threads then see."""
    if _holding or threading.current_thread() is not threading.main_thread():
        yield  # signals are held (see `hold_signals`): do not turn them back into exceptions
        return
    previous: dict[int, Any] = {}
    _install(previous, _SIGNALS, _raise)
    try:
        yield
    finally:
        _restore(previous)


# Paths renamed into place in this process (oldest first), so an interrupted command can
# say exactly what it left on disk; the CLI clears it when a command starts.
_WRITTEN: list[Path] = []


def written() -> list[Path]:
    """Every path a `Stage` committed since the last `reset_written()`."""
    return list(_WRITTEN)


def reset_written() -> None:
    _WRITTEN.clear()


_HELD = (signal.SIGINT, *_SIGNALS)
_holding: list[list[int]] = []  # one list of pending signals per active hold (main thread only)


def _record(signum: int, frame) -> None:  # noqa: ARG001
    _holding[0].append(signum)


def raise_signal_exception(signum: int) -> None:
    """The exception a signal becomes: KeyboardInterrupt for SIGINT, `Interrupted` otherwise."""
    if signum == signal.SIGINT:
        raise KeyboardInterrupt
    raise Interrupted(signum)


@contextmanager
def hold_signals(reraise: bool = True) -> Iterator[None]:
    """Hold SIGINT/SIGTERM/SIGHUP while the body runs (a rename sequence, a cleanup), so a
    second Ctrl-C 20 ms after the first cannot stop a temp folder's removal half way and a
    signal cannot land between two renames. With `reraise`, the first held signal is raised
    when the body is done; without, it is dropped (the body is already handling one).
    Nested holds defer to the outermost; off the main thread this does nothing (Python
    runs signal handlers only there)."""
    if _holding or threading.current_thread() is not threading.main_thread():
        yield
        return
    pending: list[int] = []
    _holding.append(pending)
    previous: dict[int, Any] = {}
    try:
        _install(previous, _HELD, _record, skip_ignored=True)
        yield
    finally:
        _restore(previous)
        _holding.clear()
    if reraise and pending:
        raise_signal_exception(pending[0])
