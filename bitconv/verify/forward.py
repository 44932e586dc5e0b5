"""The forward pass verify runs, written once in torch and shared by artifact and source.

One graph covers every family bitconv reads (FORMATS.md §8): token embedding, RMSNorm,
rotary embeddings (HF rotate-half convention), grouped-query attention with a causal
mask, the BitNet sub-norms when present (attn_sub_norm before o_proj, ffn_sub_norm before
down_proj), Qwen3's per-head q/k RMSNorm before rope (attn_q_norm / attn_k_norm), the
RMSNorm inside every linear of a use_rms_norm model (`<linear>_in_norm`, applied to that
linear's own input before its activation quantization, as transformers' BitLinear does), a
relu² or SiLU gated FFN, and a tied (token_embd) or untied (output) head. Each piece runs
only when the checkpoint has its tensors.

Ternary linears compute as BitNet trains them (FORMATS.md §1): per token
`γ = max|x|` (≥ 1e-5), `x_q = clip(round(x·127/γ), -128, 127)`, `y = (x_q @ tᵀ)·s·γ/127`.
With `act_quant=False` they are plain float matmuls with `s·t`. The embedding and the head
are never quantized.

Weights stream: a `Runner` loads one decoder layer from the checkpoint (memory-mapped by
the readers), runs every sequence through it, and frees it, so peak memory is one layer
plus activations. Two numeric paths compute the same function:

* The int path (default on CUDA, `int_path=True` on CPU): ternary values stay int8 (2-bit packed when a
  runner keeps the whole model resident); q/k/v and gate/up share one quantized input and
  one `torch._int_mm` (int8 x int8 -> int32, so `x_q @ tᵀ` is exact), and the rescale by
  s·γ/127 is fused with what follows it (residual add, relu²/SiLU gating) and RMSNorm with
  the next quantization; on CUDA these helpers are compiled with torch.compile where it
  works (eager otherwise, same operations). On CPUs with VNNI the int8 GEMM is several
  times faster than float32.
* The float path (default on CPU, and whatever the int path cannot take: float weights,
  K-block scale groups): linears dequantized to `s·t` in `dtype`, activations
  fake-quantized, `F.linear(x_q/scale, s·t)`: transformers' AutoBitLinear operation order,
  bit-identical logits on the CPU.

Both differ only in float rounding (~1e-7 relative), which can still flip an occasional
activation across an 8-bit rounding boundary (FORMATS.md §5).

On CUDA, attention uses `scaled_dot_product_attention` (flash kernels in bf16/fp16), TQ2_0
files are read straight into pinned memory and decoded on the GPU, and layer i+1 is read,
decoded and copied (asynchronously) while the GPU still runs layer i.

On the CPU in float32 the int path is verify's default (`fused_cpu`): the element-wise work
around the GEMMs runs as fused numba row kernels (`cpu_kernels`), each layer runs one
group of sequences per core with torch at one thread in each (`cpu_kernels.per_core`: no
barrier, nothing spin-waiting), TQ2_0 is decoded straight into the fused q|k|v and gate|up
matrices, and the float32 head runs as one bfloat16 GEMM whose few largest logits per row
are recomputed in float32 (`head_kernels`, which also fuses the log-softmax).

`logits_for` returns full logits (for tests and small inputs). Metrics over long inputs
use `Runner.hidden` + `Runner.logit_chunks`, or `token_logprobs_and_stats`, which never
hold more than a chunk of rows x vocab at once.
"""

from __future__ import annotations

import math
import os
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Mapping, Union

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import InputError, UsageError
from ..model import LINEAR, HParams, SourceTensor
from ..quant import GroupSize, Ternary, ternarize
from ..readers.checkpoint import Checkpoint
from .metrics import DEFAULT_CHUNK_ELEMENTS

REFERENCES = ("ternary", "fp")
ACT_EPS = 1e-5
HEAD_EXACT = 8  # head_math="bf16": logits per row recomputed in float32 (the largest ones)
LOGIT_CHUNK_ELEMENTS = DEFAULT_CHUNK_ELEMENTS  # rows x vocab per logits chunk on the CPU (32 MiB of float32; 16x on CUDA)

_ATTN = ("attn_q", "attn_k", "attn_v")
_FFN_IN = ("ffn_gate", "ffn_up")
LAYER_LINEARS = ("attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down")
LAYER_NORMS = ("attn_norm", "ffn_norm")
LAYER_SUB_NORMS = ("attn_sub_norm", "ffn_sub_norm")
LAYER_QK_NORMS = ("attn_q_norm", "attn_k_norm")  # Qwen3: per-head RMSNorm of q and k before rope
IN_NORM = "_in_norm"  # use_rms_norm: `attn_q_in_norm` is the RMSNorm inside attn_q (archs.base.INPUT_NORM_SUFFIX)
LAYER_IN_NORMS = tuple(k + IN_NORM for k in LAYER_LINEARS)

Groups = Union[GroupSize, Mapping[str, GroupSize], None]


# ----------------------------------------------------------------------------------------
# ternary tensors in torch
# ----------------------------------------------------------------------------------------
@dataclass
class TTernary:
    """A ternary matrix in torch: `values` int8 [M, K], `scales` float32 of shape () (tensor),
    [M, 1] (row) or [M, K // g] (K-blocks), on any device. Mirrors `bitconv.quant.Ternary`."""

    values: torch.Tensor
    scales: torch.Tensor
    group: GroupSize = "tensor"

    @classmethod
    def from_numpy(cls, tern: Ternary, device: torch.device | str = "cpu") -> "TTernary":
        values = torch.from_numpy(np.ascontiguousarray(tern.values, dtype=np.int8))
        scales = torch.from_numpy(np.array(tern.scales, dtype=np.float32, copy=True))
        return cls(values.to(device, non_blocking=False), scales.to(device), tern.group)

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.values.shape)  # type: ignore[return-value]

    def row_scales(self) -> torch.Tensor | None:
        """Scales as one float32 per output row, or None for K-block groups."""
        m = self.values.shape[0]
        if self.scales.numel() == 1:
            return self.scales.reshape(1).expand(m).contiguous()
        if self.scales.dim() == 2 and self.scales.shape[1] == 1:
            return self.scales.reshape(m)
        return None

    def expanded_scales(self) -> torch.Tensor:
        if self.scales.numel() == 1 or (self.scales.dim() == 2 and self.scales.shape[1] == 1):
            return self.scales
        m, k = self.shape
        g = k // self.scales.shape[1]
        return self.scales.repeat_interleave(g, dim=1)

    def dequantize(self, dtype=torch.float32) -> torch.Tensor:
        return (self.values.to(torch.float32) * self.expanded_scales()).to(dtype)


