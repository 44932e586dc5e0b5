"""Walk a source tensor a chunk of rows at a time, so only that chunk is in memory.

A pass that turns a float tensor into another float type (the GGUF F16 narrowing of an
embedding or head) needs the whole result, but not the whole source: read whole, an 8B
model's 1 GB bfloat16 embedding (128256 x 4096) sat in memory beside the 1 GB F16 it was
narrowed into, so the largest tensor cost twice its size in peak RSS. Readers that can read
a range of rows (`SourceTensor.load_raw_rows`: the safetensors reader reads just those bytes
through its held descriptor) are asked for ~4 MiB at a time; the others (a GGUF source)
give their whole array once.
"""

from __future__ import annotations

from typing import Iterator

import numpy as np

from ..model import SourceTensor

CHUNK_BYTES = 4 * 1024 * 1024  # ~1 ms of work per chunk: the extra reads and calls cost nothing measurable


def raw_chunks(st: SourceTensor, chunk_bytes: int | None = None) -> Iterator[tuple[int, np.ndarray]]:
    """(index of the first value, the values as stored, flat) over ST in row order, about
    CHUNK_BYTES of stored bytes at a time; together they are `st.load_raw()` flattened."""
    shape = tuple(int(d) for d in st.shape)
    count = int(np.prod(shape, dtype=np.int64))
    rows = shape[0] if len(shape) >= 2 else 1
    per_row = count // rows if rows else 0
    itemsize = max(1, st.source_nbytes // count) if count and st.source_nbytes else 4
    step = max(1, (chunk_bytes or CHUNK_BYTES) // max(1, per_row * itemsize))
    if len(shape) < 2 or step >= rows or st._load_raw_rows is None:  # no row reads: one read, walked whole
        yield 0, np.ascontiguousarray(st.load_raw()).reshape(-1)
        return
    for r in range(0, rows, step):
        part = np.ascontiguousarray(st.load_raw_rows(r, min(r + step, rows))).reshape(-1)
        yield r * per_row, part
