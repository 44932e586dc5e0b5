"""The conversion pipeline's memory budget and thread use (issue 23 items 1 and 2).

* A result the caller (the writer) is still working on stays charged until it asks for the
  next one, so a job larger than the budget never runs beside it: an 8B model's 1 GB
  embedding and its 1 GB untied head, adjacent in the plan, were held at once (2.17 GB).
* The default worker count follows the cores the process may use (its affinity mask), not
  the machine's core count.
* Exact-ternary detection runs torch on one thread per pipeline worker, never torch's own
  OpenMP team (whose threads spun between the scan's small ops).

Nothing here waits on a clock: the map's `submitted` count says what was started.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest
import waiting
from hostile_helpers import edited_copy

from bitconv import pipeline
from bitconv.pipeline import MAX_DEFAULT_WORKERS, default_workers, ordered_map

REPO = Path(__file__).resolve().parents[1]


def test_a_held_result_is_charged_until_the_caller_comes_back():
    cost = {"embd": 10, "head": 10, "norm": 1}
    held = {"embd": 10, "head": 10, "norm": 0}
    m = ordered_map(lambda x: x, ["head", "embd", "norm"], workers=2, cost=cost.get, budget=15, held=held.get)
    with m:
        assert m.submitted == 1  # embd waits: head's 10 + its 10 exceed 15
        assert next(m) == "head"
        assert m.submitted == 1  # the caller holds head's result: embd still waits
        assert next(m) == "embd"  # head released, so embd ran alone
        assert m.submitted == 3  # embd's 10 held + norm's 1 fit
        assert list(m) == ["norm"]


def test_without_held_bytes_a_finished_job_frees_its_budget_at_once():
    """The old accounting (no `held`): the next large job starts while the caller still holds
    the last result. This is what let the embedding and head coexist."""
    cost = {"embd": 10, "head": 10}
    m = ordered_map(lambda x: x, ["head", "embd"], workers=2, cost=cost.get, budget=15)
    with m:
        assert next(m) == "head"
        assert m.submitted == 2
        assert list(m) == ["embd"]


def test_a_job_over_the_budget_runs_when_nothing_else_is_charged():
    m = ordered_map(lambda x: x * 2, [1, 2, 3], workers=2, cost=lambda x: 100, budget=15, held=lambda x: 0)
    assert list(m) == [2, 4, 6]


def test_prepare_tensors_charges_a_result_by_its_written_bytes(ckpt_factory, tmp_path, monkeypatch):
    import bitconv.convert as cv
    from bitconv.convert import convert

    src = ckpt_factory("llama", dtype="bf16", tie=False, seed=8)
    seen: dict[str, tuple[int, int]] = {}
    orig = cv.ordered_map

    def spy(fn, items, **kw):
        items = list(items)
        seen.update({tp.name: (kw["held"](tp), tp.nbytes) for tp in items})
        assert kw["budget"] == pipeline.memory_budget() == pipeline.MEMORY_BUDGET
        return orig(fn, items, **kw)

    monkeypatch.delenv(pipeline.ENV_BUDGET, raising=False)
    monkeypatch.setattr(cv, "ordered_map", spy)
    convert(src, tmp_path / "a.gguf", layout="q2_0")
    assert {"token_embd.weight", "output.weight", "blk.0.ffn_up.weight"} <= set(seen)
    for name, (held, nbytes) in seen.items():
        assert held == nbytes, name


def test_default_workers_follow_the_affinity_mask(monkeypatch):
    monkeypatch.delenv(pipeline.ENV_THREADS, raising=False)
    for cores, want in [({0}, 1), ({0, 1}, 2), ({0, 5, 9}, 3), (set(range(64)), MAX_DEFAULT_WORKERS)]:
        monkeypatch.setattr(os, "sched_getaffinity", lambda pid, c=cores: c, raising=False)
        assert default_workers() == want, cores
    monkeypatch.setenv(pipeline.ENV_THREADS, "3")
    assert default_workers() == 3


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="no affinity masks on this system")
def test_default_workers_in_a_process_pinned_to_one_core():
    """A real mask (as `taskset -c N` sets it): the pipeline then runs inline, one thread."""
    first = min(os.sched_getaffinity(0))
    code = ("import os, json, sys; os.sched_setaffinity(0, {%d}); "
            "from bitconv.pipeline import default_workers; "
            "print(json.dumps([default_workers(), len(os.sched_getaffinity(0))]))" % first)
    env = {k: v for k, v in os.environ.items() if k != pipeline.ENV_THREADS}
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    p = waiting.run([sys.executable, "-c", code], 120, env=env, capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout) == [1, 1]


def test_exact_ternary_detection_runs_torch_on_one_thread(ckpt_factory, tmp_path, monkeypatch):
    import torch

    import bitconv.source_kind as sk
    from bitconv.convert import convert

    src = ckpt_factory("llama", weights="exact", ternary_group="row", seed=9)
    threads: list[int] = []
    orig = sk.detect_tensor

    def spy(st):
        threads.append(torch.get_num_threads())
        return orig(st)

    monkeypatch.setattr(sk, "detect_tensor", spy)
    before = torch.get_num_threads()
    res = convert(src, tmp_path / "e.gguf", layout="tq2_0")
    assert threads and set(threads) == {1}, threads
    assert torch.get_num_threads() == before  # the caller's setting is left as it was
    assert any("exact ternary" in n for n in res.plan.notes)


def test_memory_budget_from_the_environment(monkeypatch):
    monkeypatch.setenv(pipeline.ENV_BUDGET, "64")
    assert pipeline.memory_budget() == 64 * 1024 * 1024
    for bad in ("", "0", "-5", "lots"):
        monkeypatch.setenv(pipeline.ENV_BUDGET, bad)
        assert pipeline.memory_budget() == pipeline.MEMORY_BUDGET


def test_statistics_use_no_blas(monkeypatch):
    """The per-tensor statistics sum without BLAS: a dot product over more than 10,000 values
    (row or block scales of a large linear) ran on OpenBLAS's threads, one per core, which
    spun after every tensor (CPU 1.84-1.94 s vs 1.17-1.38 s with OPENBLAS_NUM_THREADS=1 for
    the same conversion with 256-blocks on 2 cores) and summed in a thread-count-dependent order."""
    import numpy as np

    from bitconv.quant import tensor_stats, ternarize_with_stats

    def no_blas(*a, **k):
        raise AssertionError("BLAS called")

    w = np.random.default_rng(3).standard_normal((96, 512)).astype(np.float32)
    want, want_st = ternarize_with_stats(w, 128, "w")
    direct = tensor_stats("w", want, w)
    monkeypatch.setattr(np, "dot", no_blas)
    monkeypatch.setattr(np.linalg, "norm", no_blas)
    tern, st = ternarize_with_stats(w, 128, "w")
    assert st == want_st and st.rel_error == pytest.approx(direct.rel_error, rel=1e-6)
    assert tensor_stats("w", tern, w) == direct


def test_chunked_f16_narrowing_keeps_the_whole_tensor_verdicts(ckpt_factory, tmp_path, monkeypatch):
    """The direct F16 pass walks the source in chunks (its pages given back as it goes); the
    bytes and the refusals must be those of one pass: a chunk whose values all round to 0 is
    ordinary rounding when the rest of the tensor is not, and a tensor all of which rounds to
    0 is refused."""
    import numpy as np

    from bitconv.convert import convert
    from bitconv.errors import BitconvError
    from bitconv.readers import chunked

    base = ckpt_factory("llama", dtype="f32", hidden=256, intermediate=256, layers=1, heads=2, kv_heads=1, vocab=320)

    def tiny_first_rows(w):
        e = w["model.embed_tokens.weight"]
        e[:8] = np.sign(e[:8]) * np.float32(1e-9)  # 8 rows x 256 = two 4 KiB chunks of float32

    def all_tiny(w):
        e = w["model.embed_tokens.weight"]
        e[...] = np.sign(e) * np.float32(1e-9)

    src = edited_copy(base, tmp_path / "src", tiny_first_rows)
    whole = tmp_path / "whole.gguf"
    convert(src, whole, layout="q2_0")
    monkeypatch.setattr(chunked, "CHUNK_BYTES", 4096)
    chunked = tmp_path / "chunked.gguf"
    convert(src, chunked, layout="q2_0")
    assert chunked.read_bytes() == whole.read_bytes()

    zeroed = edited_copy(base, tmp_path / "zeroed", all_tiny)
    with pytest.raises(BitconvError, match="token_embd.weight"):
        convert(zeroed, tmp_path / "z.gguf", layout="q2_0")
    assert not (tmp_path / "z.gguf").exists()


def test_raw_chunks_read_rows_and_cover_the_tensor_once(ckpt_factory, monkeypatch):
    """The F16 pass reads the source a chunk of rows at a time (an 8B model's 1 GB bf16
    embedding sat whole beside its 1 GB F16 copy): every value once, in order, equal to
    the whole tensor, and the whole tensor never read."""
    import numpy as np

    from bitconv.readers import open_source
    from bitconv.readers.chunked import raw_chunks

    src = ckpt_factory("llama", dtype="bf16", tie=False, seed=8)
    emb = next(t for t in open_source(src).tensors if t.source_name == "model.embed_tokens.weight")
    whole = np.ascontiguousarray(emb.load_raw()).reshape(-1)
    rows_read = []
    orig = emb._load_raw_rows
    monkeypatch.setattr(emb, "_load_raw_rows", lambda a, b: rows_read.append((a, b)) or orig(a, b))
    monkeypatch.setattr(emb, "_load_raw", None)  # a whole read would now fail
    parts = list(raw_chunks(emb, chunk_bytes=3 * emb.shape[1] * 2))  # 3 rows of bf16 a chunk
    assert [a for a, _ in parts] == [3 * emb.shape[1] * i for i in range(len(parts))]
    assert rows_read[0] == (0, 3) and rows_read[-1][1] == emb.shape[0] and len(rows_read) == len(parts)
    np.testing.assert_array_equal(np.concatenate([p for _, p in parts]), whole)
    assert all(p.dtype == np.uint16 for _, p in parts)  # bfloat16 as its bits, as load_raw gives it


def test_raw_chunks_read_a_tensor_without_row_reads_once(ckpt_factory):
    """A reader without row reads (a GGUF source) is read once, not once per chunk."""
    import numpy as np

    from bitconv.readers import open_source
    from bitconv.readers.chunked import raw_chunks

    src = ckpt_factory("llama", dtype="bf16", tie=False, seed=8)
    emb = next(t for t in open_source(src).tensors if t.source_name == "model.embed_tokens.weight")
    whole = np.ascontiguousarray(emb.load_raw()).reshape(-1)
    reads = []
    orig = emb._load_raw
    emb._load_raw_rows = None
    emb._load_raw = lambda: reads.append(1) or orig()
    parts = list(raw_chunks(emb, chunk_bytes=3 * emb.shape[1] * 2))
    assert len(reads) == 1
    np.testing.assert_array_equal(np.concatenate([p for _, p in parts]), whole)
