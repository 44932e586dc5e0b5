"""`python -m bitconv.kernels`: compile bitconv's numba kernels now, ahead of the first run.

numba compiles each kernel for the machine's CPU the first time a run needs it and caches
the result (beside the package, or in numba's user cache dir / NUMBA_CACHE_DIR). A first
conversion after an install therefore pays that compile (seconds; tens of seconds on a busy
2-core machine). Run this once after `pip install` (an install step: pip has no hook for it)
and the first conversion and verify start as fast as later ones.

It compiles by doing what conversions do, on tiny seeded models in a temporary folder:
every source dtype (bf16, f16, f32) into every layout and format, a GGUF and a packed
folder read back as sources, and a verify, so the cached signatures are exactly the ones
real runs use. Nothing outside the temporary folder (and the kernel cache) is written.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path


def compile_all(progress=print) -> int:
    """Run the conversions that compile every kernel; returns how many runs it made."""
    os.environ.setdefault("TORCHDYNAMO_DISABLE", "1")
    from ..convert import convert
    from ..synth import make_checkpoint
    from ..verify import verify

    runs = 0
    with tempfile.TemporaryDirectory(prefix="bitconv-kernels-") as tmp:
        root = Path(tmp)
        for family, layouts in (("relu2", ("i2_s", "tl1", "tl2")), ("silu", ("tq2_0", "tq1_0", "q2_0"))):
            for dtype in ("bf16", "f16", "f32"):
                src = make_checkpoint(root / f"{family}-{dtype}", family=family, dtype=dtype, seed=1)
                for layout in layouts:
                    progress(f"  {family} {dtype} -> {layout}")
                    convert(src, root / f"{family}-{dtype}-{layout}.gguf", layout=layout)
                    runs += 1
                convert(src, root / f"{family}-{dtype}-st", format="safetensors")
                runs += 1
        for variant in ("arm", "x86-1x4"):
            convert(root / "relu2-f32", root / f"i2s-{variant}.gguf", layout="i2_s", i2s_variant=variant)
            runs += 1
        progress("  sources read back: GGUF and packed safetensors")
        for layout in ("i2_s", "tl1", "tl2"):
            convert(root / f"relu2-bf16-{layout}.gguf", root / f"back-{layout}.gguf", layout="i2_s")
            runs += 1
        for layout in ("tq2_0", "tq1_0", "q2_0"):
            convert(root / f"silu-bf16-{layout}.gguf", root / f"back-{layout}.gguf", layout="tq2_0")
            runs += 1
        convert(root / "relu2-bf16-st", root / "back-st.gguf", layout="i2_s")
        runs += 1
        progress("  verify")
        for art, src in (("relu2-bf16-tl2.gguf", "relu2-bf16"), ("silu-bf16-tq2_0.gguf", "silu-bf16"),
                         ("relu2-bf16-st", "relu2-bf16")):
            verify(root / art, root / src, tokens=256, ctx=64, text=None)
            runs += 1
    return runs


def main() -> None:
    start, cpu = time.perf_counter(), time.process_time()
    print("compiling bitconv's kernels for this CPU (once per install; later runs load them from the cache)",
          file=sys.stderr)
    n = compile_all(lambda line: print(line, file=sys.stderr))
    print(f"done: {n} runs in {time.perf_counter() - start:.1f} s ({time.process_time() - cpu:.1f} s CPU)",
          file=sys.stderr)


if __name__ == "__main__":
    main()
