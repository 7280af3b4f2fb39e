"""The pieces of --workers and the accept loop that need no process: summing
counters, naming exits, the rate-limited EMFILE retry."""

from __future__ import annotations

import errno
import logging
import signal
from typing import Any

import pytest
import trio

from server import listen
from server.errorlog import RateLimited, parse_level
from server.supervisor import describe_exit, sum_stats


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
