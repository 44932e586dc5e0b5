"""Release mode with the MLX and compressed-tensors formats (issue 20, item 5): one read,
every format beside the others, manifest entries, model card lines, `check`."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from bitconv.convert import convert
from bitconv.release import check_manifest, release

FORMATS = ["gguf", "safetensors", "mlx", "compressed-tensors"]


@pytest.fixture(scope="module")
def bonsai(ckpt_factory):
    """An exact-ternary Llama with ternary (group-128) embedding and head: the tables go out
    ternary in GGUF q2_0 and MLX, as floats in tq2_0 and compressed-tensors, from one read."""
    return ckpt_factory("llama", seed=12, weights="exact", dtype="f32", tie=False, ternary_embeddings=128)


def test_release_writes_every_format_from_one_read(bonsai, tmp_path):
    res = release(bonsai, tmp_path / "rel", layouts=["q2_0", "tq2_0"], formats=FORMATS, model_card=True)
    assert res.ok, [(t.label, t.error) for t in res.targets]
    labels = {t.label: t for t in res.targets}
    assert set(labels) == {"q2_0", "tq2_0", "safetensors", "mlx", "compressed-tensors"}
    for fmt in ("mlx", "compressed-tensors"):
        single = tmp_path / f"single-{fmt}"
        convert(bonsai, single, format=fmt)
        ours = labels[fmt].path
        assert ours.name.endswith(f"-{fmt}") and ours.is_dir()
        # the same tensors as a single conversion (the header's provenance metadata is the same too)
        assert (ours / "model.safetensors").read_bytes() == (single / "model.safetensors").read_bytes()
        assert json.loads((ours / "config.json").read_text()) == json.loads((single / "config.json").read_text())
    m = json.loads(res.manifest_path.read_text())
    arts = {a["label"]: a for a in m["artifacts"]}
    assert arts["mlx"]["format"] == "mlx" and arts["mlx"]["engine"] == "mlx-lm"
    assert arts["compressed-tensors"]["format"] == "compressed-tensors" and "files" in arts["compressed-tensors"]
    assert m["options"]["formats"] == FORMATS
    card = res.card_path.read_text()
    assert "mlx_lm.generate --model" in card and "vllm serve" in card and "not run by bitconv" in card
    assert "- mlx" in card and "- compressed-tensors" in card
    rep = check_manifest(res.manifest_path, source=bonsai)
    assert rep["ok"] and rep["checked"] >= 5, rep
    (labels["mlx"].path / "config.json").write_text("{}")
    rep = check_manifest(res.manifest_path, source=bonsai)
    assert not rep["ok"] and any("mlx" in p for p in rep["problems"])


def test_release_cli_and_check(bonsai, tmp_path):
    out = tmp_path / "cli"
    r = subprocess.run([sys.executable, "-m", "bitconv.cli", "convert", str(bonsai), str(out), "--layout", "tq2_0",
                        "--format", ",".join(FORMATS)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr + r.stdout
    r = subprocess.run([sys.executable, "-m", "bitconv.cli", "check", str(out / "bitconv-manifest.json"),
                        "--source", str(bonsai)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr + r.stdout
