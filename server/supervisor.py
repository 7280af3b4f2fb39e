"""The supervisor of `--workers N`: N worker processes, each with its own modeled kernel.

Theory of operation. FreeBSD and nginx scale a static server over cores
with processes, not threads: every nginx worker runs its own event loop and
the kernel spreads connections over their listening sockets
(`listen ... reuseport`). nomapd does the same, and since each worker is a
whole nomapd, each has its own `mbuf.Kernel` -- its own physical memory
(`--phys-mem` each), page cache, sf_bufs and counters, like N machines
behind one address.

* Sockets (server/listen.py): the supervisor creates each worker's listening
  sockets itself, SO_REUSEPORT on one port (with `--port 0` the first bind
  picks it), and keeps its copies, so a restarted worker finds its accept
  queue where the dead one left it.
* Starting a worker: the supervisor re-executes its own command line,
  `python -m server serve ARGS... --worker-index I --worker-fds C,L...`,
  passing the sockets and one end of a socketpair (the control channel,
  server/worker.py) as inherited descriptors. Re-exec rather than
  `multiprocessing`: the worker is exactly the program the user ran, parsed
  and validated by the same code, with nothing pickled, no resource-tracker
  or semaphore helper processes, and no fork of a process that has threads
  (trio's) -- and it shows in `ps` with its arguments. Workers get their own
  process group, so a Ctrl-C at a terminal reaches the supervisor only, which
  forwards it once.
* Readiness: a worker is up when it says so on its channel; the start-up
  lines (the ports tests read) are printed once, by the supervisor, when all
  are. A worker that exits before that (an unusable certificate) has printed
  its own one-line reason; the supervisor stops the others and exits with
  its status.
* Crashes are never silent: a worker that exits while nothing asked it to is
  logged at error level with its status or signal, and started again after
  a short backoff (0.1 s doubling to 5 s). More than MAX_RESTARTS deaths of
  one worker within RESTART_WINDOW seconds is a crash loop: the supervisor
  logs it, stops the others and exits 1. A restarted worker's counters start
  at zero (it is a new kernel); `worker.restarts` counts its restarts.
* Signals: SIGTERM and SIGINT are forwarded to every worker (graceful
  shutdown, server/shutdown.py; a second one forwards again, which cancels
  what is still in flight); the supervisor closes its copies of the sockets
  and the admin listener, waits for the workers (SIGKILL after
  `--shutdown-timeout` + KILL_GRACE seconds) and exits 0 if they all did.
  SIGHUP is forwarded (each worker reopens its access log).
* Admin (/stats, /connections) is served here: each request asks every
  worker over its channel and answers, for /stats, the sum of the flat
  counters (so `nomapd stat` and the tests read it as before) with
  "server.workers": N, and each worker's own under "workers". Summing rules
  (`sum_stats`): counters and gauges add up (in-use counts, totals, the
  physical pages of all kernels); peaks (`*_peak`, `sfbuf.peak`) take the
  largest worker's, since peaks of different moments do not add; settings
  (`kern.*`) and strings are the first worker's; the tables of rows
  (`bpf.descriptors`, netstat -B's; `netmap.ports`, the bound rings) join
  every worker's rows. /connections lists every
  worker's connections, each with "worker": I.
"""

from __future__ import annotations

import collections
import errno
import logging
import os
import pathlib
import signal
import socket
import sys
from collections.abc import AsyncIterator
from typing import Any

import trio

from server import errorlog
from server.admin import serve_admin
from server.config import ServerConfig
from server.control import Result, combine_sysctl
from server.devices.ctldev import ctl_device
from server.devices.devfs import DevFs, DevStat, open_instance, remove_instance
from server.http.responses import DateCache
from server.ifconfig import parse_words
from server.listen import reuseport_sockets
from server.startup import admin_token, announce, certificate, open_admin
from server.worker import LineChannel

log = logging.getLogger("nomapd")

READY_TIMEOUT = 60.0  # seconds for a worker to start listening
QUERY_TIMEOUT = 5.0  # seconds for a worker to answer the supervisor
MAX_RESTARTS = 5  # deaths of one worker within RESTART_WINDOW: a crash loop
RESTART_WINDOW = 60.0
BACKOFF_MIN, BACKOFF_MAX = 0.1, 5.0
KILL_GRACE = 5.0  # beyond --shutdown-timeout before stopped workers are killed
STOP_STATUSES = (0, -signal.SIGTERM, -signal.SIGINT, 130)  # a worker that stopped as asked


# /stats keys whose value is a table of rows, one per descriptor or bound ring.
ROW_TABLES = ("bpf.descriptors", "netmap.ports")


