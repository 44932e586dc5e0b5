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


def ordered_map(fn: Callable[[T], R], items: Iterable[T], *, workers: int | None = None,
                max_pending: int = 4, cost: Callable[[T], int] | None = None,
                budget: int | None = None) -> Iterator[R]:
    """Yield fn(item) for each item, in order, computing up to `max_pending` ahead on threads.

    An exception in a job is raised when its result is reached; the jobs behind it are
    cancelled (or awaited, if already running) before it propagates, so no worker outlives
    the generator. Closing the generator early does the same.
    """
    workers = default_workers() if workers is None else workers
    if workers <= 1:
        for item in items:
            yield fn(item)
        return
    it = iter(items)
    pending: deque[tuple[Future, int]] = deque()
    held: list[tuple[T, int]] = []  # an item taken from `it` that did not fit the budget yet
    in_flight = 0
    done = False
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="bitconv")
    try:
        while True:
            while not done and len(pending) < max_pending:
                if held:
                    item, c = held.pop()
                else:
                    try:
                        item = next(it)
                    except StopIteration:
                        done = True
                        break
                    c = int(cost(item)) if cost is not None else 0
                if pending and budget is not None and in_flight + c > budget:
                    held.append((item, c))
                    break
                pending.append((pool.submit(fn, item), c))
                in_flight += c
            if not pending:
                return
            fut, c = pending.popleft()
            result = fut.result()
            in_flight -= c
            yield result
    finally:
        for fut, _ in pending:
            fut.cancel()
        pool.shutdown(wait=True, cancel_futures=True)
