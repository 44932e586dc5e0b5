"""The README's demo-model numbers are what the commands it names print (issue 21 item 4).

Each number is parsed from the README sentence that states it and recomputed with the
command or library call that sentence names, rounded to the digits the README shows: a
change to the model, the eval text, verify or the script that moves a printed digit fails
here until the README is updated. (Numbers of other machines, the GPU tables and timings,
name their command and machine in the README but are not re-measured by tests.)
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

from bitconv.verify import verify

import waiting

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")
DEMO = "builtin:tiny-bitnet"

pytestmark = pytest.mark.slow


def _find(pattern: str) -> re.Match:
    m = re.search(pattern, README, re.S)
    assert m, f"the README no longer states: {pattern}"
    return m


def _decimals(text: str) -> int:
    return len(text.split(".")[1]) if "." in text else 0


def test_quickstart_verify_prints_the_readme_perplexity(demo_tl2):
    m = _find(r"`bitconv verify` with its defaults \(the first\s+2,048 tokens, windows of 512\) prints a source "
              r"perplexity of \*\*([\d.]+)\*\*")
    rep = verify(demo_tl2, DEMO)  # `bitconv verify tiny-bitnet-tl2.gguf --source builtin:tiny-bitnet`
    assert round(rep.source_perplexity, _decimals(m.group(1))) == float(m.group(1)), rep.source_perplexity
    assert rep.passed


def test_whole_text_perplexity_is_the_readme_number(demo_tl2):
    m = _find(r"its perplexity is \*\*([\d.]+)\*\* over the whole text in windows of 256.*?"
              r"--tokens 100000 --ctx 256`,\s+([\d,]+) scored tokens")
    judge = _find(r"verify's source perplexity over the whole eval text in windows of\s+256 is ([\d.]+) "
                  r"\(`bitconv verify tiny-bitnet-tl2.gguf --source builtin:tiny-bitnet --tokens\s+100000 --ctx 256`\)")
    rep = verify(demo_tl2, DEMO, tokens=100_000, ctx=256)
    for text in (m.group(1), judge.group(1)):
        assert round(rep.source_perplexity, _decimals(text)) == float(text), (text, rep.source_perplexity)
    assert rep.tokens == int(m.group(2).replace(",", ""))


def test_fp16_scale_table_demo_row_is_what_the_script_prints(tmp_path):
    row = _find(r"\| `builtin:tiny-bitnet` \(trained demo\) \| (\d+) \| ([\d.]+) \| ([\d.]+) \| ([\d.e-]+) \| "
                r"([\d.e-]+) \| ([\d.]+)% \|")
    _find(r"python scripts/fp16_scale_kl.py builtin:tiny-bitnet")
    p = waiting.run([sys.executable, str(ROOT / "scripts" / "fp16_scale_kl.py"), DEMO], 600, cwd=tmp_path,
                    capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    got = dict(re.findall(r"^(\w+)\s+([-\d.e+]+)$", p.stdout, re.M))
    count = re.search(r"(\d+) I2_S scales rounded", p.stdout).group(1)
    scales, ppl32, ppl16, kl, kl_max, top1 = row.groups()
    assert count == scales
    assert round(float(got["source_perplexity"]), _decimals(ppl32)) == float(ppl32)
    assert round(float(got["artifact_perplexity"]), _decimals(ppl16)) == float(ppl16)
    for text, value in ((kl, got["mean_kl"]), (kl_max, got["max_kl"])):
        assert f"{float(value):.1e}" == f"{float(text):.1e}", (text, value)
    assert round(100 * float(got["top1_agreement"]), _decimals(top1)) == float(top1)
