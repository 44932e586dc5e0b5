"""Compiled inner loops (numba) for the conversion's hot paths (issue 14).

Why numba: a conversion walks ~10^9 weights; numpy needs one pass over memory per
operation (abs, compare, subtract, multiply, sum, shift, or ...) and holds the GIL between
them, so a two-worker pipeline ran at 1.2 cores. A numba kernel does all of a tensor's
work in one or two passes and releases the GIL (`nogil=True`), so the workers really run
in parallel.

Rules every kernel module here follows:
* it is imported lazily, inside the function that needs it, never by `bitconv.cli`,
  `inspect` or `--help` (start-up budget), and only `bitconv.kernels.jit` decorates;
* it is deterministic: integer work is exact, and float sums use a fixed order (explicit
  lanes and blocks; numba never reassociates without `fastmath`, which is never used);
* it computes exactly what the numpy formula it replaces computes; the numpy formula
  stays in the tests as the reference, compared byte for byte;
* compiled code is cached on disk (`cache=True`: `__pycache__` beside the module, or
  numba's user cache dir where that is read-only; NUMBA_CACHE_DIR overrides), so only the
  first conversion on a machine pays the compile time. Where no cache location is
  writable (a read-only install without a user cache dir) kernels are compiled in each
  process instead of failing (a few seconds per conversion). numba keys a cached kernel on
  its own file only, but its machine code holds the jitted helpers it calls from other
  files (`floats.to_f32`): `cache.py` adds a digest of every kernel source to the key, so
  editing any of them recompiles every kernel (tests/test_kernel_cache.py).
"""

from __future__ import annotations

from typing import Any, Callable


def jit(fn: Callable[..., Any] | None = None, *, inline: bool = False) -> Any:
    """`numba.njit` with the project's settings: no GIL, cached, no fastmath. `inline=True`
    inlines a helper into its callers at numba's level (so LLVM sees, for example, that a
    buffer the caller allocated aliases nothing)."""
    import numba

    from .cache import install

    install()  # cached kernels are keyed on every kernel source, not only their own file
    from ..one_time import watch_numba

    watch_numba(_cache_dir)  # a first run's compile is announced, and progress rates skip it

    def wrap(f: Callable[..., Any]) -> Callable[..., Any]:
        opts = dict(nogil=True, fastmath=False, inline="always" if inline else "never")
        try:
            return numba.njit(cache=True, **opts)(f)
        except RuntimeError:  # no writable cache location (read-only install, no user cache dir)
            return numba.njit(cache=False, **opts)(f)  # compiled in every process instead: slower, same code

    return wrap(fn) if fn is not None else wrap


def _cache_dir(dispatcher: Any) -> str | None:
    """Where numba keeps DISPATCHER's compiled code (None when unknown or not cached)."""
    cache = getattr(dispatcher, "_cache", None)
    return getattr(cache, "_cache_path", None)


def warm() -> None:
    """Pay numba's one-time start-up now: its import, and the registries its first call
    loads (with scipy installed, that imports scipy.linalg to look for BLAS: ~0.3-0.5 s).
    Every later cached kernel loads in milliseconds. `convert` pays this on first use;
    benchmarks call it before timing, as they import modules before timing."""
    import numpy as np

    from .floats import count_nonfinite

    count_nonfinite(np.zeros(1, dtype=np.float32))
