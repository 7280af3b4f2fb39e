"""The timestamp merge of per-worker streams, and a merged pcapng tshark reads."""

from __future__ import annotations

import itertools
import pathlib
import random
from collections.abc import Iterator

from tests.userland.conftest import T0, packets, run
from userland.pcapng_file import PcapngInterface, PcapngWriter
from userland.pktmerge import Packet, pkt_merge


def stream(seed: int, n: int) -> list[Packet]:
    rng = random.Random(seed)
    ts = sorted(T0 + rng.randrange(0, 50) for _ in range(n))  # many equal timestamps
    return [Packet(t, 1, 1, bytes([seed, i])) for i, t in enumerate(ts)]


def test_merge_orders_by_time_and_breaks_ties_by_worker() -> None:
    streams = [stream(s, n) for s, n in ((0, 40), (1, 0), (2, 25), (3, 60))]
    merged = list(pkt_merge(list(streams)))
    assert sorted(p for _, p in merged) == sorted(p for s in streams for p in s)
    keys = [(p.ts_ns, i) for i, p in merged]
    assert keys == sorted(keys)
    for i, s in enumerate(streams):  # each stream's own order is kept
        assert [p for j, p in merged if j == i] == s
    assert any(a[0] == b[0] and a[1] != b[1] for a, b in itertools.pairwise(keys))


def test_merge_is_lazy() -> None:
    """Live readers never end: the merge reads only as far as it must."""
    read = [0, 0]

    def live(w: int) -> Iterator[Packet]:
        for k in itertools.count():
            read[w] += 1
            yield Packet(T0 + 2 * k + w, 1, 1, b"")

    first = list(itertools.islice(pkt_merge([live(0), live(1)]), 10))
    assert [i for i, _ in first] == [0, 1] * 5
    assert min(read) >= 5 and max(read) <= 6  # one look-ahead per stream at most


def test_merged_capture_keeps_each_workers_interface(tmp_path: pathlib.Path) -> None:
    """Two workers' nm0 captures merged into one pcapng: tshark sees time order
    and which worker's nm0 saw each frame."""
    w0 = [Packet(ts, len(d), n, d) for ts, d, n in packets(False)]
    w1 = [Packet(ts + 700_000, len(d), n, d) for ts, d, n in packets(True)]
    path = tmp_path / "merged.pcapng"
    with path.open("wb") as f:
        w = PcapngWriter(f)
        for i in range(2):
            w.add_interface(PcapngInterface(description=f"nomapd worker {i} nm0"))
        for ifid, p in pkt_merge([w0, w1]):
            w.write(p.ts_ns, p.data, p.wirelen, ifid=ifid)
        w.close(T0 + 10**10, [(len(w0), 0), (len(w1), 0)])
    out = run(
        "tshark", "-r", str(path), "-T", "fields", "-e", "frame.interface_id", "-e", "ipv6.src"
    )
    rows = [line.split("\t") for line in out.splitlines()]
    assert len(rows) == len(w0) + len(w1)
    assert all((ifid == "1") == (ip6 != "") for ifid, ip6 in rows)  # worker 1 carried IPv6
    assert {r[0] for r in rows[:3]} == {"0", "1"}  # interleaved, not concatenated
    assert "Strict time order:   True" in run("capinfos", str(path))
