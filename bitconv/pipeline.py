"""Ordered parallel map: the conversion's read -> ternarize -> pack -> write overlap.

Tensors are independent until they are written, so each one's work (read it, ternarize
it, pack it) runs on a small thread pool while the caller writes finished tensors in plan
order. numpy and torch release the GIL inside their kernels and file reads and writes
release it too, so two workers keep two cores busy. Results come back in input order
whatever order the workers finish in, and every job is a pure function of its tensor,
so the output bytes do not depend on the number of workers (BITCONV_THREADS=1 runs
everything inline, in order).

Memory stays bounded: at most `max_pending` jobs are submitted ahead of the one the
caller waits for, and at most `budget` bytes are charged at once: each running or finished
job's declared `cost`, plus the `held` bytes of the result the caller is working on (a
writer writing it), which it keeps until it asks for the next one. A job larger than the
budget runs only when nothing else is charged, so the largest tensor is never in memory
beside another large one (an 8B model's embedding and its untied head, 1 GB each).
"""

from __future__ import annotations

import os
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Callable, Iterable, Iterator, TypeVar

T = TypeVar("T")
R = TypeVar("R")

ENV_THREADS = "BITCONV_THREADS"
# Bytes of tensor work charged at once (see OrderedMap): two of an 8B model's largest
# linears (14336 x 4096, 235 MB as float32) run side by side, so two workers keep two cores
# busy there, while its 1 GB embedding and head run alone; peak RSS then stays within the
# largest tensor + 512 MB (issue 23).
MEMORY_BUDGET = 512 * 1024 * 1024
ENV_BUDGET = "BITCONV_MEMORY_BUDGET_MB"


def memory_budget() -> int:
    """Bytes of work in flight: BITCONV_MEMORY_BUDGET_MB (MiB) if set, else MEMORY_BUDGET.
    A smaller budget trades overlap for peak memory (a small container); tests use it to
    put a small model in an 8B model's regime (tables larger than the budget)."""
    env = os.environ.get(ENV_BUDGET, "").strip()
    if env.isdigit() and int(env) > 0:
        return int(env) * 1024 * 1024
    return MEMORY_BUDGET


MAX_DEFAULT_WORKERS = 4


def default_workers() -> int:
    """Worker threads: BITCONV_THREADS if set, else the cores this process may use (its
    affinity mask: `taskset`, a container's cpuset), at most MAX_DEFAULT_WORKERS.

    Why a cap: one thread writes the output in order, so the workers can at best keep it
    busy. One thread's conversion work measured 0.6-2.7 CPU-seconds per second of the I/O
    floor (`bench/bench_convert.py --single`, work/floor; README "Conversion at scale"), so
    a third or fourth worker already waits on the writer; more only add memory in flight."""
    env = os.environ.get(ENV_THREADS, "").strip()
    if env.isdigit() and int(env) > 0:
        return int(env)
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    return max(1, min(MAX_DEFAULT_WORKERS, cores))


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
                 budget: int | None = None, held: Callable[[T], int] | None = None) -> None:
        self._fn, self._it, self._cost, self._budget, self._held_cost = fn, iter(items), cost, budget, held
        self._max_pending = max(1, max_pending)
        workers = default_workers() if workers is None else workers
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="bitconv") if workers > 1 else None
        self._pending: deque[tuple[Future, int, int]] = deque()  # (job, its cost, its result's held bytes)
        self._waiting: list[tuple[T, int, int]] = []  # an item taken from the input that did not fit the budget yet
        self._in_flight = 0  # cost of the pending jobs + the held bytes of the result the caller has
        self._with_caller = 0  # held bytes of the result handed out last (released at the next `next()`)
        self.submitted = 0  # jobs handed to the workers so far (tests read it: no clock needed)
        self._done = False
        self._closed = False
        self._fill()

    def _fill(self) -> None:
        if self._pool is None:
            return
        while not self._done and len(self._pending) < self._max_pending:
            if self._waiting:
                item, c, h = self._waiting.pop()
            else:
                try:
                    item = next(self._it)
                except StopIteration:
                    self._done = True
                    break
                c = int(self._cost(item)) if self._cost is not None else 0
                h = int(self._held_cost(item)) if self._held_cost is not None else 0
            if self._in_flight > 0 and self._budget is not None and self._in_flight + c > self._budget:
                self._waiting.append((item, c, h))
                break
            self._pending.append((self._pool.submit(self._fn, item), c, h))
            self._in_flight += c
            self.submitted += 1

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
        self._in_flight -= self._with_caller  # the caller is done with the last result
        self._with_caller = 0
        self._fill()
        if not self._pending:
            self.close()
            raise StopIteration
        fut, c, h = self._pending.popleft()
        try:
            result = fut.result()
        except BaseException:
            self.close()
            raise
        self._in_flight += h - c  # its work is done; the caller holds its result until the next call
        self._with_caller = h
        self._fill()
        return result

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for fut, *_ in self._pending:
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
                budget: int | None = None, held: Callable[[T], int] | None = None) -> OrderedMap[R]:
    """`OrderedMap(fn, items, ...)`: results in input order, work started at once."""
    return OrderedMap(fn, items, workers=workers, max_pending=max_pending, cost=cost, budget=budget, held=held)
