"""bitnet.cpp is the judge of bitconv's I2_S and TL2 files (issue 22, item 4): its own
`llama-perplexity` runs them, and its perplexity must be the SOURCE model's, computed by
transformers over the same chunks the way llama-perplexity scores them.

Runs when a bitnet.cpp build is present: `BITNET_CPP_DIR` names the checkout (the recipe is
in README "Development": bitnet.cpp 4645960 with its llama.cpp fork at 406a5036, built with
TL2 kernels generated for this model's shapes from what `--emit-kernel-config` prints). The
TL2 file is written with that build's `include/kernel_config.ini` (`--kernel-config`), so a
build whose kernels do not cover these shapes skips the TL2 case with that reason. Without a
build the whole module skips, saying so.

The models are the SiLU BitNet and Llama judge sources (tests/judges/_reference.py): arch
`bitnet` with a tied head, which the Nov-2024 fork's graph runs (SiLU-gated), and arch
`llama` (q/k rows permuted), as the fork runs Llama3-8B-1.58. Both have the same weight
shapes, so one set of TL2 kernels serves both. TL2 runs with `-ub 7`: the TL2 kernels
generated at 4645960 write every row of a micro-batch of 8 or more tokens to the same slot
(FORMATS.md §5).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from bitconv.convert import convert
from bitconv.readers import DATA_DIR

from ._bitnetcpp import MAX_LN_PPL, bitnet_dir, bitnetcpp_verdict
from ._reference import JUDGE_DIMS, JUDGE_SOURCES

pytestmark = pytest.mark.judge


def _bitnet_dir() -> Path:
    d = bitnet_dir()
    if d is None:
        pytest.skip("BITNET_CPP_DIR does not name a bitnet.cpp build with build/bin/llama-perplexity: no "
                    "engine to judge I2_S/TL2 files here (README 'Development' has the recipe)")
    return d


def tl2_options(d: Path) -> dict:
    """convert() options for a TL2 file this build runs: its own kernel_config.ini."""
    ini = d / "include" / "kernel_config.ini"
    if not ini.is_file():
        pytest.skip(f"{ini} is missing: the build has no TL2 kernels")
    return {"kernel_config": ini}


@pytest.fixture(scope="module")
def judged():
    return _bitnet_dir(), DATA_DIR / "eval.txt"


@pytest.mark.parametrize("layout", ["i2_s", "tl2"])
@pytest.mark.parametrize("family", list(MAX_LN_PPL))
def test_bitnetcpp_runs_bitconv_files_like_the_source(judged, ckpt_factory, family, layout, tmp_path):
    from bitconv.errors import BitconvError

    d, text = judged
    src = ckpt_factory(**{**JUDGE_DIMS, **JUDGE_SOURCES[family]})  # built once per session
    path = tmp_path / f"m-{layout}.gguf"
    try:
        convert(src, path, layout=layout, **(tl2_options(d) if layout == "tl2" else {}))
    except BitconvError as exc:
        pytest.skip(f"the build's TL2 kernels do not cover this model's shapes ({exc}); "
                    "build them with what --emit-kernel-config prints (README 'Development')")
    ppl, ref, diff = bitnetcpp_verdict(d, src, path, text)
    print(f"\nbitnet.cpp {family} {layout}: ppl {ppl:.4f}, transformers on the source {ref:.4f}, "
          f"|ln ratio| {diff:.4f} <= {MAX_LN_PPL[family]}")
    assert diff <= MAX_LN_PPL[family]
