"""The activation-scheme seam of verify's one decoder layer (`graph.py`): a scheme is called
at the four linear-input sites of every layer and once for the KV cache, "a8" reproduces the
built-in 8-bit rule bit for bit, and `verify(act=, kv_bits=)` / `--act` reach the registry."""

from __future__ import annotations

import os

os.environ.setdefault("TORCHDYNAMO_DISABLE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

from bitconv.errors import UsageError  # noqa: E402
from bitconv.readers import open_source  # noqa: E402
from bitconv.verify import verify  # noqa: E402
from bitconv.verify.act_schemes import A8, SITES, get_scheme, is_int8_fused  # noqa: E402
from bitconv.verify.forward import logits_for  # noqa: E402

DIMS = dict(vocab=300, hidden=64, intermediate=128, layers=2, heads=4, kv_heads=2)


class Spy(A8):
    """a8, recording every call; not the plain a8, so the layer runs on the float backend."""

    def __init__(self) -> None:
        self.acts: list[tuple[str, int, tuple[int, ...]]] = []
        self.kvs: list[int] = []

    def act(self, x, site, layer):
        self.acts.append((site, layer, tuple(x.shape)))
        y = super().act(x, site, layer)
        assert y.shape == x.shape and y.dtype == x.dtype
        return y

    def kv(self, k, v, layer):
        self.kvs.append(layer)
        return k, v


@pytest.fixture(scope="module")
def model(ckpt_factory):
    return ckpt_factory("relu2", **DIMS)


@pytest.mark.parametrize("int_path", [False, True])
def test_scheme_is_called_at_every_site_and_a8_is_the_builtin_rule(model, int_path):
    """The float backend runs any scheme; a8 through the seam gives the same logits as the
    built-in act_quant=True float path, bit for bit, whatever int_path asked (a scheme the
    int8 kernels do not fuse moves the layer to the float backend)."""
    ck = open_source(model)
    tokens = torch.randint(0, DIMS["vocab"], (2, 12), generator=torch.Generator().manual_seed(0))
    spy = Spy()
    assert not is_int8_fused(spy) and is_int8_fused(A8())
    got = logits_for(ck, tokens, scheme=spy, int_path=int_path)
    want = logits_for(ck, tokens, act_quant=True, int_path=False)
    assert torch.equal(got, want)
    sites = [(s, layer) for s, layer, _ in spy.acts]
    assert sites == [(s, i) for i in range(DIMS["layers"]) for s in SITES]
    assert spy.kvs == list(range(DIMS["layers"]))
    widths = {s: shape[-1] for s, _, shape in spy.acts}
    assert widths == {"attn_in": DIMS["hidden"], "attn_out_in": DIMS["hidden"], "ffn_in": DIMS["hidden"],
                      "ffn_down_in": DIMS["intermediate"]}


def test_a8_scheme_object_gives_the_default_int_path(model):
    """A plain A8 object is what act_quant=True means on every backend (int8 kernels included)."""
    ck = open_source(model)
    tokens = torch.randint(0, DIMS["vocab"], (2, 12), generator=torch.Generator().manual_seed(1))
    assert torch.equal(logits_for(ck, tokens, scheme=A8(), int_path=True),
                       logits_for(ck, tokens, act_quant=True, int_path=True))


def test_kv_scheme_sees_k_and_v_after_rope(model):
    """kv() receives [b, kv_heads, t, head_dim]; zeroing v changes the output (it is used)."""
    ck = open_source(model)
    tokens = torch.randint(0, DIMS["vocab"], (1, 8), generator=torch.Generator().manual_seed(2))
    seen = []

    class ZeroV(A8):
        def kv(self, k, v, layer):
            seen.append((tuple(k.shape), tuple(v.shape)))
            return k, torch.zeros_like(v)

    hd = DIMS["hidden"] // DIMS["heads"]
    out = logits_for(ck, tokens, scheme=ZeroV())
    assert seen[0] == ((1, DIMS["kv_heads"], 8, hd), (1, DIMS["kv_heads"], 8, hd))
    assert not torch.equal(out, logits_for(ck, tokens, act_quant=True))


def test_verify_act_option_reaches_the_registry(model):
    assert isinstance(get_scheme("a8"), A8)
    with pytest.raises(UsageError, match="--act"):
        get_scheme("no-such-scheme")
    with pytest.raises(UsageError, match="--act"):
        verify(model, model, act="no-such-scheme", tokens=64, ctx=32)
