"""KTLS encryption workers: one queue and one thread each, as kern.ipc.tls's threads.

Theory of operation. One queue and one thread per worker, as the kernel has one per CPU; a session
is bound to one queue (`wq_index`), so one connection's records are encrypted
in order by one thread while different connections use every core.

The pool is sans-IO toward the event loop: the owner passes `post`, a
thread-safe function that runs a callback on the event-loop thread (the
server gives trio's `run_sync_soon`), and each finished work item is posted
back so that all socket-buffer and page-arena changes happen on that thread.
With `nthreads == 0` work runs inline at submission: the server's default
(`--ktls-workers 0`). Under the GIL only the C crypto, a few per cent of a
batch's work, can overlap, while every batch crosses threads twice; two
threads gave 0.6x the throughput of none on 2 cores (`make bench`).

Models: sys/kern/uipc_ktls.c (`ktls_work_thread`, the `kern.ipc.tls` threads).
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from typing import Protocol, cast

from mypy_extensions import mypyc_attr


class WorkItem(Protocol):
    def run(self) -> None:
        """The crypto; runs on a worker thread and must not raise."""
        ...

    def complete(self) -> None:
        """Back on the event-loop thread."""
        ...


Post = Callable[[Callable[[], None]], None]

_STOP = object()


# tests/mbuf/test_stateful.py's DeferredWorkers holds batches until a rule runs
# them: a stand-in the sessions must accept, so interpreted subclasses are allowed
# (one call per batch, not per byte).
@mypyc_attr(allow_interpreted_subclasses=True)
class KtlsWorkers:
    __slots__ = ("_next", "_post", "_queues", "_stopped", "_threads", "nthreads")

    def __init__(self, nthreads: int, post: Post | None = None) -> None:
        if nthreads < 0:
            raise ValueError(f"ktls workers must be >= 0, not {nthreads}")
        if nthreads and post is None:
            raise ValueError("ktls workers need a post function to reach the event loop")
        self.nthreads = nthreads
        self._post = post
        self._queues: list[queue.SimpleQueue[object]] = [
            queue.SimpleQueue() for _ in range(nthreads)
        ]
        self._threads = [
            threading.Thread(target=self._loop, args=(q,), name=f"ktls/thr_{i}", daemon=True)
            for i, q in enumerate(self._queues)
        ]
        self._next = 0
        self._stopped = False
        for t in self._threads:
            t.start()

    def pick_queue(self) -> int:
        """wq_index for a new session: round robin (the kernel uses flowid % threads)."""
        if not self.nthreads:
            return 0
        i = self._next % self.nthreads
        self._next += 1
        return i

    def submit(self, wq_index: int, item: WorkItem) -> None:
        if self._stopped:
            raise RuntimeError("ktls workers: submit after shutdown")
        if not self.nthreads:
            item.run()
            item.complete()
            return
        self._queues[wq_index].put(item)

    def _loop(self, q: queue.SimpleQueue[object]) -> None:
        post = self._post
        assert post is not None
        while True:
            item = q.get()
            if item is _STOP:
                return
            work = cast(WorkItem, item)
            work.run()
            post(work.complete)

    def shutdown(self) -> None:
        self._stopped = True
        for q in self._queues:
            q.put(_STOP)
        for t in self._threads:
            t.join(timeout=5)
