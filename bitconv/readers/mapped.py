"""Walk a memory-mapped source array in chunks, giving the pages read back as it goes.

Readers hand out tensors as read-only-in-practice memory maps (`np.memmap`, mode "c"), so
nothing is read until a kernel touches it. But every page touched stays in the process's
resident set until the map is closed: one pass over a 1 GB bfloat16 embedding (an 8B
model's, 128256 x 4096) keeps 1 GB of file pages resident beside the 1 GB it writes, so
the largest tensor cost twice its size in peak RSS. `chunks` yields consecutive slices of
the flat array and, once the caller has finished with one, tells the kernel it may drop
those pages (`madvise(MADV_DONTNEED)`): they stay in the page cache, no longer in this
process. The map is never written, so nothing is lost; reading a dropped page again just
maps it again. Arrays that are not mapped, or systems without `madvise`, are walked the
same way and keep their pages (correct, only less frugal).
"""

from __future__ import annotations

import mmap
from typing import Iterator

import numpy as np

CHUNK_BYTES = 16 * 1024 * 1024  # a few ms of work per kernel call: the calls and madvise cost nothing measurable


def _mapping(arr: np.ndarray) -> tuple[mmap.mmap, int] | None:
    """The `mmap` under `arr` and the address its map starts at, if `arr` views one."""
    base = arr
    while isinstance(base, np.ndarray):
        if isinstance(base, np.memmap) and isinstance(base.base, mmap.mmap):
            # the memmap numpy made (a slice of one carries its parent's `offset`, so only the
            # root's data pointer says where the map starts): numpy maps from `offset` rounded
            # down to the allocation granularity
            return base.base, base.ctypes.data - base.offset % mmap.ALLOCATIONGRANULARITY
        base = base.base
    return None


def release_pages(part: np.ndarray, mapping: tuple[mmap.mmap, int] | None) -> None:
    """Drop the whole pages of `part` (a contiguous view into `mapping`) from this process."""
    advice = getattr(mmap, "MADV_DONTNEED", None)
    if mapping is None or advice is None or part.nbytes == 0:
        return
    mm, start = mapping
    page = mmap.PAGESIZE
    lo = part.ctypes.data - start
    hi = lo + part.nbytes
    lo = -(-lo // page) * page  # whole pages only: a page shared with the next chunk stays
    hi = hi // page * page
    if lo < 0 or hi > len(mm) or hi <= lo:
        return
    try:
        mm.madvise(advice, lo, hi - lo)
    except (OSError, ValueError):  # a closed map or a kernel that refuses: keep the pages
        pass


def chunks(flat: np.ndarray, chunk_bytes: int | None = None) -> Iterator[tuple[int, np.ndarray]]:
    """(start index, slice) over a 1-D contiguous array, CHUNK_BYTES at a time; each slice's
    pages are released from this process once the caller asks for the next (or the walk ends)."""
    if flat.ndim != 1:
        raise ValueError("chunks() walks a flat array")
    mapping = _mapping(flat)
    step = max(1, (chunk_bytes or CHUNK_BYTES) // max(1, flat.itemsize))
    for a in range(0, flat.size, step):
        part = flat[a:a + step]
        yield a, part
        release_pages(part, mapping)
