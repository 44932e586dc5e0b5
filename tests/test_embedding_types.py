"""`--embedding-type` / `--output-type` (issue 12 item 4): `auto` (default) keeps float
embeddings as f16; `q2_0` is refused for a float embedding, with the reason, before anything
is written (ternarizing an embedding would make another model)."""

from __future__ import annotations

import pytest

from bitconv.convert import convert
from bitconv.embedding_types import CHOICES, parse_type
from bitconv.errors import UsageError
from bitconv.readers.gguf_file import GGUFFile


def test_parse_type():
    assert [parse_type(v, "--embedding-type") for v in ("AUTO", "f16", "Q2-0")] == ["auto", "f16", "q2_0"]
    assert CHOICES == ("auto", "f32", "f16", "bf16", "q2_0")
    with pytest.raises(UsageError, match="--output-type must be one of auto, f32, f16, bf16, q2_0"):
        parse_type("q4_k", "--output-type")


@pytest.mark.parametrize("layout", ["q2_0", "tq2_0"])
def test_auto_keeps_a_float_embedding_f16(ckpt_factory, tmp_path, layout):
    out = tmp_path / "m.gguf"
    res = convert(ckpt_factory("llama", seed=2, tie=False), out, layout=layout)
    f = GGUFFile(out)
    assert f.tensors["token_embd.weight"].type_name == "F16" and f.tensors["output.weight"].type_name == "F16"
    assert res.plan.options.recorded()["embedding_type"] == "auto"


@pytest.mark.parametrize("flag", ["embedding_type", "output_type"])
def test_q2_0_for_a_float_table_is_refused(ckpt_factory, tmp_path, flag):
    out = tmp_path / "x.gguf"
    name = "token_embd.weight" if flag == "embedding_type" else "output.weight"
    cli = "--" + flag.replace("_", "-")
    with pytest.raises(UsageError, match=f"{name}: {cli} q2_0 needs .* ternarizing it would make a different model"):
        convert(ckpt_factory("llama", seed=2, tie=False), out, layout="q2_0", **{flag: "q2_0"})
    assert not out.exists()


def test_cli_refusal_exits_2(ckpt_factory, tmp_path):
    from typer.testing import CliRunner

    from bitconv.cli import app

    src = ckpt_factory("silu", seed=3)
    res = CliRunner().invoke(app, ["convert", str(src), str(tmp_path / "y.gguf"), "--layout", "q2_0",
                                   "--embedding-type", "q2_0"])
    assert res.exit_code == 2 and "ternarizing it would make" in res.output
    assert not (tmp_path / "y.gguf").exists()
    res = CliRunner().invoke(app, ["convert", str(src), str(tmp_path / "z.gguf"), "--embedding-type", "q4_k"])
    assert res.exit_code == 2 and "--embedding-type must be one of" in res.output
