"""Side files go through the main output's guard (issue 25 item 1, issue 21 item 6): the
--emit-kernel-config target, bitconv-manifest.json and the model card README.md are never
replaced without --force, with --force only when bitconv wrote them (never a symlink, never a
user's own README or hand-written manifest), never written by a dry run, and never left
behind by a conversion that failed."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from bitconv.errors import ConversionError
from bitconv.release import MANIFEST_NAME
from bitconv.writers.gguf_writer import GGUFWriter

from hostile_helpers import assert_refused, run_cli, temp_leftovers, tree_digest

MINE = "my own notes\n"


@pytest.fixture
def out(tmp_path) -> Path:
    d = tmp_path / "out"
    d.mkdir()
    return d


# -- the --emit-kernel-config target ----------------------------------------------------
def test_existing_kernel_config_is_not_replaced_without_force(silu_ckpt, out):
    ini = out / "kernel_config.ini"
    ini.write_text(MINE)
    r = run_cli("convert", silu_ckpt, out / "m.gguf", "--layout", "tl2", "--emit-kernel-config", ini)
    assert_refused(r, outdir=out, contains=(str(ini), "--force"), keep={"kernel_config.ini"})
    assert ini.read_text() == MINE


def test_force_replaces_only_a_kernel_config_bitconv_wrote(silu_ckpt, out):
    ini = out / "kernel_config.ini"
    ini.write_text(MINE)  # the user's (e.g. their bitnet.cpp build's) own file
    r = run_cli("convert", silu_ckpt, out / "m.gguf", "--layout", "tl2", "--emit-kernel-config", ini, "--force")
    assert_refused(r, outdir=out, contains=(str(ini), "did not write"), keep={"kernel_config.ini"})
    assert ini.read_text() == MINE
    ini.unlink()
    assert run_cli("convert", silu_ckpt, out / "m.gguf", "--layout", "tl2", "--emit-kernel-config", ini).exit_code == 0
    first = ini.read_text()
    r = run_cli("convert", silu_ckpt, out / "m.gguf", "--layout", "tl2", "--emit-kernel-config", ini, "--force",
                "--name", "renamed")
    assert r.exit_code == 0, r.output
    assert ini.read_text() != first and "renamed" in ini.read_text() and temp_leftovers(out) == []


@pytest.mark.parametrize("force", [False, True])
def test_kernel_config_symlink_is_never_followed_or_replaced(silu_ckpt, out, tmp_path, force):
    target = tmp_path / "elsewhere.ini"
    target.write_text(MINE)
    link = out / "kernel_config.ini"
    link.symlink_to(target)
    r = run_cli("convert", silu_ckpt, out / "m.gguf", "--layout", "tl2", "--emit-kernel-config", link,
                *(["--force"] if force else []))
    assert_refused(r, outdir=out, contains=(str(link), "symlink"), keep={"kernel_config.ini"})
    assert link.is_symlink() and target.read_text() == MINE


def test_kernel_config_not_left_behind_when_the_conversion_fails(silu_ckpt, out, monkeypatch):
    def broken(self, tmp, plan, tensors):
        next(tensors)
        raise ConversionError("the disk went away")

    monkeypatch.setattr(GGUFWriter, "write", broken)
    for extra in ([], ["--manifest"]):
        r = run_cli("convert", silu_ckpt, out / "m.gguf", "--layout", "tl2", "--emit-kernel-config",
                    out / "k.ini", *extra)
        assert r.exit_code == 1, r.output
        assert list(out.iterdir()) == [], "a failed run left a file (kernel config, manifest or temp)"


# -- the model card and the manifest ----------------------------------------------------
@pytest.mark.parametrize("force", [False, True])
def test_users_readme_beside_a_single_output_is_never_replaced(silu_ckpt, out, force):
    """A single output with --model-card writes README.md into the output's folder, where the
    user's own README lives: refused before converting, with or without --force."""
    (out / "README.md").write_text(MINE)
    r = run_cli("convert", silu_ckpt, out / "m.gguf", "--model-card", *(["--force"] if force else []))
    assert_refused(r, outdir=out, contains=("README.md", "model card"), keep={"README.md"})
    assert (out / "README.md").read_text() == MINE


@pytest.mark.parametrize("force", [False, True])
def test_hand_written_manifest_is_never_replaced(silu_ckpt, out, force):
    mine = json.dumps({"artifacts": [], "note": "mine"})
    (out / MANIFEST_NAME).write_text(mine)
    r = run_cli("convert", silu_ckpt, out, "--layout", "tq2_0,tq1_0", *(["--force"] if force else []))
    assert_refused(r, outdir=out, contains=(MANIFEST_NAME, "manifest"), keep={MANIFEST_NAME})
    assert (out / MANIFEST_NAME).read_text() == mine


def test_earlier_manifest_needs_force_even_for_another_output_name(silu_ckpt, out):
    """Issue 21, 6: a second --manifest run with another output name replaced the manifest."""
    assert run_cli("convert", silu_ckpt, out / "a.gguf", "--manifest").exit_code == 0
    before = tree_digest(out)
    r = run_cli("convert", silu_ckpt, out / "b.gguf", "--manifest")
    assert_refused(r, outdir=out, contains=(MANIFEST_NAME, "--force"), keep={"a.gguf", MANIFEST_NAME})
    assert tree_digest(out) == before
    r = run_cli("convert", silu_ckpt, out / "b.gguf", "--manifest", "--force")
    assert r.exit_code == 0, r.output
    m = json.loads((out / MANIFEST_NAME).read_text())
    assert [a["path"] for a in m["artifacts"]] == ["b.gguf"]