def _tq2_0_decode(raw: np.ndarray | torch.Tensor, shape: tuple[int, int], group: GroupSize,
                  device: torch.device | str = "cpu",
                  put: Callable[[torch.Tensor], torch.Tensor] | None = None,
                  out: torch.Tensor | None = None) -> TTernary:
    """TQ2_0 bytes -> TTernary on `device`; the same result as `pack.tq.TQ2_0.unpack`.

    The bytes are copied (pinned, asynchronously on CUDA) and unpacked on the device; the
    fp16 block scales are few and are collapsed into their group on the host, so nothing
    waits for the GPU. On the CPU `out` (int8 [m, k]) receives the values: a slice of the
    buffer that linears sharing an input are fused into."""
    from ..pack.tq import collapse_block_scales

    m, k = shape
    nb = m * (k // 256)
    if isinstance(raw, torch.Tensor):  # bytes already in (pinned) host memory: `put` uploads them
        host = raw.reshape(nb, 66)
        blocks = host.numpy()
    else:
        blocks = np.asarray(raw).reshape(nb, 66)
    if torch.device(device).type == "cpu" and put is None:  # one fused pass (numba), rows over the threads
        from . import cpu_kernels

        values, d = cpu_kernels.tq2_0_values(blocks, m, k, out)
        tern = collapse_block_scales(np.empty((m, 0), np.int8), d, group, "tensor")
        return TTernary(values, torch.from_numpy(np.array(tern.scales, np.float32)), tern.group)
    if not isinstance(raw, torch.Tensor):
        with warnings.catch_warnings():  # a read-only memmap: torch only reads it (copy to the device)
            warnings.simplefilter("ignore", UserWarning)
            host = torch.from_numpy(blocks)
    d = np.ascontiguousarray(blocks[:, 64:]).view(np.float16).astype(np.float32).reshape(m, k // 256)
    tern = collapse_block_scales(np.empty((m, 0), np.int8), d, group, "tensor")
    put = put or (lambda t: _h2d(t, device))
    raw_dev = put(host)  # the contiguous bytes, scales included: one copy
    shifts = torch.arange(0, 8, 2, dtype=torch.uint8, device=raw_dev.device).view(1, 1, 4, 1)
    q = (raw_dev[:, :64].reshape(nb, 2, 1, 32) >> shifts) & 3
    values = q.reshape(m, k).to(torch.int8) - 1
    return TTernary(values, put(torch.from_numpy(np.array(tern.scales, np.float32))), tern.group)


def _h2d(t: torch.Tensor, device: torch.device | str) -> torch.Tensor:
    """Host -> device without blocking the host: pinned staging + non_blocking copy on CUDA
    (the caching host allocator keeps the staging buffer until its copy has run)."""
    device = torch.device(device)
    if device.type != "cuda" or t.device.type != "cpu":
        return t.to(device)
    return t.pin_memory().to(device, non_blocking=True)


# Raw-byte decoders that run on the target device (GGUF layouts only). Others unpack with
# the layout's numpy code through `SourceTensor.load_ternary()`.
TORCH_DECODERS: dict[str, Callable[..., TTernary]] = {
    "tq2_0": _tq2_0_decode,
}


class _Stager:
    """Host -> GPU copies for streamed layers through two reused pinned buffers.

    Layer i+1 is read and copied while the GPU still computes layer i. Allocating pinned
    memory per tensor (or copying from pageable memory, which the driver stages through a
    small buffer) ends up waiting for the queued compute; here the only wait is, at the start
    of a layer, for the copies made two layers earlier from the same buffer. File bytes are
    read straight into the pinned buffer (`read`), in parallel chunks."""

    ALIGN = 4096
    READ_CHUNK = 8 << 20

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.bufs: list[torch.Tensor | None] = [None, None]
        self.events: list[Any] = [None, None]
        self.retired: list[list[torch.Tensor]] = [[], []]
        self.slot, self.off = 0, 0
        self._pool = None

    def begin(self) -> None:
        self.slot ^= 1
        self.off = 0
        ev = self.events[self.slot]
        if ev is not None:
            ev.synchronize()
            self.retired[self.slot].clear()

    def end(self) -> None:
        ev = torch.cuda.Event()
        ev.record()
        self.events[self.slot] = ev

    def reserve(self, n: int) -> torch.Tensor:
        """n bytes of this layer's pinned buffer (uint8, CPU)."""
        buf = self.bufs[self.slot]
        if buf is None or self.off + n > buf.numel():
            if buf is not None:
                self.retired[self.slot].append(buf)  # its copies may still be queued: keep it alive
            cap = max(self.off + n, 2 * (buf.numel() if buf is not None else 0), 1 << 24)
            with torch.inference_mode(False):  # a normal tensor: refilled in and out of inference mode
                buf = torch.empty(cap, dtype=torch.uint8, pin_memory=True)
            self.bufs[self.slot] = buf
            self.off = 0
        host = buf[self.off:self.off + n]
        self.off += (n + self.ALIGN - 1) // self.ALIGN * self.ALIGN
        return host

    def read(self, fd: int, offset: int, n: int) -> torch.Tensor:
        """File bytes [offset, offset+n) into pinned memory, several chunks at once."""
        host = self.reserve(n)
        view = memoryview(host.numpy()).cast("B")
        chunks = [(s, min(n, s + self.READ_CHUNK)) for s in range(0, n, self.READ_CHUNK)]

        def one(c: tuple[int, int]) -> None:
            s, e = c
            while s < e:
                got = os.preadv(fd, [view[s:e]], offset + s)
                if got <= 0:
                    raise InputError(f"unexpected end of file reading {n} bytes at offset {offset}")
                s += got

        if len(chunks) == 1:
            one(chunks[0])
        else:
            if self._pool is None:
                from concurrent.futures import ThreadPoolExecutor

                self._pool = ThreadPoolExecutor(4)
            list(self._pool.map(one, chunks))
        return host

    def upload(self, host: torch.Tensor) -> torch.Tensor:
        """A pinned slice from `reserve`/`read` -> a device tensor (asynchronous)."""
        dev = torch.empty(host.shape, dtype=host.dtype, device=self.device)
        dev.copy_(host, non_blocking=True)
        return dev

    def put(self, t: torch.Tensor) -> torch.Tensor:
        """Any CPU tensor -> the device, through the pinned buffer."""
        t = t.contiguous()
        if t.numel() == 0:
            return t.to(self.device)
        src = t.reshape(-1).view(torch.uint8)
        host = self.reserve(src.numel())
        host.copy_(src)
        return self.upload(host).view(t.dtype).reshape(t.shape)


def _unpermute_llama_rows(a: torch.Tensor, n_head: int) -> torch.Tensor:
    """Torch twin of `archs.llama._permute(..., inverse=True)` (GGUF llama -> HF row order)."""
    if a.dim() == 0 or a.shape[0] == 1:
        return a
    rows = a.shape[0]
    half = rows // n_head // 2
    return a.reshape(n_head, half, 2, *a.shape[1:]).transpose(1, 2).reshape(a.shape).contiguous()


# ----------------------------------------------------------------------------------------
# kernels: plain torch functions, compiled on CUDA where torch.compile works
# ----------------------------------------------------------------------------------------
def act_quant(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token 8-bit absmax quantization: returns integer-valued float32 x_q and 127/γ."""
    xf = x.to(torch.float32)
    gamma = torch.linalg.vector_norm(xf, float("inf"), dim=-1, keepdim=True)  # max|x|, one pass
    scale = 127.0 / gamma.clamp_(min=ACT_EPS)
    return (xf * scale).round_().clamp_(-128, 127), scale


def rms_norm(x: torch.Tensor, w: torch.Tensor, eps: float) -> torch.Tensor:
    """transformers' LlamaRMSNorm/BitNetRMSNorm: float32 statistics, weight in x's dtype."""
    xf = x.to(torch.float32)
    xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    return w * xf.to(x.dtype)


def _k_quant(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    xf = x.to(torch.float32)
    scale = 127.0 / xf.abs().amax(dim=-1, keepdim=True).clamp(min=ACT_EPS)
    return (xf * scale).round().clamp(-128, 127).to(torch.int8), scale


def _k_rms_quant(x: torch.Tensor, w: torch.Tensor, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    return _k_quant(rms_norm(x, w, eps))


def _k_rescale(acc: torch.Tensor, rows: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """(x_q @ tᵀ) int32 -> (x_q @ tᵀ)·s·γ/127 in dtype (s per output row, 127/γ per token)."""
    return (acc.to(torch.float32) * rows / scale).to(dtype)


def _k_rescale_add(acc: torch.Tensor, rows: torch.Tensor, scale: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return x + _k_rescale(acc, rows, scale, x.dtype)


def _k_rescale_glu(acc: torch.Tensor, rows: torch.Tensor, scale: torch.Tensor, m: int, relu2: bool,
                   dtype: torch.dtype) -> torch.Tensor:
    y = _k_rescale(acc, rows, scale, dtype)
    gate, up = y[:, :m], y[:, m:]
    act = torch.relu(gate).square() if relu2 else F.silu(gate)
    return act * up


def _k_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x [b, t, h, d] (any strides) -> rotated, [b, h, t, d]."""
    x = x.transpose(1, 2)
    return x * cos + _rotate_half(x) * sin


def _k_logprob(logits: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """log p(target) and argmax of a chunk of logits (any float dtype), float32 statistics."""
    lf = logits.to(torch.float32)
    mx, top = lf.max(dim=-1)  # the max and its (first) index in one pass
    mx = mx.masked_fill(mx.isinf(), 0.0)  # then torch.logsumexp's own steps, bit for bit
    lse = torch.log((lf - mx[:, None]).exp_().sum(-1)) + mx
    return lf.gather(1, targets[:, None]).squeeze(1) - lse, top


class _Kernels:
    """The fused helpers, compiled (torch.compile, inductor) when asked and possible. A
    helper whose compilation fails falls back to eager for the rest of the run."""

    NAMES = ("_k_quant", "_k_rms_quant", "_k_rescale", "_k_rescale_add", "_k_rescale_glu", "_k_rope",
             "_k_logprob")

    def __init__(self, compile: bool) -> None:
        for name in self.NAMES:
            fn = globals()[name]
            setattr(self, name[3:], self._compiled(fn) if compile else fn)

    @staticmethod
    def _compiled(fn: Callable) -> Callable:
        state = {"fn": None, "ok": True}

        def call(*args):
            if state["ok"]:
                try:
                    if state["fn"] is None:
                        state["fn"] = torch.compile(fn, dynamic=False)
                    return state["fn"](*args)
                except Exception as exc:  # noqa: BLE001 - any compiler failure: run eager
                    state["ok"] = False
                    warnings.warn(f"bitconv verify: torch.compile of {fn.__name__} failed, running eager "
                                  f"({type(exc).__name__}: {str(exc)[:200]})", stacklevel=2)
            return fn(*args)

        return call


def _want_compile(device: torch.device, compile: bool | None) -> bool:
    if compile is not None:
        return compile
    if device.type != "cuda" or os.environ.get("BITCONV_COMPILE", "1") == "0":
        return False
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


class QInput:
    """One input quantized once and shared by every linear that reads it (q/k/v, gate/up);
    the forms each path needs are made on first use."""

    def __init__(self, x2: torch.Tensor) -> None:
        self.xq, self.scale = act_quant(x2)
        self._forms: dict[Any, torch.Tensor] = {}

    def dequantized(self, dtype: torch.dtype) -> torch.Tensor:  # x_q / scale, as transformers feeds F.linear
        if ("dq", dtype) not in self._forms:
            self._forms[("dq", dtype)] = (self.xq / self.scale).to(dtype)
        return self._forms[("dq", dtype)]

    def as_type(self, dtype: torch.dtype) -> torch.Tensor:  # integer values, exact in int8/bf16/f16/f32
        if dtype not in self._forms:
            self._forms[dtype] = self.xq.to(dtype)
        return self._forms[dtype]


def _pack2(values: torch.Tensor) -> torch.Tensor:
    """int8 {-1,0,1} [M, K] -> uint8 [M, ceil(K/4)], 4 codes (t+1) per byte, low bits first."""
    m, k = values.shape
    q = (values + 1).to(torch.uint8)
    if k % 4:
        q = F.pad(q, (0, 4 - k % 4))
    q = q.reshape(m, -1, 4)
    return q[..., 0] | (q[..., 1] << 2) | (q[..., 2] << 4) | (q[..., 3] << 6)


def _unpack2(packed: torch.Tensor, k: int) -> torch.Tensor:
    shifts = torch.arange(0, 8, 2, dtype=torch.uint8, device=packed.device)  # no host copy, no sync
    q = (packed.unsqueeze(-1) >> shifts) & 3
    return q.reshape(packed.shape[0], -1)[:, :k].to(torch.int8) - 1


_INT_MM_OK: dict[str, bool] = {}


def int_matmul(xq: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
    """Exact x_q @ tᵀ for int8 x_q [N, K] and int8 codes [M, K]: int32 [N, M] from
    torch._int_mm where it runs, else float32 (integer sums stay below 2^24, also exact)."""
    key = str(xq.device)
    n, k = xq.shape
    if _INT_MM_OK.get(key, True) and n > 16 and k % 8 == 0 and codes.shape[0] % 8 == 0:
        try:
            out = torch._int_mm(xq, codes.t())
            _INT_MM_OK[key] = True
            return out
        except torch.OutOfMemoryError:
            raise
        except RuntimeError:
            _INT_MM_OK[key] = False
    return xq.to(torch.float32) @ codes.to(torch.float32).t()


def _adjacent(parts: list[torch.Tensor]) -> bool:
    """Whether `parts` are consecutive row blocks that tile one whole contiguous tensor."""
    base = parts[0]._base
    if base is None or not base.is_contiguous() or any(p._base is not base or not p.is_contiguous() for p in parts):
        return False
    off = 0
    for p in parts:
        if p.storage_offset() != base.storage_offset() + off:
            return False
        off += p.numel()
    return off == base.numel()


class Linear:
    """One linear (or several sharing an input, concatenated along M) ready on a device."""

    def __init__(self, *, weight: torch.Tensor | None = None, codes: torch.Tensor | None = None,
                 row_scale: torch.Tensor | None = None, k: int = 0, splits: list[int] | None = None,
                 packed: bool = False, in_norm: torch.Tensor | None = None) -> None:
        self.weight = weight  # float/dtype [M, K] (CPU path, fp reference, K-block groups)
        self.codes = codes  # int8 [M, K], or uint8 2-bit packed when `packed`
        self.row_scale = row_scale  # float32 [M]
        self.k = k
        self.splits = splits
        self.packed = packed
        self.in_norm = in_norm  # use_rms_norm: the RMSNorm weight applied to this linear's input

    @property
    def is_int(self) -> bool:
        return self.codes is not None

    def int_codes(self) -> torch.Tensor:
        assert self.codes is not None
        return _unpack2(self.codes, self.k) if self.packed else self.codes

    def __call__(self, x2: torch.Tensor, q: QInput | None, dtype: torch.dtype) -> list[torch.Tensor]:
        """x2 [N, K] (q: its shared 8-bit quantization, None without act quant) -> outputs [N, M_i]."""
        if self.codes is not None:
            y = self._ternary(x2, q, dtype)
        elif q is not None:
            if x2.device.type == "cpu":
                y = F.linear(q.dequantized(dtype), self.weight)
            else:
                y = (F.linear(q.as_type(dtype), self.weight).to(torch.float32) / q.scale).to(dtype)
        else:
            y = F.linear(x2.to(self.weight.dtype), self.weight).to(dtype)
        return list(torch.split(y, self.splits, dim=-1)) if self.splits else [y]

    def _ternary(self, x2: torch.Tensor, q: QInput | None, dtype: torch.dtype) -> torch.Tensor:
        codes = self.int_codes()
        if q is not None:
            acc = int_matmul(q.as_type(torch.int8), codes)
            return _k_rescale(acc, self.row_scale, q.scale, dtype)
        y = F.linear(x2.to(dtype), codes.to(dtype))
        return (y.to(torch.float32) * self.row_scale).to(dtype)


# ----------------------------------------------------------------------------------------
# the runner
# ----------------------------------------------------------------------------------------
Payload = Union[np.ndarray, Ternary, TTernary]


@dataclass
class LayerWeights:
    norms: dict[str, torch.Tensor] = field(default_factory=dict)
    qkv: list[Linear] | Linear | None = None
    o: Linear | None = None
    gate_up: list[Linear] | Linear | None = None
    down: Linear | None = None

    def all_int(self) -> bool:
        return all(isinstance(m, Linear) and m.is_int and m.in_norm is None
                   for m in (self.qkv, self.o, self.gate_up, self.down))


def resolve_device(device: str | torch.device) -> torch.device:
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise UsageError(f"--device must be cpu or cuda (or cuda:N), got {device!r}") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda: no CUDA device is available to torch",
                         hint="use --device cpu, or install a CUDA build of torch")
    if dev.type not in ("cpu", "cuda"):
        raise UsageError(f"--device must be cpu or cuda, got {device!r}")
    if dev.type == "cuda" and dev.index is None:
        dev = torch.device("cuda", torch.cuda.current_device())
    return dev


class Runner:
    """Streams one checkpoint through the forward pass, one decoder layer at a time.

    `reference`: "ternary" ternarizes float latent linears with absmean (`bitconv.quant.
    ternarize`, per tensor unless `groups` says otherwise) and takes tensors already ternary
    on disk as they are; "fp" uses float weights as they are (ternary tensors dequantized).
    `keep=True` keeps every prepared layer on the device (ternary codes 2-bit packed on the
    int path), for repeated forwards; the default frees each layer after use.
    `micro_batch` runs that many sequences at a time through each layer. `int_path`
    (default: on CUDA) computes ternary linears from int8 codes with `torch._int_mm`, q/k/v
    and gate/up fused, rescaling fused with what follows; without it linears run in
    transformers' float operation order (bit-identical logits on the CPU). `compile` (default: on CUDA when triton is there and
    BITCONV_COMPILE is not 0) compiles the fused helpers. `head_dtype` (default: `dtype`) is
    the dtype of the output projection alone; `head_math="bf16"` runs a float32 head as a
    bfloat16 GEMM and recomputes each row's largest logits in float32 (verify's fast CPU
    path).
    """

    def __init__(self, ckpt: Checkpoint, *, act_quant: bool = True, reference: str = "ternary",
                 device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32,
                 groups: Groups = None, keep: bool = False, micro_batch: int | None = None,
                 int_path: bool | None = None, compile: bool | None = None,
                 head_dtype: torch.dtype | None = None, head_math: str | None = None) -> None:
        if reference not in REFERENCES:
            raise UsageError(f"--reference must be one of {', '.join(REFERENCES)}, got {reference!r}")
        self.ckpt = ckpt
        self.hp: HParams = ckpt.spec.hparams
        self.act_quant = act_quant
        self.reference = reference
        self.device = resolve_device(device)
        self.dtype = dtype
        self.head_dtype = head_dtype or dtype  # the output projection's dtype (logits statistics stay float32)
        self._head_cast: torch.Tensor | None = None
        self._head_lo: torch.Tensor | None = None  # head_math="bf16": the head in bfloat16
        self._head_packed: Any = None  # ... and packed for oneDNN (False: packing unavailable)
        # "bf16": the float32 head runs as a bfloat16 GEMM with each row's largest logits
        # recomputed in float32 (`_head_bf16`); None: plain `head_dtype` math
        self.head_math = head_math
        self.groups = groups
        self.keep = keep
        self.micro_batch = micro_batch
        self.cuda = self.device.type == "cuda"
        self.int_path = self.cuda if int_path is None else int_path
        # the int path on the CPU in float32 runs its element-wise work as fused row kernels
        self.fused_cpu = (not self.cuda and self.int_path and dtype == torch.float32
                          and os.environ.get("BITCONV_VERIFY_FUSED", "1") != "0")
        self.k = _Kernels(_want_compile(self.device, compile))
        self.by_name: dict[str, SourceTensor] = {t.name: t for t in ckpt.tensors}
        self._cache: dict[int, LayerWeights] = {}
        self._gguf = None
        self._fd: int | None = None
        self._stager = _Stager(self.device) if self.cuda else None
        self._check_tensors()
        self._rope = _rope_inv_freq(self.hp, ckpt.spec.config)
        self._head: torch.Tensor | None = None
        self.notes: list[str] = []
        if not self.hp.tie_embeddings and "output.weight" not in self.by_name:
            self.notes.append("untied model without output.weight: token_embd is used as the output layer, "
                              "as engines do")

    # -- tensors -------------------------------------------------------------------------
    def _check_tensors(self) -> None:
        hp = self.hp
        need = ["token_embd.weight", "output_norm.weight"]
        for i in range(hp.num_layers):
            need += [f"blk.{i}.{k}.weight" for k in LAYER_LINEARS + LAYER_NORMS]
        missing = [n for n in need if n not in self.by_name]
        if missing:
            raise InputError(
                f"{self.ckpt.spec.source.location}: {len(missing)} tensor(s) missing, e.g. {missing[0]}",
                hint="the file is incomplete or not a decoder model bitconv knows",
            )

    def group_of(self, name: str) -> GroupSize:
        g = self.groups
        if g is None:
            return "tensor"
        if isinstance(g, Mapping):
            return g.get(name, "tensor")
        return g

    def load_raw(self, name: str, on_device: bool = False, out: torch.Tensor | None = None) -> Payload:
        """Read one tensor: `Ternary`/`TTernary` for ternary linears; float32 numpy for the rest
        (a ternary token_embd/output, e.g. Q2_0, is looked up and multiplied dequantized).
        `out`: where a CPU-decoded linear's int8 values go (see `_fused_buffers`)."""
        st = self.by_name[name]
        if st.is_ternary and st.role == LINEAR:
            if self._decodes_on_device(st) and on_device:
                return self._decode_on_device(st, out)
            return st.load_ternary()
        return np.asarray(st.load(), dtype=np.float32)

    def _decodes_on_device(self, st: SourceTensor) -> bool:
        return st.dtype in TORCH_DECODERS and self.ckpt.spec.source.kind == "gguf"

    def _fused_buffers(self, i: int) -> dict[str, torch.Tensor]:
        """On the fused CPU path: q/k/v, and gate/up, decode straight into one int8 buffer per
        group, the matrix `prepare_linears` multiplies with, instead of into one tensor each
        that is then copied into it (a copy of ~10% of the layer time on the bench model)."""
        if not self.fused_cpu or self.keep or self.ckpt.spec.source.kind != "gguf":
            return {}
        llama = self._is_llama_gguf()
        out: dict[str, torch.Tensor] = {}
        for kinds in (_ATTN, _FFN_IN):
            sts = [self.by_name.get(f"blk.{i}.{k}.weight") for k in kinds]
            if any(st is None or not (st.is_ternary and st.role == LINEAR and self._decodes_on_device(st))
                   for st in sts) or len({st.shape[1] for st in sts}) != 1:
                continue
            if llama and kinds is _ATTN:  # q/k rows are permuted back after decoding: a copy anyway
                continue
            buf = torch.empty((sum(st.shape[0] for st in sts), sts[0].shape[1]), dtype=torch.int8)
            r = 0
            for k, st in zip(kinds, sts):
                out[k] = buf[r:r + st.shape[0]]
                r += st.shape[0]
        return out

    def _open_gguf(self):
        """The GGUF artifact, parsed and opened once per runner (`release` closes it)."""
        from ..readers.gguf_file import GGUFFile

        if self._gguf is None:
            self._gguf = GGUFFile(self.ckpt.files[0])
            self._fd = os.open(self._gguf.path, os.O_RDONLY)
        return self._gguf

    def _is_llama_gguf(self) -> bool:
        """llama GGUFs store q/k rows in llama.cpp's rope order (permuted back on reading)."""
        return self._open_gguf().get("general.architecture") == "llama"

    def _decode_on_device(self, st: SourceTensor, out: torch.Tensor | None = None) -> TTernary:
        from ..model import kind_of

        info = self._open_gguf().tensors[st.name]
        if self._stager is not None and hasattr(os, "preadv"):  # pread into pinned memory, upload from there
            raw = self._stager.read(self._fd, info.offset, info.nbytes)
            stager = self._stager

            def put(t: torch.Tensor) -> torch.Tensor:  # the read bytes are pinned already
                return stager.upload(t) if t.data_ptr() == raw.data_ptr() else stager.put(t)
        else:
            raw, put = self._gguf.raw(st.name), None
        tern = TORCH_DECODERS[st.dtype](raw, st.shape, st.group or "tensor", self.device, put, out)
        if self._is_llama_gguf() and kind_of(st.name) in ("attn_q", "attn_k"):
            heads = self.hp.num_heads if kind_of(st.name) == "attn_q" else self.hp.num_kv_heads
            tern = TTernary(_unpermute_llama_rows(tern.values, heads),
                            _unpermute_llama_rows(tern.scales, heads) if tern.scales.dim() == 2 else tern.scales,
                            tern.group)
        return tern

    def load_layer(self, i: int) -> dict[str, Payload]:
        """Raw tensors of decoder layer i (host memory; GPU-decoded layouts already on the device)."""
        out: dict[str, Payload] = {}
        bufs = self._fused_buffers(i)
        for kind in LAYER_LINEARS + LAYER_NORMS + LAYER_SUB_NORMS + LAYER_QK_NORMS + LAYER_IN_NORMS:
            name = f"blk.{i}.{kind}.weight"
            if name in self.by_name:
                out[kind] = self.load_raw(name, on_device=(self.cuda or self.fused_cpu) and kind in LAYER_LINEARS,
                                          out=bufs.get(kind))
        return out

    # -- preparing weights ---------------------------------------------------------------
    def as_ternary(self, name: str, raw: Payload) -> TTernary | None:
        """The ternary form this runner computes with (None with reference="fp" on floats)."""
        if isinstance(raw, TTernary):
            return raw
        if isinstance(raw, Ternary):
            return TTernary.from_numpy(raw, "cpu")
        if self.reference == "fp":
            return None
        return TTernary.from_numpy(ternarize(raw, self.group_of(name), name), "cpu")

    def _to_dev(self, t: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
        if t.device.type == "cpu" and self.cuda:
            t = self._stager.put(t)
        return t if dtype is None else t.to(dtype)

    def _float_weight(self, raw: Payload) -> torch.Tensor:
        if isinstance(raw, TTernary):
            return self._to_dev(raw.dequantize(self.dtype))
        if isinstance(raw, Ternary):
            return self._to_dev(TTernary.from_numpy(raw).dequantize(self.dtype))
        return self._to_dev(torch.from_numpy(raw), self.dtype)

    def prepare_linears(self, names: list[str], raws: list[Payload],
                        in_norms: list[torch.Tensor | None] | None = None) -> list[Linear] | Linear:
        """Linears sharing one input; on the int path fused into one int8 matrix. With
        per-linear input norms (use_rms_norm) each keeps its own norm and is not fused."""
        terns = [self.as_ternary(n, r) if self.reference == "ternary" else None for n, r in zip(names, raws)]
        if in_norms is not None and any(w is not None for w in in_norms):
            out = []
            for t, r, w in zip(terns, raws, in_norms):
                wt = self._to_dev(t.dequantize(self.dtype)) if t is not None else self._float_weight(r)
                out.append(Linear(weight=wt, k=wt.shape[1], in_norm=w))
            return out if len(out) > 1 else out[0]
        if self.int_path and all(t is not None and t.row_scales() is not None for t in terns):
            parts = [self._to_dev(t.values) for t in terns]
            if len(parts) > 1 and _adjacent(parts):  # decoded into one buffer (`_fused_buffers`)
                codes = parts[0]._base
            elif len(parts) > 1 and not self.cuda:  # one memcpy per part; torch.cat splits it over threads
                codes = torch.from_numpy(np.concatenate([p.numpy() for p in parts]))
            else:
                codes = torch.cat(parts) if len(parts) > 1 else parts[0]
            rows = torch.cat([self._to_dev(t.row_scales()) for t in terns])
            if self.keep:
                codes = _pack2(codes)
            return Linear(codes=codes, row_scale=rows, k=terns[0].shape[1], packed=self.keep,
                          splits=[t.shape[0] for t in terns] if len(terns) > 1 else None)
        out = []
        for t, r in zip(terns, raws):
            w = self._to_dev(t.dequantize(self.dtype)) if t is not None else self._float_weight(r)
            out.append(Linear(weight=w, k=w.shape[1]))
        return out if len(out) > 1 else out[0]

    def prepare_layer(self, i: int, raw: dict[str, Payload]) -> LayerWeights:
        lw = LayerWeights()
        for kind in LAYER_NORMS + LAYER_SUB_NORMS + LAYER_QK_NORMS + LAYER_IN_NORMS:
            if kind in raw:
                lw.norms[kind] = self._to_dev(torch.from_numpy(np.asarray(raw[kind], dtype=np.float32)), self.dtype)
        n = lambda k: f"blk.{i}.{k}.weight"  # noqa: E731
        ins = lambda ks: [lw.norms.get(k + IN_NORM) for k in ks]  # noqa: E731
        lw.qkv = self.prepare_linears([n(k) for k in _ATTN], [raw[k] for k in _ATTN], ins(_ATTN))
        lw.o = self.prepare_linears([n("attn_output")], [raw["attn_output"]], ins(["attn_output"]))
        lw.gate_up = self.prepare_linears([n(k) for k in _FFN_IN], [raw[k] for k in _FFN_IN], ins(_FFN_IN))
        lw.down = self.prepare_linears([n("ffn_down")], [raw["ffn_down"]], ins(["ffn_down"]))
        return lw

    @contextmanager
    def layer_io(self):
        """Bracket everything one layer copies to the device (load + prepare); callers that
        drive `load_layer`/`prepare_layer` themselves (verify) use it per layer."""
        if self._stager is not None:
            self._stager.begin()
        try:
            yield
        finally:
            if self._stager is not None:
                self._stager.end()

    def layer_weights(self, i: int, raw: dict[str, Payload] | None = None) -> LayerWeights:
        if i in self._cache:
            return self._cache[i]
        with self.layer_io():
            lw = self.prepare_layer(i, raw if raw is not None else self.load_layer(i))
        if self.keep:
            self._cache[i] = lw
        return lw

    # -- the graph -----------------------------------------------------------------------
    def embed(self, tokens: torch.Tensor | np.ndarray) -> torch.Tensor:
        tokens = as_tokens(tokens, self.hp.vocab_size)
        emb = self._embedding()
        return emb[tokens.to(emb.device)].to(self.device, self.dtype)

    def _embedding(self) -> torch.Tensor:
        """token_embd on the device. On CUDA a tied head keeps it for the final projection; on
        the CPU it is read again at the end, so it is not held while the layers stream."""
        if self._head is not None and self.head_is_embedding():
            return self._head
        t = torch.from_numpy(np.asarray(self.load_raw("token_embd.weight"), dtype=np.float32))
        t = t.to(self.device, self.dtype)
        if self.head_is_embedding() and (self.cuda or self.keep):
            self._head = t
        return t

    def head_is_embedding(self) -> bool:
        """Whether token_embd is the output layer (tied, or untied without output.weight)."""
        return self.hp.tie_embeddings or "output.weight" not in self.by_name

    def head(self) -> torch.Tensor:
        """The output projection [vocab, hidden] on the device, in `head_dtype`."""
        if self._head is None:
            if self.head_is_embedding():
                self._head = self._embedding()
            else:
                arr = self.load_raw("output.weight")
                self._head = torch.from_numpy(np.asarray(arr, dtype=np.float32)).to(self.device, self.dtype)
        if self.head_dtype == self._head.dtype:
            return self._head
        if self._head_cast is None:  # kept apart: a tied head's float copy still serves embed()
            self._head_cast = self._head.to(self.head_dtype)
        return self._head_cast

    def release(self) -> None:
        """Drop cached weights and close the artifact file (the runner can still be used)."""
        self._head = None
        self._head_cast = None
        self._head_lo = None
        self._head_packed = None
        self._cache.clear()
        if getattr(self, "_fd", None) is not None:
            os.close(self._fd)
            self._fd = None
            self._gguf = None

    def __del__(self) -> None:
        try:
            if getattr(self, "_fd", None) is not None:
                os.close(self._fd)
        except OSError:
            pass

    def rope(self, t: int) -> tuple[torch.Tensor, torch.Tensor]:
        pos = torch.arange(t, dtype=torch.float32, device=self.device)
        freqs = pos[:, None] * self._rope.to(self.device)[None, :]
        emb = torch.cat((freqs, freqs), dim=-1)
        return emb.cos().to(self.dtype), emb.sin().to(self.dtype)

    def rms(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        return rms_norm(x, w, self.hp.rms_eps)

    def run_layer(self, x: torch.Tensor, lw: LayerWeights, rope: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        """One decoder layer over a batch [B, T, H] (micro-batched over B if asked)."""
        layer = self._layer
        if self.act_quant and lw.all_int():
            layer = self._layer_int_cpu if self.fused_cpu else self._layer_int
            cores = min(torch.get_num_threads(), x.shape[0]) if self.fused_cpu else 1
            if cores > 1:  # one chain of sequences per core (`cpu_kernels.per_core` says why)
                from .cpu_kernels import per_core

                bounds = [x.shape[0] * c // cores for c in range(cores + 1)]
                parts = per_core([lambda s=s, e=e: self._micro_batched(layer, x[s:e], lw, rope)
                                  for s, e in zip(bounds, bounds[1:])])
                return torch.cat(parts)
        return self._micro_batched(layer, x, lw, rope)

    def _micro_batched(self, layer: Callable, x: torch.Tensor, lw: LayerWeights,
                       rope: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        mb = self.micro_batch or x.shape[0]
        if mb >= x.shape[0]:
            return layer(x, lw, rope)
        for b in range(0, x.shape[0], mb):
            x[b:b + mb] = layer(x[b:b + mb], lw, rope)
        return x

    def _lin(self, lin, x: torch.Tensor) -> list[torch.Tensor]:
        """Linears sharing input x [..., K]: quantize x once, return each output [..., M]."""
        lead = x.shape[:-1]
        x2 = x.reshape(-1, x.shape[-1])
        outs: list[torch.Tensor] = []
        shared: QInput | None = None
        for m in (lin if isinstance(lin, list) else [lin]):
            if m.in_norm is not None:  # use_rms_norm: the linear normalizes its own input first
                xm = rms_norm(x2, m.in_norm, self.hp.linear_norm_eps)
                outs += m(xm, QInput(xm) if self.act_quant else None, self.dtype)
                continue
            if shared is None and self.act_quant:
                shared = QInput(x2)
            outs += m(x2, shared, self.dtype)
        del shared
        return [y.reshape(*lead, y.shape[-1]) for y in outs]

    def _layer(self, x: torch.Tensor, lw: LayerWeights, rope: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        """The general layer: any mix of float and ternary linears, with or without act quant.
        On the CPU it runs transformers' own operation order (bit-identical logits)."""
        hp = self.hp
        b, t, _ = x.shape
        d = hp.head_dim
        h = self.rms(x, lw.norms["attn_norm"])
        q, k, v = self._lin(lw.qkv, h)
        del h
        q = self._qk_norm(q.view(b, t, hp.num_heads, d), lw, "attn_q_norm").transpose(1, 2)
        k = self._qk_norm(k.view(b, t, hp.num_kv_heads, d), lw, "attn_k_norm").transpose(1, 2)
        v = v.view(b, t, hp.num_kv_heads, d).transpose(1, 2)
        cos, sin = rope
        q = q * cos + _rotate_half(q) * sin
        k = k * cos + _rotate_half(k) * sin
        a = _attention(q, k, v, hp.num_heads // hp.num_kv_heads)
        del q, k, v
        a = a.transpose(1, 2).reshape(b, t, hp.num_heads * d)
        if "attn_sub_norm" in lw.norms:
            a = self.rms(a, lw.norms["attn_sub_norm"])
        x = x + self._lin(lw.o, a)[0]
        del a
        h = self.rms(x, lw.norms["ffn_norm"])
        gate, up = self._lin(lw.gate_up, h)
        del h
        if hp.hidden_act == "relu2":
            gate = torch.relu(gate).square_()
        else:
            gate = F.silu(gate)
        gate = gate.mul_(up)
        del up
        if "ffn_sub_norm" in lw.norms:
            gate = self.rms(gate, lw.norms["ffn_sub_norm"])
        return x + self._lin(lw.down, gate)[0]

    def _layer_int(self, x: torch.Tensor, lw: LayerWeights, rope: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        """The int path with activation quantization: every linear int8, fused q/k/v and
        gate/up, each RMSNorm fused with the quantization that reads it and each rescale
        with the residual add or the gating after it."""
        hp, k = self.hp, self.k
        b, t, hid = x.shape
        d, eps = hp.head_dim, hp.rms_eps
        x2 = x.reshape(b * t, hid)
        xq, sc = k.rms_quant(x2, lw.norms["attn_norm"], eps)
        qkv = lw.qkv
        y = k.rescale(int_matmul(xq, qkv.int_codes()), qkv.row_scale, sc, self.dtype)
        del xq, sc
        nq, nk = hp.num_heads * d, hp.num_kv_heads * d
        cos, sin = rope
        q = k.rope(self._qk_norm(y[:, :nq].view(b, t, hp.num_heads, d), lw, "attn_q_norm"), cos, sin)
        kk = k.rope(self._qk_norm(y[:, nq:nq + nk].view(b, t, hp.num_kv_heads, d), lw, "attn_k_norm"), cos, sin)
        v = y[:, nq + nk:].view(b, t, hp.num_kv_heads, d).transpose(1, 2)
        a = _attention(q, kk, v, hp.num_heads // hp.num_kv_heads)
        del q, kk, v, y
        a = a.transpose(1, 2).reshape(b * t, nq)
        xq, sc = self._sub_norm_quant(a, lw, "attn_sub_norm")
        del a
        o = lw.o
        x2 = k.rescale_add(int_matmul(xq, o.int_codes()), o.row_scale, sc, x2)
        xq, sc = k.rms_quant(x2, lw.norms["ffn_norm"], eps)
        gu = lw.gate_up
        h = k.rescale_glu(int_matmul(xq, gu.int_codes()), gu.row_scale, sc, hp.intermediate_size,
                          hp.hidden_act == "relu2", self.dtype)
        xq, sc = self._sub_norm_quant(h, lw, "ffn_sub_norm")
        del h
        dn = lw.down
        x2 = k.rescale_add(int_matmul(xq, dn.int_codes()), dn.row_scale, sc, x2)
        return x2.view(b, t, hid)

    def _layer_int_cpu(self, x: torch.Tensor, lw: LayerWeights, rope: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        """`_layer_int` on the CPU in float32: the same operations, with every RMSNorm +
        quantization and every rescale (+ residual add, + relu² gating) one fused row
        kernel (`cpu_kernels`), so the layer is its GEMMs, attention and a few passes."""
        from . import cpu_kernels as ck

        hp = self.hp
        b, t, hid = x.shape
        d, eps = hp.head_dim, hp.rms_eps
        x2 = x.reshape(b * t, hid).contiguous()
        xq, sc = ck.rms_quant(x2, lw.norms["attn_norm"], eps)
        qkv = lw.qkv
        acc = int_matmul(xq, qkv.int_codes())
        del xq
        nq, nk = hp.num_heads * d, hp.num_kv_heads * d
        cos, sin = rope
        if "attn_q_norm" in lw.norms or "attn_k_norm" in lw.norms or cos.dtype != torch.float32:
            y = ck.rescale(acc, qkv.row_scale, sc)
            q = _k_rope(self._qk_norm(y[:, :nq].view(b, t, hp.num_heads, d), lw, "attn_q_norm"), cos, sin)
            kk = _k_rope(self._qk_norm(y[:, nq:nq + nk].view(b, t, hp.num_kv_heads, d), lw, "attn_k_norm"), cos, sin)
            v = y[:, nq + nk:].view(b, t, hp.num_kv_heads, d).transpose(1, 2)
        else:  # rescale + rope in one pass over the GEMM output
            q, kk, v = ck.qkv_rope(acc, qkv.row_scale, sc, hp.num_heads, hp.num_kv_heads, d, b, t, cos, sin)
        del acc, sc
        a = _attention(q, kk, v, hp.num_heads // hp.num_kv_heads)
        del q, kk, v
        if a.is_contiguous():  # [b, heads, t, d]: the kernel gathers each token's heads itself
            xq, sc = ck.heads_rms_quant(a, lw.norms.get("attn_sub_norm"), eps)
        else:
            xq, sc = ck.rms_quant(a.transpose(1, 2).reshape(b * t, nq).contiguous(), lw.norms.get("attn_sub_norm"), eps)
        del a
        o = lw.o
        # the residual add (a new tensor: x stays as it was) and the FFN's input quantization
        x2, xq, sc = ck.rescale_add_rms_quant(int_matmul(xq, o.int_codes()), o.row_scale, sc, x2,
                                              lw.norms["ffn_norm"], eps)
        gu, m = lw.gate_up, hp.intermediate_size
        acc = int_matmul(xq, gu.int_codes())
        if hp.hidden_act == "relu2":
            xq, sc = ck.relu2_rms_quant(acc, gu.row_scale, sc, m, lw.norms.get("ffn_sub_norm"), eps)
        else:
            y = ck.rescale(acc, gu.row_scale, sc)
            h = F.silu(y[:, :m]).mul_(y[:, m:])
            del y
            xq, sc = ck.rms_quant(h, lw.norms.get("ffn_sub_norm"), eps)
            del h
        del acc
        dn = lw.down
        ck.rescale_add(int_matmul(xq, dn.int_codes()), dn.row_scale, sc, x2, out=x2)
        return x2.view(b, t, hid)

    def _qk_norm(self, x: torch.Tensor, lw: LayerWeights, norm: str) -> torch.Tensor:
        """Qwen3's per-head RMSNorm over head_dim of q or k ([b, t, heads, d]), if the layer has it."""
        w = lw.norms.get(norm)
        return x if w is None else self.rms(x, w)

    def _sub_norm_quant(self, x: torch.Tensor, lw: LayerWeights, norm: str) -> tuple[torch.Tensor, torch.Tensor]:
        """The int8 input of o_proj / down_proj: the BitNet sub-norm fused with the quantization, if present."""
        w = lw.norms.get(norm)
        return self.k.quant(x) if w is None else self.k.rms_quant(x, w, self.hp.rms_eps)

    def final_norm(self, x: torch.Tensor) -> torch.Tensor:
        w = torch.from_numpy(np.asarray(self.load_raw("output_norm.weight"), dtype=np.float32))
        return self.rms(x, w.to(self.device, self.dtype))

    @torch.inference_mode()
    def hidden(self, tokens: torch.Tensor | np.ndarray,
               on_layer: Callable[[int, int], None] | None = None) -> torch.Tensor:
        """Final normed hidden states [B, T, H] on the device, streaming layer by layer.

        Layer i's kernels are queued first; layer i+1 is then read, decoded and copied while
        the device runs them (on CUDA nothing in between waits for the GPU)."""
        x = self.embed(tokens)
        rope = self.rope(x.shape[1])
        n = self.hp.num_layers
        lw = self.layer_weights(0) if n else None
        for i in range(n):
            x = self.run_layer(x, lw, rope)
            lw = self.layer_weights(i + 1) if i + 1 < n else None
            if on_layer is not None:
                on_layer(i + 1, n)
        return self.final_norm(x)

    @property
    def chunk_elements(self) -> int:
        """Rows x vocab of one logits chunk on this runner's device."""
        return LOGIT_CHUNK_ELEMENTS * (16 if self.cuda else 1)

    def logit_chunks(self, hidden: torch.Tensor, rows: int | None = None,
                     float32: bool = True) -> Iterator[tuple[int, torch.Tensor]]:
        """Yield (first row, logits [n, vocab]) over the rows of hidden [N, H]: float32, or
        the head's dtype with float32=False."""
        w = self.head()
        rows = rows or max(1, self.chunk_elements // w.shape[0])
        for s in range(0, hidden.shape[0], rows):
            h = hidden[s:s + rows].to(w.dtype)
            if self.head_math == "bf16" and w.dtype == torch.float32:
                y = self._head_bf16(h, w)
            else:
                y = F.linear(h, w)
            yield s, (y.to(torch.float32) if float32 else y)

    def _head_bf16(self, h: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        """Logits [n, vocab] float32 for h [n, H] float32 and the float32 head w: one bfloat16
        GEMM, then each row's HEAD_EXACT largest logits recomputed in float32 from w and h
        (`head_kernels`).

        The bf16 GEMM rounds its output to 8 bits of mantissa; that noise on the few logits
        that carry a peaked distribution's mass (and decide its argmax) is what moved the
        demo model's perplexity by 1.6e-4 and top-1 agreement of near-uniform random models
        from 0.996 to 0.988. With those recomputed, perplexity is within ~3e-5 of the float
        path and argmax is the float32 one (a tail logit would have to beat the top ones by
        less than its rounding); the tail's rounding is unbiased and weighs little."""
        from . import head_kernels

        return head_kernels.fix_logits(self._head_gemm_bf16(h, w), w, h)

    def _head_gemm_bf16(self, h: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        """h [n, H] @ wᵀ as one bfloat16 GEMM, bfloat16 out (the weights converted, and packed
        for oneDNN where it can, once per runner)."""
        self._pack_head_bf16(w, h.shape[0])
        hb = h.to(torch.bfloat16)
        if self._head_packed is not False:
            try:
                return torch.ops.mkldnn._linear_pointwise(hb, self._head_packed, None, "none", [], "")
            except RuntimeError:
                self._head_packed = False
        if self._head_lo is None:
            self._head_lo = w.to(torch.bfloat16)
        return F.linear(hb, self._head_lo)

    def _pack_head_bf16(self, w: torch.Tensor, rows: int) -> None:
        """The bfloat16 head, packed for oneDNN's GEMM of `rows` rows where it can be."""
        if self._head_packed is None:
            self._head_lo = w.to(torch.bfloat16)
            try:
                self._head_packed = torch.ops.mkldnn._reorder_linear_weight(self._head_lo, rows)
                self._head_lo = None  # the packed copy is all the GEMM needs
            except (AttributeError, RuntimeError):
                self._head_packed = False

    def logprob_chunks(self, hidden: torch.Tensor, targets: torch.Tensor) -> Iterator[tuple[int, torch.Tensor, torch.Tensor]]:
        """Yield (first row, log p(target) float32 [n], argmax int64 [n]) over the rows of
        hidden [N, H] and targets [N]: `logit_chunks` + log-softmax, fused on the CPU's bf16
        head (`head_kernels.logprobs`: the full float32 logits are never made)."""
        w = self.head()
        if self.head_math == "bf16" and w.dtype == torch.float32 and not self.cuda:
            from . import head_kernels
            from .cpu_kernels import per_core

            rows = max(1, self.chunk_elements // w.shape[0])
            n = hidden.shape[0]
            if n == 0:  # nothing to score; packing the head for 0 rows fails and would disable it
                return

            def part(a: int, b: int) -> list[tuple[int, torch.Tensor, torch.Tensor]]:
                out = []
                for s in range(a, b, rows):
                    h = hidden[s:min(b, s + rows)].to(torch.float32)
                    out.append((s, *head_kernels.logprobs(self._head_gemm_bf16(h, w), w, h, targets[s:s + h.shape[0]])))
                return out

            # rows split over the cores as the layers are (one GEMM + kernel chain per core);
            # the weights are converted (and packed) once, here, before the threads share them
            cores = max(1, min(torch.get_num_threads(), n // 64))
            self._pack_head_bf16(w, min(rows, n))
            bounds = [n * c // cores for c in range(cores + 1)]
            for chunks in per_core([lambda a=a, b=b: part(a, b) for a, b in zip(bounds, bounds[1:])]):
                yield from chunks
            return
        for s, logits in self.logit_chunks(hidden, float32=False):
            lp, am = self.k.logprob(logits, targets[s:s + logits.shape[0]])
            yield s, lp, am

    @torch.inference_mode()
    def logits(self, tokens: torch.Tensor | np.ndarray) -> torch.Tensor:
        h = self.hidden(tokens)
        b, t, hd = h.shape
        out = torch.empty((b * t, self.hp.vocab_size), dtype=torch.float32)
        for s, chunk in self.logit_chunks(h.reshape(b * t, hd)):
            out[s:s + chunk.shape[0]] = chunk.cpu()
        return out.reshape(b, t, -1)


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def _attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, n_rep: int) -> torch.Tensor:
    if n_rep > 1 and q.device.type == "cuda":  # repeated k/v keep SDPA on its flash kernels
        k = k.repeat_interleave(n_rep, dim=1)
        v = v.repeat_interleave(n_rep, dim=1)
    elif n_rep > 1:  # as transformers calls it on the CPU
        try:
            return F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
        except (TypeError, RuntimeError):
            k = k.repeat_interleave(n_rep, dim=1)
            v = v.repeat_interleave(n_rep, dim=1)
    return F.scaled_dot_product_attention(q, k, v, is_causal=True)


def _rope_inv_freq(hp: HParams, config: dict[str, Any]) -> torch.Tensor:
    """Default rope inverse frequencies, with Llama-3 frequency scaling when the config asks."""
    d = hp.head_dim
    inv = 1.0 / (hp.rope_theta ** (torch.arange(0, d, 2, dtype=torch.int64).to(torch.float32) / d))
    rs = (config or {}).get("rope_scaling") or (config or {}).get("rope_parameters") or {}
    kind = rs.get("rope_type") or rs.get("type")
    if kind in (None, "default"):
        return inv
    if kind != "llama3":
        raise InputError(f"rope scaling {kind!r} is not supported by verify's forward pass")
    factor, low, high = float(rs["factor"]), float(rs["low_freq_factor"]), float(rs["high_freq_factor"])
    old = float(rs["original_max_position_embeddings"])
    low_wl, high_wl = old / low, old / high
    wl = 2 * math.pi / inv
    scaled = torch.where(wl > low_wl, inv / factor, inv)
    smooth = (old / wl - low) / (high - low)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    medium = ~(wl < high_wl) & ~(wl > low_wl)
    return torch.where(medium, smoothed, scaled)


def as_tokens(tokens: torch.Tensor | np.ndarray, vocab: int | None = None) -> torch.Tensor:
    t = torch.as_tensor(np.asarray(tokens) if not isinstance(tokens, torch.Tensor) else tokens)
    if t.dim() == 1:
        t = t.unsqueeze(0)
    if t.dim() != 2:
        raise UsageError(f"tokens must be [batch, time], got shape {list(t.shape)}")
    t = t.to(torch.int64)
    if vocab is not None and t.numel() and (int(t.min()) < 0 or int(t.max()) >= vocab):
        raise InputError(f"token ids must lie in [0, {vocab}); got {int(t.min())}..{int(t.max())}",
                         hint="the tokenizer does not belong to this model")
    return t


# ----------------------------------------------------------------------------------------
# public entry points
# ----------------------------------------------------------------------------------------
def logits_for(ckpt: Checkpoint, tokens: torch.Tensor | np.ndarray, *, act_quant: bool = True,
               reference: str = "ternary", device: str = "cpu", dtype: torch.dtype = torch.float32,
               groups: Groups = None, micro_batch: int | None = None, int_path: bool | None = None,
               compile: bool | None = None) -> torch.Tensor:
    """Logits float32 [B, T, vocab] on the CPU for int64 tokens [B, T].

    reference="ternary": float latent linears are absmean-ternarized on the fly (per tensor,
    or per `groups`), tensors already ternary on disk are used as they are; reference="fp":
    float weights as they are. `act_quant` applies BitNet's per-token 8-bit activation
    quantization to every linear. `int_path` (default: on CUDA only) selects the int8 path;
    the CPU default is transformers' operation order; see the module docstring.
    """
    runner = Runner(ckpt, act_quant=act_quant, reference=reference, device=device, dtype=dtype,
                    groups=groups, micro_batch=micro_batch, int_path=int_path, compile=compile)
    return runner.logits(tokens)


@dataclass
class TokenScores:
    """Per-token log-probabilities of the next token and their summary."""

    logprobs: torch.Tensor  # float32 [B, T-1]: log p(tokens[:, t+1] | tokens[:, :t+1])
    argmax: torch.Tensor  # int64 [B, T-1]: the model's top-1 next token
    nll: float  # mean negative log-likelihood over the scored positions
    tokens: int  # number of scored positions

    @property
    def perplexity(self) -> float:
        return math.exp(self.nll)


@torch.inference_mode()
def token_logprobs_and_stats(ckpt_or_runner: Checkpoint | Runner, tokens: torch.Tensor | np.ndarray, *,
                             score_from: int = 0, **runner_kwargs) -> TokenScores:
    """Perplexity-style scores without materializing [B, T, vocab]: logits are made chunk by
    chunk from the final hidden states. Positions before `score_from` are not scored."""
    runner = ckpt_or_runner if isinstance(ckpt_or_runner, Runner) else Runner(ckpt_or_runner, **runner_kwargs)
    tok = as_tokens(tokens, runner.hp.vocab_size)
    h = runner.hidden(tok)
    b, t, hd = h.shape
    flat = h[:, :-1].reshape(-1, hd)
    targets = tok[:, 1:].reshape(-1).to(h.device)
    lp = torch.empty(flat.shape[0], dtype=torch.float32, device=h.device)
    am = torch.empty(flat.shape[0], dtype=torch.int64, device=h.device)
    for s, lp_c, am_c in runner.logprob_chunks(flat, targets):
        lp[s:s + lp_c.shape[0]], am[s:s + lp_c.shape[0]] = lp_c, am_c
    lp, am = lp.cpu(), am.cpu()
    lp, am = lp.reshape(b, t - 1), am.reshape(b, t - 1)
    scored = lp[:, score_from:]
    n = scored.numel()
    nll = float(-scored.to(torch.float64).sum() / max(n, 1))
    return TokenScores(lp, am, nll, n)
