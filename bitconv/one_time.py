"""One-time steps a user should hear about: a first run that compiles kernels.

The first conversion on a machine compiles bitconv's numba kernels (seconds to tens of
seconds on a loaded 2-core machine; cached afterwards). Silence during that time looks like
a hang, and a progress bar that measured its rate across it showed "311 bytes/s, ETA
5:36:48". So a step that may take long reports itself here: when it has run for longer
than `THRESHOLD` seconds, every subscriber gets one line saying what is happening (once
per process), and `quiet_since()` tells progress displays when the last such step ended,
so their rates count only work done after it.

No numba import here: `bitconv.kernels.jit` feeds numba's compile events in
(`watch_numba`), and the CLI subscribes (`subscribe`).
"""

from __future__ import annotations

import os
import threading
import time
from contextlib import contextmanager
from typing import Callable, Iterator

THRESHOLD = 1.0  # seconds a one-time step may take before it is announced


def threshold() -> float:
    """THRESHOLD, or BITCONV_NOTICE_AFTER seconds (tests set 0: any compile is announced)."""
    try:
        return float(os.environ.get("BITCONV_NOTICE_AFTER", THRESHOLD))
    except ValueError:
        return THRESHOLD

_lock = threading.Lock()
_subscribers: list[Callable[[str], None]] = []
_announced: set[str] = set()
_depth = 0
_busy_since: float | None = None
_quiet_since = time.monotonic()
_timer: threading.Timer | None = None


@contextmanager
def subscribe(callback: Callable[[str], None]) -> Iterator[None]:
    """Call CALLBACK(line) for each one-time step that runs longer than THRESHOLD while inside."""
    with _lock:
        _subscribers.append(callback)
    try:
        yield
    finally:
        with _lock:
            _subscribers.remove(callback)


def busy() -> bool:
    """Whether a one-time step is running now."""
    return _busy_since is not None


def quiet_since() -> float:
    """`time.monotonic()` when the last one-time step ended (or this module loaded)."""
    return _quiet_since


def _announce(line: str, key: str) -> None:
    with _lock:
        if key in _announced or _busy_since is None:
            return
        _announced.add(key)
        subscribers = list(_subscribers)
    for cb in subscribers:
        cb(line)


def begin(line: str, key: str | None = None) -> None:
    """A one-time step starts (nested calls count once); LINE is said if it lasts > THRESHOLD,
    once per process for each KEY (default: the line itself)."""
    key = key or line
    global _depth, _busy_since, _timer
    with _lock:
        _depth += 1
        if _depth > 1:
            return
        _busy_since = time.monotonic()
        if key not in _announced:
            _timer = threading.Timer(threshold(), _announce, args=(line, key))
            _timer.daemon = True
            _timer.start()


def end() -> None:
    global _depth, _busy_since, _quiet_since, _timer
    with _lock:
        _depth = max(0, _depth - 1)
        if _depth:
            return
        _busy_since = None
        _quiet_since = time.monotonic()
        if _timer is not None:
            _timer.cancel()
            _timer = None


_watching = False


def watch_numba(cache_dir: Callable[[object], str | None]) -> None:
    """Announce numba compilations (cache misses: numba emits `numba:compile` only when it
    compiles, never when it loads a cached kernel). CACHE_DIR(dispatcher) names where the
    result is kept, for the line. Idempotent."""
    global _watching
    if _watching:
        return
    from numba.core import event

    class _Compiles(event.Listener):
        def on_start(self, ev) -> None:
            where = cache_dir((ev.data or {}).get("dispatcher"))
            begin("compiling bitconv's kernels for this CPU, once"
                  + (f" (cached in {where})" if where else "") + "; later runs skip this", key="numba-compile")

        def on_end(self, ev) -> None:
            end()

    event.register("numba:compile", _Compiles())
    _watching = True