def test_model_card_bitconv_wrote_is_replaced_with_force(silu_ckpt, out):
    assert run_cli("convert", silu_ckpt, out, "--layout", "tq2_0", "--format", "gguf,safetensors",
                   "--model-card").exit_code == 0
    r = run_cli("convert", silu_ckpt, out, "--layout", "tq2_0", "--format", "gguf,safetensors", "--model-card")
    assert_refused(r, outdir=out)  # the outputs and side files exist: --force is needed
    r = run_cli("convert", silu_ckpt, out, "--layout", "tq2_0", "--format", "gguf,safetensors", "--model-card",
                "--force", "--json")
    assert r.exit_code == 0, r.output
    assert temp_leftovers(out) == []


def test_dry_run_writes_no_side_file(silu_ckpt, out):
    r = run_cli("convert", silu_ckpt, out / "m.gguf", "--layout", "tl2", "--manifest", "--model-card",
                "--emit-kernel-config", out / "k.ini", "--dry-run", "--json")
    assert r.exit_code == 0, r.output
    assert list(out.iterdir()) == []
    assert sorted(Path(p).name for p in json.loads(r.stdout)["paths"]) == sorted(
        ["m.gguf", "k.ini", MANIFEST_NAME, "README.md"])


def test_side_file_guard_is_the_outputs_guard(tmp_path):
    """Library level: a Stage refuses a side file that exists (no force), that bitconv did not
    write (force), a symlink (either); commits in order; a failed body leaves no temp."""
    from bitconv.errors import OutputExistsError
    from bitconv.side_files import is_bitconv_model_card
    from bitconv.writers.atomic import staged

    card = tmp_path / "README.md"
    ours = "---\nquantized_by: bitconv\n---\n# x\n"
    with staged(False) as st:
        st.text(card, ours, ours=is_bitconv_model_card, what="model card")
    assert card.read_text() == ours
    with pytest.raises(OutputExistsError, match="--force"):
        with staged(False) as st:
            st.text(card, "new", ours=is_bitconv_model_card, what="model card")
    with staged(True) as st:
        st.text(card, ours + "v2\n", ours=is_bitconv_model_card, what="model card")
    assert card.read_text().endswith("v2\n")
    card.write_text("---\ntitle: mine\n---\nquantized_by: bitconv\n")  # the stamp outside the front matter
    with pytest.raises(OutputExistsError, match="did not write"):
        with staged(True) as st:
            st.text(card, ours, ours=is_bitconv_model_card, what="model card")
    with pytest.raises(RuntimeError):
        with staged(True) as st:
            st.text(tmp_path / "new.md", ours, ours=is_bitconv_model_card, what="model card")
            raise RuntimeError("failed later")
    assert sorted(os.listdir(tmp_path)) == ["README.md"]


# -- --force into an empty folder (issue 25, 7): nothing to lose, and nothing lost in a race ----
@pytest.mark.parametrize("fmt", ["gguf", "safetensors"])
def test_force_into_an_empty_folder_still_needs_force(silu_ckpt, out, fmt):
    from bitconv.convert import convert

    (out / "empty").mkdir()
    r = run_cli("convert", silu_ckpt, out / "empty", "--format", fmt)
    assert_refused(r, outdir=out, contains=("already exists", "--force"), keep={"empty"})
    r = run_cli("convert", silu_ckpt, out / "empty", "--format", fmt, "--force")
    assert r.exit_code == 0, r.output
    convert(silu_ckpt, out / "check", format=fmt)
    assert list(tree_digest(out / "empty").values()) == list(tree_digest(out / "check").values())
    assert temp_leftovers(out) == []


@pytest.mark.parametrize("when", ["while writing", "at the rename"])
def test_empty_folder_that_gains_a_file_is_not_replaced(silu_ckpt, out, monkeypatch, when):
    """Emptiness is checked again at the commit and, after the atomic swap, by rmdir of the
    swapped-out folder: a file that appeared meanwhile stays where it was, and the run says so."""
    import bitconv.convert as conv
    from bitconv.writers import atomic

    target = out / "empty"
    target.mkdir()
    if when == "while writing":
        original = conv.prepare_tensors

        def late_file(*a, **k):
            (target / "mine.txt").write_text("appeared")
            return original(*a, **k)

        monkeypatch.setattr(conv, "prepare_tensors", late_file)
        words = ("did not write", str(target))
    else:
        original = atomic._renameat2

        def racing(src_, dst, flags):
            if flags == atomic._RENAME_EXCHANGE and not (target / "mine.txt").exists():
                (target / "mine.txt").write_text("appeared")
            return original(src_, dst, flags)

        monkeypatch.setattr(atomic, "_renameat2", racing)
        words = ("appeared", str(target))
    r = run_cli("convert", silu_ckpt, target, "--format", "safetensors", "--force")
    assert_refused(r, outdir=out, contains=words, keep={"empty"})
    assert [p.name for p in target.iterdir()] == ["mine.txt"]
