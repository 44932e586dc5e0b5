"""Waiting in tests without wall-clock limits that a loaded machine breaks.

The suite must pass on 2 cores at load 16, where a child process gets an eighth of a core
and takes eight times as long as alone. A fixed `timeout=60` then fails a correct program.
These helpers wait for an event (a file appearing, a process exiting) and give up only
after a budget of *machine time*: each second waited counts as `cores / load` seconds when
the machine is busier than its cores (re-read every poll), so a budget stretches with the
load it meets and still ends a truly hung child.
"""

from __future__ import annotations

import os
import subprocess
import time
from typing import Callable

POLL = 0.05


def machine_share() -> float:
    """The share of one unloaded second a waiting child gets now: cores / load, at most 1."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    try:
        load = os.getloadavg()[0]
    except OSError:  # no load average on this platform: wall time
        return 1.0
    return min(1.0, cores / max(load, 1e-9))


class Budget:
    """A timeout in machine seconds (see the module docstring)."""

    def __init__(self, seconds: float) -> None:
        self.left = float(seconds)
        self._last = time.monotonic()

    def tick(self) -> bool:
        """Charge the time since the last tick; False once the budget is spent."""
        now = time.monotonic()
        self.left -= (now - self._last) * machine_share()
        self._last = now
        return self.left > 0


def wait_for(event: Callable[[], bool], seconds: float, proc: subprocess.Popen | None = None) -> bool:
    """Wait until `event()` is true (or PROC exited); False when the budget ran out first."""
    budget = Budget(seconds)
    while not event():
        if proc is not None and proc.poll() is not None:
            return event()
        if not budget.tick():
            return False
        time.sleep(POLL)
    return True


def communicate(proc: subprocess.Popen, seconds: float, input: str | bytes | None = None):
    """`proc.communicate()` with a machine-time budget; kills PROC and raises
    `subprocess.TimeoutExpired` when it is spent (retrying communicate loses no output)."""
    budget = Budget(seconds)
    while True:
        try:
            return proc.communicate(input=input, timeout=1.0)
        except subprocess.TimeoutExpired:
            input = None  # already sent
            if not budget.tick():
                proc.kill()
                out, err = proc.communicate()
                raise subprocess.TimeoutExpired(proc.args, seconds, output=out, stderr=err) from None


def run(cmd, seconds: float, **kwargs) -> subprocess.CompletedProcess:
    """`subprocess.run(cmd, timeout=...)` with a machine-time budget instead of a wall clock."""
    text_input = kwargs.pop("input", None)
    capture = kwargs.pop("capture_output", False)
    if capture:
        kwargs.setdefault("stdout", subprocess.PIPE)
        kwargs.setdefault("stderr", subprocess.PIPE)
    if text_input is not None:
        kwargs.setdefault("stdin", subprocess.PIPE)
    with subprocess.Popen(cmd, **kwargs) as proc:
        out, err = communicate(proc, seconds, text_input)
        return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)
