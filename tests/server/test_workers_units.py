"""The pieces of --workers and the accept loop that need no process: summing
counters, naming exits, the rate-limited EMFILE retry."""

from __future__ import annotations

import errno
import logging
import signal
import socket
from collections.abc import AsyncIterator
from typing import Any

import pytest
import trio

from bpf import Bpf
from bpf.bpf_sysctl import bpf_sysctl_init
from mbuf.ifnet import IFCAP_NOMAP
from mbuf.kern import Kernel
from mbuf.kern_sysctl import sysctl_write
from mbuf.param import PAGE_SIZE
from server import listen
from server.config import ServerConfig
from server.errorlog import RateLimited, parse_level
from server.ifconfig import ifconfig_apply
from server.supervisor import Supervisor, WorkerSlot, applied_after, describe_exit, sum_stats
from server.worker import LineChannel


def test_sum_stats_rules() -> None:
    a: dict[str, Any] = {
        "mbuf.mbufs_in_use": 3, "mbuf.mbufs_peak": 10, "sfbuf.peak": 4,
        "kern.ipc.mb_use_ext_pgs": 1, "server.mode": "ktls", "ifnet.capenable": ["IFCAP_NOMAP"],
        "vm.pages_total": 100,
    }  # fmt: skip
    b: dict[str, Any] = {
        "mbuf.mbufs_in_use": 4, "mbuf.mbufs_peak": 7, "sfbuf.peak": 9,
        "kern.ipc.mb_use_ext_pgs": 1, "server.mode": "ktls", "ifnet.capenable": ["IFCAP_NOMAP"],
        "vm.pages_total": 100,
    }  # fmt: skip
    s = sum_stats([a, b])
    assert s["mbuf.mbufs_in_use"] == 7  # counters add up
    assert s["vm.pages_total"] == 200  # two kernels' memory
    assert s["mbuf.mbufs_peak"] == 10 and s["sfbuf.peak"] == 9  # peaks: the largest
    assert s["kern.ipc.mb_use_ext_pgs"] == 1  # settings: as set
    assert s["server.mode"] == "ktls" and s["ifnet.capenable"] == ["IFCAP_NOMAP"]
    assert sum_stats([]) == {}


def test_sum_stats_joins_every_worker_s_rows() -> None:
    """The tables of rows (netstat -B's bpf descriptors, netmap's bound rings) are
    every worker's: a pkt-gen on worker 1 is in /stats' netmap.ports."""
    ring = {"pid": 7, "port": "p}0", "ring": "RX0", "slots": 3}
    desc = {"pid": 8, "rcnt": 1}
    w0: dict[str, Any] = {"netmap.ports": [], "bpf.descriptors": [desc]}
    w1: dict[str, Any] = {"netmap.ports": [ring], "bpf.descriptors": [desc]}
    s = sum_stats([w0, w1])
    assert s["netmap.ports"] == [ring] and s["bpf.descriptors"] == [desc, desc]
    assert sum_stats([w1, w0])["netmap.ports"] == [ring]


def test_describe_exit() -> None:
    assert describe_exit(-signal.SIGKILL) == "was killed by SIGKILL"
    assert describe_exit(3) == "exited with status 3"


def test_parse_level() -> None:
    assert parse_level("WARN") == "warning"
    assert parse_level("debug") == "debug"


def test_rate_limited(caplog: pytest.LogCaptureFixture) -> None:
    log = logging.getLogger("nomapd.test")
    limited = RateLimited(log, logging.ERROR, interval=3600)
    with caplog.at_level(logging.ERROR, logger="nomapd.test"):
        assert limited.log("boom %d", 1)
        assert not limited.log("boom %d", 2)
        assert not limited.log("boom %d", 3)
    assert [r.getMessage() for r in caplog.records] == ["boom 1"]
    assert limited.suppressed == 2


class _FlakyListener:
    """accept() fails with `errors`, then hangs."""

    def __init__(self, errors: list[int]) -> None:
        self.errors = errors

    async def accept(self) -> trio.SocketStream:
        if self.errors:
            raise OSError(self.errors.pop(0), "simulated")
        await trio.sleep_forever()
        raise AssertionError


