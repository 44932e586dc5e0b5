"""What bitconv's absmean scale costs against bitnet.cpp's (issue 22 item 7; README "Byte
identity with bitnet.cpp"): the same float32 model written twice as packed safetensors,
once by bitconv and once with bitnet.cpp's ternarization (torch's float32 abs().mean() on one
thread, codes round(w·(1/s)) clamped; made here with torch and the tests' reference packer),
run by transformers. Same codes; the scales differ by one ulp in some tensors; the mean KL
between the two is what the README states, pinned with a 3x margin.
"""

from __future__ import annotations

import os

os.environ.setdefault("TORCHDYNAMO_DISABLE", "1")

import shutil  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("accelerate")

from bitconv.convert import convert  # noqa: E402

from ._metrics import mean_kl  # noqa: E402
from ._reference import JUDGE_DIMS, JUDGE_SOURCES, text_ids, transformers_logits  # noqa: E402

pytestmark = pytest.mark.judge

# Measured (transformers, 160 tokens of the eval text, float32 sources of the judge dims,
# seeds 0-3): 3, 6, 9, 5 of 14 scales differ by one ulp; mean KL relu2 1.3e-13..1.4e-6,
# silu 1.4e-13..9.6e-6 (a 1-ulp scale flips an 8-bit activation rounding now and then).
# The gate keeps 3x the worst.
MAX_KL = {"relu2": 3e-5, "silu": 3e-5}


def _bitnetcpp_twin(src: Path, ours: Path, dst: Path) -> tuple[Path, int, int]:
    """`ours` with each linear's codes and weight_scale as bitnet.cpp's pipeline computes them
    from the float source; returns (folder, scales that differ, linears)."""
    from safetensors.torch import load_file, save_file

    from reference_packing_tq import bitnetcpp_ternarize, hf2bit_pack

    shutil.copytree(ours, dst)
    source = load_file(str(src / "model.safetensors"))
    packed = load_file(str(dst / "model.safetensors"))
    differ = n = 0
    for name in [k for k in packed if k.endswith("_scale")]:
        s, codes = bitnetcpp_ternarize(source[name[: -len("_scale")]])
        assert np.array_equal(hf2bit_pack(codes), packed[name[: -len("_scale")]].numpy()), name
        inv = torch.tensor([np.float32(1.0 / np.float64(s))], dtype=packed[name].dtype)
        differ += not torch.equal(inv.reshape(packed[name].shape), packed[name])
        n += 1
        packed[name] = inv.reshape(packed[name].shape)
    save_file(packed, str(dst / "model.safetensors"), metadata={"format": "pt"})
    return dst, differ, n


@pytest.mark.parametrize("family", list(MAX_KL))
def test_bitnetcpp_absmean_costs_what_the_readme_says(family, tmp_path):
    from bitconv.synth import make_checkpoint

    src = make_checkpoint(tmp_path / "src", **{**JUDGE_DIMS, **JUDGE_SOURCES[family], "dtype": "f32"})
    ours = tmp_path / "ours"
    convert(src, ours, format="safetensors")
    twin, differ, n = _bitnetcpp_twin(src, ours, tmp_path / "bitnetcpp")
    ids = text_ids(src, 160)
    a = transformers_logits(ours, ids, expect="bitlinear")
    b = transformers_logits(twin, ids, expect="bitlinear")
    kl = mean_kl(a, b)
    print(f"\n{family}: {differ}/{n} scales differ from bitnet.cpp's, mean KL {kl:.2e} <= {MAX_KL[family]:.1e}")
    assert 0 < differ < n  # the case the README describes: some scales are one ulp off
    assert kl <= MAX_KL[family]
