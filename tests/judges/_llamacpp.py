"""llama.cpp as a judge: the logits it computes for a token sequence, shared by the judge tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def llama_logits(path: Path, ids: list[int], n_ctx: int = 256) -> np.ndarray:
    """Logits [len(ids), vocab] of llama.cpp (llama-cpp-python) for `ids` in one batch, 2 threads.

    One batch and a fixed thread count keep llama.cpp's own reductions the same across runs, so a
    judge measures the file, not the scheduling.
    """
    import llama_cpp

    llm = llama_cpp.Llama(model_path=str(path), logits_all=True, n_ctx=n_ctx, n_batch=n_ctx, verbose=False,
                          n_threads=2, seed=0)
    try:
        llm.eval(ids)
        assert llm.n_tokens == len(ids)
        return np.array(llm.scores[: len(ids)], dtype=np.float32)
    finally:
        llm.close()
