"""A newcomer's first hour (issue 21): the first commands work, and what they print is true.

Items 5 (default layout), 8 (--layout with --format safetensors), 13 (the demo's tokenizer
warning), 14 (words for what each source tensor is).
"""

from __future__ import annotations

import json
import logging

import pytest
from typer.testing import CliRunner

from bitconv.cli import app
from bitconv.convert import convert
from bitconv.readers.gguf_file import GGUFFile

runner = CliRunner(env={"COLUMNS": "250", "NO_COLOR": "1"})
DEMO = "builtin:tiny-bitnet"


def run(*args):
    return runner.invoke(app, [str(a) for a in args])


# -- 5. no --layout: the layout of the engine that runs the model ---------------------------
def test_demo_without_layout_goes_to_bitnet_cpp_and_says_why(tmp_path):
    out = tmp_path / "x.gguf"
    r = run("convert", DEMO, out)
    assert r.exit_code == 0, r.output
    note = " ".join(r.output.split())
    assert "chose i2_s for bitnet.cpp" in note and "relu²" in note and "SiLU" in note, note
    assert "pass --layout" in note
    f = GGUFFile(out)
    assert f.get("general.architecture") == "bitnet-b1.58"
    assert json.loads(f.get("bitconv.options"))["layout"] == "i2_s"  # the chosen one is recorded, not "auto"


def test_silu_tied_bitnet_without_layout_goes_to_llama_cpp(silu_ckpt, tmp_path):
    res = convert(silu_ckpt, tmp_path / "s.gguf")
    assert res.plan.options.layout == "tq2_0" and res.plan.engine == "llama.cpp" and res.plan.arch == "bitnet"
    assert any("chose tq2_0 for llama.cpp" in n for n in res.plan.notes), res.plan.notes


def test_llama_without_layout_goes_to_llama_cpp(llama_ckpt, tmp_path):
    res = convert(llama_ckpt, tmp_path / "l.gguf", dry_run=True)
    assert res.plan.options.layout == "tq2_0" and res.plan.arch == "llama"


def test_default_skips_a_layout_that_cannot_hold_the_shapes(ckpt_factory, tmp_path):
    """K = 192 fits no 256-block (TQ2_0, TQ1_0) but Q2_0's 64-blocks: the default says so."""
    src = ckpt_factory("silu", hidden=192, intermediate=384, heads=3, kv_heads=3)
    res = convert(src, tmp_path / "q.gguf", dry_run=True)
    assert res.plan.options.layout == "q2_0"
    assert any("tq2_0 cannot hold it" in n for n in res.plan.notes), res.plan.notes


def test_no_engine_runs_it_is_refused_not_guessed(untied_silu_ckpt, tmp_path):
    """A SiLU BitNet with its own head: both engines' `bitnet` graph lack an output tensor."""
    r = run("convert", untied_silu_ckpt, tmp_path / "u.gguf")
    assert r.exit_code == 2 and "output" in r.stderr and "safetensors" in r.stderr, r.output
    assert list(tmp_path.iterdir()) == []


def test_explicit_layout_stays_strict(tmp_path):
    r = run("convert", DEMO, tmp_path / "x.gguf", "--layout", "tq2_0")
    assert r.exit_code == 2 and "relu2" in r.stderr and "chose" not in r.stderr
    assert list(tmp_path.iterdir()) == []


def test_release_without_layout_uses_the_default(tmp_path):
    out = tmp_path / "rel"
    r = run("convert", DEMO, out, "--format", "gguf,safetensors", "--json")
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    assert sorted(a["label"] for a in doc["artifacts"]) == ["i2_s", "safetensors"]
    assert (out / "tiny-bitnet-i2_s.gguf").is_file()


# -- 8. --layout means nothing to a safetensors-only output: refused -------------------------
@pytest.mark.parametrize("layout", ["tl2", "i2_s,tl2"])
def test_safetensors_with_layout_is_refused(tmp_path, layout):
    r = run("convert", DEMO, tmp_path / "st", "--format", "safetensors", "--layout", layout)
    assert r.exit_code == 2, r.output
    assert "--layout" in r.stderr and "safetensors" in r.stderr and "drop --layout" in r.stderr
    assert list(tmp_path.iterdir()) == []


