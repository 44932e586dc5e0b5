"""One output sink for the CLI: human (rich), json (one document on stdout) or quiet.

Commands hand results to the sink instead of printing, so `--json` output is exactly one
JSON document on stdout and progress/diagnostics go to stderr.
"""

from __future__ import annotations

import json
import sys
from typing import Any

from rich.console import Console
from rich.table import Table


class Output:
    def __init__(self, mode: str = "human") -> None:
        self.mode = mode  # "human" | "json" | "quiet"
        self.console = Console(stderr=False, highlight=False)
        self.err = Console(stderr=True, highlight=False)

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

    def warn(self, message: str) -> None:
        if self.mode != "quiet":
            self.err.print(f"[yellow]warning:[/yellow] {message}")

    def error(self, message: str, written: list[str] | None = None) -> None:
        """`written`: files the failed run did put in place (a release whose upload failed);
        --json lists them so CI knows what is on disk."""
        if self.mode == "json":
            doc: dict[str, Any] = {"ok": False, "error": message}
            if written:
                doc["written"] = list(written)
            sys.stdout.write(json.dumps(doc) + "\n")
        self.err.print(f"[red]error:[/red] {message}", soft_wrap=True)

    def table(self, table: Table) -> None:
        if self.human:
            self.console.print(table)

    def result(self, data: dict[str, Any]) -> None:
        if self.mode == "json":
            sys.stdout.write(json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")
