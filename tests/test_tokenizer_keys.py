"""GGUF tokenizer keys, key by key, against the converters' own path for the same tokenizer.

The references below replay the vocab steps of the converter that owns each engine's files,
with the libraries those converters use (sentencepiece, transformers' AutoTokenizer,
gguf-py's SpecialVocab and GGUFWriter), and write a vocab-only GGUF:
- bitnet.cpp (I2_S/TL files): utils/convert-hf-to-gguf-bitnet.py at 4645960 (unchanged at
  its HEAD): `_set_vocab_sentencepiece` pads with `[PAD1]`..`[PADn]`, score -1000, UNUSED;
  `get_vocab_base` pads with `[PAD{id}]` typed USER_DEFINED.
- llama.cpp (TQ/Q2_0 files): convert_hf_to_gguf.py: `_create_vocab_sentencepiece` starts
  from `[PAD{id}]`, score -10000, UNUSED for every id and applies tokenizer_config's
  added_tokens_decoder; `get_vocab_base` pads with `[PAD{id}]` typed UNUSED.
Both write `tokenizer.ggml.pre = "default"` for SentencePiece and take special ids,
add_*_token, merges and the chat template from `gguf.SpecialVocab`.
"""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path
from typing import Any

import gguf
import pytest

from bitconv.convert import convert
from bitconv.readers.gguf_file import GGUFFile
from bitconv.synth import _TEXT

spm = pytest.importorskip("sentencepiece", reason="the SentencePiece reference needs the sentencepiece package")

TT = gguf.TokenType
ENGINES = {"bitnet.cpp": "i2_s", "llama.cpp": "tq2_0"}
KEYS = [
    "tokenizer.ggml.model", "tokenizer.ggml.pre", "tokenizer.ggml.tokens", "tokenizer.ggml.token_type",
    "tokenizer.ggml.scores", "tokenizer.ggml.merges", "tokenizer.ggml.bos_token_id",
    "tokenizer.ggml.eos_token_id", "tokenizer.ggml.unknown_token_id", "tokenizer.ggml.padding_token_id",
    "tokenizer.ggml.add_bos_token", "tokenizer.ggml.add_eos_token", "tokenizer.chat_template",
]
# The converters refuse a BPE tokenizer whose pre-tokenizer hash they do not know (ours is
# freshly trained), so for BPE there is no reference `pre`; bitconv's is tested elsewhere.
NO_REFERENCE = {("bpe", "tokenizer.ggml.pre")}


# -- the two test tokenizers ----------------------------------------------------------------

def make_spm_model(folder: Path) -> Path:
    """A SentencePiece folder like 1bitLLM's: tokenizer.model, no tokenizer.json; pad id in config.json."""
    cfg = json.loads((folder / "config.json").read_text())
    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(_TEXT.split(". ") * 60), model_writer=buf, vocab_size=300, model_type="bpe",
        byte_fallback=True, user_defined_symbols=["<x>"], hard_vocab_limit=False, minloglevel=2)
    (folder / "tokenizer.json").unlink()
    (folder / "tokenizer.model").write_bytes(buf.getvalue())
    cfg.update(bos_token_id=1, eos_token_id=2, pad_token_id=0)
    (folder / "config.json").write_text(json.dumps(cfg))
    special = {"lstrip": False, "normalized": False, "rstrip": False, "single_word": False, "special": True}
    (folder / "tokenizer_config.json").write_text(json.dumps({
        "add_bos_token": True, "add_eos_token": False, "bos_token": "<s>", "eos_token": "</s>",
        "unk_token": "<unk>", "pad_token": None, "tokenizer_class": "LlamaTokenizer",
        "added_tokens_decoder": {"0": {"content": "<unk>", **special}, "1": {"content": "<s>", **special},
                                 "2": {"content": "</s>", **special}},
    }))
    return folder


