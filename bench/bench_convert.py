#!/usr/bin/env python
"""Conversion wall time against the I/O floor, and peak memory (issue 14). Prints a table.

Builds seeded random checkpoints shaped like 1bitLLM/bitnet_b1_58-large (hidden 1536,
intermediate 4096, vocab 32002, tied), by default:

* `f32`    24 layers, float32, 2.9 GB
* `bf16`   34 layers, bfloat16, 2.0 GB (more layers, so that it is at least 2 GB too)
* `packed` the f32 model converted once to a packed Hugging Face folder (already ternary)
* `exact:L` (on request) a plain Llama of those shapes whose bf16 linears are exactly s·t
  with row scales: every tensor is read once more at plan time to detect that (torch)

and, on request, `llama8b` (`llama8b:L` for L layers): a Llama3-8B-1.58-shaped bfloat16
checkpoint (hidden 4096, intermediate 14336, 32 layers, 32/8 heads, vocab 128256, untied
head: 16.1 GB in 4 shards). It is written tensor by tensor (never held in memory), measured,
and deleted as soon as its rows are done, before the next model is built. Its values are
seeded normal draws cycled from a 16M-value pool at a random start per tensor: conversion
speed does not depend on the values, and drawing 8 billion fresh ones would take minutes.

and, asked for with --models, `exact-bf16:24` (or another dtype / layer count): the same shapes
as a Llama whose float weights are exact ternary s·t (Ternary-Bonsai style), the model
family `--format mlx` and `--format compressed-tensors` write (issue 20);

and converts each into every GGUF layout that accepts its shapes (and --format safetensors
for the float models, plus mlx and compressed-tensors for the exact-ternary Llama), each run
in a fresh child process. Reported per row:

* `convert s`: wall time of `bitconv.convert.convert()` inside the child, best of --repeat
  (interpreter start, imports and numba's one-time start-up, `bitconv.kernels.warm()`,
  excluded; they are in `process s`);
* `x floor`: that time over the I/O floor measured in this same run: reading the source
  files once from the page cache (plain `readinto`) plus writing the output's size once
  and `fsync`ing it - the least any converter that reads and writes the files must do;
* `peak RSS`: the child's ru_maxrss (through a stdlib-only launcher, so it is not
  inflated by this process).

Everything is written to a temporary folder that is deleted at the end (unless
--workdir is given). Timing on a shared machine is noisy: the load average is printed with
the table; take the best of several runs.

    python bench/bench_convert.py                                 # the default table (~10 min)
    python bench/bench_convert.py --models f32 --layouts i2_s,tl2 --repeat 1
    python bench/bench_convert.py --models f16:24                # fp16 source, 24 layers
    python bench/bench_convert.py --models exact-bf16:24 --layouts tq2_0,mlx,compressed-tensors
    python bench/bench_convert.py --models llama8b --layouts q2_0,tl2,i2_s --repeat 1   # 16 GB on disk
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

MiB = 1024 * 1024
SHAPE = dict(hidden=1536, intermediate=4096, heads=16, kv_heads=16, vocab=32002, family="silu", tie=True)
DEFAULT_MODELS = "f32:24,bf16:34,packed"

CHILD_CONVERT = """
import json, resource, sys, time
t0 = time.perf_counter()
from bitconv.convert import convert
from bitconv.kernels import warm
warm()  # numba's one-time start-up, like the imports: in `process s`, not in `convert s`
fmt = sys.argv[3] if sys.argv[3] in ("safetensors", "mlx", "compressed-tensors") else "gguf"
def cpu():
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime
c, t = cpu(), time.perf_counter()
r = convert(sys.argv[1], sys.argv[2], layout=sys.argv[3] if fmt == "gguf" else "tq2_0", format=fmt, force=True)
t1 = time.perf_counter()
print(json.dumps({"seconds": t1 - t, "process": t1 - t0, "output_bytes": r.output_bytes, "cpu": cpu() - c}))
"""

CHILD_MAKE = """
import json, sys
from bitconv.synth import make_checkpoint
make_checkpoint(sys.argv[1], seed=0, **json.loads(sys.argv[2]))
print("{}")
"""

CHILD_LAYOUTS = """
import json, sys
from pathlib import Path
from bitconv.convert import build_options
from bitconv.errors import BitconvError
from bitconv.pack import layout_class, layout_names
from bitconv.readers import open_source
from bitconv.writers import get_writer

