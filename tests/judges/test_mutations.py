"""The mutation check (issue 22, item 3): planted defects that the judges must catch, in every
layout and output format, run with the default `pytest -q` so it cannot rot.

Each defect is planted through the writers' one supported seam, `Writer.encode(plan, tp,
payload)`, which every tensor passes through on its way to the file (the payload is the
`Ternary` a packer receives; the result is the bytes the file stores), the GGUF writer's
llama q/k row permutation, or the quantizer's scale function. The defects are those a review of the suite planted by
hand (issue 22):

  all-scales-x1.3     every scale x1.3 inside the shared quantizer (`bitconv.quant._scales`,
                      the review's own defect, which verify and the byte tests missed)
  vgu-scales-x1.3     only attn_v / ffn_gate / ffn_up scales x1.3 (sub-norms absorb some)
  codes-swapped       two codes swapped in every byte of packed codes (a packer bit-order bug)
  rows-off-by-one     every linear's rows (and row scales) shifted by one
  qk-perm-skipped     the llama rope-order permutation of q/k rows not applied (GGUF only:
                      safetensors keeps Hugging Face's order and has no permutation)
  head-scale-dropped  the output head written without its scale (a ternary head's scales
                      set to 1; a float head, which carries its scale in its values, divided
                      by its RMS)

The model is the Llama judge source (tests/judges/_reference.py: latent bf16 weights, a
bitnet online config, untied head), the family where every defect changes the function
(a BitNet sub-norm after v and up absorbs their scale). The judges and their gates are the
suite's own, imported from `_reference`: llama.cpp against transformers on the source for
the layouts llama.cpp runs (TQ1_0, TQ2_0, Q2_0); for the bitnet.cpp layouts (I2_S, TL1,
TL2), the file converted to packed safetensors and run by transformers against the
source, and, when `BITNET_CPP_DIR` names a bitnet.cpp build, bitnet.cpp's llama-perplexity
against the source's (tests/judges/test_bitnetcpp.py); for safetensors and compressed-tensors, transformers on the folder; for MLX, mlx-lm
(with the gates of test_mlx.py / test_compressed_tensors.py). A file an engine or reader refuses
counts as caught. Without a defect every judge passes (the control row), so "caught" means
the defect, not a judge that always fails.
"""

from __future__ import annotations

import os

os.environ.setdefault("TORCHDYNAMO_DISABLE", "1")

from contextlib import contextmanager  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Callable, Iterator  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402

pytest.importorskip("llama_cpp", reason="llama-cpp-python (a judge) is a test extra")
pytest.importorskip("transformers", reason="transformers (the reference) is a test extra")
pytest.importorskip("accelerate", reason="transformers' bitnet integration needs accelerate")

from bitconv.convert import convert  # noqa: E402
from bitconv.errors import BitconvError  # noqa: E402
from bitconv.model import LINEAR, OUTPUT  # noqa: E402
from bitconv.quant import Ternary  # noqa: E402
from bitconv.readers import DATA_DIR  # noqa: E402
from bitconv.writers.base import Encoded  # noqa: E402

from ._bitnetcpp import MAX_LN_PPL, bitnet_dir, bitnetcpp_verdict  # noqa: E402
from ._engine_cases import CT_LATENT_GATES, MLX_GATES, mlx_logits  # noqa: E402
from ._llamacpp import llama_logits  # noqa: E402
from ._reference import (JUDGE_DIMS, JUDGE_SOURCES, LLAMACPP_GATES, TRANSFORMERS_GATES, Gates,  # noqa: E402
                         judge, source_logits, text_ids, transformers_logits)

pytestmark = pytest.mark.judge

FAMILY = "llama"
N_TOKENS = 160
LLAMACPP_LAYOUTS = ("tq1_0", "tq2_0", "q2_0")
BITNETCPP_LAYOUTS = ("i2_s", "tl1", "tl2")
FOLDER_FORMATS = ("safetensors", "mlx", "compressed-tensors")  # each with its engine's judge
TARGETS = [f"gguf:{x}" for x in LLAMACPP_LAYOUTS + BITNETCPP_LAYOUTS] + list(FOLDER_FORMATS)
VGU = ("attn_v", "ffn_gate", "ffn_up", "v_proj", "gate_proj", "up_proj")


# -- the defects ----------------------------------------------------------------------------
def _scaled(t: Ternary, f: float) -> Ternary:
    return Ternary(t.values, t.scales * np.float32(f), t.group)


def _rows_rolled(t: Ternary) -> Ternary:
    s = np.roll(t.scales, 1, axis=0) if t.scales.ndim == 2 else t.scales
    return Ternary(np.ascontiguousarray(np.roll(t.values, 1, axis=0)), s, t.group)


def _swap_2bit_fields(b: np.ndarray) -> np.ndarray:
    """Swap the 2-bit fields 0 and 1 of every byte (bits 0-1 with bits 2-3)."""
    return (b & 0xF0) | ((b & 0x03) << 2) | ((b >> 2) & 0x03)