def test_safetensors_without_layout_still_works(tmp_path):
    r = run("convert", DEMO, tmp_path / "st", "--format", "safetensors", "--quiet")
    assert r.exit_code == 0, r.output
    assert (tmp_path / "st" / "config.json").is_file()


# -- 13. the demo's tokenizer converts without a warning -------------------------------------
def test_demo_tokenizer_gives_gguf_py_no_warning(tmp_path, caplog):
    import gguf

    from bitconv.readers import DATA_DIR

    with caplog.at_level(logging.WARNING, logger="gguf.vocab"):
        special = gguf.SpecialVocab(DATA_DIR / "tiny-bitnet", load_merges=True, n_vocab=1024)
    assert [r.getMessage() for r in caplog.records] == []
    assert special.add_special_token.get("bos") is True and special.special_token_ids["bos"] == 0
    res = convert(DEMO, tmp_path / "x.gguf", layout="tl2")
    assert not [w for w in res.plan.warnings if "tokenizer" in w], res.plan.warnings
    assert GGUFFile(tmp_path / "x.gguf").get("tokenizer.ggml.add_bos_token") is True


def test_demo_tokenizer_still_prepends_bos():
    from tokenizers import Tokenizer

    from bitconv.readers import DATA_DIR

    tok = Tokenizer.from_file(str(DATA_DIR / "tiny-bitnet" / "tokenizer.json"))
    assert tok.encode("the cat").ids[0] == 0
    assert tok.encode("the cat", "a dog").ids.count(0) == 1  # a pair: one BOS, no BOS "separator"


# -- 14. each source tensor is named for what it is ------------------------------------------
def test_demo_plan_names_norms_and_embedding_for_what_they_are(tmp_path):
    r = run("convert", DEMO, tmp_path / "x.gguf", "--dry-run", "--json")
    assert r.exit_code == 0, r.output
    plan = json.loads(r.stdout)["plan"]
    kinds = {t["name"]: t["source_kind"] for t in plan["tensors"]}
    assert "plain_float" not in kinds.values()  # README: plain_float is a refused float *linear*
    assert kinds["token_embd.weight"] == "float" and kinds["blk.0.attn_norm.weight"] == "float"
    assert kinds["blk.0.attn_q.weight"] == "bitnet_latent"
    assert plan["source_kinds"]["counts"] == {"bitnet_latent": 28, "float": 18}
    human = run("convert", DEMO, tmp_path / "x.gguf", "--dry-run").stdout
    assert "float embedding" in human and "float norm" in human and "plain_float" not in human


# -- 16. messages that say what is true --------------------------------------------------------
@pytest.mark.parametrize("what", ["folder", "missing", "empty"])
def test_doctor_and_inspect_name_a_bad_path_in_words(tmp_path, what):
    path = {"folder": tmp_path, "missing": tmp_path / "nope.gguf", "empty": tmp_path / "empty.gguf"}[what]
    if what == "empty":
        path.write_bytes(b"")
    for cmd in ("doctor",) if what == "folder" else ("doctor", "inspect"):  # inspect reads folders
        r = run(cmd, path)
        assert r.exit_code == 2, r.output
        line = " ".join(r.stderr.split())
        assert "Errno" not in line and "Traceback" not in r.output, line
        expected = {"folder": "folder", "missing": "no such file", "empty": "empty"}[what]
        assert expected in line and str(path) in line, line


def test_output_equal_to_a_source_file_is_not_called_a_folder(tmp_path):
    src = tmp_path / "x.gguf"
    convert(DEMO, src, layout="i2_s")
    r = run("convert", src, src, "--layout", "tl2")
    assert r.exit_code == 2 and "is the source" in r.stderr
    assert "folder" not in r.stderr and "another output path" in r.stderr, r.stderr