async def test_accept_capacity_errors_are_logged_and_retried(
    caplog: pytest.LogCaptureFixture,
    autojump_clock: trio.abc.Clock,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(listen, "_accept_failed", RateLimited(logging.getLogger("nomapd"), 40))
    lst: Any = _FlakyListener([errno.EMFILE] * 5 + [errno.ENOBUFS])

    async def handler(stream: trio.SocketStream) -> None:
        raise AssertionError

    with caplog.at_level(logging.ERROR, logger="nomapd"):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(listen._accept_loop, lst, handler, nursery)
            await trio.sleep(10)
            assert lst.errors == []  # every error retried
            nursery.cancel_scope.cancel()
    msgs = [r.getMessage() for r in caplog.records]
    assert msgs[0].startswith("accept returned EMFILE (Too many open files)")
    assert len(msgs) == 1  # 0.6 s of failures: one line


async def test_other_accept_errors_are_fatal() -> None:
    lst: Any = _FlakyListener([errno.EBADF])

    async def handler(stream: trio.SocketStream) -> None:
        raise AssertionError

    with pytest.RaisesGroup(pytest.RaisesExc(OSError, match="simulated")):
        async with trio.open_nursery() as nursery:
            await listen._accept_loop(lst, handler, nursery)


class _FakeWorker:
    """A worker's end of the supervisor's channel, played by the test: it answers
    each request when the test says so (`answer`), with the errno it is given."""

    def __init__(self, slot: WorkerSlot) -> None:
        ours, theirs = socket.socketpair()
        slot.chan = LineChannel(ours)
        self.chan = LineChannel(theirs)
        self.got: list[dict[str, Any]] = []

    async def answer(self, err: int = 0) -> dict[str, Any]:
        req = await self.chan.receive()
        assert isinstance(req, dict)
        self.got.append(req)
        await self.chan.send({"id": req["id"], "result": {"errno": err, "message": ""}})
        return req


@pytest.fixture
async def sup() -> AsyncIterator[Supervisor]:
    """A supervisor of two workers that are up, each a _FakeWorker (`sup.fakes`)."""
    sup = Supervisor(ServerConfig())
    sup.slots = [WorkerSlot(i, []) for i in range(2)]
    fakes = [_FakeWorker(slot) for slot in sup.slots]
    for slot in sup.slots:
        slot.ready = True
    sup.fakes = fakes  # type: ignore[attr-defined]
    yield sup
    for slot, fake in zip(sup.slots, fakes, strict=True):
        assert slot.chan is not None
        await slot.chan.aclose()
        await fake.chan.aclose()


def _sysctl(value: str) -> dict[str, object]:
    return {"set": "sysctl", "name": "kern.ipc.mb_use_ext_pgs", "value": value}


async def test_a_change_given_up_on_by_its_caller_is_still_recorded(sup: Supervisor) -> None:
    """The admin's timeout cancels apply_all while a worker has not answered yet:
    the change is seen through and recorded, or a restarted worker would miss it."""
    w0, w1 = sup.fakes  # type: ignore[attr-defined]
    msg = _sysctl("0")
    async with trio.open_nursery() as n:
        caller = trio.CancelScope()

        async def admin() -> None:
            with caller:
                await sup.apply_all(msg)

        n.start_soon(admin)
        await w0.answer()
        caller.cancel()  # gives up while worker 1 still owes its answer
        await w1.answer()
    assert sup.applied == [msg]


async def test_a_restarted_worker_replays_under_the_apply_lock(sup: Supervisor) -> None:
    """A change made while a worker restarts reaches it: the replay waits for the
    change under way, and the worker is ready only once it took every change."""
    w0, w1 = sup.fakes  # type: ignore[attr-defined]
    sup.slots[1].ready = False  # restarting: said hello, not up yet
    msg = _sysctl("0")
    ready: list[bool] = []
    with trio.fail_after(30):  # without the lock the replay has nothing to send: no hang
        await _change_during_replay(sup, msg, w0, w1, ready)
    assert ready == [True] and sup.slots[1].ready


async def _change_during_replay(
    sup: Supervisor, msg: dict[str, object], w0: _FakeWorker, w1: _FakeWorker, ready: list[bool]
) -> None:
    async with trio.open_nursery() as n:
        n.start_soon(sup.apply_all, msg)
        await w0.answer()  # the change is under way (worker 1 is skipped: not up)

        async def replay() -> None:
            ready.append(await sup._replay(sup.slots[1]))

        n.start_soon(replay)
        assert (await w1.answer()) == {**msg, "id": 1}  # replayed: it waited for the change


async def test_a_worker_that_refuses_a_replayed_change_is_not_ready(sup: Supervisor) -> None:
    _w0, w1 = sup.fakes  # type: ignore[attr-defined]
    sup.applied = [_sysctl("0"), {"set": "sysctl", "name": "kern.x", "value": "1"}]
    sup.slots[1].ready = False
    ready: list[bool] = []

    async def replay() -> None:
        ready.append(await sup._replay(sup.slots[1]))

    async with trio.open_nursery() as n:
        n.start_soon(replay)
        await w1.answer()
        await w1.answer(errno.EINVAL)
        assert (await w1.answer(errno.EINVAL))["name"] == "kern.x"  # tried again, alone
    assert ready == [False] and not sup.slots[1].ready


def test_applied_keeps_the_last_sysctl_and_the_deciding_ifconfig_words() -> None:
    applied: list[dict[str, object]] = []
    for v in range(1000):
        applied = applied_after(applied, _sysctl(str(v % 2)))
    assert applied == [_sysctl("1")]
    other: dict[str, object] = {"set": "sysctl", "name": "kern.ipc.other", "value": "7"}
    applied = applied_after(applied, other)
    for words in (["-nomap"], ["nomap"], ["-tso"], ["tso4"], ["-txtls", "nomap"]) * 100:
        applied = applied_after(applied, {"set": "ifconfig", "words": ["nm0", *words]})
    # nomap decided last by the final "nomap"; tso6 still off from "-tso", tso4 on.
    assert applied == [
        _sysctl("1"),
        other,
        {"set": "ifconfig", "words": ["nm0", "-tso", "tso4", "-txtls", "nomap"]},
    ]


def _interface_after(msgs: list[dict[str, object]]) -> int:
    """The capabilities a fresh kernel's nm0 ends with after `msgs`, each taken as
    the worker takes it (server/worker.py: ifconfig words, or SIOCSIFCAP)."""
    ifp = Kernel(64 * PAGE_SIZE).ifnet
    for m in msgs:
        if m["set"] == "ifconfig":
            words = m["words"]
            assert isinstance(words, list)
            assert ifconfig_apply(ifp, [str(w) for w in words]) == (0, "")
        elif m["set"] == "ifcap":
            reqcap = m["reqcap"]
            assert isinstance(reqcap, int) and not reqcap & ~ifp.if_capabilities
            ifp.set_capenable(reqcap)
    return ifp.if_capenable


def test_applied_replays_siocsifcap_in_order_and_bounded() -> None:
    """`nomapd ifconfig` sends SIOCSIFCAP ("ifcap": the whole enabled set), the admin
    sends words: a replay gives a restarted worker the live workers' capabilities,
    whatever the mix, and one SIOCSIFCAP replaces every interface change before it."""
    base = Kernel(64 * PAGE_SIZE).ifnet.if_capenable

    def ifcap(caps: int) -> dict[str, object]:
        return {"set": "ifcap", "ifname": "nm0", "reqcap": caps}

    history: list[dict[str, object]] = [
        {"set": "ifconfig", "words": ["nm0", "-nomap"]},
        ifcap(base),  # nomapd ifconfig nm0 nomap
        {"set": "ifconfig", "words": ["nm0", "-tso"]},
    ]
    applied: list[dict[str, object]] = []
    for msg in history:
        applied = applied_after(applied, msg)
    assert _interface_after(applied) == _interface_after(history)
    for i in range(1000):
        applied = applied_after(applied, ifcap(base & ~IFCAP_NOMAP if i % 2 else base))
    assert applied == [ifcap(base & ~IFCAP_NOMAP)]


class _KernelWorker(_FakeWorker):
    """A fake worker whose answers are a real kernel's: each sysctl it is sent is
    written to its own tree (with bpf's nodes), as server/worker.py does."""

    def __init__(self, slot: WorkerSlot) -> None:
        super().__init__(slot)
        self.kern = Kernel(64 * PAGE_SIZE)
        bpf_sysctl_init(self.kern.sysctl, Bpf())

    async def serve(self) -> None:
        while isinstance(req := await self.chan.receive(), dict):
            err = sysctl_write(self.kern.sysctl, str(req["name"]), str(req["value"]))
            await self.chan.send({"id": req["id"], "result": {"errno": err, "message": ""}})

    def value(self, name: str) -> object:
        oid = self.kern.sysctl.lookup(name)
        assert oid is not None
        return oid.get()


async def test_a_replay_reaches_values_that_must_be_set_in_another_order() -> None:
    """net.bpf.bufsize must stay under net.bpf.maxbufsize. Raising the ceiling, the
    size, then the ceiling again leaves the replay list [bufsize, maxbufsize]
    (the last value of each, in the order last set): a fresh kernel refuses that
    bufsize before the ceiling is raised. The replay takes the others first and
    retries it, and the worker comes up with the live workers' values."""
    history = [("net.bpf.maxbufsize", 1 << 20), ("net.bpf.bufsize", 1 << 20),
               ("net.bpf.maxbufsize", 1 << 21)]  # fmt: skip
    sup = Supervisor(ServerConfig())
    sup.slots = [WorkerSlot(0, [])]
    worker = _KernelWorker(sup.slots[0])
    for name, v in history:
        sup.applied = applied_after(sup.applied, {"set": "sysctl", "name": name, "value": str(v)})
    ready: list[bool] = []
    async with trio.open_nursery() as n:
        n.start_soon(worker.serve)
        ready.append(await sup._replay(sup.slots[0]))
        assert sup.slots[0].chan is not None
        await sup.slots[0].chan.aclose()
    await worker.chan.aclose()
    assert ready == [True]
    assert worker.value("net.bpf.bufsize") == 1 << 20
    assert worker.value("net.bpf.maxbufsize") == 1 << 21
