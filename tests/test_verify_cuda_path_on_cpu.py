"""Issue 22 item 5: the CUDA path's pure functions run in CI without a GPU, through the same
code with device="cpu": the staging buffers (`staging.Stager`), the torch TQ2_0 decoder that
runs on the GPU (`weights.tq2_0_decode` given a `put`), the int8 torch backend
(`backends/int8_torch.py`), and a whole Runner that loads like the CUDA one (`stage=True`).
What stays GPU-only (pinned memory, events, torch.compile, flash attention) is tested by
tests/test_verify.py::test_cuda_path_matches_cpu on a GPU."""

from __future__ import annotations

import os

os.environ.setdefault("TORCHDYNAMO_DISABLE", "1")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from bitconv.convert import convert  # noqa: E402
from bitconv.pack import get_layout  # noqa: E402
from bitconv.quant import ternarize  # noqa: E402
from bitconv.readers import open_source  # noqa: E402
from bitconv.verify.backends.int8_torch import Int8TorchBackend  # noqa: E402
from bitconv.verify.forward import Runner, token_logprobs_and_stats  # noqa: E402
from bitconv.verify.staging import Stager  # noqa: E402
from bitconv.verify.weights import tq2_0_decode  # noqa: E402

DIMS = dict(vocab=512, hidden=256, intermediate=512, layers=2, heads=4, kv_heads=2)


def test_stager_layout_on_the_cpu(tmp_path):
    """Reservations are 4 KiB-aligned slices of one buffer per slot, slots alternate per
    layer, a buffer that grows keeps the old one alive until its slot comes round again,
    `read` fills a slice with the file's bytes (in parallel chunks), `put` round-trips."""
    st = Stager(torch.device("cpu"))
    assert not st.pinned
    st.begin()
    a = st.reserve(10)
    b = st.reserve(5000)
    assert b.data_ptr() - a.data_ptr() == Stager.ALIGN and st.off == 3 * Stager.ALIGN
    slot = st.slot
    st.end()
    st.begin()
    assert st.slot != slot and st.off == 0
    big = st.reserve(1 << 25)  # larger than the first buffer (16 MiB) of this slot: a new one
    assert big.numel() == 1 << 25
    st.reserve(1 << 25)
    assert len(st.retired[st.slot]) == 1  # the outgrown buffer, kept until this slot's next begin
    st.end()
    st.begin()
    st.end()
    st.begin()
    assert st.retired[st.slot] == []

    data = np.random.default_rng(0).integers(0, 256, 3 * 4096 + 17, dtype=np.uint8)
    path = tmp_path / "bytes.bin"
    path.write_bytes(b"xx" + data.tobytes())
    st.READ_CHUNK = 4096  # several chunks, read by the pool
    fd = os.open(path, os.O_RDONLY)
    try:
        got = st.read(fd, 2, data.size)
    finally:
        os.close(fd)
    assert np.array_equal(got.numpy(), data)
    x = torch.randn(7, 3)
    assert torch.equal(st.put(x), x) and st.put(torch.empty(0)).numel() == 0


@pytest.mark.parametrize("group", ["tensor", "row", 512])
def test_device_tq2_0_decoder_on_the_cpu(group):
    """The decoder CUDA runs (torch ops on uploaded bytes) gives the layout's own unpack."""
    w = np.random.default_rng(1).standard_normal((64, 1024)).astype(np.float32)
    w[:, :256] = 0  # all-zero blocks store d = 0
    tern = ternarize(w, group)
    lay = get_layout("tq2_0")
    data = lay.pack(tern)
    ref = lay.unpack(data, tern.shape, group=group)
    uploaded = []

    def put(t: torch.Tensor) -> torch.Tensor:
        uploaded.append(t.numel())
        return t.clone()

    got = tq2_0_decode(data, tern.shape, group, "cpu", put)
    assert uploaded and uploaded[0] == len(data)  # the torch branch ran on the bytes as stored
    assert np.array_equal(got.values.numpy(), ref.values)
    assert np.array_equal(got.scales.numpy().reshape(np.shape(ref.scales)), ref.scales)