@pytest.mark.parametrize("offline", [True, False])
def test_hub_error_names_offline_mode_only_when_it_is_set(tmp_path, offline):
    import os
    import sys

    import waiting

    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    env.update(HF_HOME=str(tmp_path / "hf"), HF_HUB_DISABLE_TELEMETRY="1", NO_COLOR="1",
               # an endpoint that refuses at once: no network is touched either way
               HF_ENDPOINT="http://127.0.0.1:9")
    if offline:
        env["HF_HUB_OFFLINE"] = "1"
    p = waiting.run([sys.executable, "-m", "bitconv.cli", "convert", "someorg/some-model",
                     str(tmp_path / "o.gguf")], 180, env=env, capture_output=True, text=True)
    assert p.returncode == 2, p.stderr
    line = " ".join(p.stderr.split())
    assert ("unset HF_HUB_OFFLINE" in line) == offline, line
    assert ("HF_HUB_OFFLINE is set" in line) == offline, line


# -- 15. a truncated GGUF: where it ends and what lies past it, no intact tensor blamed ---------
def _past_end(path, size):
    f = GGUFFile(path)
    return [i.name for i in f.index if i.offset >= size]


@pytest.mark.parametrize("keep", [0.8, 0.5])
def test_truncated_tl2_file_names_the_end_and_the_tensors_past_it(demo_tl2, tmp_path, keep):
    data = demo_tl2.read_bytes()
    size = int(len(data) * keep)
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(data[:size])
    past = _past_end(demo_tl2, size)
    assert len(past) > 5 and any(".attn_q." in n or ".ffn_down." in n for n in past)  # TL2 tensors among them
    for cmd in (["convert", cut, tmp_path / "o.gguf", "--layout", "i2_s"], ["inspect", cut]):
        r = run(*cmd)
        line = " ".join(r.stderr.split())
        assert r.exit_code == 2, r.output
        assert f"the file ends at byte {size}" in line and f"{len(past)} of 46 tensors lie past it" in line, line
        assert "fits no known reading" not in line and "spans" not in line, line  # no intact tensor blamed
    r = run("doctor", cut, "--json")
    doc = json.loads(r.stdout)
    trunc = [x for x in doc["findings"] if x["code"] == "truncated"]
    assert len(trunc) == 1 and f"{len(past)} of 46 tensors lie past it" in trunc[0]["message"], trunc
    assert r.exit_code == 1


def test_file_cut_inside_its_last_tensor(demo_tl2, tmp_path):
    data = demo_tl2.read_bytes()
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(data[:-1000])
    r = run("inspect", cut)
    line = " ".join(r.stderr.split())
    assert r.exit_code == 2 and f"the file ends at byte {len(data) - 1000}" in line
    assert "output_norm.weight is cut short" in line, line


# -- 18. the first run says what it is doing, and rates count only work done -------------------
def _cli_env(**extra):
    import os

    env = {**os.environ, "NO_COLOR": "1", "COLUMNS": "200", **extra}
    env["PYTHONPATH"] = str(__import__("pathlib").Path(__file__).resolve().parents[1])
    return env


@pytest.mark.slow
def test_first_run_compile_is_announced_once_then_silent(tmp_path):
    """An empty numba cache (a fresh install) compiles kernels: one note says so; the next
    run, with the cache filled, says nothing; --quiet says nothing either way."""
    import sys

    import waiting

    env = _cli_env(NUMBA_CACHE_DIR=str(tmp_path / "numba-cache"), BITCONV_NOTICE_AFTER="0")

    def convert_demo(*flags):
        p = waiting.run([sys.executable, "-m", "bitconv.cli", "convert", DEMO, str(tmp_path / "x.gguf"),
                         "--layout", "i2_s", "--force", *flags], 600, env=env, capture_output=True, text=True)
        assert p.returncode == 0, p.stderr
        return " ".join(p.stderr.split())

    first = convert_demo()
    assert first.count("compiling bitconv's kernels for this CPU, once") == 1, first
    assert str(tmp_path / "numba-cache") in first  # where the result is kept
    assert "compiling" not in convert_demo()
    assert list((tmp_path / "numba-cache").rglob("*.nbi"))
    env["NUMBA_CACHE_DIR"] = str(tmp_path / "other-cache")
    assert convert_demo("--quiet") == ""


