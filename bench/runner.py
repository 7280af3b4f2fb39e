"""Running the plan: servers up per group, each step measured, servers down.

Theory of operation. For each workload group (`bench.plan.groups`) the servers
of every row the group's steps need are started together and waited for; a row
that does not start has all its steps of the group recorded as failed with its
log's tail. Then each step, in plan order (rows alternated), is measured:

1. nomapd: its counters are read (`/stats`).
2. The server tree's VmHWM is reset (`bench.procfs.reset_hwm`; if refused,
   VmRSS is sampled during the run instead) and its CPU seconds are read.
3. The load generator runs, with a time limit (3 x the time it should take,
   plus 30 s): a hung tool is killed and the step recorded as failed.
4. CPU seconds and peak RSS are read again; the output is parsed
   (`bench.wrk`, `bench.h2load`).
5. nomapd: once its connections are closed, its counters are read again and
   the deltas per GB recorded.

A capture row (`bench.capture`) has its capture started before step 2 and
waited for until its descriptor is attached (a capture that does not attach
fails the step); its CPU seconds are read with the server's before the load,
and again after step 5 (once the server is idle, so that it has drained what
was captured); the descriptor's row of `/stats` is kept; then it is stopped
with SIGINT and its closing figures parsed.

h2load runs a request count (see `bench.h2load`): the byte rate last
measured for that workload and row (by wrk, just before, in plan order) times
the duration, over the response size.

Everything else in the machine keeps running meanwhile (the idle servers of
the group, and whatever else the machine does): the report says so.
"""

from __future__ import annotations

import contextlib
import subprocess
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from bench import capture, counters, h2load, procfs, wrk
from bench.load import LoadResult, ParseError
from bench.plan import Step, groups
from bench.progress import Progress
from bench.results import RunRecord
from bench.rows import NOMAPD, Row
from bench.servers import REPO, Server, Setting, StartError, start_all, stop_all
from bench.tlsprobe import probe
from bench.workloads import FILES

TOOL_LIMIT = 30.0  # seconds a tool may overrun duration x 3
RESPONSE_HEAD = 250  # bytes of status line and headers, about, to size h2load's request count


def _stats(server: Server) -> dict[str, Any] | None:
    """nomapd's counters, or None if the admin listener does not answer."""
    try:
        return server.stats()
    except (OSError, ValueError):
        return None


