#!/usr/bin/env bash
# Q2_0 vs F16 vs TQ2_0 in llama.cpp's CUDA build (issue 12 item 8; a measurement, not a CI test).
#
# Run on a CUDA machine from the repository root, with:
#   dist/llama.cpp.tar.xz  llama.cpp as llama-cpp-python 0.3.36 vendors it (its sdist's
#                          vendor/llama.cpp, trimmed: see ../shared/docs/GPU-LLAMACPP.md), top folder lc/
#   dist/wheels/gguf-*.whl if the machine's python lacks the gguf package
# It builds llama-bench/llama-perplexity/llama-quantize with CUDA while bitconv writes seeded
# random ternary models of the SHAPES asked for (default "bitnet2b"):
#   bitnet2b  bitnet-b1.58-2B-4T-shaped SiLU BitNet (hidden 2560, 30 layers, 20/5 heads, FFN 6912,
#             vocab 128256, tied): Q2_0 and TQ2_0, and F16 made from the Q2_0 file by llama-quantize
#   llama2b   the same dimensions as a Llama (arch llama, untied head): Q2_0, TQ2_0, F16
#   bonsai    a Ternary-Bonsai-shaped Qwen3 (Qwen3-1.7B dimensions; linears and the tied embedding
#             exact ternary with group-128 scales): Q2_0 with the embedding as Q2_0 (auto) and
#             as F16 (--embedding-type f16), and F16
#   tiny      a small SiLU model, to smoke-test the script (SKIP_BUILD=1 stops after writing)
# then runs llama-bench (-ngl 99) and llama-perplexity on each file. Results go to $OUT.
set -euo pipefail
OUT=${OUT:-$PWD/gpu-out}
WORK=${WORK:-/tmp/q2bench}
JOBS=${JOBS:-$(nproc)}
SHAPES=${SHAPES:-bitnet2b}
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

# 2. model files (foreground, while the build runs) -----------------------------------------
export PYTHONPATH=$PWD TORCHDYNAMO_DISABLE=1
python3 - "$WORK" $SHAPES <<'EOF'
import json, sys, time
from pathlib import Path
import torch
from bitconv.synth import SynthConfig, hf_config, hf_weights, save_weights, train_tokenizer
from bitconv.convert import convert

work = Path(sys.argv[1])
DIMS_2B = dict(hidden=2560, intermediate=6912, layers=30, heads=20, kv_heads=5, vocab=128256, context=4096,
               seed=0, rope_theta=500000.0)
SHAPES = {
    "bitnet2b": (dict(family="silu", tie=True, embed_std=0.02, **DIMS_2B),
                 {"q2_0": dict(layout="q2_0"), "tq2_0": dict(layout="tq2_0")}),
    "llama2b": (dict(family="llama", tie=False, embed_std=0.02, **DIMS_2B),
                {"q2_0": dict(layout="q2_0"), "tq2_0": dict(layout="tq2_0")}),
    "bonsai": (dict(family="qwen3", weights="exact", ternary_group=128, ternary_embeddings=128, hidden=2048,
                    intermediate=6144, layers=28, heads=16, kv_heads=8, head_dim=128, vocab=151936, context=4096,
                    tie=True, seed=0, rope_theta=1000000.0, embed_std=0.02),
               {"q2_0": dict(layout="q2_0"), "q2_0-f16emb": dict(layout="q2_0", embedding_type="f16")}),
    "tiny": (dict(family="silu", hidden=256, intermediate=768, layers=2, heads=4, kv_heads=1, vocab=1024,
                  tie=True, embed_std=0.05), {"q2_0": dict(layout="q2_0"), "tq2_0": dict(layout="tq2_0")}),
}
for shape in sys.argv[2:]:
    kw, variants = SHAPES[shape]
    cfg = SynthConfig(**kw)
    src = work / f"src-{shape}"
    src.mkdir(exist_ok=True)
    t0 = time.time()
    (src / "config.json").write_text(json.dumps(hf_config(cfg), indent=2))
    save_weights(src, hf_weights(cfg, device="cuda" if torch.cuda.is_available() else "cpu"))
    train_tokenizer(400).save(str(src / "tokenizer.json"))
    (src / "tokenizer_config.json").write_text(json.dumps(
        {"bos_token": "<|begin_of_text|>", "eos_token": "<|end_of_text|>", "add_bos_token": False}))
    print(f"{shape}: source written in {time.time() - t0:.1f}s", flush=True)
    for name, opts in variants.items():
        t0 = time.time()
        res = convert(src, work / f"{shape}-{name}.gguf", force=True, **opts)
        types = sorted({t.out_type for t in res.plan.tensors if t.role != "norm"})
        print(f"{shape}-{name}: {res.output_bytes / 2**20:.1f} MiB in {time.time() - t0:.1f}s, "
              f"types {types}", flush=True)
EOF
[ -n "${SKIP_BUILD:-}" ] && exit 0
wait $BUILD || { echo "BUILD FAILED"; tail -40 "$WORK/cmake.log" "$WORK/build.log"; exit 1; }
B=$WORK/lc/build/bin

# 3. speed and perplexity ----------------------------------------------------------------
for shape in $SHAPES; do
  "$B/llama-quantize" --allow-requantize "$WORK/$shape-q2_0.gguf" "$WORK/$shape-f16.gguf" F16 \
    > "$WORK/quantize.log" 2>&1 || { tail -20 "$WORK/quantize.log"; exit 1; }
  for f in "$WORK/$shape"-*.gguf; do
    m=$(basename "$f" .gguf)
    "$B/llama-bench" -m "$f" -ngl 99 -p 512 -n 128 -r ${REPS:-3} -o md 2>/dev/null | grep -E "^\| [a-z]" \
      | tee "$OUT/bench-$m.md" | sed "s/^/$m /"
    "$B/llama-perplexity" -m "$f" -f bitconv/data/eval.txt -ngl 99 -c 512 -b 512 --chunks 8 \
      > "$WORK/ppl-$m.txt" 2>&1 || true
    echo "$m: $(grep -E 'Final estimate' "$WORK/ppl-$m.txt" || tail -3 "$WORK/ppl-$m.txt")"
  done
done
