"""Atomic output: write beside the target under a temporary name, rename when complete.

An interrupted or failed conversion (exception, Ctrl-C, full disk) removes its temporary
file and never leaves a half-written output under the final name.
"""

from __future__ import annotations

import os
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from ..errors import ConversionError, OutputExistsError


def check_output(path: Path, force: bool) -> None:
    if path.exists() and not force:
        raise OutputExistsError(f"{path} already exists", hint="pass --force to overwrite it")
    if not path.parent.exists():
        raise OutputExistsError(f"{path.parent}: output folder does not exist")


def temp_name(path: Path) -> Path:
    return path.with_name(f".{path.name}.bitconv-{os.getpid()}.tmp")


@contextmanager
def atomic_path(path: Path, force: bool = False) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success move it into place, else delete it."""
    check_output(path, force)
    tmp = temp_name(path)
    try:
        yield tmp
        if path.exists() and (path.is_dir() or tmp.is_dir()):
            old = path.with_name(path.name + f".bitconv-old-{os.getpid()}")
            path.rename(old)
            tmp.rename(path)
            _remove(old)
        else:
            os.replace(tmp, path)
    except OSError as exc:
        _remove(tmp)
        if exc.errno == 28:  # ENOSPC
            raise ConversionError(f"{path}: disk full while writing; nothing was left behind",
                                  hint="free space or write elsewhere") from None
        raise ConversionError(f"{path}: cannot write output ({exc.strerror or exc})") from None
    except BaseException:
        _remove(tmp)
        raise


def _remove(tmp: Path) -> None:
    if tmp.is_dir():
        shutil.rmtree(tmp, ignore_errors=True)
    else:
        try:
            tmp.unlink()
        except FileNotFoundError:
            pass