def make_bpe_model(folder: Path) -> Path:
    """Byte-level BPE (tokenizer.json) whose pad token is named in tokenizer_config, plus a chat template."""
    cfg = json.loads((folder / "tokenizer_config.json").read_text())
    cfg.update(pad_token="<|end_of_text|>", chat_template="{% for m in messages %}{{ m['content'] }}{% endfor %}")
    (folder / "tokenizer_config.json").write_text(json.dumps(cfg))
    return folder


# -- the converters' vocab steps ------------------------------------------------------------

def ref_spm(folder: Path, vocab_size: int, engine: str, w: gguf.GGUFWriter) -> None:
    sp = spm.SentencePieceProcessor(model_file=str(folder / "tokenizer.model"))

    def piece_type(i: int) -> int:
        if sp.is_unknown(i):
            return TT.UNKNOWN
        if sp.is_control(i):
            return TT.CONTROL
        if sp.is_unused(i):
            return TT.UNUSED
        if sp.is_byte(i):
            return TT.BYTE
        return TT.NORMAL

    if engine == "bitnet.cpp":
        tokens = [sp.id_to_piece(i).encode() for i in range(sp.vocab_size())]
        scores = [sp.get_score(i) for i in range(sp.vocab_size())]
        types = [piece_type(i) for i in range(sp.vocab_size())]
        pad = vocab_size - len(tokens)
        tokens += [f"[PAD{i}]".encode() for i in range(1, pad + 1)]
        scores += [-1000.0] * pad
        types += [TT.UNUSED] * pad
    else:
        tokens = [f"[PAD{i}]".encode() for i in range(vocab_size)]
        scores = [-10000.0] * vocab_size
        types = [TT.UNUSED] * vocab_size
        for i in range(sp.vocab_size()):
            tokens[i], scores[i], types[i] = sp.id_to_piece(i).encode(), sp.get_score(i), piece_type(i)
        decoder = json.loads((folder / "tokenizer_config.json").read_text()).get("added_tokens_decoder", {})
        for key, data in decoder.items():
            i, content = int(key), data["content"]
            looks_special = content in ("<pad>", "<mask>", "<2mass>", "[@BOS@]") or (
                content.startswith("<|") and content.endswith("|>")) or (
                content.startswith("<unused") and content.endswith(">"))
            if data.get("special") or looks_special:
                types[i] = TT.CONTROL
            else:
                content = content.replace("\u2581", " ")
                types[i] = TT.USER_DEFINED
            scores[i], tokens[i] = -1000.0, content.encode()
    w.add_tokenizer_model("llama")
    w.add_tokenizer_pre("default")
    w.add_token_list(tokens)
    w.add_token_scores(scores)
    w.add_token_types(types)
    gguf.SpecialVocab(folder, n_vocab=len(tokens)).add_to_gguf(w, quiet=True)


def ref_bpe(folder: Path, vocab_size: int, engine: str, w: gguf.GGUFWriter) -> None:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(folder))
    reverse = {i: t for t, i in tok.get_vocab().items()}
    added = tok.get_added_vocab()
    tokens, types = [], []
    for i in range(vocab_size):
        if i not in reverse:
            tokens.append(f"[PAD{i}]")
            types.append(TT.USER_DEFINED if engine == "bitnet.cpp" else TT.UNUSED)
        elif reverse[i] in added:
            tokens.append(reverse[i])
            types.append(TT.CONTROL if tok.added_tokens_decoder[i].special else TT.USER_DEFINED)
        else:
            tokens.append(reverse[i])
            types.append(TT.NORMAL)
    w.add_tokenizer_model("gpt2")
    w.add_token_list(tokens)
    w.add_token_types(types)
    gguf.SpecialVocab(folder, load_merges=True).add_to_gguf(w, quiet=True)


def read_tokenizer_kv(path: Path) -> dict[str, tuple[Any, int]]:
    f = GGUFFile(path)
    return {k: (v, int(t)) for k, (v, t, _) in f.kv.items() if k.startswith("tokenizer.")}