def _is_peak(key: str) -> bool:
    return key.endswith("_peak") or key.endswith(".peak")


def sum_stats(snaps: list[dict[str, Any]]) -> dict[str, Any]:
    """The workers' flat counters combined (rules in the module docstring)."""
    out: dict[str, Any] = {}
    for snap in snaps:
        for key, value in snap.items():
            if key not in out:
                out[key] = value
                continue
            old = out[key]
            if key in ROW_TABLES:  # rows (netstat -B's, netmap's rings): every worker's
                out[key] = [*old, *value]
                continue
            if key.startswith("kern.") or not _is_number(value) or not _is_number(old):
                continue
            out[key] = max(old, value) if _is_peak(key) else old + value
    return out


def _is_number(v: object) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def describe_exit(status: int) -> str:
    if status < 0:
        try:
            name = signal.Signals(-status).name
        except ValueError:
            name = f"signal {-status}"
        return f"was killed by {name}"
    return f"exited with status {status}"


def applied_after(
    applied: list[dict[str, object]], msg: dict[str, object]
) -> list[dict[str, object]]:
    """The changes to replay after `msg` was taken, bounded: the last value of each
    sysctl, then for the interface the last SIOCSIFCAP ("ifcap", the whole enabled
    set: it replaces every interface change before it) and one ifconfig carrying
    the words since then that still decide the final capabilities (a word whose
    bits later words all set again is dropped)."""
    if msg.get("set") == "sysctl":
        return [m for m in applied if m.get("name") != msg.get("name")] + [msg]
    rest = [m for m in applied if m.get("set") not in ("ifconfig", "ifcap")]
    if msg.get("set") == "ifcap":
        return [*rest, msg]
    if msg.get("set") != "ifconfig":
        return [*applied, msg]
    base = [m for m in applied if m.get("set") == "ifcap"]  # at most one, before the words
    words: list[str] = []
    ifname = ""
    for m in [*applied, msg]:
        if m.get("set") == "ifconfig" and isinstance(ws := m.get("words"), list) and ws:
            words += [str(w) for w in ws[1:]]
            ifname = str(ws[0])
    kept: list[str] = []
    covered = 0
    for word, (bits, _on) in reversed(list(zip(words, parse_words(words), strict=True))):
        if bits & ~covered:
            kept.insert(0, word)
            covered |= bits
    return [*rest, *base, {"set": "ifconfig", "words": [ifname, *kept]}]


class WorkerSlot:
    """One worker position: its sockets, and the process currently filling it."""

    def __init__(self, index: int, socks: list[socket.socket]) -> None:
        self.index = index
        self.socks = socks
        self.proc: trio.Process | None = None
        self.chan: LineChannel | None = None
        self.ready = False
        self.restarts = 0
        self.lock = trio.Lock()
        self.next_id = 0
        self.deaths: collections.deque[float] = collections.deque()

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None and self.ready else None

    async def query(self, what: str) -> Any:
        """Ask the worker for "stats", "connections", "sysctl" or "ifconfig"; None if
        it cannot answer now."""
        return await self.request({"get": what})

    async def request(self, msg: dict[str, object], *, starting: bool = False) -> Any:
        """Send one request (server/worker.py) and return its result; None if the
        worker cannot answer now (`starting`: it said it is ready, nobody else may
        ask it yet)."""
        if not (self.ready or starting) or self.chan is None:
            return None
        what = msg.get("get") or msg.get("set")
        chan = self.chan
        async with self.lock:
            self.next_id += 1
            ident = self.next_id
            with trio.move_on_after(QUERY_TIMEOUT):
                try:
                    await chan.send({**msg, "id": ident})
                    while True:
                        reply = await chan.receive()
                        if reply is None:
                            return None
                        if isinstance(reply, dict) and reply.get("id") == ident:
                            return reply.get("result")
                        # a late answer to a query that timed out: skip it
                except (trio.BrokenResourceError, trio.ClosedResourceError, OSError, ValueError):
                    return None
            log.warning("worker %d did not answer %r within %g s", self.index, what, QUERY_TIMEOUT)
            return None


