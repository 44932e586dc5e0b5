"""What bitnet.cpp's fp16 I2_S scales cost: KL between a float32-scale file and its fp16-rounded twin.

For fp16 sources, bitnet.cpp's pipeline rounds each I2_S tensor's scale to fp16 before
storing it as float32 in the tensor's 32-byte tail; bitconv keeps the float32 scale. The
ternary codes are the same, so the two files differ only in those 4-byte scales. This
script measures the difference end to end:

1. convert SOURCE to I2_S with bitconv (float32 scales);
2. copy the file and round every I2_S scale to fp16 in place (what bitnet.cpp stores);
3. `verify` the rounded file against the float32 one (a bitconv GGUF is a valid source),
   so the forward pass, tokens and windows are identical and only the scales differ.

Usage: python scripts/fp16_scale_kl.py [SOURCE] [--tokens N] [--ctx N]
(default SOURCE builtin:tiny-bitnet, the trained demo model).
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path

import numpy as np

from bitconv.convert import convert
from bitconv.readers.gguf_file import GGUFFile
from bitconv.verify import verify

I2_S = 36


def round_i2s_scales_to_fp16(path: Path) -> tuple[int, float]:
    """Round each I2_S tail scale of the file at `path` to fp16 in place; (count, max relative change)."""
    f = GGUFFile(path)
    spots = [(t.offset + t.shape[0] * t.shape[1] // 4) for t in f.tensors.values() if t.ggml_type == I2_S]
    del f
    data = np.memmap(path, dtype=np.uint8, mode="r+")
    worst = 0.0
    for off in spots:
        s = data[off:off + 4].view("<f4")
        r = s.astype(np.float16).astype("<f4")
        worst = max(worst, float(abs(r[0] - s[0]) / abs(s[0])) if s[0] else 0.0)
        data[off:off + 4] = r.view(np.uint8)
    data.flush()
    del data
    return len(spots), worst


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("source", nargs="?", default="builtin:tiny-bitnet")
    ap.add_argument("--tokens", type=int, default=2048)
    ap.add_argument("--ctx", type=int, default=512)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        f32, f16 = Path(tmp) / "f32-scales.gguf", Path(tmp) / "f16-scales.gguf"
        convert(args.source, f32, layout="i2_s")
        shutil.copyfile(f32, f16)
        n, worst = round_i2s_scales_to_fp16(f16)
        rep = verify(f16, f32, tokens=args.tokens, ctx=args.ctx, max_ppl_increase=1.0, min_top1=0.0,
                     max_weight_error=1.0)
        d = rep.to_dict()
        print(f"source {args.source}: {n} I2_S scales rounded to fp16, largest relative change {worst:.2e}")
        print(f"tokens {rep.tokens}, ctx {args.ctx}")
        for key in ("source_perplexity", "artifact_perplexity", "mean_kl", "max_kl", "top1_agreement"):
            if key in d:
                print(f"{key:20s} {d[key]}")


if __name__ == "__main__":
    main()