@pytest.fixture(scope="module")
def pairs(silu_ckpt, tmp_path_factory) -> dict[tuple[str, str], tuple[dict, dict]]:
    """(kind, engine) -> (bitconv's tokenizer keys, the reference converter's)."""
    out: dict[tuple[str, str], tuple[dict, dict]] = {}
    for kind, make, ref in (("spm", make_spm_model, ref_spm), ("bpe", make_bpe_model, ref_bpe)):
        folder = tmp_path_factory.mktemp(kind) / "model"
        shutil.copytree(silu_ckpt, folder)
        make(folder)
        vocab_size = json.loads((folder / "config.json").read_text())["vocab_size"]
        for engine, layout in ENGINES.items():
            d = tmp_path_factory.mktemp(f"{kind}-{layout}")
            convert(folder, d / "bitconv.gguf", layout=layout)
            w = gguf.GGUFWriter(str(d / "reference.gguf"), arch="bitnet")
            ref(folder, vocab_size, engine, w)
            w.write_header_to_file()
            w.write_kv_data_to_file()
            w.close()
            out[(kind, engine)] = (read_tokenizer_kv(d / "bitconv.gguf"), read_tokenizer_kv(d / "reference.gguf"))
    return out


@pytest.mark.parametrize("key", KEYS)
@pytest.mark.parametrize("engine", list(ENGINES))
@pytest.mark.parametrize("kind", ["spm", "bpe"])
def test_key_as_the_converter_writes_it(pairs, kind: str, engine: str, key: str) -> None:
    if (kind, key) in NO_REFERENCE:
        pytest.skip("the converters refuse this freshly trained BPE tokenizer's pre-tokenizer hash")
    ours, ref = pairs[(kind, engine)]
    assert ours.get(key) == ref.get(key), f"{kind}/{engine}: {key}"


@pytest.mark.parametrize("engine", list(ENGINES))
@pytest.mark.parametrize("kind", ["spm", "bpe"])
def test_same_tokenizer_keys_and_the_ones_this_issue_is_about(pairs, kind: str, engine: str) -> None:
    ours, ref = pairs[(kind, engine)]
    assert set(ours) - {"tokenizer.ggml.pre"} == set(ref) - {"tokenizer.ggml.pre"}
    # the fixtures exercise what issue 15 names: a padding id, padding tokens, `pre` for SentencePiece
    assert ref["tokenizer.ggml.padding_token_id"][0] == (0 if kind == "spm" else 1)
    tokens, types = ours["tokenizer.ggml.tokens"][0], ours["tokenizer.ggml.token_type"][0]
    assert len(tokens) == 512 and sum(t.startswith("[PAD") for t in tokens) >= 100
    if kind == "spm":
        assert ours["tokenizer.ggml.pre"][0] == "default"
        first_pad = tokens.index("[PAD1]") if engine == "bitnet.cpp" else tokens.index("[PAD300]")
        assert first_pad == 300 and types[first_pad] == TT.UNUSED
    else:
        assert types[-1] == (TT.USER_DEFINED if engine == "bitnet.cpp" else TT.UNUSED)


def test_special_id_beyond_the_vocabulary_is_dropped_with_a_warning(silu_ckpt, tmp_path: Path) -> None:
    """gguf-py's BPE converter path would write it; the engine would reject it. bitconv warns instead."""
    folder = tmp_path / "model"
    shutil.copytree(silu_ckpt, folder)
    cfg = json.loads((folder / "config.json").read_text())
    cfg["pad_token_id"] = cfg["vocab_size"] + 10
    (folder / "config.json").write_text(json.dumps(cfg))
    res = convert(folder, tmp_path / "m.gguf", layout="tq2_0")
    assert "tokenizer.ggml.padding_token_id" not in read_tokenizer_kv(tmp_path / "m.gguf")
    assert any("pad" in w and str(cfg["pad_token_id"]) in w for w in res.plan.warnings)
    # the CLI shows warnings found while writing, not only those of the plan
    from typer.testing import CliRunner

    from bitconv.cli import app

    r = CliRunner(env={"COLUMNS": "250", "NO_COLOR": "1"}).invoke(
        app, ["convert", str(folder), str(tmp_path / "cli.gguf"), "--layout", "tq2_0"])
    assert r.exit_code == 0 and "out of range" in r.output