def _swap_nibbles(b: np.ndarray) -> np.ndarray:
    return ((b << 4) | (b >> 4)).astype(np.uint8)


def _swap_trits(b: np.ndarray) -> np.ndarray:
    """TQ1_0 bytes hold base-3 digits (FORMATS.md §6): swap the first two of every byte."""
    x = b.astype(np.uint16)
    digits = [(((x * 3**f) & 0xFF) * 3) >> 8 for f in range(5)]
    digits[0], digits[1] = digits[1], digits[0]
    v = sum(d * 3 ** (4 - f) for f, d in enumerate(digits))
    return ((v * 256 + 242) // 243).astype(np.uint8)


def _codes_swapped(layout: str, data: np.ndarray, plan, tp) -> np.ndarray:
    """Two codes of every byte of packed codes swapped; scale bytes left alone."""
    out = data.copy()
    if layout in ("tq2_0", "tq1_0", "q2_0"):
        block, lo, hi = {"tq2_0": (66, 0, 64), "tq1_0": (54, 0, 52), "q2_0": (18, 2, 18)}[layout]
        blocks = out.reshape(-1, block)
        swap = _swap_trits if layout == "tq1_0" else _swap_2bit_fields
        blocks[:, lo:hi] = swap(blocks[:, lo:hi])
    elif layout == "i2_s":
        out[:-32] = _swap_2bit_fields(out[:-32])
    elif layout == "tl1":  # two 4-bit pair codes per byte
        out[:-32] = _swap_nibbles(out[:-32])
    elif layout == "tl2":  # the magnitude part: two 4-bit triple magnitudes per byte
        m, k = tp.shape
        bk = plan.layout.tiles_for(tp.name, (m, k)).BK
        n = m * ((k - k % bk) // 3) // 2
        out[:n] = _swap_nibbles(out[:n])
    elif layout in FOLDER_FORMATS:  # 2-bit fields, four per byte (HF rows, MLX / int32 words)
        out[:] = _swap_2bit_fields(out)
    else:
        raise AssertionError(f"no code swap defined for {layout}: add one")
    return out


def _head_scale_dropped(payload):
    if isinstance(payload, Ternary):
        return Ternary(payload.values, np.ones_like(payload.scales), payload.group)
    w = np.asarray(payload, dtype=np.float32)
    return w / np.float32(np.sqrt(np.mean(w.astype(np.float64) ** 2)))


@dataclass(frozen=True)
class Defect:
    name: str
    linear: Callable[[str, Ternary], Ternary] | None = None  # (tensor name, payload) -> payload
    head: Callable | None = None  # the output head's payload -> payload
    codes: bool = False  # swap codes in the packed bytes
    skip_qk_permutation: bool = False
    gguf_only: bool = False
    quantizer_scale: float | None = None  # absmean scales x this, inside bitconv.quant


DEFECTS = [
    Defect("all-scales-x1.3", quantizer_scale=1.3),
    Defect("vgu-scales-x1.3", linear=lambda n, t: _scaled(t, 1.3) if any(k in n for k in VGU) else t),
    Defect("codes-swapped", codes=True),
    Defect("rows-off-by-one", linear=lambda n, t: _rows_rolled(t)),
    Defect("qk-perm-skipped", skip_qk_permutation=True, gguf_only=True),
    Defect("head-scale-dropped", head=_head_scale_dropped),
]


@contextmanager
def planted(defect: Defect | None) -> Iterator[None]:
    """Plant `defect` in every writer's encode seam for the duration of the block."""
    if defect is None:
        yield
        return
    from bitconv.writers import gguf_writer
    from bitconv.writers.base import _WRITERS, get_writer

    get_writer("gguf")  # registers the built-in writers
    mp = pytest.MonkeyPatch()
    for cls in set(_WRITERS.values()):
        orig = cls.encode

        def encode(self, plan, tp, payload, _orig=orig):
            if tp.role == LINEAR and isinstance(payload, Ternary) and defect.linear:
                payload = defect.linear(tp.name, payload)
            if tp.role == OUTPUT and defect.head:
                payload = defect.head(payload)
            enc = _orig(self, plan, tp, payload)
            if defect.codes and tp.role == LINEAR:
                layout = plan.layout.name if self.format == "gguf" else self.format
                enc = Encoded([_codes_swapped(layout, np.asarray(enc[0]).reshape(-1).view(np.uint8), plan, tp),
                               *enc[1:]])
            return enc

        mp.setattr(cls, "encode", encode)
        if defect.head:  # the head must go through encode, not the direct float path
            orig_src = cls.encode_source
            mp.setattr(cls, "encode_source",
                       lambda self, plan, tp, _o=orig_src: None if tp.role == OUTPUT else _o(self, plan, tp))
    if defect.skip_qk_permutation:
        mp.setattr(gguf_writer, "to_llama_rope_order", lambda tern, n_head: tern)
    if defect.quantizer_scale:
        from bitconv import quant

        orig_scales = quant._scales
        mp.setattr(quant, "_scales", lambda sums, n: orig_scales(sums, n) * np.float32(defect.quantizer_scale))
    try:
        yield
    finally:
        mp.undo()


# -- the judges -----------------------------------------------------------------------------
def judge_target(target: str, src: Path, work: Path, defect: Defect | None) -> list[str]:
    """Convert `src` for `target` with `defect` planted, run the target's judges; return what
    failed (empty: every judge passed)."""
    ids = text_ids(src, N_TOKENS)
    ref = source_logits(src, ids)
    fmt, _, layout = target.partition(":")
    work.mkdir(parents=True, exist_ok=True)
    out = work / (f"m-{layout}.gguf" if layout else f"m-{fmt}")
    try:
        bitnet = bitnet_dir() if layout in ("i2_s", "tl2") else None
        extra = {"kernel_config": bitnet / "include" / "kernel_config.ini"} if bitnet and layout == "tl2" else {}
        with planted(defect):
            convert(src, out, **({"layout": layout, **extra} if layout else {"format": fmt}))
        if layout in LLAMACPP_LAYOUTS:
            got = llama_logits(out, ids)
            v = judge(f"llama.cpp {layout}", ref, got, LLAMACPP_GATES[FAMILY])
        elif fmt == "mlx":
            # mlx-lm computes in the folder's dtype: bf16 here, so the MLX judge's bf16 gates
            # (clean run measured KL 2.4e-4 against them; its f32 latent gate is 1.5e-4)
            v = judge("mlx-lm", ref, mlx_logits(out, [ids])[0], _gates(MLX_GATES["bf16"]))
        elif fmt == "compressed-tensors":
            got = transformers_logits(out, ids)
            pytest.importorskip("compressed_tensors", reason="compressed-tensors (its judge's loader) is not importable")
            v = judge("transformers compressed-tensors", ref, got, _gates(CT_LATENT_GATES))
        else:
            folder = out
            if layout:  # a bitnet.cpp layout: its bytes through bitconv's reader into transformers
                folder = work / f"m-{layout}-st"
                convert(out, folder, format="safetensors")
            got = transformers_logits(folder, ids, expect="bitlinear")
            v = judge(f"transformers {target}", ref, got, TRANSFORMERS_GATES[FAMILY])
            if bitnet:  # and bitnet.cpp itself, when a build is present (BITNET_CPP_DIR)
                ppl, ref_ppl, diff = bitnetcpp_verdict(bitnet, src, out, DATA_DIR / "eval.txt")
                if not diff <= MAX_LN_PPL[FAMILY]:
                    return [f"bitnet.cpp {layout}: |ln ppl ratio| {diff:.4f} > {MAX_LN_PPL[FAMILY]}"] + \
                        [f"{v.case}: {f}" for f in v.failures]
    except (BitconvError, ValueError, RuntimeError, AssertionError) as exc:  # refused by a reader or an engine
        return [f"refused: {type(exc).__name__}: {str(exc)[:100]}"]
    return [f"{v.case}: {f}" for f in v.failures]


def _gates(bounds: tuple[float, float, float]) -> Gates:
    """A format judge's (min top-1, max rel L2, max KL) bounds (_engine_cases, shared with
    test_mlx.py / test_compressed_tensors.py) as the mutation check's Gates."""
    top1, _, kl = bounds
    return Gates(max_kl=kl, min_top1=top1)


@pytest.fixture(scope="module")
def source(ckpt_factory) -> Path:
    """The judge source, built once per session (conftest's ckpt_factory, shared with
    test_llamacpp.py and test_bitnetcpp.py)."""
    return ckpt_factory(**{**JUDGE_DIMS, **JUDGE_SOURCES[FAMILY]})


@pytest.mark.parametrize("target", TARGETS)
def test_every_planted_defect_fails_a_judge(source, target, tmp_path):
    clean = judge_target(target, source, tmp_path / "clean", None)
    assert clean == [], f"{target}: the judges fail without a defect: {clean}"
    missed = []
    for defect in DEFECTS:
        if defect.gguf_only and not target.startswith("gguf:"):
            continue
        failed = judge_target(target, source, tmp_path / defect.name, defect)
        print(f"\n{target:12} {defect.name:20} {'CAUGHT: ' + failed[0] if failed else 'MISSED'}")
        if not failed:
            missed.append(defect.name)
    assert not missed, f"{target}: no judge fails on {missed}"


def test_every_layout_and_format_is_in_the_check():
    """A layout or output format added later must join the check (and get a judge) here."""
    from bitconv.pack.base import layout_class, layout_names
    from bitconv.writers.base import writer_formats

    gguf_layouts = {n for n in layout_names() if layout_class(n).ggml_type is not None}
    assert gguf_layouts == set(LLAMACPP_LAYOUTS + BITNETCPP_LAYOUTS), gguf_layouts
    assert set(writer_formats()) == {"gguf", *FOLDER_FORMATS}, writer_formats()
