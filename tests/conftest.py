"""Shared fixtures: tiny seeded checkpoints written once per session with bitconv.synth.

Every checkpoint is a real Hugging Face model folder (config.json, safetensors, a trained
byte-level BPE tokenizer.json), so reader paths run exactly as on a download. Fixtures are
session-scoped and must be treated as read-only: copy a folder (`copy_ckpt`) before
damaging it.
"""

from __future__ import annotations

import os

# Before anything imports torch or huggingface_hub (both read these at import time).
os.environ["TORCHDYNAMO_DISABLE"] = "1"
os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"
os.environ["HF_HUB_OFFLINE"] = "1"  # no test touches the network
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import json  # noqa: E402
import shutil  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Callable  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from bitconv.synth import make_checkpoint  # noqa: E402

# The small SiLU-family model the judges use: 2 layers, 4 heads / 2 KV heads, tied embeddings.
SMALL = dict(hidden=256, intermediate=512, layers=2, heads=4, kv_heads=2, vocab=512)


@pytest.fixture(scope="session")
def ckpt_factory(tmp_path_factory) -> Callable[..., Path]:
    """`ckpt_factory(family="silu", **overrides) -> Path`: a cached synthetic checkpoint.

    Same arguments -> same folder (written once per session). Do not modify it.
    """
    cache: dict[str, Path] = {}

    def make(family: str = "silu", **overrides) -> Path:
        kw = {**SMALL, **overrides, "family": family}
        key = json.dumps(kw, sort_keys=True)
        if key not in cache:
            name = "-".join(f"{k}{v}" for k, v in sorted(kw.items()) if k != "quantization_config")
            folder = tmp_path_factory.mktemp("ckpt") / name[:100]
            cache[key] = make_checkpoint(folder, **kw)
        return cache[key]

    return make


@pytest.fixture(scope="session")
def silu_ckpt(ckpt_factory) -> Path:
    """1bitLLM-style BitnetForCausalLM: SiLU FFN, tied embeddings, bf16 latent weights."""
    return ckpt_factory("silu", seed=0)


@pytest.fixture(scope="session")
def relu2_ckpt(ckpt_factory) -> Path:
    """transformers BitNetForCausalLM: relu² FFN, tied embeddings."""
    return ckpt_factory("relu2", seed=1)


@pytest.fixture(scope="session")
def llama_ckpt(ckpt_factory) -> Path:
    """LlamaForCausalLM with its own lm_head (untied), float latent weights."""
    return ckpt_factory("llama", seed=2, tie=False)


@pytest.fixture(scope="session")
def sharded_ckpt(ckpt_factory) -> Path:
    """The silu_ckpt weights split over 3 shards with a model.safetensors.index.json."""
    return ckpt_factory("silu", seed=0, shards=3)


@pytest.fixture(scope="session")
def untied_silu_ckpt(ckpt_factory) -> Path:
    """SiLU BitNet with its own lm_head: upstream llama.cpp's `bitnet` graph cannot run it."""
    return ckpt_factory("silu", seed=5, tie=False)


@pytest.fixture(scope="session")
def demo_tl2(tmp_path_factory) -> Path:
    """The built-in demo model converted to TL2 as the README quickstart does
    (`bitconv convert builtin:tiny-bitnet tiny-bitnet-tl2.gguf --layout tl2`). Do not modify it."""
    from bitconv.convert import convert

    out = tmp_path_factory.mktemp("demo") / "tiny-bitnet-tl2.gguf"
    convert("builtin:tiny-bitnet", out, layout="tl2")
    return out


@pytest.fixture
def copy_ckpt(tmp_path) -> Callable[[Path], Path]:
    """`copy_ckpt(src) -> Path`: a private copy of a checkpoint folder that a test may damage."""
    counter = [0]

    def copy(src: Path) -> Path:
        counter[0] += 1
        dst = tmp_path / f"model{counter[0]}"
        shutil.copytree(src, dst)
        return dst

    return copy


@pytest.fixture(scope="session")
def hf_float_weights() -> Callable[[Path], dict[str, np.ndarray]]:
    """`hf_float_weights(folder) -> {hf_name: float32 array}` read straight from safetensors."""

    def read(folder: Path) -> dict[str, np.ndarray]:
        import torch
        from safetensors.torch import load_file

        out: dict[str, np.ndarray] = {}
        for f in sorted(Path(folder).glob("*.safetensors")):
            for k, v in load_file(str(f)).items():
                out[k] = v.to(torch.float32).numpy() if v.is_floating_point() else v.numpy()
        return out

    return read


@pytest.fixture
def outdir(tmp_path) -> Path:
    """An empty folder for outputs, beside (never inside) the sources a test builds."""
    d = tmp_path / "out"
    d.mkdir()
    return d
