"""A packet capture running beside the server during a run: `nomapd capture`, measured.

Theory of operation. A capture row (`bench.rows`, `Row.capture`) is nomapd's
default mode with a `nomapd capture` process attached to its nm0 for the
length of each run, to measure what capturing costs the server and what it
costs the capturing process, in each of BPF's buffer modes:

- `--mode buffer`: kernel-owned buffers; every full buffer is copied out to
  the process by a read(2) (one round trip and one copy per buffer);
- `--mode zbuf`: the process loans two buffers of its own shared memory;
  the kernel writes records straight into them and hands a full one over by
  bumping a generation number (no system call while buffers keep coming).

The capture writes to /dev/null (`-w /dev/null`), so the figure is the
capture path, not a disk, and runs with the default buffer size (`-B` only if
a row sets one). The runner (`bench.runner`) starts it after the server is up
and before the load (`start`: it is ready when its descriptor appears among
the server's `/stats` `bpf.descriptors` rows, with its pid), reads its CPU
seconds from /proc around the load, reads its descriptor's received and
dropped counts from `/stats` once the server is idle, then stops it with
SIGINT as a person would (`CaptureProcess.stop`) and parses what it prints
on stderr, tcpdump's three lines:

    N packets captured
    N packets received by filter
    N packets dropped by kernel

The stderr figures are the record's; the `/stats` row (bd_rcount,
bd_dcount) stands in when stderr has none (the process died, or did not exit
within STOP_TIMEOUT of the SIGINT and was killed: the record says so).
Drops are a fraction of the packets the descriptor received.

Capture rows run on the workloads of `WORKLOADS` only (1 MiB at 8
connections, and at 64 for drops) and with wrk only (`runs_on`).
"""

from __future__ import annotations

import contextlib
import os
import pathlib
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

ZBUF = "zbuf"
BUFFER = "buffer"
MODES = (ZBUF, BUFFER)
SNAP_HEADERS = 96  # tcpdump's old default: Ethernet, IP and TCP headers and a little more
SNAP_FULL = 262144  # libpcap's MAXIMUM_SNAPLEN: whole frames (a TSO burst is up to 64 KiB)
WORKLOADS = ("1m", "sweep-64")  # 1 MiB at 8 connections; at 64 for the drops
TOOLS = ("wrk",)
ATTACH_TIMEOUT = 20.0  # seconds for the capture to start and attach (Python start-up, shared CPU)
STOP_TIMEOUT = 10.0

# A terminal may echo "^C" before the first line.
_LINE = re.compile(
    r"(?<!\d)(\d+) packets? (captured|received by filter|dropped by kernel)\s*$", re.M
)


class CaptureError(Exception):
    """The capture did not start or attach; the message says why, in one line."""


@dataclass(frozen=True)
class Capture:
    """What a capture row runs beside the server."""

    mode: str  # ZBUF or BUFFER
    snaplen: int
    bufsize_kib: int | None = None  # -B; None: the capture's default

    @property
    def snap_label(self) -> str:
        return "full" if self.snaplen == SNAP_FULL else str(self.snaplen)


def runs_on(workload: str, tool: str) -> bool:
    """Whether a capture row has a run for this workload and tool."""
    return workload in WORKLOADS and tool in TOOLS


@dataclass
class CaptureCounts:
    """tcpdump's closing figures (None: not printed)."""

    captured: int | None = None
    received: int | None = None
    dropped: int | None = None


def parse_stderr(text: str) -> CaptureCounts:
    """The three closing lines of a capture's stderr, wherever they are in it."""
    out = CaptureCounts()
    for m in _LINE.finditer(text):
        n, what = int(m.group(1)), m.group(2)
        if what == "captured":
            out.captured = n
        elif what == "received by filter":
            out.received = n
        else:
            out.dropped = n
    return out


def descriptor_of(stats: Mapping[str, Any], pid: int) -> dict[str, Any] | None:
    """The `/stats` `bpf.descriptors` row (netstat -B's) of the process `pid`, if attached."""
    for row in stats.get("bpf.descriptors", []) or []:
        if isinstance(row, dict) and row.get("bd_pid") == pid:
            return row
    return None