class Supervisor:
    def __init__(self, cfg: ServerConfig) -> None:
        self.cfg = cfg
        self.date = DateCache()
        self.fingerprint = ""
        self.slots: list[WorkerSlot] = []
        self.instance: pathlib.Path | None = None  # the device directory (workers add w<N>)
        self.exit_status = 0
        self.stopping = trio.Event()
        self._admin_scope = trio.CancelScope()
        self.admin_token: str | None = None  # --admin-control: what POSTs must present
        # Run-time changes every worker took, in order: replayed to a restarted worker.
        self.applied: list[dict[str, object]] = []
        self._apply_lock = trio.Lock()
        self.devstat = DevStat()  # the instance's ctl (the workers count their own devices)

    # -- admin ---------------------------------------------------------------

    async def _ask_all(self, what: str) -> list[Any]:
        answers: list[Any] = [None] * len(self.slots)

        async def ask(i: int) -> None:
            answers[i] = await self.slots[i].query(what)

        async with trio.open_nursery() as n:
            for i in range(len(self.slots)):
                n.start_soon(ask, i)
        return answers

    async def admin_stats(self) -> dict[str, Any]:
        answers = await self._ask_all("stats")
        per: list[dict[str, Any]] = []
        for slot, snap in zip(self.slots, answers, strict=True):
            entry: dict[str, Any] = dict(snap) if isinstance(snap, dict) else {}
            entry.update({
                "worker.index": slot.index,
                "worker.pid": slot.pid,
                "worker.restarts": slot.restarts,
                "worker.up": isinstance(snap, dict),
            })  # fmt: skip
            per.append(entry)
        total = sum_stats([s for s in answers if isinstance(s, dict)])
        for key, v in self.devstat.items():  # the instance's ctl, beside the workers' devices
            total[key] = int(total.get(key, 0)) + v
        total["server.workers"] = len(self.slots)
        total["server.workers_up"] = sum(1 for s in answers if isinstance(s, dict))
        total["server.worker_restarts"] = sum(slot.restarts for slot in self.slots)
        total["workers"] = per
        return total

    async def admin_snapshots(self) -> list[tuple[str, dict[str, Any]]]:
        """Each worker's own counters, labelled by its index (/metrics)."""
        answers = await self._ask_all("stats")
        return [(str(slot.index), a) for slot, a in zip(self.slots, answers, strict=True)
                if isinstance(a, dict)]  # fmt: skip

    async def admin_sysctl(self) -> dict[str, dict[str, object]]:
        answers = await self._ask_all("sysctl")
        return combine_sysctl([a for a in answers if isinstance(a, dict)])

    async def admin_ifconfig(self) -> dict[str, dict[str, object]]:
        for a in await self._ask_all("ifconfig"):  # every worker's is set alike
            if isinstance(a, dict):
                return a
        return {}

    async def admin_sysctl_set(self, name: str, value: str) -> Result:
        return await self.apply_all({"set": "sysctl", "name": name, "value": value})

    async def admin_ifconfig_set(self, words: list[str]) -> Result:
        return await self.apply_all({"set": "ifconfig", "words": words})

    async def admin_ifcap_set(self, ifname: str, reqcap: int) -> Result:
        return await self.apply_all({"set": "ifcap", "ifname": ifname, "reqcap": reqcap})

    async def apply_all(self, msg: dict[str, object]) -> Result:
        """One change on every worker, answered when all have answered. The workers'
        trees are alike, so they all take it or all refuse it (nothing changed); a
        worker down now gets it when it is started again (`applied`)."""
        async with self._apply_lock:
            results: list[Result] = [Result()] * len(self.slots)

            async def one(i: int) -> None:
                results[i] = Result.from_json(await self.slots[i].request(msg))

            # Once sent, a change is seen through and recorded even if the caller
            # gives up (the admin's timeout): each request is bounded by QUERY_TIMEOUT.
            with trio.CancelScope(shield=True):
                async with trio.open_nursery() as n:
                    for i in range(len(self.slots)):
                        n.start_soon(one, i)
                ok = [r for r in results if r.errno == 0]
                if ok:
                    self.applied = applied_after(self.applied, msg)
            refused = [r for r in results if r.errno not in (0, errno.EAGAIN)]
            if refused:
                return refused[0]
            return ok[0] if ok else results[0]

    async def admin_connections(self) -> list[dict[str, object]]:
        answers = await self._ask_all("connections")
        out: list[dict[str, object]] = []
        for slot, conns in zip(self.slots, answers, strict=True):
            for c in conns if isinstance(conns, list) else []:
                if isinstance(c, dict):
                    out.append({**c, "worker": slot.index})
        return out

    # -- workers -------------------------------------------------------------

    def _command(self, slot: WorkerSlot, fds: list[int]) -> list[str]:
        return [
            sys.executable, "-m", "server", *self.cfg.argv,
            "--worker-index", str(slot.index), "--worker-fds", ",".join(map(str, fds)),
        ]  # fmt: skip

    async def _spawn(self, slot: WorkerSlot) -> int | None:
        """Start the slot's worker and wait until it listens; its exit status if it
        died first."""
        ours, theirs = socket.socketpair()
        fds = [theirs.fileno(), *(s.fileno() for s in slot.socks)]
        try:
            proc = await trio.lowlevel.open_process(
                self._command(slot, fds), pass_fds=fds, process_group=0
            )
        finally:
            theirs.close()
        slot.proc = proc
        slot.chan = chan = LineChannel(ours)
        hello: object = None
        with trio.move_on_after(READY_TIMEOUT) as cs:
            try:
                hello = await chan.receive()
            except (trio.BrokenResourceError, OSError, ValueError):
                hello = None  # as at end of file: it died
        if isinstance(hello, dict) and hello.get("ready") and await self._replay(slot):
            log.debug("worker %d (pid %d) ready", slot.index, proc.pid)
            if self.stopping.is_set():  # stopped while it started: not told yet
                proc.send_signal(signal.SIGTERM)
            return None
        if cs.cancelled_caught:
            log.error("worker %d (pid %d) not ready in %g s", slot.index, proc.pid, READY_TIMEOUT)
            proc.kill()
        elif hello is not None:
            log.error("worker %d (pid %d) did not start: %r", slot.index, proc.pid, hello)
            proc.kill()
        return await proc.wait()

    async def _replay(self, slot: WorkerSlot) -> bool:
        """A started worker takes the changes made since start (`applied`), before
        anyone sees it up; under the apply lock, so that no change goes to the
        other workers meanwhile and misses this one. Ready only if it took them all
        (False: it was killed, to be started again).

        `applied` keeps each sysctl's last value in the order last set, not the
        order the live kernels took them, and some nodes check one another
        (net.bpf.bufsize <= net.bpf.maxbufsize): a sysctl the new kernel refuses
        (EINVAL) is tried again after the others, until a round takes none."""
        async with self._apply_lock:
            pending = list(self.applied)
            while pending:
                again: list[dict[str, object]] = []
                for msg in pending:
                    r = Result.from_json(await slot.request(msg, starting=True))
                    if r.errno == errno.EINVAL and msg.get("set") == "sysctl":
                        again.append(msg)
                    elif r.errno != 0:
                        return self._replay_failed(slot, msg, r)
                if len(again) == len(pending):
                    return self._replay_failed(slot, again[-1], r)  # r is its answer
                pending = again
            slot.ready = True
            return True

    def _replay_failed(self, slot: WorkerSlot, msg: dict[str, object], r: Result) -> bool:
        log.error(
            "worker %d did not take %r on restart (%s: %s); killed",
            slot.index, msg, errno.errorcode.get(r.errno, r.errno), r.message,
        )  # fmt: skip
        if slot.proc is not None:
            slot.proc.kill()
        return False

    async def _close_channel(self, slot: WorkerSlot) -> None:
        slot.ready = False
        if slot.chan is not None:
            await trio.aclose_forcefully(slot.chan.stream)
            slot.chan = None

    async def run_worker(
        self, slot: WorkerSlot, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Keep the slot's worker running until the supervisor stops."""
        first = True
        try:
            while True:
                status = await self._spawn(slot)
                if status is None:  # ready: now wait for it to exit
                    if first:
                        task_status.started()
                        first = False
                    assert slot.proc is not None
                    status = await slot.proc.wait()
                await self._close_channel(slot)
                if self.stopping.is_set():
                    if status not in STOP_STATUSES:
                        log.error("worker %d %s while stopping", slot.index, describe_exit(status))
                        self.exit_status = self.exit_status or 1
                    return
                if first:  # never came up: its own message said why
                    self.exit_status = status if status > 0 else 1
                    task_status.started()
                    self.stop(None)
                    return
                assert slot.proc is not None
                now = trio.current_time()
                slot.deaths.append(now)
                while slot.deaths and slot.deaths[0] < now - RESTART_WINDOW:
                    slot.deaths.popleft()
                if len(slot.deaths) > MAX_RESTARTS:
                    log.error(
                        "worker %d (pid %d) %s: %d deaths in %g s, giving up",
                        slot.index, slot.proc.pid, describe_exit(status), len(slot.deaths),
                        RESTART_WINDOW,
                    )  # fmt: skip
                    self.exit_status = 1
                    self.stop(None)
                    return
                backoff = min(BACKOFF_MAX, BACKOFF_MIN * 2 ** (len(slot.deaths) - 1))
                log.error(
                    "worker %d (pid %d) %s unexpectedly; restarting it in %g s",
                    slot.index, slot.proc.pid, describe_exit(status), backoff,
                )  # fmt: skip
                with trio.move_on_after(backoff):
                    await self.stopping.wait()
                if self.stopping.is_set():
                    return
                slot.restarts += 1
        finally:
            await self._reap(slot)

    async def _reap(self, slot: WorkerSlot) -> None:
        """Cancelled or done: make sure the worker process is gone."""
        proc = slot.proc
        with trio.CancelScope(shield=True):
            await self._close_channel(slot)
            if proc is None or proc.returncode is not None:
                return
            proc.send_signal(signal.SIGTERM)
            with trio.move_on_after(self.cfg.shutdown_timeout + KILL_GRACE):
                await proc.wait()
            if proc.returncode is None:
                log.error("worker %d (pid %d) did not stop: killing it", slot.index, proc.pid)
                proc.kill()
                await proc.wait()

    # -- stopping ------------------------------------------------------------

    def _forward(self, signum: int) -> None:
        for slot in self.slots:
            proc = slot.proc
            if proc is not None and proc.returncode is None and slot.ready:
                proc.send_signal(signum)

    def stop(self, signum: int | None) -> None:
        """Stop accepting (our copies of the sockets, the admin listener), tell the
        workers (`signum`, or SIGTERM), and let run_worker return as they exit."""
        first = not self.stopping.is_set()
        self.stopping.set()
        self._admin_scope.cancel()
        if first:
            for slot in self.slots:
                for sock in slot.socks:
                    sock.close()
        self._forward(signum or signal.SIGTERM)

    async def _on_signals(self, signals: AsyncIterator[int]) -> None:
        async for signum in signals:
            if signum == signal.SIGHUP:
                log.info("SIGHUP: forwarded to the workers")
                self._forward(signum)
                continue
            log.info("%s: stopping the workers", signal.Signals(signum).name)
            self.stop(signum)

    async def _kill_timer(self) -> None:
        """Once stopping, workers get --shutdown-timeout + KILL_GRACE, then SIGKILL."""
        await self.stopping.wait()
        await trio.sleep(self.cfg.shutdown_timeout + KILL_GRACE)
        for slot in self.slots:
            proc = slot.proc
            if proc is not None and proc.returncode is None:
                log.error("worker %d (pid %d) did not stop: killing it", slot.index, proc.pid)
                proc.kill()

    async def main(self) -> None:
        cfg = self.cfg
        admin = await open_admin(cfg)  # before any worker: a busy port is a ConfigError
        self.admin_token = admin_token(cfg)
        sigs = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
        with trio.open_signal_receiver(*sigs) as signals:
            async with trio.open_nursery() as services:
                services.start_soon(self._on_signals, signals)
                services.start_soon(self._kill_timer)
                async with trio.open_nursery() as workers:
                    for slot in self.slots:
                        if self.stopping.is_set():
                            break
                        await workers.start(self.run_worker, slot)
                    if not self.stopping.is_set() and self.instance is not None:
                        # One ctl for the instance: a change reaches every worker (apply_all).
                        ctl = DevFs(self.instance, [ctl_device(self)], self.devstat, own_dir=False)
                        await services.start(ctl.serve)
                    if not self.stopping.is_set():
                        listening = [s.getsockname()[:2] for s in self.slots[0].socks]
                        pids = ",".join(str(s.pid) for s in self.slots)
                        announce(
                            cfg, self.fingerprint, listening,
                            admin[0].socket.getsockname()[:2] if admin else None,
                            f"; workers {len(self.slots)} (pids {pids})", devices=self.instance,
                            token=self.admin_token,
                        )  # fmt: skip
                        if admin is not None:
                            services.start_soon(self._serve_admin, admin)
                services.cancel_scope.cancel()
        for lst in admin or []:
            await trio.aclose_forcefully(lst)

    async def _serve_admin(self, admin: list[trio.SocketListener]) -> None:
        with self._admin_scope:
            await serve_admin(self, admin, self.admin_token)


def run_supervisor(cfg: ServerConfig) -> int:
    """The supervisor process of `--workers N` (N > 1)."""
    errorlog.setup(cfg.log_level)
    sup = Supervisor(cfg)
    if not cfg.http:
        sup.fingerprint = certificate(cfg)[2]  # made once here, not raced by N workers
    sets = reuseport_sockets(cfg.host, cfg.port, cfg.workers)
    sup.slots = [WorkerSlot(i, socks) for i, socks in enumerate(sets)]
    sup.instance = open_instance(sets[0][0].getsockname()[1])  # each worker adds its w<N>
    try:
        trio.run(sup.main)
    finally:
        remove_instance(sup.instance)
        for slot in sup.slots:
            for sock in slot.socks:
                sock.close()
    log.debug("supervisor pid %d exits with %d", os.getpid(), sup.exit_status)
    return sup.exit_status
