"""Kernel caches that cannot go stale: numba's on-disk cache keyed on every kernel source.

numba stamps a cached kernel with its own file only (mtime and size), but a kernel's machine
code also holds every jitted helper it calls (`floats.to_f32` is inlined into most of them,
`tq._tq1_digits` into TQ1_0's unpacker): after editing a helper's file under `pip install -e`,
the callers' stale code would load from the cache and run. The locator registered here wraps
numba's own (same cache folders) and adds to the stamp a digest of every kernel source file
(`bitconv/kernels/*.py` and `bitconv/verify/*_kernels.py`), so a change to any of them
recompiles every kernel that was cached before it. It claims only functions defined in the
bitconv package; kernels (and the helpers they call) live in those files.
"""

from __future__ import annotations

import hashlib
from functools import lru_cache
from pathlib import Path
from typing import Any

PACKAGE = Path(__file__).resolve().parent.parent  # bitconv/


def kernel_sources() -> list[Path]:
    """Every file whose code can end up inside a cached kernel."""
    return sorted([*(PACKAGE / "kernels").glob("*.py"), *(PACKAGE / "verify").glob("*_kernels.py")])


@lru_cache(maxsize=1)
def sources_digest() -> str:
    """sha256 over the kernel sources' names and bytes (read once per process)."""
    h = hashlib.sha256()
    for p in kernel_sources():
        h.update(p.name.encode() + b"\0" + p.read_bytes() + b"\0")
    return h.hexdigest()


class _Stamped:
    """A numba cache locator with the kernel sources' digest added to its source stamp."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def get_source_stamp(self) -> Any:
        return (self._inner.get_source_stamp(), sources_digest())


class PackageStampLocator:
    """Registered first in numba's locator list; defers to the next locator that accepts the
    function and stamps it (functions outside bitconv are left to numba)."""

    others: tuple = ()

    @classmethod
    def from_function(cls, py_func: Any, py_file: str) -> Any:
        try:
            inside = Path(py_file).resolve().is_relative_to(PACKAGE)
        except (OSError, ValueError):
            inside = False
        if not inside:
            return None
        for other in cls.others:
            loc = other.from_function(py_func, py_file)
            if loc is not None:
                return _Stamped(loc)
        return None


def install() -> None:
    """Put the locator in front of numba's (once per process)."""
    from numba.core.caching import CacheImpl

    classes = CacheImpl._locator_classes
    if PackageStampLocator not in classes:
        PackageStampLocator.others = tuple(classes)
        classes.insert(0, PackageStampLocator)
