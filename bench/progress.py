"""The progress line: what is running, how far along, and how long is left.

Theory of operation. The estimate of what is left is the sum, over the steps
not yet run, of their duration plus the mean overhead measured so far per step
(tool start, counter reads, the slack of the tools' own timers), plus a
start-up time for each server group not yet started (the mean measured so
far). On a terminal the line is redrawn in place (carriage return); otherwise
(a log, a test) each step prints one line.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO

DEFAULT_OVERHEAD = 0.6  # seconds per step before any was measured
DEFAULT_START = 3.0  # seconds per server group before any was measured


def clock(seconds: float) -> str:
    s = max(0, round(seconds))
    return f"{s // 60}:{s % 60:02d}"


class Progress:
    def __init__(self, total_steps: int, stream: TextIO | None = None) -> None:
        self.total = total_steps
        self.done = 0
        self.stream = stream if stream is not None else sys.stderr
        self.tty = self.stream.isatty()
        self.started = time.monotonic()
        self.overheads: list[float] = []
        self.starts: list[float] = []

    def overhead(self) -> float:
        return sum(self.overheads) / len(self.overheads) if self.overheads else DEFAULT_OVERHEAD

    def start_time(self) -> float:
        return sum(self.starts) / len(self.starts) if self.starts else DEFAULT_START

    def left(self, durations_left: list[float], groups_left: int) -> float:
        return (
            sum(durations_left)
            + self.overhead() * len(durations_left)
            + (self.start_time() * groups_left)
        )

    def show(self, what: str, durations_left: list[float], groups_left: int) -> None:
        elapsed = time.monotonic() - self.started
        left = self.left(durations_left, groups_left)
        line = (
            f"[{self.done + 1:>3}/{self.total}] {what}  "
            f"elapsed {clock(elapsed)}, about {clock(left)} left"
        )
        if self.tty:
            self.stream.write("\r\x1b[K" + line)
        else:
            self.stream.write(line + "\n")
        self.stream.flush()

    def step_done(self, duration: float, wall: float) -> None:
        self.done += 1
        self.overheads.append(max(0.0, wall - duration))

    def group_started(self, seconds: float) -> None:
        self.starts.append(seconds)

    def message(self, text: str) -> None:
        if self.tty:
            self.stream.write("\r\x1b[K")
        self.stream.write(text + "\n")
        self.stream.flush()

    def finish(self) -> None:
        if self.tty:
            self.stream.write("\r\x1b[K")
            self.stream.flush()
