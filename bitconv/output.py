"""One output sink for the CLI: human (rich), json (one document on stdout) or quiet.

Commands hand results to the sink instead of printing, so `--json` output is exactly one
JSON document on stdout and progress/diagnostics go to stderr.
"""

from __future__ import annotations

import json
import re
import sys
from typing import Any

from rich.console import Console
from rich.errors import MarkupError
from rich.table import Table

# rich's own tag pattern (rich.markup): a run of backslashes, then [tag]
_TAG = re.compile(r"(\\*)(\[[a-z#/@][^[]*?])")
# the styles bitconv's messages use; any other [tag] in a message came from data
_OWN = re.compile(r"\[/?(?:(?:bold|dim|italic|red|green|yellow|cyan|magenta|blue)(?: (?:bold|dim|red|green|yellow|cyan))*)?\]")


def protect(text: str, own: bool = True) -> str:
    """TEXT with every markup tag that is not one of bitconv's own styles escaped.

    Why: messages interpolate user data (paths, architecture and tensor names) into rich
    markup, and `[/x]` in a file name made the printer raise MarkupError (after a complete
    conversion: exit 1 and a traceback), while `[x]` silently vanished from the message.
    Escaping here covers every printer at once (doctor's and verify's renderers print on
    these consoles too). A tag already escaped (an odd run of backslashes) is left alone, so
    a caller's own `escape` is not doubled. `own=False`: the text is all data (error and
    warning messages, which callers pass raw so that --json carries them verbatim): every
    tag is escaped as rich's `escape` does, bitconv's styles and backslashes included."""
    def sub(m: re.Match) -> str:
        slashes, tag = m.group(1), m.group(2)
        if not own:
            return f"{slashes}{slashes}\\{tag}"
        if len(slashes) % 2 or _OWN.fullmatch(tag):
            return m.group(0)
        return f"{slashes}\\{tag}"
    return _TAG.sub(sub, text)


def _protect_table(table: Table) -> None:
    for attr in ("title", "caption"):
        if isinstance(getattr(table, attr), str):
            setattr(table, attr, protect(getattr(table, attr)))
    for col in table.columns:
        if isinstance(col.header, str):
            col.header = protect(col.header)
        col._cells = [protect(c) if isinstance(c, str) else c for c in col._cells]


class SafeConsole(Console):
    """A rich Console on which data in a message can never be read as markup (`protect`);
    a message that still fails to parse is printed as plain text rather than raising."""

    def print(self, *objects: Any, **kwargs: Any) -> None:  # type: ignore[override]
        safe = []
        for o in objects:
            if isinstance(o, str):
                o = protect(o)
            elif isinstance(o, Table):
                _protect_table(o)
            safe.append(o)
        try:
            super().print(*safe, **kwargs)
        except MarkupError:
            super().print(*objects, **{**kwargs, "markup": False})


class Output:
    def __init__(self, mode: str = "human") -> None:
        self.mode = mode  # "human" | "json" | "quiet"
        self.emitted = False  # a result document was written (--json prints exactly one)
        self.console = SafeConsole(stderr=False, highlight=False)
        self.err = SafeConsole(stderr=True, highlight=False)

    @property
    def human(self) -> bool:
        return self.mode == "human"

    @property
    def show_progress(self) -> bool:
        return self.mode == "human" and self.err.is_terminal

    def info(self, message: str, soft_wrap: bool = False) -> None:
        """`soft_wrap`: never break the line (commands meant to be copied and pasted)."""
        if self.human:
            self.console.print(message, soft_wrap=soft_wrap)

    def note(self, message: str) -> None:
        """What the tool is doing that the user may wonder about (stderr; human mode only)."""
        if self.human:
            self.err.print(f"[cyan]note:[/cyan] {message}", soft_wrap=True)  # one line, for grep and tests

    def warn(self, message: str) -> None:
        if self.mode != "quiet":
            self.err.print(f"[yellow]warning:[/yellow] {protect(message, own=False)}")  # all of it data

    def error(self, message: str, written: list[str] | None = None) -> None:
        """`written`: files the failed run did put in place (a release whose upload failed);
        --json lists them so CI knows what is on disk."""
        if self.mode == "json":
            doc: dict[str, Any] = {"ok": False, "error": message}
            if written:
                doc["written"] = list(written)
            sys.stdout.write(json.dumps(doc) + "\n")
        self.err.print(f"[red]error:[/red] {protect(message, own=False)}", soft_wrap=True)  # all of it data

    def table(self, table: Table) -> None:
        if self.human:
            self.console.print(table)

    def result(self, data: dict[str, Any]) -> None:
        self.emitted = True
        if self.mode == "json":
            sys.stdout.write(json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")