def test_one_time_step_is_announced_only_when_it_lasts(monkeypatch):
    import threading

    from bitconv import one_time

    heard: list[str] = []
    arrived = threading.Event()

    def hear(line):
        heard.append(line)
        arrived.set()

    with one_time.subscribe(hear):
        monkeypatch.setenv("BITCONV_NOTICE_AFTER", "3600")
        one_time.begin("quick step")
        one_time.end()  # ended long before its threshold: nothing said
        monkeypatch.setenv("BITCONV_NOTICE_AFTER", "0")
        one_time.begin("long step")
        one_time.begin("long step")  # nested: one step
        assert arrived.wait(600)
        assert one_time.busy()
        one_time.end()
        assert one_time.busy()
        one_time.end()
        assert not one_time.busy()
        one_time.begin("long step")  # said once per process
        one_time.end()
    assert heard == ["long step"]


def test_rates_start_after_a_stall_not_before(monkeypatch):
    """The bug: 1 KB done, then 15 s of compiling, then the rest: rich showed 311 bytes/s and
    an ETA of hours. Here the rate is measured from when work flowed again."""
    from types import SimpleNamespace

    from bitconv import one_time, progress

    clock = [1000.0]
    monkeypatch.setattr(progress, "_now", lambda: clock[0])
    monkeypatch.setattr(one_time, "_quiet_since", 0.0)
    origins = progress._Origins()
    rate_col, eta_col = progress.RateColumn(origins), progress.EtaColumn(origins)
    task = SimpleNamespace(id=1, completed=0.0, total=1_350_000.0)
    assert str(rate_col.render(task)) == "" and str(eta_col.render(task)) == ""  # nothing done: no rate
    task.completed = 1024.0
    assert str(rate_col.render(task)) == ""  # the origin is set now, no span yet
    monkeypatch.setattr(one_time, "_busy_since", clock[0])  # a compile runs
    clock[0] += 15.0
    assert str(rate_col.render(task)) == "compiling (once)"
    monkeypatch.setattr(one_time, "_busy_since", None)  # it ended: quiet since now
    monkeypatch.setattr(one_time, "_quiet_since", clock[0])
    assert str(rate_col.render(task)) == ""  # origin moved past the stall
    clock[0] += 0.6
    task.completed = 1_000_000.0
    shown = str(rate_col.render(task))
    assert shown.endswith("MB/s") and float(shown.split()[0]) > 1.0, shown  # ~1.66 MB/s, not 311 B/s
    assert str(eta_col.render(task)) == "0:00:00 left"


# -- 19. verify shows progress in a terminal, nothing with --json / --quiet --------------------
def test_verify_progress_sink_renders_layers_and_a_rate(monkeypatch):
    import io

    from rich.console import Console

    from bitconv import cli
    from bitconv.output import Output

    out = Output("human")
    buf = io.StringIO()
    out.err = Console(file=buf, force_terminal=True, width=120, color_system=None)
    with cli._verify_progress(out, 2048) as on_progress:
        assert on_progress is not None
        for i in range(1, 5):
            on_progress("layer", i, 4)
            out.err.file.flush()
        on_progress("metrics", 0, 1)
    assert "layer" in buf.getvalue() or "comparing logits" in buf.getvalue()
    for mode in ("json", "quiet"):
        with cli._verify_progress(Output(mode), 2048) as on_progress:
            assert on_progress is None


def test_verify_cli_feeds_progress(tmp_path, monkeypatch):
    from bitconv import cli

    art = tmp_path / "v.gguf"
    convert(DEMO, art, layout="i2_s")
    events = []
    real = cli._verify_progress

    from contextlib import contextmanager

    @contextmanager
    def spy(out, tokens):
        with real(out, tokens) as sink:
            yield lambda *e: (events.append(e), sink and sink(*e))

    monkeypatch.setattr(cli, "_verify_progress", spy)
    r = run("verify", art, "--source", DEMO, "--tokens", "256", "--ctx", "128")
    assert r.exit_code == 0, r.output
    layers = [e for e in events if e[0] == "layer"]
    assert layers and layers[-1][1:] == (4, 4), events


