"""Progress bars for the CLI (stderr, terminals only) whose rates come from work done.

rich's own speed column divides by the time since its first sample, so a first run that
compiled kernels for 15 s after a 1 KB norm showed "311 bytes/s, ETA 5:36:48". Here a
rate is measured from an origin set once work is flowing: the first refresh at which some
work is done and no one-time step (`bitconv.one_time`) is running, re-set after each such
step. Until then the bar says what it waits for instead of a rate.
"""

from __future__ import annotations

import time
from typing import Any

from rich.progress import BarColumn, DownloadColumn, Progress, ProgressColumn, Task, TextColumn
from rich.text import Text

from . import one_time

MIN_SPAN = 0.5  # seconds of measured work before a rate is shown


def _now() -> float:
    return time.monotonic()  # the clock one_time.quiet_since() uses


class _Origins:
    """Per task: (time, completed) where its rate measurement starts."""

    def __init__(self) -> None:
        self._at: dict[Any, tuple[float, float]] = {}

    def rate(self, task: Task) -> float | None:
        now = _now()
        if one_time.busy():
            return None
        origin = self._at.get(task.id)
        if origin is None or origin[0] < one_time.quiet_since():
            if task.completed <= 0 and origin is None:
                return None
            self._at[task.id] = origin = (now, task.completed)
        t0, c0 = origin
        if now - t0 < MIN_SPAN or task.completed <= c0:
            return None
        return (task.completed - c0) / (now - t0)


class RateColumn(ProgressColumn):
    """Work per second since work started flowing (see module docstring); `unit` "B" prints
    bytes in decimal units, anything else as "N unit/s"."""

    def __init__(self, origins: _Origins, unit: str = "B") -> None:
        super().__init__()
        self.origins, self.unit = origins, unit

    def render(self, task: Task) -> Text:
        if one_time.busy():
            return Text("compiling (once)", style="progress.data.speed")
        rate = self.origins.rate(task)
        if rate is None:
            return Text("", style="progress.data.speed")
        if self.unit == "B":
            for unit in ("B", "kB", "MB", "GB"):
                if rate < 1000 or unit == "GB":
                    return Text(f"{rate:.1f} {unit}/s", style="progress.data.speed")
                rate /= 1000
        return Text(f"{rate:,.0f} {self.unit}/s", style="progress.data.speed")


class EtaColumn(ProgressColumn):
    """Time left at the rate `RateColumn` shows; blank while no rate is measured yet."""

    def __init__(self, origins: _Origins) -> None:
        super().__init__()
        self.origins = origins

    def render(self, task: Task) -> Text:
        rate = self.origins.rate(task)
        if rate is None or task.total is None:
            return Text("", style="progress.remaining")
        left = max(0.0, (task.total - task.completed) / rate)
        minutes, seconds = divmod(int(round(left)), 60)
        hours, minutes = divmod(minutes, 60)
        return Text(f"{hours}:{minutes:02d}:{seconds:02d} left", style="progress.remaining")


def bytes_progress(console) -> Progress:
    """convert: bytes of source tensors done, of all."""
    origins = _Origins()
    return Progress(TextColumn("{task.description:<28}", markup=False), BarColumn(), DownloadColumn(), RateColumn(origins),
                    EtaColumn(origins), console=console, transient=True)


def count_progress(console, unit: str) -> Progress:
    """verify: a bar of work (in UNIT-equivalents, of all) with its rate in UNIT/s."""
    origins = _Origins()
    return Progress(TextColumn("{task.description:<20}", markup=False), BarColumn(), RateColumn(origins, unit),
                    EtaColumn(origins), console=console, transient=True)
