"""CI starts from nothing and runs what the README tells a new user to run.

`.ci/run` must create a new virtual environment in a temporary folder every time and run the
README's test command verbatim inside it; if the two drift apart, CI proves something other
than what a user gets. Every import must be declared in pyproject.toml, checked with
../shared/tools/check_deps.py when that folder sits beside the clone.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
CI_RUN = REPO / ".ci" / "run"
CHECK_DEPS = REPO / ".." / "shared" / "tools" / "check_deps.py"


def _readme_test_command() -> str:
    """The command line right under the README's '# 2.' quickstart comment."""
    lines = (REPO / "README.md").read_text(encoding="utf-8").splitlines()
    for i, line in enumerate(lines):
        if line.startswith("# 2."):
            return lines[i + 1].strip()
    raise AssertionError("README.md has no '# 2.' quickstart line")


def _commands(script: str) -> list[str]:
    return [ln.strip() for ln in script.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]


def test_ci_runs_the_readme_test_command_verbatim():
    readme_cmd = _readme_test_command()
    assert "pytest" in readme_cmd and "[test]" in readme_cmd
    commands = _commands(CI_RUN.read_text(encoding="utf-8"))
    assert commands[-1] == readme_cmd, f".ci/run ends with {commands[-1]!r}, README says {readme_cmd!r}"


def test_ci_makes_a_fresh_venv_in_a_temp_folder_and_activates_it_first():
    commands = _commands(CI_RUN.read_text(encoding="utf-8"))
    mk = next(i for i, c in enumerate(commands) if "mktemp -d" in c)
    venv = next(i for i, c in enumerate(commands) if re.search(r"-m venv \"\$base/venv\"", c))
    act = next(i for i, c in enumerate(commands) if c.startswith("source ") and c.endswith('/bin/activate"'))
    assert mk < venv < act < len(commands) - 1
    assert not any("--system-site-packages" in c for c in commands)
    assert any(c.startswith("unset ") and "PYTHONPATH" in c for c in commands[:venv])
    assert any(c.startswith("trap ") and "rm -rf" in c for c in commands)  # the venv does not pile up


def test_every_import_is_declared():
    if not CHECK_DEPS.is_file():
        pytest.skip("../shared/tools/check_deps.py is absent beside this clone")
    out = subprocess.run([sys.executable, str(CHECK_DEPS)], cwd=REPO, capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.strip() == "" and out.stderr.strip() == "", out.stdout + out.stderr
