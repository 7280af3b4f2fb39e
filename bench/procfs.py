"""CPU time and memory of a server's process tree, read from /proc.

Theory of operation. A server is the process the bench started plus every
descendant (nginx's master and its worker; hypercorn's supervisor and worker;
nomapd is one process). The tree is found by walking the parent pid of every
/proc/PID/stat.

- CPU: `utime + stime` (fields 14 and 15 of /proc/PID/stat, in clock ticks,
  all threads of the process included) summed over the tree, read before and
  after a run; the difference is the server's CPU seconds for that run.
  Threads (nomapd's KTLS workers) count; a descendant that exited during the
  run would be lost, and none of the servers forks per request.
- Peak RSS: before a run, "5" is written to /proc/PID/clear_refs of every
  process of the tree, which resets `VmHWM` (the resident high-water mark) to
  the current RSS (Linux >= 4.0, allowed for our own children); after the run
  the tree's `VmHWM` values are summed. That sum bounds the tree's true peak
  from above (the processes need not peak at once); for one-process servers
  it is exact. If a reset is refused, `RssSampler`'s maximum of `VmRSS`,
  sampled every 20 ms during the run, is used instead, and the result says so.
"""

from __future__ import annotations

import os
import pathlib
import threading
import types

PROC = pathlib.Path("/proc")
CLK_TCK = os.sysconf("SC_CLK_TCK")


def _stat_fields(pid: int) -> list[str] | None:
    try:
        text = (PROC / str(pid) / "stat").read_text()
    except OSError:
        return None
    # The command name (field 2) is in parentheses and may contain spaces or ")".
    return text.rsplit(")", 1)[1].split()


def tree(root: int) -> list[int]:
    """`root` and all its descendants that are alive now."""
    children: dict[int, list[int]] = {}
    for entry in PROC.iterdir():
        if not entry.name.isdigit():
            continue
        fields = _stat_fields(int(entry.name))
        if fields is None:
            continue
        children.setdefault(int(fields[1]), []).append(int(entry.name))
    out: list[int] = []
    todo = [root]
    while todo:
        pid = todo.pop()
        if (PROC / str(pid)).exists():
            out.append(pid)
        todo.extend(children.get(pid, []))
    return out


def cpu_seconds(pids: list[int]) -> float:
    """User plus system CPU seconds of these processes (all threads)."""
    ticks = 0
    for pid in pids:
        fields = _stat_fields(pid)
        if fields is not None:
            ticks += int(fields[11]) + int(fields[12])
    return ticks / CLK_TCK


def _status_kib(pid: int, key: str) -> int:
    try:
        text = (PROC / str(pid) / "status").read_text()
    except OSError:
        return 0
    for line in text.splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    return 0


def rss_bytes(pids: list[int]) -> int:
    return sum(_status_kib(p, "VmRSS") for p in pids) * 1024


def hwm_bytes(pids: list[int]) -> int:
    return sum(_status_kib(p, "VmHWM") for p in pids) * 1024


def reset_hwm(pids: list[int]) -> bool:
    """Reset VmHWM to the current RSS in every process; False if any refused."""
    ok = True
    for pid in pids:
        try:
            (PROC / str(pid) / "clear_refs").write_text("5")
        except OSError:
            ok = False
    return ok


class RssSampler:
    """Samples the tree's VmRSS every `interval` seconds in a thread while in a `with` block."""

    def __init__(self, root: int, interval: float = 0.02) -> None:
        self.root = root
        self.interval = interval
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        pids = tree(self.root)
        n = 0
        while not self._stop.is_set():
            n += 1
            if n % 25 == 0:  # children may come and go; re-walk twice a second
                pids = tree(self.root)
            self.peak = max(self.peak, rss_bytes(pids))
            self._stop.wait(self.interval)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: types.TracebackType | None,
    ) -> None:
        self._stop.set()
        self._thread.join()