folder = Path(sys.argv[1])
wanted = [x for x in sys.argv[2].split(",") if x]
ckpt = open_source(folder)
names = wanted or [n for n in layout_names() if layout_class(n).ggml_type is not None]
ok, skipped = [], {}
for name in names:
    if name in ("safetensors", "mlx", "compressed-tensors"):
        ok.append(name)
        continue
    try:
        get_writer("gguf").plan(ckpt, folder / "x.gguf", build_options(layout=name))
        ok.append(name)
    except BitconvError as exc:
        skipped[name] = str(exc)
print(json.dumps({"ok": ok, "skipped": skipped}))
"""

# A child's ru_maxrss starts at the high-water RSS of the process it was forked from, so the
# measured child is started by a launcher that imports only the standard library.
LAUNCHER = """
import resource, subprocess, sys, time
t = time.perf_counter()
p = subprocess.run(sys.argv[1:], stdout=subprocess.PIPE)
wall = time.perf_counter() - t
sys.stdout.buffer.write(p.stdout)
r = resource.getrusage(resource.RUSAGE_CHILDREN)
print("\\n@@RUSAGE", r.ru_maxrss * (1 if sys.platform == "darwin" else 1024), r.ru_utime + r.ru_stime, wall)
sys.exit(p.returncode)
"""


# Everything on one thread: the pipeline inline, and no OpenMP / BLAS team to start.
SINGLE_THREAD = dict(BITCONV_THREADS="1", OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1")


def run_child(code: str, *args: str, extra_env: dict[str, str] | None = None) -> tuple[dict, int, float, float]:
    """Run `python -c code args` fresh; return (its last JSON line, peak RSS bytes, CPU s, wall s)."""
    env = dict(os.environ, TORCHDYNAMO_DISABLE="1", HF_HUB_OFFLINE="1", HF_HUB_DISABLE_TELEMETRY="1",
               **(extra_env or {}))
    p = subprocess.run([sys.executable, "-c", LAUNCHER, sys.executable, "-c", code, *args], env=env,
                       capture_output=True, text=True)
    if p.returncode != 0:
        raise RuntimeError(f"child failed ({p.returncode}):\n{p.stderr[-3000:]}")
    lines = p.stdout.splitlines()
    _, peak, cpu, wall = next(ln for ln in reversed(lines) if ln.startswith("@@RUSAGE")).split()
    doc = next(ln for ln in reversed(lines) if ln.startswith("{"))
    return json.loads(doc), int(peak), float(cpu), float(wall)


def remove(out: Path) -> None:
    if out.is_dir():
        import shutil

        shutil.rmtree(out)
    else:
        out.unlink(missing_ok=True)


def source_files(folder: Path) -> list[Path]:
    return sorted(folder.glob("*.safetensors"))


def largest_tensor_bytes(files: list[Path]) -> int:
    """The largest tensor's stored bytes, from the safetensors headers (the peak RSS bound
    of issue 23 is that + 512 MB)."""
    largest = 0
    for f in files:
        with open(f, "rb") as fh:
            header = json.loads(fh.read(int.from_bytes(fh.read(8), "little")))
        for name, info in header.items():
            if name != "__metadata__":
                begin, end = info["data_offsets"]
                largest = max(largest, int(end) - int(begin))
    return largest


def read_once(files: list[Path], buf: bytearray) -> float:
    """Seconds to read every file once, sequentially, into one reused buffer."""
    view = memoryview(buf)
    t = time.perf_counter()
    for f in files:
        with open(f, "rb", buffering=0) as fh:
            while fh.readinto(view):
                pass
    return time.perf_counter() - t


def write_once(path: Path, nbytes: int, buf: bytearray) -> float:
    """Seconds to write nbytes into a new file and fsync it."""
    view = memoryview(buf)
    t = time.perf_counter()
    with open(path, "wb", buffering=0) as fh:
        left = nbytes
        while left > 0:
            n = min(left, len(buf))
            fh.write(view[:n])
            left -= n
        os.fsync(fh.fileno())
    dt = time.perf_counter() - t
    path.unlink()
    return dt


def floor_seconds(files: list[Path], out_bytes: int, workdir: Path, repeat: int) -> float:
    """The I/O floor: read the source once (page cache warm) + write the output once with sync."""
    buf = bytearray(16 * MiB)
    read_once(files, buf)  # warm the page cache, as the conversions find it
    best = min(read_once(files, buf) + write_once(workdir / "floor.bin", out_bytes, buf) for _ in range(repeat))
    return best


LLAMA8B = dict(family="llama", hidden=4096, intermediate=14336, layers=32, heads=32, kv_heads=8, vocab=128256,
               tie=False, dtype="bf16", context=8192, rope_theta=500000.0)
LLAMA8B_SHARDS = 4
POOL_VALUES = (1 << 24) + 43  # not a multiple of any row length, so rows do not repeat each other


def llama8b_tensors(layers: int) -> list[tuple[str, tuple[int, ...], float | None]]:
    """(HF name, shape, std) in model order; std None marks a norm (1 + 0.1 N(0, 1))."""
    h, f, v = LLAMA8B["hidden"], LLAMA8B["intermediate"], LLAMA8B["vocab"]
    d = h // LLAMA8B["heads"]
    kv = LLAMA8B["kv_heads"] * d
    out: list[tuple[str, tuple[int, ...], float | None]] = [("model.embed_tokens.weight", (v, h), 1.0)]
    for i in range(layers):
        p = f"model.layers.{i}."
        out += [(p + "input_layernorm.weight", (h,), None),
                (p + "self_attn.q_proj.weight", (h, h), h**-0.5), (p + "self_attn.k_proj.weight", (kv, h), h**-0.5),
                (p + "self_attn.v_proj.weight", (kv, h), h**-0.5), (p + "self_attn.o_proj.weight", (h, h), h**-0.5),
                (p + "post_attention_layernorm.weight", (h,), None),
                (p + "mlp.gate_proj.weight", (f, h), h**-0.5), (p + "mlp.up_proj.weight", (f, h), h**-0.5),
                (p + "mlp.down_proj.weight", (h, f), f**-0.5)]
    return out + [("model.norm.weight", (h,), None), ("lm_head.weight", (v, h), h**-0.5)]


def make_llama8b(folder: Path, layers: int, seed: int = 0) -> None:
    """Write the Llama3-8B-1.58-shaped bf16 folder tensor by tensor: peak memory is the
    value pool (a few hundred MB), whatever the model's size. The index lists names sorted,
    as Hugging Face writes it (so `lm_head` comes just before `model.embed_tokens`)."""
    import numpy as np

    from bitconv.synth import SynthConfig, hf_config, train_tokenizer

    folder.mkdir(parents=True, exist_ok=True)
    cfg = SynthConfig(**dict(LLAMA8B, layers=layers))
    (folder / "config.json").write_text(json.dumps(hf_config(cfg), indent=2))
    train_tokenizer(400).save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps(
        {"bos_token": "<|begin_of_text|>", "eos_token": "<|end_of_text|>", "add_bos_token": False}))
    rng = np.random.default_rng(seed)
    normal = rng.standard_normal(POOL_VALUES, dtype=np.float32)
    pools: dict[float, np.ndarray] = {}

    def bf16(x: np.ndarray) -> np.ndarray:  # round to nearest even, as torch's .to(bfloat16)
        b = x.view(np.uint32)
        return ((b + 0x7FFF + ((b >> 16) & 1)) >> 16).astype(np.uint16)

    tensors = llama8b_tensors(layers)
    sizes = [2 * int(np.prod(shape)) for _, shape, _ in tensors]
    per_shard = -(-sum(sizes) // LLAMA8B_SHARDS)
    groups: list[list[int]] = [[]]
    acc = 0
    for i, n in enumerate(sizes):
        if acc >= per_shard * len(groups) and len(groups) < LLAMA8B_SHARDS:
            groups.append([])
        groups[-1].append(i)
        acc += n
    weight_map = {}
    for k, idx in enumerate(groups):
        fname = f"model-{k + 1:05d}-of-{len(groups):05d}.safetensors"
        header, off = {"__metadata__": {"format": "pt"}}, 0
        for i in idx:
            name, shape, _ = tensors[i]
            header[name] = {"dtype": "BF16", "shape": list(shape), "data_offsets": [off, off + sizes[i]]}
            off += sizes[i]
            weight_map[name] = fname
        blob = json.dumps(header, separators=(",", ":")).encode()
        blob += b" " * (-len(blob) % 8)
        with open(folder / fname, "wb") as fh:
            fh.write(len(blob).to_bytes(8, "little") + blob)
            for i in idx:
                _, shape, std = tensors[i]
                n = sizes[i] // 2
                if std is None:
                    fh.write(bf16(1.0 + np.float32(0.1) * rng.standard_normal(n, dtype=np.float32)).tobytes())
                    continue
                if std not in pools:
                    pools[std] = bf16(normal * np.float32(std))
                pool, at = pools[std], int(rng.integers(POOL_VALUES))
                while n > 0:
                    part = pool[at:at + n]
                    fh.write(memoryview(part))
                    n -= part.size
                    at = 0
    (folder / "model.safetensors.index.json").write_text(json.dumps(
        {"metadata": {"total_size": sum(sizes)}, "weight_map": dict(sorted(weight_map.items()))}, indent=2))


def make_model(workdir: Path, spec: str, built: dict[str, Path]) -> tuple[str, Path]:
    """`f32:24` / `bf16:34` / `f16:24` -> a float model; `packed` -> the first float model as
    a packed Hugging Face folder (converted with bitconv itself); `llama8b[:L]` -> the
    Llama3-8B-1.58-shaped bf16 model (not a base for `packed`)."""
    if spec.startswith("llama8b"):
        layers = int(spec.partition(":")[2] or LLAMA8B["layers"])
        tag = f"llama8b-bf16-l{layers}"
        folder = workdir / tag
        if not (folder / "config.json").exists():
            t = time.perf_counter()
            make_llama8b(folder, layers)
            print(f"wrote {tag} in {time.perf_counter() - t:.1f} s", file=sys.stderr)
        return tag, folder
    if spec == "packed":
        base = next(iter(built.values()), None)
        if base is None:
            base = make_model(workdir, "f32:24", built)[1]
        out = workdir / f"{base.name}-packed"
        if not (out / "config.json").exists():
            t = time.perf_counter()
            run_child(CHILD_CONVERT, str(base), str(out), "safetensors")
            print(f"packed {base.name} in {time.perf_counter() - t:.1f} s", file=sys.stderr)
        return f"packed ({base.name})", out
    dtype, _, layers = spec.partition(":")
    layers = int(layers or 24)
    exact = dtype.startswith("exact-")
    dtype = dtype.removeprefix("exact-")
    tag = f"{'llama-exact' if exact else 'large'}-{dtype}-l{layers}"
    folder = workdir / tag
    shape = dict(SHAPE, layers=layers, dtype=dtype)
    if dtype == "exact":  # a plain Llama whose bf16 linears are exactly s·t per row (Bonsai-style)
        shape.update(dtype="bf16", family="llama", weights="exact", ternary_group="row")
    if exact:  # a plain Llama with exact-ternary linears: what the MLX / compressed-tensors writers take
        shape.update(family="llama", weights="exact")
    if not (folder / "config.json").exists():
        t = time.perf_counter()
        run_child(CHILD_MAKE, str(folder), json.dumps(shape))
        print(f"wrote {tag} in {time.perf_counter() - t:.1f} s", file=sys.stderr)
    if dtype != "exact":
        built[tag] = folder
    return tag, folder


FOLDER_TARGETS = ("safetensors", "mlx", "compressed-tensors")


def targets(folder: Path, wanted: str, packed: bool) -> list[str]:
    res, *_ = run_child(CHILD_LAYOUTS, str(folder), wanted)
    for name, why in res["skipped"].items():
        print(f"skipping {name}: {why}", file=sys.stderr)
    ok = res["ok"]
    if not wanted and not packed:
        ok.append("safetensors")
        if "llama-exact" in folder.name:
            ok += ["mlx", "compressed-tensors"]
    return ok


def cpu_model() -> str:
    """The CPU's model name (/proc/cpuinfo), for the table's heading."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or platform.machine()


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default=DEFAULT_MODELS, help=f"comma-separated (default {DEFAULT_MODELS})")
    ap.add_argument("--layouts", default="", help="comma-separated GGUF layouts (and/or 'safetensors'); "
                    "default: every GGUF layout that accepts the shapes, plus safetensors for float models")
    ap.add_argument("--repeat", type=int, default=3, help="runs per row; the best is reported")
    ap.add_argument("--workdir", type=Path, default=None, help="keep the models here (default: a temp dir, deleted)")
    ap.add_argument("--json", action="store_true", help="print the rows as JSON instead of a table")
    ap.add_argument("--single", action="store_true",
                    help="also run each row once on one thread (BITCONV_THREADS=1, OMP/OpenBLAS/MKL 1 thread) "
                         "and report the default run's CPU over that one's (threads that spin show up there)")
    args = ap.parse_args()

    tmp = None
    if args.workdir is None:
        tmp = tempfile.TemporaryDirectory(prefix="bitconv-bench-")
        workdir = Path(tmp.name)
    else:
        workdir = args.workdir
        workdir.mkdir(parents=True, exist_ok=True)
    rows = []
    try:
        built: dict[str, Path] = {}
        for spec in [m.strip() for m in args.models.split(",") if m.strip()]:
            tag, folder = make_model(workdir, spec, built)
            files = source_files(folder)
            src_bytes = sum(f.stat().st_size for f in files)
            largest = largest_tensor_bytes(files)
            for target in targets(folder, args.layouts, spec == "packed"):
                out = workdir / (f"out-{target}" + ("" if target in FOLDER_TARGETS else ".gguf"))
                best = None
                for _ in range(args.repeat):
                    remove(out)  # a fresh file each run, as the floor writes one (replacing costs an unlink)
                    res, rss, cpu, wall = run_child(CHILD_CONVERT, str(folder), str(out), target)
                    if best is None or res["seconds"] < best[0]["seconds"]:
                        best = (res, rss, cpu, wall)
                res, rss, cpu, wall = best
                single = single_work = None
                if args.single:
                    remove(out)
                    one, _, single, _ = run_child(CHILD_CONVERT, str(folder), str(out), target, extra_env=SINGLE_THREAD)
                    single_work = one["cpu"]
                floor = floor_seconds(files, res["output_bytes"], workdir, args.repeat)
                rows.append({"model": tag, "source_bytes": src_bytes, "target": target,
                             "seconds": res["seconds"], "process_seconds": wall, "cpu_seconds": cpu,
                             "single_thread_cpu_seconds": single, "convert_cpu_seconds": res["cpu"],
                             "single_thread_convert_cpu_seconds": single_work,
                             "floor_seconds": floor, "x_floor": res["seconds"] / floor,
                             "output_bytes": res["output_bytes"], "peak_rss": rss, "largest_tensor_bytes": largest})
                print(f"{tag} {target}: {res['seconds']:.2f} s, floor {floor:.2f} s, "
                      f"peak {rss / MiB:.0f} MiB", file=sys.stderr)
                remove(out)
            if spec.startswith("llama8b") and args.workdir is None:
                import shutil

                shutil.rmtree(folder)  # 16 GB: gone before the next model is built
    finally:
        if tmp is not None:
            tmp.cleanup()

    load = os.getloadavg()
    if args.json:
        print(json.dumps({"cpu": cpu_model(), "load_average": load, "cpus": os.cpu_count(), "usable_cores": usable_cores(), "rows": rows}, indent=2))
        return
    print(f"{cpu_model()}; load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} on {os.cpu_count()} CPUs "
          f"({usable_cores()} usable by this process); best of {args.repeat}")
    head = (f"{'source':<22} {'GB':>5} {'target':<18} {'convert s':>9} {'floor s':>8} {'x floor':>8} "
            f"{'process s':>10} {'CPU s':>6} {'CPU x1':>7} {'work/floor':>10} {'peak RSS MiB':>13} {'- largest':>10}")
    print(head)
    print("-" * len(head))
    for r in rows:
        one = r["single_thread_cpu_seconds"]
        ratio = f"{r['cpu_seconds'] / one:>7.2f}" if one else f"{'-':>7}"
        work = r["single_thread_convert_cpu_seconds"]
        work = f"{work / r['floor_seconds']:>10.2f}" if work else f"{'-':>10}"
        print(f"{r['model']:<22} {r['source_bytes'] / 1e9:>5.2f} {r['target']:<18} {r['seconds']:>9.2f} "
              f"{r['floor_seconds']:>8.2f} {r['x_floor']:>8.2f} {r['process_seconds']:>10.2f} "
              f"{r['cpu_seconds']:>6.1f} {ratio} {work} {r['peak_rss'] / MiB:>13.0f} "
              f"{(r['peak_rss'] - r['largest_tensor_bytes']) / MiB:>10.0f}")
    print("(convert s: convert() inside a fresh process; process s: the whole process, imports included;\n"
          " floor: read the source once from the page cache + write the output once with fsync, same run;\n"
          " CPU s: the whole process's user+sys; CPU x1: that over the same conversion on one thread (--single);\n"
          " work/floor: convert()'s CPU seconds on one thread over the floor: the workers that keep the writer busy;\n"
          " - largest: peak RSS minus the largest source tensor's stored bytes, MiB (issue 23: at most 512 MB))")


if __name__ == "__main__":
    main()