@dataclass
class CaptureRun:
    """What one capture measured over one run."""

    mode: str
    snaplen: int
    cpu_s: float | None = None  # the capture process's CPU seconds over the load
    captured: int | None = None
    received: int | None = None
    dropped: int | None = None
    source: str = ""  # "stderr" or "/stats" (bpf.descriptors)
    error: str = ""  # what went wrong with the capture itself (the run's figures stand)

    @property
    def drop_fraction(self) -> float | None:
        if self.received is None or self.dropped is None or not self.received:
            return None
        return self.dropped / self.received

    def to_json(self) -> dict[str, Any]:
        return {
            "mode": self.mode,
            "snaplen": self.snaplen,
            "cpu_s": self.cpu_s,
            "captured": self.captured,
            "received": self.received,
            "dropped": self.dropped,
            "drop_fraction": self.drop_fraction,
            "source": self.source,
            "error": self.error,
        }

    def settle(self, counts: CaptureCounts, descriptor: Mapping[str, Any] | None) -> None:
        """Take the stderr figures, else the descriptor's (bd_rcount, bd_dcount)."""
        if counts.received is not None and counts.dropped is not None:
            self.captured, self.received, self.dropped = (
                counts.captured,
                counts.received,
                counts.dropped,
            )
            self.source = "stderr"
        elif descriptor is not None:
            self.received = int(descriptor["bd_rcount"])
            self.dropped = int(descriptor["bd_dcount"])
            self.captured = self.received - self.dropped
            self.source = "/stats"


def command(c: Capture, port: int, python: str = sys.executable) -> list[str]:
    """The argv of a capture of the instance on `port`, written to /dev/null."""
    argv = [python, "-m", "server", "capture", "--server", str(port), "-i", "nm0"]
    argv += ["-w", os.devnull, "-s", str(c.snaplen), "--mode", c.mode, "-q"]
    if c.bufsize_kib is not None:
        argv += ["-B", str(c.bufsize_kib)]
    return argv


class CaptureProcess:
    """A running `nomapd capture` (its stderr in a file, read at the stop)."""

    def __init__(self, proc: subprocess.Popen[bytes], log: pathlib.Path) -> None:
        self.proc = proc
        self.log = log

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stderr(self) -> str:
        try:
            return self.log.read_text(errors="replace")
        except OSError:
            return ""

    def _tail(self) -> str:
        lines = self.stderr().strip().splitlines()
        return lines[-1] if lines else "no output"

    def wait_attached(
        self, stats: Callable[[], Mapping[str, Any] | None], timeout: float = ATTACH_TIMEOUT
    ) -> None:
        """Until the server lists this process's descriptor; CaptureError if it exits first."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise CaptureError(f"capture exited with {self.proc.returncode}: {self._tail()}")
            s = stats()
            if s is not None and descriptor_of(s, self.pid) is not None:
                return
            time.sleep(0.05)
        self.kill()
        raise CaptureError(f"capture not attached after {timeout:.0f}s: {self._tail()}")

    def stop(self) -> tuple[CaptureCounts, str]:
        """SIGINT (Ctrl-C), wait, and its closing figures; SIGKILL if it does not exit
        within STOP_TIMEOUT, said in the second item (else "")."""
        note = ""
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.kill()
                note = f"did not exit within {STOP_TIMEOUT:.0f}s of SIGINT (killed)"
        return parse_stderr(self.stderr()), note

    def kill(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.kill()
            self.proc.wait(STOP_TIMEOUT)


def start(
    c: Capture, port: int, env: Mapping[str, str], cwd: pathlib.Path, log: pathlib.Path
) -> CaptureProcess:
    """Start a capture of the instance on `port`; `wait_attached` must follow."""
    with log.open("wb") as err:
        proc = subprocess.Popen(
            command(c, port),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=err,
            cwd=cwd,
            env=dict(env),
            start_new_session=True,  # a Ctrl-C at the bench's terminal is the bench's
        )
    return CaptureProcess(proc, log)
