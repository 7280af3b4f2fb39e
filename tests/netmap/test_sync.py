"""The sync prologues against an independent statement of B.6: with distances
measured in ring order from the kernel's last head, a TX sync is accepted iff
head and cur are slots of the ring and rhead <= head <= cur <= rtail; an RX
sync iff nr_hwcur <= head <= cur <= nr_hwtail. A refused sync leaves the ring
as the kernel last published it."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from netmap.netmap import netmap_close, netmap_ioctl
from netmap.netmap_h import NIOCRXSYNC, NIOCTXSYNC, POLLERR, POLLIN, POLLOUT
from netmap.netmap_kern import Netmap
from netmap.netmap_stats import netmap_ports
from netmap.netmap_sync import netmap_poll
from tests.netmap.conftest import open_port


def accepted(n: int, lo: int, hi: int, head: int, cur: int) -> bool:
    if head >= n or cur >= n:
        return False

    def d(x: int) -> int:
        return (x - lo) % n

    return d(head) <= d(cur) <= d(hi)


@settings(max_examples=150, deadline=None)
@given(
    n=st.integers(2, 12),
    first=st.integers(0, 30),
    head=st.integers(0, 14),
    cur=st.integers(0, 14),
    rx_side=st.booleans(),
)
def test_prologue_accepts_exactly_the_ordered_pointers(
    n: int, first: int, head: int, cur: int, rx_side: bool
) -> None:
    nm = Netmap()
    nm.sysctl.buf_num = 2 * n + 2
    a, atx, _ = open_port(nm, "y{0", slots=n)
    b, _, brx = open_port(nm, "y}0", pid=2)
    # Move the rings along first: `first` packets through, so indexes wrap.
    for _ in range(first):
        netmap_ioctl(a, NIOCTXSYNC, b"")  # reclaim what the reader released
        atx.send([b"p"] * min(1, atx.space()))
        netmap_ioctl(a, NIOCTXSYNC, b"")
        netmap_ioctl(b, NIOCRXSYNC, b"")
        brx.recv(1)
        netmap_ioctl(b, NIOCRXSYNC, b"")
    netmap_ioctl(a, NIOCTXSYNC, b"")
    atx.send([b"q"] * min(2, atx.space()))
    netmap_ioctl(a, NIOCTXSYNC, b"")
    netmap_ioctl(b, NIOCRXSYNC, b"")
    priv, ring, cmd = (b, brx, NIOCRXSYNC) if rx_side else (a, atx, NIOCTXSYNC)
    assert priv.np_na is not None
    kring = priv.np_na.rx_rings[0] if rx_side else priv.np_na.tx_rings[0]
    lo = kring.nr_hwcur if rx_side else kring.rhead
    hi = kring.nr_hwtail if rx_side else kring.rtail
    before = (ring.head, ring.cur, ring.tail)
    ok = accepted(n, lo, hi, head, cur)
    ring.head, ring.cur = head, cur
    netmap_ioctl(priv, cmd, b"")
    assert nm.stats.ring_reinits == (0 if ok else 1)
    if ok:
        assert (kring.rhead, kring.rcur) == (head, cur)
    else:
        assert (ring.head, ring.cur) == (before[0], before[0]) and ring.tail == before[2]
        assert netmap_poll(priv, POLLIN | POLLOUT) & POLLERR == 0  # clean again
    netmap_close(a)
    netmap_close(b)
    assert nm.statistics().leaks() == {}


def test_poll_readiness_and_rows(nm: Netmap) -> None:
    a, atx, _ = open_port(nm, "l{0", slots=4)
    b, _, brx = open_port(nm, "l}0", pid=2)
    assert netmap_poll(b, POLLIN) == 0  # nothing to read
    assert netmap_poll(a, POLLOUT) == POLLOUT
    atx.send([b"1", b"2", b"3"])  # the ring is full now (capacity n - 1)
    assert netmap_poll(a, POLLOUT) == 0  # poll pushed them, no room is left
    assert netmap_poll(b, POLLIN) == POLLIN
    rows = netmap_ports([a, b])
    assert [(r.pid, r.port, r.ring, r.slots) for r in rows] == [
        (1, "l{0", "TX0", 3), (1, "l{0", "RX0", 0), (2, "l}0", "TX0", 0), (2, "l}0", "RX0", 0),
    ]  # fmt: skip
    assert brx.recv(9) == [b"1", b"2", b"3"]
    assert netmap_poll(b, POLLIN) == 0  # released; nothing new
    assert netmap_poll(a, POLLOUT) == POLLOUT
    netmap_close(a)
    netmap_close(b)
