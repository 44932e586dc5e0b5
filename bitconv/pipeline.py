"""Ordered parallel map: the conversion's read -> ternarize -> pack -> write overlap.

Tensors are independent until they are written, so each one's work (read it, ternarize
it, pack it) runs on a small thread pool while the caller writes finished tensors in plan
order. numpy and torch release the GIL inside their kernels and file reads and writes
release it too, so two workers keep two cores busy. Results come back in input order
whatever order the workers finish in, and every job is a pure function of its tensor,
so the output bytes do not depend on the number of workers (BITCONV_THREADS=1 runs
everything inline, in order).

Memory stays bounded: at most `max_pending` jobs are submitted ahead of the one the
caller waits for, and at most `budget` bytes of their declared cost (one job is always
allowed, however large).
"""

from __future__ import annotations

import os
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Callable, Iterable, Iterator, TypeVar

T = TypeVar("T")
R = TypeVar("R")

ENV_THREADS = "BITCONV_THREADS"


def default_workers() -> int:
    """Worker threads: BITCONV_THREADS if set, else the cores this process may use (at most 4)."""
    env = os.environ.get(ENV_THREADS, "").strip()
    if env.isdigit() and int(env) > 0:
        return int(env)
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    return max(1, min(4, cores))


class OrderedMap(Iterator[R]):
    """fn(item) for each item, in order, computed up to `max_pending` ahead on threads.

    Work starts when the map is made, not when it is first iterated, so whatever the
    caller does before its first `next()` (a writer serializing the header and the
    tokenizer) overlaps with the first jobs. An exception in a job is raised when its
    result is reached; `close()` (also on an exception, at the end, or as a context
    manager) cancels the jobs not started and waits for those running, so no worker
    outlives the map.
    """

    def __init__(self, fn: Callable[[T], R], items: Iterable[T], *, workers: int | None = None,
                 max_pending: int = 4, cost: Callable[[T], int] | None = None,
                 budget: int | None = None) -> None:
        self._fn, self._it, self._cost, self._budget = fn, iter(items), cost, budget
        self._max_pending = max(1, max_pending)
        workers = default_workers() if workers is None else workers
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="bitconv") if workers > 1 else None
        self._pending: deque[tuple[Future, int]] = deque()
        self._held: list[tuple[T, int]] = []  # an item taken from the input that did not fit the budget yet
        self._in_flight = 0
        self._done = False
        self._closed = False
        self._fill()

    def _fill(self) -> None:
        if self._pool is None:
            return
        while not self._done and len(self._pending) < self._max_pending:
            if self._held:
                item, c = self._held.pop()
            else:
                try:
                    item = next(self._it)
                except StopIteration:
                    self._done = True
                    break
                c = int(self._cost(item)) if self._cost is not None else 0
            if self._pending and self._budget is not None and self._in_flight + c > self._budget:
                self._held.append((item, c))
                break
            self._pending.append((self._pool.submit(self._fn, item), c))
            self._in_flight += c

    def __iter__(self) -> "OrderedMap[R]":
        return self

    def __next__(self) -> R:
        if self._closed:
            raise StopIteration
        if self._pool is None:  # one worker: inline, in order
            try:
                return self._fn(next(self._it))
            except BaseException:
                self.close()
                raise
        if not self._pending:
            self.close()
            raise StopIteration
        fut, c = self._pending.popleft()
        try:
            result = fut.result()
        except BaseException:
            self.close()
            raise
        self._in_flight -= c
        self._fill()
        return result

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for fut, _ in self._pending:
            fut.cancel()
        self._pending.clear()
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)

    def __enter__(self) -> "OrderedMap[R]":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def ordered_map(fn: Callable[[T], R], items: Iterable[T], *, workers: int | None = None,
                max_pending: int = 4, cost: Callable[[T], int] | None = None,
                budget: int | None = None) -> OrderedMap[R]:
    """`OrderedMap(fn, items, ...)`: results in input order, work started at once."""
    return OrderedMap(fn, items, workers=workers, max_pending=max_pending, cost=cost, budget=budget)
