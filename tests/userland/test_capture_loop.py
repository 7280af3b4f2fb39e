"""userland/capture.py's loop without a server: fake sources, a recording sink.

The sources hand out scripted batches (then nothing, as a quiet descriptor
does after its read timeout); the loop must merge them by time across
sources, write a source's secrets before the packets of the batch they came
with, stop at -c, and drain every source after the stop.
"""

from __future__ import annotations

import threading
from typing import cast

import pytest

from userland.bpfdev import Packet
from userland.capture import Source, SourceFailed, _Sink, capture_loop


class FakeSource:
    def __init__(self, batches: list[list[int]], keys: dict[int, bytes] | None = None) -> None:
        self.batches = [[Packet(t, 0, 1, 1, bytes([t % 256])) for t in b] for b in batches]
        self.keys = keys or {}
        self.calls = 0
        self.closed = False

    def next_batch(self) -> list[Packet]:
        self.calls += 1
        return self.batches.pop(0) if self.batches else []

    def keylog(self) -> bytes:
        return self.keys.pop(self.calls, b"")

    def keylog_enable(self) -> None:
        # BIOCSKEYLOG is the opener's (open_bpf), once per descriptor: the loop only
        # collects what keylog() hands over, and must never ask again.
        raise AssertionError("capture_loop asked for key export itself")

    def stats(self) -> tuple[int, int]:
        return (0, 0)

    def close(self) -> None:
        self.closed = True


class RecordingSink:
    def __init__(self) -> None:
        # ("pkt", ifid, seconds) / ("keys", n, 0) / ("done", 0, 0): a batch written (-U flushes)
        self.events: list[tuple[str, int, int]] = []

    def write(self, ifid: int, p: Packet) -> None:
        self.events.append(("pkt", ifid, p.ts_sec))

    def secrets(self, keylog: bytes) -> None:
        self.events.append(("keys", len(keylog), 0))

    def batch_done(self) -> None:
        self.events.append(("done", 0, 0))


def run(sources: list[FakeSource], count: int = 0, keys: bool = False) -> RecordingSink:
    sink = RecordingSink()
    stop = threading.Event()
    if not count:
        # Stop once every scripted batch is out: the loop must still drain and end.
        def stopper() -> None:
            while any(s.batches for s in sources):
                threading.Event().wait(0.01)
            stop.set()

        threading.Thread(target=stopper, daemon=True).start()
    labelled = [(f"w{i}", cast(Source, s)) for i, s in enumerate(sources)]
    written = capture_loop(labelled, cast(_Sink, sink), count, stop, keys)
    assert written == sum(e[0] == "pkt" for e in sink.events)
    assert sink.events[-1][0] == "done"  # nothing written after the last flush point
    return sink


def test_two_sources_merge_by_time_ties_in_worker_order() -> None:
    a = FakeSource([[1, 4, 9], [10, 12]])
    b = FakeSource([[2, 4], [5, 11, 30]])
    sink = run([a, b])
    pkts = [(t, i) for kind, i, t in sink.events if kind == "pkt"]
    assert [t for t, _ in pkts] == [1, 2, 4, 4, 5, 9, 10, 11, 12, 30]
    assert pkts[2:4] == [(4, 0), (4, 1)]


def test_secrets_come_before_the_batch_they_came_with() -> None:
    a = FakeSource([[1, 2], [3, 4]], keys={2: b"CLIENT_RANDOM x y\n"})
    sink = run([a], keys=True)
    assert [e for e in sink.events if e[0] != "done"] == [
        ("pkt", 0, 1), ("pkt", 0, 2), ("keys", 18, 0), ("pkt", 0, 3), ("pkt", 0, 4),
    ]  # fmt: skip


def test_count_stops_after_exactly_n() -> None:
    a = FakeSource([[1, 2, 3], [4, 5, 6]])
    sink = run([a], count=4)
    assert [t for kind, _, t in sink.events if kind == "pkt"] == [1, 2, 3, 4]


class GoneSource(FakeSource):
    """A source whose kernel goes away after its batches (the server stopped)."""

    def next_batch(self) -> list[Packet]:
        if not self.batches:
            raise OSError("w1/bpf: the kernel closed the file")
        return super().next_batch()


class QuietSource(FakeSource):
    """After its batches, empty ones each read timeout (here 1 ms), for at most
    2000 calls: a source the loop fails to stop ends the test instead of hanging it."""

    def next_batch(self) -> list[Packet]:
        if not self.batches:
            threading.Event().wait(0.001)
            if self.calls > 2000:
                raise AssertionError("the capture did not stop")
        return super().next_batch()


def test_a_source_that_fails_ends_the_capture_with_what_came_before() -> None:
    """One worker's device closes mid-capture: the capture stops (nobody else has
    to press ^C), every packet already read is written, and the failure is
    raised as SourceFailed naming the source, with the count written."""
    a = QuietSource([[1, 3], [6]])  # a worker that would go on
    b = GoneSource([[2, 4]])
    sink = RecordingSink()
    labelled = [(f"w{i}", cast(Source, s)) for i, s in enumerate([a, b])]
    with pytest.raises(SourceFailed) as info:
        capture_loop(labelled, cast(_Sink, sink), 0, threading.Event())
    assert info.value.label == "w1" and "the kernel closed the file" in str(info.value)
    pkts = [t for kind, _, t in sink.events if kind == "pkt"]
    assert pkts[:4] == [1, 2, 3, 4] and info.value.written == len(pkts)
    assert a.calls < 2000  # a stopped as soon as b failed
