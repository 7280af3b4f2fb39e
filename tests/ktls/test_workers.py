"""ktls.workers: encryption on worker threads, completion on the event-loop thread.

The event loop is the test itself: `post` puts completions on a thread-safe
queue and the test runs them, so it can look at the socket between "the
worker encrypted" and "the loop completed".
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest

import ktls.ocf
import tests.ktls.harness
from ktls.session import KtlsSession
from ktls.workers import KtlsWorkers
from mbuf.kern import Kernel
from mbuf.socket import sosend
from mbuf.tcp_output import tcp_output
from tests.ktls.harness import CASES, PHYS_MEM, KtlsConn, ServerContexts, handshake
from tests.support.certs import CertFiles

Posted = queue.Queue[Callable[[], None]]
WAIT = 10.0  # seconds: generous, a worker normally answers in microseconds


@pytest.fixture
def posted() -> Posted:
    return queue.Queue()


@pytest.fixture
def workers(posted: Posted) -> Iterator[KtlsWorkers]:
    w = KtlsWorkers(2, post=posted.put)
    yield w
    w.shutdown()


@pytest.fixture
def encrypt_threads(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, int]]:
    """(thread name, record seqno) of every record encrypted, in encryption order."""
    calls: list[tuple[str, int]] = []
    real = ktls.ocf.ktls_ocf_encrypt  # the sessions' sw_encrypt

    def recording(tls: Any, phys: Any, pgs: Any, dst: Any, scratch: bytearray) -> int:
        calls.append((threading.current_thread().name, pgs.seqno))
        return real(tls, phys, pgs, dst, scratch)

    class RecordingSession(KtlsSession):
        """A session whose crypto backend records each call (the compiled session
        calls ktls_ocf_encrypt natively: patching the module function would not)."""

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.sw_encrypt = recording

    monkeypatch.setattr(tests.ktls.harness, "KtlsSession", RecordingSession)
    return calls


def connect(
    contexts: ServerContexts, certs: dict[str, CertFiles], kern: Kernel, workers: KtlsWorkers
) -> KtlsConn:
    pair = handshake(contexts, certs, CASES[0])
    return KtlsConn(kern, workers, pair.hs.established(), pair)


def test_encryption_on_workers_completion_on_the_loop(
    contexts: ServerContexts,
    certs: dict[str, CertFiles],
    workers: KtlsWorkers,
    posted: Posted,
    encrypt_threads: list[tuple[str, int]],
) -> None:
    kern = Kernel(PHYS_MEM)
    conns = [connect(contexts, certs, kern, workers) for _ in range(2)]
    assert [c.tls.wq_index for c in conns] == [0, 1]  # one queue per session
    writes = [bytes([65 + i]) * 20_000 for i in range(3)]  # two records each
    for conn in conns:
        for data in writes:
            assert sosend(conn.so, data) == len(data)

    callbacks = [posted.get(timeout=WAIT) for _ in range(len(conns) * len(writes))]
    # Every batch was encrypted, none completed: nothing is ready, nothing is sent.
    assert len(encrypt_threads) == len(conns) * len(writes) * 2
    for conn in conns:
        assert conn.so.so_snd.sb_acc == 0
        assert conn.so.so_pending == len(writes)
        assert tcp_output(conn.so) == 0
    assert kern.stats.ktls.tasks_active == 6
    assert kern.stats.ktls.records_encrypted == 0
    assert posted.empty()

    # Each session's records were encrypted by one worker thread, in order.
    by_thread: dict[str, list[int]] = {}
    for name, seqno in encrypt_threads:
        by_thread.setdefault(name, []).append(seqno)
    assert sorted(by_thread) == ["ktls/thr_0", "ktls/thr_1"]
    for seqnos in by_thread.values():
        assert seqnos == sorted(seqnos) and len(seqnos) == 6

    # Completions in posting order: each one makes its own batch ready (sbready),
    # which only happens if the batches of a session complete in order.
    for cb in callbacks:
        before = [c.so.so_snd.sb_acc for c in conns]
        cb()
        grown = [c.so.so_snd.sb_acc > b for c, b in zip(conns, before, strict=True)]
        assert grown.count(True) == 1
    for conn in conns:
        assert conn.so.so_snd.sb_acc == conn.so.so_snd.sb_ccc
        assert conn.so.so_pending == 0
        conn.pump()
        assert conn.peer.client_read() == b"".join(writes)
        conn.close()
    assert kern.stats.ktls.tasks_active == 0
    assert kern.stats.ktls.records_encrypted == 12
    assert kern.leaks() == {}


@pytest.mark.parametrize("repeat", [1000, 10], ids=["pages", "compressed"])
def test_out_of_order_completion_waits_for_the_first_batch(
    contexts: ServerContexts,
    certs: dict[str, CertFiles],
    workers: KtlsWorkers,
    posted: Posted,
    repeat: int,
) -> None:
    """Reference 6.4: records are numbered as they enter the buffer, so they may be
    encrypted in any order; sbready keeps a later batch unsendable until the
    earlier one is ready. Records of at most MLEN bytes are also copied inline
    (sbready_compress) as they become ready."""
    kern = Kernel(PHYS_MEM)
    conn = connect(contexts, certs, kern, workers)
    sosend(conn.so, b"first" * repeat)
    sosend(conn.so, b"second" * repeat)
    first, second = posted.get(timeout=WAIT), posted.get(timeout=WAIT)
    second()
    assert conn.so.so_snd.sb_acc == 0
    assert conn.pump() == 0
    first()
    assert conn.so.so_snd.sb_acc == conn.so.so_snd.sb_ccc > 0
    if repeat == 10:
        assert kern.stats.mb.compressed == 2
        assert kern.stats.vm.pages_anon == 0
    conn.pump()
    assert conn.peer.client_read() == b"first" * repeat + b"second" * repeat
    conn.close()
    assert kern.leaks() == {}


class Item:
    """A WorkItem that records where and in which order its halves ran."""

    def __init__(self, log: list[tuple[str, str, str]], name: str) -> None:
        self.log = log
        self.name = name

    def run(self) -> None:
        self.log.append(("run", self.name, threading.current_thread().name))

    def complete(self) -> None:
        self.log.append(("complete", self.name, threading.current_thread().name))


def test_zero_threads_run_inline() -> None:
    workers = KtlsWorkers(0)
    assert [workers.pick_queue() for _ in range(3)] == [0, 0, 0]
    log: list[tuple[str, str, str]] = []
    workers.submit(0, Item(log, "a"))
    main = threading.current_thread().name
    assert log == [("run", "a", main), ("complete", "a", main)]
    workers.shutdown()


def test_zero_threads_session_is_ready_after_sosend(
    contexts: ServerContexts, certs: dict[str, CertFiles]
) -> None:
    kern = Kernel(PHYS_MEM)
    conn = connect(contexts, certs, kern, KtlsWorkers(0))
    sosend(conn.so, b"x" * 50_000)
    sb = conn.so.so_snd
    assert sb.sb_acc == sb.sb_ccc > 50_000
    assert conn.so.so_pending == 0
    assert kern.stats.ktls.tasks_active == 0
    conn.close()
    assert kern.leaks() == {}


def test_completions_only_run_when_posted(posted: Posted) -> None:
    workers = KtlsWorkers(1, post=posted.put)
    log: list[tuple[str, str, str]] = []
    try:
        for name in "abc":
            workers.submit(0, Item(log, name))
        callbacks = [posted.get(timeout=WAIT) for _ in range(3)]
        assert [e[:2] for e in log] == [("run", "a"), ("run", "b"), ("run", "c")]
        assert {e[2] for e in log} == {"ktls/thr_0"}
        for cb in callbacks:
            cb()
        main = threading.current_thread().name
        assert log[3:] == [("complete", n, main) for n in "abc"]
    finally:
        workers.shutdown()


def test_pick_queue_round_robin(posted: Posted) -> None:
    workers = KtlsWorkers(3, post=posted.put)
    try:
        assert [workers.pick_queue() for _ in range(7)] == [0, 1, 2, 0, 1, 2, 0]
    finally:
        workers.shutdown()


@pytest.mark.parametrize(
    ("nthreads", "post", "match"),
    [
        (-1, print, ">= 0"),
        (-8, None, ">= 0"),
        (1, None, "post function"),
        (4, None, "post function"),
    ],
)
def test_invalid_configuration(nthreads: int, post: Any, match: str) -> None:
    before = threading.active_count()
    with pytest.raises(ValueError, match=match):
        KtlsWorkers(nthreads, post=post)
    assert threading.active_count() == before  # no thread left behind


def test_shutdown_runs_queued_work_and_joins(posted: Posted) -> None:
    before = set(threading.enumerate())
    workers = KtlsWorkers(3, post=posted.put)
    started = set(threading.enumerate()) - before
    assert sorted(t.name for t in started) == ["ktls/thr_0", "ktls/thr_1", "ktls/thr_2"]
    assert all(t.is_alive() and t.daemon for t in started)
    log: list[tuple[str, str, str]] = []
    for i in range(9):
        workers.submit(i % 3, Item(log, str(i)))
    workers.shutdown()
    assert not any(t.is_alive() for t in started)
    assert sorted(int(e[1]) for e in log) == list(range(9))  # nothing queued was lost
    assert posted.qsize() == 9