@dataclass
class Runner:
    setting: Setting
    tools: dict[str, str | None]
    threads: int
    progress: Progress
    server_errors: dict[str, str] = field(default_factory=dict)
    tls: dict[str, dict[str, str | bool]] = field(default_factory=dict)
    rates: dict[tuple[str, str], float] = field(default_factory=dict)  # bytes/s
    phases: list[dict[str, float | str]] = field(default_factory=list)  # start/stop seconds
    # Each nomapd row's core as its /stats says: "compiled (mypyc X.Y)" or "pure".
    cores: dict[str, str] = field(default_factory=dict)

    def run(self, steps: list[Step]) -> list[RunRecord]:
        records: list[RunRecord] = []
        todo = groups(steps)
        for gi, (group, group_steps) in enumerate(todo):
            rows: list[Row] = []
            for s in group_steps:
                if s.row not in rows:
                    rows.append(s.row)
            self.progress.show(
                f"{group}: starting {len(rows)} servers",
                [s.duration for s in steps[len(records) :]],
                len(todo) - gi,
            )
            t0 = time.monotonic()
            try:
                servers, errors = start_all(rows, self.setting)
            except (StartError, OSError) as e:
                servers, errors = {}, {r.name: str(e) for r in rows}
            t1_start = time.monotonic() - t0
            self.progress.group_started(t1_start)
            for name, err in errors.items():
                self.server_errors.setdefault(name, err)
                self.progress.message(f"bench: {name} did not start: {err.splitlines()[0]}")
            for name, server in servers.items():
                if server.row.tls and name not in self.tls:
                    self.tls[name] = probe(server.port)
            try:
                for s in group_steps:
                    self.progress.show(
                        f"{s.label} ({s.duration:g}s)",
                        [x.duration for x in steps[len(records) :]],
                        len(todo) - gi - 1,
                    )
                    t1 = time.monotonic()
                    rec = self.step(s, servers.get(s.row.name), errors.get(s.row.name))
                    rec.wall_s = time.monotonic() - t1
                    self.progress.step_done(s.duration, rec.wall_s)
                    records.append(rec)
            finally:
                t2 = time.monotonic()
                stop_all(list(servers.values()))
                self.phases.append(
                    {"group": group, "start_s": t1_start, "stop_s": time.monotonic() - t2}
                )
        self.progress.finish()
        return records

    def step(self, s: Step, server: Server | None, start_error: str | None) -> RunRecord:
        rec = RunRecord(s.workload.name, s.row.name, s.tool, s.rep, s.duration)
        binary = self.tools.get(s.tool)
        if binary is None:
            rec.error = f"{s.tool} is not installed"
            return rec
        if server is None:
            rec.error = f"{s.row.name} did not start" + (
                f": {start_error.splitlines()[0]}" if start_error else ""
            )
            return rec
        if not server.alive():
            rec.error = f"{s.row.name} died: {server.log_tail(3)}"
            return rec
        rec.command, expected = self.command(s, server, binary)
        cap: capture.CaptureProcess | None = None
        if s.row.capture is not None:
            log = self.setting.work / f"{s.row.name}-{s.workload.name}-{s.rep}.capture.log"
            cap = capture.start(s.row.capture, server.port, server.env, REPO, log)
            try:
                cap.wait_attached(lambda: _stats(server))
            except capture.CaptureError as e:
                rec.error = str(e)
                return rec
        try:
            self.measure(s, server, rec, expected, cap)
        finally:
            if cap is not None:
                cap.kill()
        return rec

    def measure(
        self,
        s: Step,
        server: Server,
        rec: RunRecord,
        expected: float,
        cap: capture.CaptureProcess | None,
    ) -> None:
        """Steps 2 to 5 of the module head for one run, into `rec`."""
        pids = server.pids()
        before = _stats(server) if s.row.server == NOMAPD else None
        if before is not None:
            self.cores[s.row.name] = str(before.get("server.core", "unknown"))
        hwm = procfs.reset_hwm(pids)
        cpu0 = procfs.cpu_seconds(pids)
        cap_cpu0 = procfs.cpu_seconds([cap.pid]) if cap is not None else 0.0
        sampling = contextlib.nullcontext(None) if hwm else procfs.RssSampler(server.pid)
        with sampling as sampler:
            try:
                res = subprocess.run(
                    rec.command,
                    capture_output=True,
                    text=True,
                    timeout=max(s.duration, expected) * 3 + TOOL_LIMIT,
                    check=False,
                    cwd=self.setting.work,
                )
                output = res.stdout + res.stderr
            except subprocess.TimeoutExpired as e:
                rec.error = f"{s.tool} did not finish within {e.timeout:.0f}s (killed)"
                output = ""
        rec.cpu_s = procfs.cpu_seconds(pids) - cpu0
        rec.peak_rss = sampler.peak if sampler is not None else procfs.hwm_bytes(pids)
        rec.rss_method = "VmHWM after reset" if hwm else "VmRSS sampled every 20 ms"
        if rec.error:
            return
        try:
            load: LoadResult = (wrk.parse if s.tool == "wrk" else h2load.parse)(output)
        except ParseError as e:
            rec.error = str(e)
            return
        rec.load = load
        if load.bytes and load.seconds:
            self.rates[(s.workload.name, s.row.name)] = load.bytes / load.seconds
        after: Mapping[str, Any] | None = None
        if before is not None and server.alive():
            after = counters.wait_idle(lambda: _stats(server) or {})
            rec.counters = counters.per_gb(before, after, load.bytes)
        if cap is not None and s.row.capture is not None:
            run = capture.CaptureRun(s.row.capture.mode, s.row.capture.snaplen)
            run.cpu_s = procfs.cpu_seconds([cap.pid]) - cap_cpu0
            descriptor = capture.descriptor_of(after, cap.pid) if after else None
            counts, note = cap.stop()
            run.settle(counts, descriptor)
            if not run.source:
                note = f"{note}; " if note else ""
                note += f"no capture figures: {cap.stderr().strip()[-200:] or 'no output'}"
            run.error = note
            rec.capture = run
        if not server.alive():
            rec.error = f"{s.row.name} died during the run: {server.log_tail(3)}"

    def command(self, s: Step, server: Server, binary: str) -> tuple[list[str], float]:
        """The tool's argv and how long it should run (h2load: its requests at the known rate)."""
        w = s.workload
        base = server.url("")
        if s.tool == "wrk":
            argv = wrk.command(
                base,
                w.paths,
                w.connections,
                s.duration,
                self.threads,
                w.keepalive,
                self.setting.work,
                binary,
            )
            return argv, s.duration
        size = sum(FILES[p.lstrip("/")] for p in w.paths) / len(w.paths) + RESPONSE_HEAD
        rate = self.rates.get((w.name, s.row.name))
        requests = h2load.requests_for(rate, s.duration, size, w.connections)
        argv = h2load.command(
            base, w.paths, w.connections, requests, self.threads, w.keepalive, binary
        )
        return argv, requests * size / (rate or h2load.FALLBACK_BYTES_PER_S)
