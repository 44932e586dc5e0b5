#!/usr/bin/env python
"""Benchmark verify's forward pass against transformers on the same random model.

    python bench/bench_verify.py            # CPU: a ~170M-parameter model, 4 x 256 tokens
    python bench/bench_verify.py --cuda     # GPU: bitnet-b1.58-2B-4T shapes, 8 x 2048 tokens

Prints one table row per engine: tokens/s of one forward over the batch and its peak
memory (CPU: peak RSS above the process after imports while the model loads and runs, the
kernel's high-water mark reset after imports; CUDA: torch.cuda.max_memory_allocated,
weights included). Every row runs in
its own subprocess so the peaks do not mix.

Rows:
* transformers bf16            BitNetForCausalLM, no quantization: the plain bf16 forward
* transformers ternary (online) the same weights with quantization_config
                               {bitnet, autobitlinear, online}: ternarized on the fly, 8-bit
                               activations, bf16
* bitconv, TQ2_0 GGUF          verify's forward on the converted artifact as verify runs it
                               by default, streaming one layer at a time from the
                               memory-mapped file (reading and decoding the weights is inside
                               the timing); on the CPU verify's fast path: exact int8 GEMMs
                               (torch._int_mm), float32 activations (RMSNorm + 8-bit
                               quantization, rescales, rope as fused numba row kernels), one
                               group of sequences per core through each layer, the head as a
                               bfloat16 GEMM with each row's 8 largest logits and the
                               target's recomputed in float32, log-softmax fused
* bitconv --no-fast            (CPU) the same with verify --no-fast: float32 linears in
                               transformers' operation order and a float32 head
* bitconv, resident            (CUDA) the same with every layer kept 2-bit packed on the
                               GPU after a first pass: compute only, like transformers' rows
* bitconv, int8 + bf16         (CPU) the streaming row with int_path=True (torch._int_mm,
                               VNNI) and bf16 activations and head, like transformers' rows
* bitconv, bf16 source         (--with-source) verify's source side: the float checkpoint,
                               ternarized with bitconv.quant.ternarize while streaming

transformers returns full logits [B, T, vocab]; bitconv returns per-token log-probs,
making logits a chunk of rows at a time (what verify needs), log_softmax included.
Weights are random (seeded); timings do not depend on their values. Everything is
written to a temporary folder (CUDA: ~5.4 GB) that is deleted at the end unless --workdir
is given.

Needs torch, transformers, accelerate and bitconv (`pip install -e .`).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CPU_SHAPE = dict(hidden=1024, intermediate=2816, layers=12, heads=16, kv_heads=4, vocab=32000)  # ~170M
# microsoft/bitnet-b1.58-2B-4T
CUDA_SHAPE = dict(hidden=2560, intermediate=6912, layers=30, heads=20, kv_heads=5, vocab=128256)
ONLINE = {"quant_method": "bitnet", "linear_class": "autobitlinear", "quantization_mode": "online"}


# ----------------------------------------------------------------------------------------
# setup: random model folders and the TQ2_0 artifact
# ----------------------------------------------------------------------------------------
def write_model(folder: Path, shape: dict, device: str) -> None:
    """A bf16 BitNetForCausalLM (relu2, tied) with seeded random weights, generated on
    `device` (the GPU for the 2B shape) and saved as safetensors."""
    from safetensors.torch import save_file

    from bitconv.synth import SynthConfig, hf_config, hf_weights

    cfg = SynthConfig(family="relu2", dtype="bf16", tie=True, context=4096, rope_theta=500000.0, embed_std=0.05,
                      **shape)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(hf_config(cfg), indent=2))
    w = hf_weights(cfg, device)
    save_file(w, str(folder / "model.safetensors"), metadata={"format": "pt"})


def setup(work: Path, shape: dict, device: str) -> dict[str, Path]:
    from bitconv.convert import convert

    plain, online, gguf = work / "bf16", work / "bf16-online", work / "tq2_0.gguf"
    t0 = time.perf_counter()
    if not (plain / "model.safetensors").exists():
        write_model(plain, shape, device)
    if not (online / "config.json").exists():
        online.mkdir(parents=True, exist_ok=True)
        cfg = json.loads((plain / "config.json").read_text())
        cfg["quantization_config"] = ONLINE
        (online / "config.json").write_text(json.dumps(cfg, indent=2))
        os.symlink((plain / "model.safetensors").resolve(), online / "model.safetensors")
    print(f"# model written in {time.perf_counter() - t0:.0f} s", flush=True)
    if not gguf.exists():
        t0 = time.perf_counter()
        # relu2 models run in bitnet.cpp, not llama.cpp: TQ2_0 is only a container here
        convert(plain, gguf, layout="tq2_0", allow_engine_mismatch=True)
        print(f"# TQ2_0 artifact converted in {time.perf_counter() - t0:.0f} s "
              f"({gguf.stat().st_size / 2**30:.2f} GiB)", flush=True)
    return {"plain": plain, "online": online, "gguf": gguf}


# ----------------------------------------------------------------------------------------
# one measurement per subprocess
# ----------------------------------------------------------------------------------------
def _rss_mib() -> float:
    """Current resident set size (MiB)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except OSError:  # not Linux: the process peak instead
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _hwm_mib() -> float | None:
    """The kernel's peak RSS of this process (VmHWM), MiB."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return None


class _PeakRSS:
    """The peak RSS above the level at start. On Linux the kernel's own high-water mark,
    reset to the current RSS at start (`/proc/self/clear_refs`): nothing runs beside the
    measured work. Elsewhere a thread samples the RSS every 2 ms; that thread takes the GIL
    500 times a second, which slowed a multi-threaded forward by ~8% on a 2-core machine."""

    def __init__(self) -> None:
        import threading

        self.base = _rss_mib()
        self.peak = self.base
        self._t = None
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
            self.base = _rss_mib()
            if _hwm_mib() is not None:
                return
        except OSError:
            pass
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, _rss_mib())
            self._stop.wait(0.002)

    def stop(self) -> float:
        if self._t is None:
            return max(_hwm_mib() or 0.0, _rss_mib()) - self.base
        self._stop.set()
        self._t.join()
        self.peak = max(self.peak, _rss_mib())
        return self.peak - self.base


def worker(args: argparse.Namespace) -> None:
    import torch

    cuda = args.device == "cuda"
    vocab = json.loads((Path(args.plain) / "config.json").read_text())["vocab_size"]
    tokens = torch.randint(0, vocab, (args.batch, args.seq), generator=torch.Generator().manual_seed(0))
    rss = None if cuda else _PeakRSS()  # model loading included, as weights held by transformers count too
    sync = torch.cuda.synchronize if cuda else (lambda: None)

    if args.worker.startswith("hf"):
        import transformers

        folder = args.online if args.worker == "hf-ternary" else args.plain
        dtype = torch.float32 if args.worker == "hf-f32" else torch.bfloat16
        model = transformers.BitNetForCausalLM.from_pretrained(
            folder, dtype=dtype, device_map="cuda" if cuda else None, attn_implementation="sdpa")
        model.eval()
        ids = tokens.to("cuda" if cuda else "cpu")

        def run():
            with torch.inference_mode():
                return model(ids, use_cache=False).logits
    else:
        from bitconv.readers import open_source
        from bitconv.verify.forward import Runner, token_logprobs_and_stats

        bf16_cpu = args.worker == "bitconv-gguf-int"  # int8 GEMMs + bf16 activations/head, as transformers
        float_cpu = args.worker == "bitconv-gguf-float"  # the float path (transformers' operation order)
        dtype = torch.bfloat16 if (cuda or bf16_cpu) else torch.float32
        src = args.gguf if args.worker.startswith("bitconv-gguf") else args.plain
        keep = args.worker == "bitconv-gguf-resident"
        # verify's CPU default (fast): exact int8 GEMMs, float32 activations with fused row
        # kernels, the head in bfloat16 math with float32 output (bf16 row: a bfloat16 head)
        int_path = None if cuda else (not float_cpu)
        head_dtype = torch.bfloat16 if bf16_cpu else None
        head_math = "bf16" if not (cuda or float_cpu or bf16_cpu) else None
        if not (cuda or float_cpu):
            torch.set_flush_denormal(True)  # as verify's fast path runs its forward
        runner = Runner(open_source(src), device=args.device, dtype=dtype, keep=keep,
                        micro_batch=args.micro_batch, int_path=int_path, head_dtype=head_dtype,
                        head_math=head_math)

        def run():
            return token_logprobs_and_stats(runner, tokens).logprobs

    times = []
    peak_gpu = 0.0
    for r in range(args.repeats + 1):  # the first run warms up (compiles, caches, page cache)
        if cuda:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        sync()
        t0 = time.perf_counter()
        out = run()
        sync()
        dt = time.perf_counter() - t0
        del out
        if r > 0 or args.repeats == 0:
            times.append(dt)
            if cuda:
                peak_gpu = max(peak_gpu, torch.cuda.max_memory_allocated() / 2**30)
        if args.repeats == 0:
            break
    best = min(times)
    result = {"worker": args.worker, "seconds": best, "tokens_per_s": args.batch * args.seq / best,
              "peak_rss_mib": rss.stop() if rss else None, "peak_gpu_gib": peak_gpu}
    print("RESULT " + json.dumps(result), flush=True)


ROWS = {
    "hf-bf16": "transformers bf16 (plain)",
    "hf-ternary": "transformers ternary (online, bf16)",
    "hf-f32": "transformers f32 (plain)",
    "bitconv-gguf": "bitconv verify forward (default), TQ2_0, streaming",
    "bitconv-gguf-float": "bitconv verify --no-fast (float32), TQ2_0, streaming",
    "bitconv-gguf-int": "bitconv forward, TQ2_0 GGUF, int8 + bf16",
    "bitconv-gguf-resident": "bitconv verify forward, resident 2-bit",
    "bitconv-source": "bitconv verify forward, bf16 source, streaming",
}


def run_worker(kind: str, paths: dict[str, Path], args: argparse.Namespace) -> dict | None:
    cmd = [sys.executable, __file__, "--worker", kind, "--plain", str(paths["plain"]), "--online",
           str(paths["online"]), "--gguf", str(paths["gguf"]), "--batch", str(args.batch), "--seq", str(args.seq),
           "--device", "cuda" if args.cuda else "cpu", "--repeats", str(args.repeats)]
    if args.micro_batch:
        cmd += ["--micro-batch", str(args.micro_batch)]
    env = dict(os.environ)
    if args.no_compile:
        env["TORCHDYNAMO_DISABLE"] = "1"
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            res = json.loads(line[len("RESULT "):])
            res["wall_s"] = time.perf_counter() - t0
            return res
    print(f"# {kind} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}", flush=True)
    return None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cuda", action="store_true", help="GPU run: 2B-4T shapes, 8 x 2048 tokens")
    ap.add_argument("--batch", type=int, default=None)
    ap.add_argument("--seq", type=int, default=None)
    ap.add_argument("--layers", type=int, default=None, help="override the layer count (quick runs)")
    ap.add_argument("--repeats", type=int, default=None, help="timed runs after one warm-up (best is kept)")
    ap.add_argument("--micro-batch", type=int, default=None, help="bitconv: sequences per layer pass")
    ap.add_argument("--rows", default=None, help="comma list of: " + ",".join(ROWS))
    ap.add_argument("--with-source", action="store_true", help="also time verify's float-source side")
    ap.add_argument("--no-compile", action="store_true", help="TORCHDYNAMO_DISABLE=1 for every row")
    ap.add_argument("--workdir", default=None, help="keep the model files here (reused on the next run)")
    # worker mode (internal)
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--plain", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--online", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--gguf", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--device", default="cpu", help=argparse.SUPPRESS)
    args = ap.parse_args()

    if args.worker:
        worker(args)
        return

    shape = dict(CUDA_SHAPE if args.cuda else CPU_SHAPE)
    if args.layers:
        shape["layers"] = args.layers
    args.batch = args.batch or (8 if args.cuda else 4)
    args.seq = args.seq or (2048 if args.cuda else 256)
    args.repeats = 2 if args.repeats is None else args.repeats
    if args.rows:
        rows = args.rows.split(",")
    else:
        rows = ["hf-bf16", "hf-ternary", "bitconv-gguf"]
        rows += ["bitconv-gguf-resident"] if args.cuda else ["bitconv-gguf-float", "bitconv-gguf-int"]
        rows += ["bitconv-source"] if args.with_source else []
    import torch

    if args.cuda and not torch.cuda.is_available():
        sys.exit("--cuda: torch sees no CUDA device")
    work = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="bitconv-bench-"))
    try:
        paths = setup(work, shape, "cuda" if args.cuda else "cpu")
        dev = torch.cuda.get_device_name(0) if args.cuda else f"CPU, {torch.get_num_threads()} threads"
        for _ in range(2):  # streaming rows read the artifact every pass: how fast can this machine read it?
            t0 = time.perf_counter()
            with open(paths["gguf"], "rb") as f:
                while f.read(64 << 20):
                    pass
            rate = paths["gguf"].stat().st_size / (time.perf_counter() - t0) / 2**30
        print(f"# reading the {paths['gguf'].stat().st_size / 2**30:.2f} GiB artifact (warm): {rate:.1f} GiB/s",
              flush=True)
        print(f"# device: {dev}; torch {torch.__version__}; model {shape}; "
              f"tokens {args.batch} x {args.seq}", flush=True)
        results = []
        for kind in rows:
            res = run_worker(kind, paths, args)
            if res is not None:
                results.append(res)
                print(f"# {kind}: {res['tokens_per_s']:,.0f} tokens/s", flush=True)
        mem_col = "peak GPU GiB" if args.cuda else "peak RSS MiB"
        print()
        print(f"| {'engine':<48} | {'tokens/s':>10} | {'s / batch':>9} | {mem_col:>12} |")
        print(f"|{'-' * 50}|{'-' * 12}|{'-' * 11}|{'-' * 14}|")
        for r in results:
            mem = f"{r['peak_gpu_gib']:.2f}" if args.cuda else f"{r['peak_rss_mib']:.0f}"
            print(f"| {ROWS[r['worker']]:<48} | {r['tokens_per_s']:>10,.0f} | {r['seconds']:>9.3f} | {mem:>12} |")
    finally:
        if not args.workdir:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
