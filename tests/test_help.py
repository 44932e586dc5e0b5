"""`--help` reads as a user expects (issue 21 item 12): arguments in capitals in the usage
line, no type after a flag (typer 0.27+ wrote `{source}` and 0.29+ `<bool>`, which read as
if `--force` took a value). Checked under whichever typer is installed."""

from __future__ import annotations

import re

import pytest
from typer.testing import CliRunner

from bitconv.cli import app

runner = CliRunner(env={"COLUMNS": "200", "NO_COLOR": "1", "TERM": "dumb"})

USAGE = {
    "convert": "convert [OPTIONS] SOURCE OUTPUT",
    "verify": "verify [OPTIONS] ARTIFACT",
    "inspect": "inspect [OPTIONS] FILE",
    "doctor": "doctor [OPTIONS] FILE",
    "check": "check [OPTIONS] MANIFEST",
}
FLAGS = {
    "convert": ["--force", "--dry-run", "--ternarize", "--verify", "--json", "--quiet", "--debug", "--help",
                "--keep-going", "--model-card"],
    "verify": ["--json", "--quiet", "--fast", "--act-quant", "--help"],
    "inspect": ["--json", "--help"],
    "doctor": ["--json", "--help"],
    "check": ["--json", "--help"],
}


def _help(*args: str) -> str:
    r = runner.invoke(app, [*args, "--help"])
    assert r.exit_code == 0, r.output
    return r.output


def _row(text: str, flag: str) -> str:
    """The help table's row that starts with FLAG (box characters stripped)."""
    for line in text.splitlines():
        cells = line.strip("│ ")
        if re.match(re.escape(flag) + r"(\s|$)", cells):
            return cells
    raise AssertionError(f"{flag} not in help:\n{text}")


@pytest.mark.parametrize("command", sorted(USAGE))
def test_usage_line_names_arguments_in_capitals(command):
    text = _help(command)
    usage = next(line for line in text.splitlines() if "Usage:" in line)
    assert usage.rstrip().endswith(USAGE[command]), usage
    assert "{" not in usage and "<" not in usage


@pytest.mark.parametrize("command", sorted(FLAGS))
def test_flags_show_no_value_type(command):
    text = _help(command)
    assert "<bool>" not in text and "BOOLEAN" not in text
    for flag in FLAGS[command]:
        row = _row(text, flag)
        # after the flag (and its --no- twin or short form) comes its help, not a value type
        rest = re.sub(r"^(--?[\w-]+\s*)+", "", row)
        assert not rest.startswith("<") and not rest.startswith("TEXT"), row


def test_options_that_take_a_value_still_say_so():
    row = _row(_help("convert"), "--layout")
    assert "Ternary layout" in row
    assert "layout" in _help("convert").lower()


def test_root_help_and_version():
    text = _help()
    assert "<bool>" not in text and "[OPTIONS] COMMAND [ARGS]..." in text
    assert "--version" in text and re.search(r"--version\s+Show the version", text)
    # convert's one-line summary names every output kind (it said "GGUF or safetensors" only)
    assert all(f in " ".join(text.split()) for f in ("GGUF", "safetensors", "MLX", "compressed-tensors"))


def test_every_command_renders_without_value_types_on_flags():
    """A command added later without `cls=_Command` would bring `<bool>` / `{arg}` back."""
    import typer

    group = typer.main.get_command(app)
    names = sorted(group.commands)
    assert set(USAGE) <= set(names)
    for name in names:
        text = _help(name)
        usage = next(line for line in text.splitlines() if "Usage:" in line)
        assert "<bool>" not in text and "{" not in usage, name