@pytest.mark.parametrize("on_device", [False, True])
def test_live_block_stored_with_zero_scale_reads_as_zeros_on_every_path(on_device):
    """A block with codes but d = 0 computes zeros in the engine; the reader reads it so
    (issue 25), and verify's CPU and device decoders must agree with the reader: the device
    one finds such blocks from the bytes (its codes are decoded on the device)."""
    w = np.random.default_rng(2).standard_normal((8, 1024)).astype(np.float32)
    lay = get_layout("tq2_0")
    data = lay.pack(ternarize(w, "tensor")).copy()
    data[64:66] = 0  # row 0, block 0: codes kept, d = +0.0
    ref = lay.unpack(data, (8, 1024))
    assert not ref.dequantize()[0, :256].any() and ref.dequantize()[0, 256:].any()
    put = (lambda t: t.clone()) if on_device else None
    got = tq2_0_decode(data, (8, 1024), "tensor", "cpu", put)
    assert got.group == ref.group
    assert np.array_equal(got.scales.numpy().reshape(np.shape(ref.scales)), ref.scales)
    assert np.array_equal(got.dequantize().numpy(), ref.dequantize())

@pytest.fixture(scope="module")
def files(tmp_path_factory):
    from bitconv.synth import make_checkpoint

    root = tmp_path_factory.mktemp("cudacpu")
    out = {}
    for family in ("silu", "llama"):
        src = make_checkpoint(root / family, family=family, seed=5, **DIMS)
        out[family] = root / f"{family}.gguf"
        convert(src, out[family], layout="tq2_0")
    return out


@pytest.mark.parametrize("family", ["silu", "llama"])
def test_runner_loads_and_computes_like_cuda_on_the_cpu(files, family, monkeypatch):
    """stage=True + the int8 torch backend: layers read into the staging buffers, TQ2_0
    decoded by the torch decoder (llama q/k rows un-permuted after it), every layer on
    Int8TorchBackend. Decoding is exact, so the log-probs equal those of the same backend fed
    by the CPU's numba decoder bit for bit; and they are the float path's up to activation
    rounding flips."""
    monkeypatch.setenv("BITCONV_VERIFY_FUSED", "0")
    ck = open_source(files[family])
    tokens = torch.randint(0, DIMS["vocab"], (3, 24), generator=torch.Generator().manual_seed(4))
    staged = Runner(ck, int_path=True, stage=True)
    assert staged._stager is not None and not staged.fused_cpu
    seen = []
    orig = Int8TorchBackend.attn_input
    monkeypatch.setattr(Int8TorchBackend, "attn_input", lambda self, x, *a: seen.append(1) or orig(self, x, *a))
    decoded = []
    orig_decode = Runner._decode_on_device
    monkeypatch.setattr(Runner, "_decode_on_device", lambda self, st, out=None: decoded.append(st.name) or
                        orig_decode(self, st, out))
    a = token_logprobs_and_stats(staged, tokens)
    assert len(seen) == DIMS["layers"] and len(decoded) == 7 * DIMS["layers"]
    b = token_logprobs_and_stats(Runner(ck, int_path=True, stage=False), tokens)
    assert torch.equal(a.logprobs, b.logprobs)
    c = token_logprobs_and_stats(Runner(ck, int_path=False), tokens)
    # random models with N(0, 1) embeddings: log p ~ -250; activation-rounding flips move it.
    # measured max |Δ log p| / max |log p| 4.5e-4 (llama), |Δ nll| / nll 3.4e-6; bounds 3x+
    assert float((a.logprobs - c.logprobs).abs().max()) < 1.5e-3 * float(c.logprobs.abs().max())
    assert abs(a.nll - c.nll) < 1e-4 * c.nll


@pytest.mark.parametrize("on_device", [False, True])
def test_verify_decoders_refuse_code_3_like_the_reader(on_device):
    """One decoder per format: verify's CPU path decodes TQ2_0 with the layout's own decoder and
    its device path asks the layout, so a code 3 is refused with the tensor and block named."""
    from bitconv.errors import BadWeightsError

    w = np.random.default_rng(2).standard_normal((32, 512)).astype(np.float32)
    data = get_layout("tq2_0").pack(ternarize(w, "tensor")).copy()
    data[66 * 5 + 3] |= 0b11  # block 5 (row 2, second block): one code 3
    with pytest.raises(BadWeightsError, match=r"blk\.0\.attn_q\.weight: TQ2_0 block 5 \(row 2, values 256"):
        tq2_0_decode(data, (32, 512), "tensor", "cpu", (lambda t: t.clone()) if on_device else None,
                     name="blk.0.attn_q.weight")
