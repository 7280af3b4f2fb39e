"""Several workers' packet streams merged into one, by timestamp.

Theory of operation. With several workers each has its own nm0 and its own
/dev/bpf; a capture reads every one and must write one file in time order.
Each stream is already in time order (a descriptor's records are appended
as the tap sees them), so a heap merge over the streams' heads gives the
total order in O(log W) per packet: `pkt_merge` is `heapq.merge` keyed on the
timestamp, and a tie keeps stream order (worker 0 before worker 1), so the
result is deterministic. It is lazy: a stream is read only as far as the
merge needs, so it can sit on live readers.

Each packet comes out tagged with its stream's index, which the pcapng
writer uses as the interface id (one IDB per worker's nm0).

Models: nothing in the kernel; libpcap has no merge either (mergecap's
`merge_read_packet` does the same by timestamp).
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable, Iterator
from typing import NamedTuple


class Packet(NamedTuple):
    """One captured packet as the capture library returns it."""

    ts_ns: int
    caplen: int
    wirelen: int
    data: bytes


def _tagged(i: int, stream: Iterable[Packet]) -> Iterator[tuple[int, int, Packet]]:
    for p in stream:
        yield p.ts_ns, i, p


def pkt_merge(streams: list[Iterable[Packet]]) -> Iterator[tuple[int, Packet]]:
    """(stream index, packet) in timestamp order; ties in stream order."""
    for _, i, p in heapq.merge(*[_tagged(i, s) for i, s in enumerate(streams)],
                               key=lambda t: (t[0], t[1])):  # fmt: skip
        yield i, p
