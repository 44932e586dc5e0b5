#!/usr/bin/env bash
# Q2_0 vs F16 vs TQ2_0 in llama.cpp's CUDA build (issue 12 item 8; a measurement, not a CI test).
#
# Run on a CUDA machine from the repository root, with:
#   dist/llama.cpp.tar.xz  llama.cpp as llama-cpp-python 0.3.36 vendors it (its sdist's
#                          vendor/llama.cpp, trimmed: see ../shared/docs/GPU-LLAMACPP.md), top folder lc/
#   dist/wheels/gguf-*.whl if the machine's python lacks the gguf package
# It builds llama-bench/llama-perplexity/llama-quantize with CUDA while bitconv writes a
# bitnet-b1.58-2B-4T-shaped SiLU model (hidden 2560, 30 layers, 20/5 heads, FFN 6912,
# vocab 128256, tied; seeded random weights) as Q2_0 and TQ2_0; llama-quantize turns the
# Q2_0 file into F16 (the same ternary weights, dequantized). Results go to $OUT (or ./gpu-out).
set -euo pipefail
OUT=${OUT:-$PWD/gpu-out}
WORK=${WORK:-/tmp/q2bench}
JOBS=${JOBS:-$(nproc)}
LAYERS=${LAYERS:-30}
mkdir -p "$OUT" "$WORK"
exec > >(tee "$OUT/log.txt") 2>&1
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv || true
nvcc --version | tail -1 || true

python3 -c "import gguf" 2>/dev/null || python3 -m pip install -q --no-deps --no-index dist/wheels/gguf-*.whl

# 1. build (background) -----------------------------------------------------------------
[ -n "${SKIP_BUILD:-}" ] || (
  t0=$(date +%s)
  tar -C "$WORK" -xJf dist/llama.cpp.tar.xz
  cd "$WORK/lc"
  cmake -B build -G Ninja -DGGML_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES=90 -DLLAMA_BUILD_TESTS=OFF \
    -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=OFF -DGGML_CUDA_FA_ALL_QUANTS=OFF \
    -DGGML_CUDA_NCCL=OFF -DLLAMA_CURL=OFF -DCMAKE_BUILD_TYPE=Release > "$WORK/cmake.log" 2>&1
  cmake --build build -j"$JOBS" --target llama-bench llama-quantize llama-perplexity > "$WORK/build.log" 2>&1
  echo "build seconds: $(( $(date +%s) - t0 ))"
) &
BUILD=$!

# 2. model files (foreground, CPU + GPU random numbers) -----------------------------------
export PYTHONPATH=$PWD TORCHDYNAMO_DISABLE=1
python3 - "$WORK" "$LAYERS" "${SHAPE:-2b}" <<'EOF'
import json, sys, time
from pathlib import Path
import torch
from bitconv.synth import SynthConfig, hf_config, hf_weights, save_weights, train_tokenizer
from bitconv.convert import convert

work, layers, shape = Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
dims = dict(hidden=2560, intermediate=6912, heads=20, kv_heads=5, vocab=128256) if shape == "2b" else \
    dict(hidden=256, intermediate=768, heads=4, kv_heads=1, vocab=1024)  # SHAPE=tiny: a smoke test
cfg = SynthConfig(family="silu", layers=layers, context=4096, tie=True, seed=0, rope_theta=500000.0,
                  embed_std=0.05, **dims)
src = work / "src"
src.mkdir(exist_ok=True)
t0 = time.time()
(src / "config.json").write_text(json.dumps(hf_config(cfg), indent=2))
save_weights(src, hf_weights(cfg, device="cuda" if torch.cuda.is_available() else "cpu"))
train_tokenizer(400).save(str(src / "tokenizer.json"))
(src / "tokenizer_config.json").write_text(json.dumps(
    {"bos_token": "<|begin_of_text|>", "eos_token": "<|end_of_text|>", "add_bos_token": False}))
print(f"source written in {time.time() - t0:.1f}s", flush=True)
for layout in ("q2_0", "tq2_0"):
    t0 = time.time()
    res = convert(src, work / f"m-{layout}.gguf", layout=layout, force=True)
    print(f"{layout}: {res.output_bytes / 2**20:.1f} MiB in {time.time() - t0:.1f}s", flush=True)
EOF
[ -n "${SKIP_BUILD:-}" ] && exit 0  # SHAPE=tiny SKIP_BUILD=1: check the model step only
wait $BUILD || { echo "BUILD FAILED"; tail -40 "$WORK/cmake.log" "$WORK/build.log"; exit 1; }
B=$WORK/lc/build/bin
"$B/llama-quantize" --allow-requantize "$WORK/m-q2_0.gguf" "$WORK/m-f16.gguf" F16 > "$WORK/quantize.log" 2>&1 \
  || { tail -20 "$WORK/quantize.log"; exit 1; }
ls -la "$WORK"/*.gguf

# 3. speed and perplexity ----------------------------------------------------------------
for m in q2_0 f16 tq2_0; do
  "$B/llama-bench" -m "$WORK/m-$m.gguf" -ngl 99 -p 512 -n 128 -r 3 -o md 2>&1 | tee "$OUT/bench-$m.md" | grep -v "^$"
done
for m in q2_0 f16 tq2_0; do
  "$B/llama-perplexity" -m "$WORK/m-$m.gguf" -f bitconv/data/eval.txt -ngl 99 -c 512 -b 512 --chunks 8 \
    > "$OUT/ppl-$m.txt" 2>&1 || true
  echo "$m: $(grep -E 'Final estimate|tokens per second|error|failed' "$OUT/ppl-$m.txt" | tail -3)"
done