# -- 5 / 17. the README's CI command and the example workflow work on the demo -------------------
def _readme():
    from pathlib import Path

    return (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")


def _workflow():
    from pathlib import Path

    import yaml

    return yaml.safe_load((Path(__file__).resolve().parents[1] / "examples" / "github-actions-release.yml")
                          .read_text(encoding="utf-8"))


def _ci_argv(command: str, source: str) -> list[str]:
    """A documented `bitconv convert ...` line as argv on the demo: SOURCE replaced, no upload
    (the only part that needs the network), no shell redirection."""
    import shlex

    argv = shlex.split(command.replace("\\\n", " ").split(">")[0])
    assert argv[:2] == ["bitconv", "convert"], argv
    argv[2] = DEMO if argv[2] in (source, "$SOURCE") else argv[2]
    assert argv[2] == DEMO, argv
    i = argv.index("--upload-repo")
    return argv[1:i] + argv[i + 2:]


def test_workflow_installs_bitconv_from_its_repository():
    steps = _workflow()["jobs"]["release"]["steps"]
    runs = [s.get("run", "") for s in steps]
    install = next(r for r in runs if "pip install" in r)
    assert "pip install bitconv" not in install  # not on PyPI: it would not resolve
    checkout = next(s for s in steps if s.get("with", {}).get("repository"))
    assert f"pip install ./{checkout['with']['path']}" in install
    assert "torch==2.13.0" in install  # the pin the README installs


@pytest.mark.slow
def test_readme_and_workflow_ci_commands_work_on_the_demo(tmp_path, monkeypatch):
    import re

    block = re.search(r"## Using bitconv in CI.*?```bash\n(.*?)```", _readme(), re.S).group(1)
    readme_cmd = block.split("\nbitconv check")[0]
    steps = _workflow()["jobs"]["release"]["steps"]
    wf_cmd = next(s["run"] for s in steps if "bitconv convert" in s.get("run", ""))
    readme_argv, wf_argv = _ci_argv(readme_cmd, "org/checkpoint"), _ci_argv(wf_cmd, "$SOURCE")
    assert readme_argv == wf_argv, (readme_argv, wf_argv)  # one documented command
    monkeypatch.chdir(tmp_path)
    r = run(*readme_argv)
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    assert doc["ok"] and all(a["ok"] and a["verify"]["passed"] for a in doc["artifacts"]), doc
    assert run("check", "release/bitconv-manifest.json").exit_code == 0


def test_default_keeps_a_ternary_embedding_ternary(ckpt_factory, tmp_path):
    """A GGUF source whose token_embd is Q2_0 (Bonsai-style): the default is Q2_0, the one
    llama.cpp layout that keeps the table ternary instead of writing it dequantized."""
    from test_q2_0_embeddings import EMB, ternary_embedding_checkpoint, write

    ck, _ = ternary_embedding_checkpoint(ckpt_factory("silu", seed=0, embed_std=0.05))
    src = tmp_path / "emb-q2_0.gguf"
    write(ck, src, layout="q2_0")
    res = convert(src, tmp_path / "again.gguf")
    assert res.plan.options.layout == "q2_0", res.plan.notes
    assert GGUFFile(tmp_path / "again.gguf").tensors[EMB].type_name == "Q2_0"


def test_default_layout_into_a_folder_is_named_by_the_chosen_layout(tmp_path):
    out = tmp_path / "od"
    out.mkdir()
    r = run("convert", DEMO, f"{out}/", "--json")
    assert r.exit_code == 0, r.output
    assert [p.name for p in out.iterdir()] == ["tiny-bitnet-i2_s.gguf"]


@pytest.mark.slow
def test_compiling_ahead_leaves_the_first_run_nothing_to_compile(tmp_path):
    """`python -m bitconv.kernels` (the quickstart's install step) on an empty kernel cache,
    then the quickstart's convert and verify: neither compiles anything (no note, even with a
    zero threshold)."""
    import sys

    import waiting

    env = _cli_env(NUMBA_CACHE_DIR=str(tmp_path / "cache"), BITCONV_NOTICE_AFTER="0")
    p = waiting.run([sys.executable, "-m", "bitconv.kernels"], 1200, env=env, capture_output=True, text=True,
                    cwd=tmp_path)
    assert p.returncode == 0 and "done:" in p.stderr, p.stderr
    art = tmp_path / "tiny-bitnet-tl2.gguf"
    for cmd in (["convert", DEMO, str(art), "--layout", "tl2"], ["verify", str(art), "--source", DEMO]):
        q = waiting.run([sys.executable, "-m", "bitconv.cli", *cmd], 600, env=env, capture_output=True, text=True)
        assert q.returncode == 0, q.stderr
        assert "compiling" not in q.stderr, (cmd, q.stderr)
