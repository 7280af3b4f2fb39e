"""Pipes: packets cross intact and in order at every batch size, only slot
descriptors move (the two ends see the same buffer indexes), buffers swapped
by the reader come back to the writer, and everything is freed at close."""

from __future__ import annotations

import errno

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from netmap.netmap import netmap_close, netmap_ioctl
from netmap.netmap_h import (
    NETMAP_IF_OFF,
    NIOCRXSYNC,
    NIOCTXSYNC,
    NM_MAXPIPES,
    NS_BUF_CHANGED,
    NS_MOREFRAG,
)
from netmap.netmap_kern import Netmap, NetmapPrivD
from tests.netmap.conftest import UserRing, open_port


def payload(i: int) -> bytes:
    """Packet i: its number, then a pattern of a length that varies with i."""
    return i.to_bytes(4, "little") + bytes((i + j) & 0xFF for j in range(60 + i % 37))


def pump(
    a: NetmapPrivD, atx: UserRing, b: NetmapPrivD, brx: UserRing, total: int, batch: int
) -> list[bytes]:
    """Send `total` packets from a to b in batches of at most `batch` (one
    NIOCTXSYNC per batch, one NIOCRXSYNC to see and one to release)."""
    got: list[bytes] = []
    sent = 0
    while len(got) < total:
        k = min(batch, atx.space(), total - sent)
        atx.send([payload(i) for i in range(sent, sent + k)])
        sent += k
        netmap_ioctl(a, NIOCTXSYNC, b"")
        netmap_ioctl(b, NIOCRXSYNC, b"")
        got += brx.recv(brx.num_slots)
        netmap_ioctl(b, NIOCRXSYNC, b"")
    return got


@pytest.mark.parametrize(
    ("batch", "slots", "total"),
    [(1, 64, 300), (2, 64, 300), (7, 64, 1000), (64, 256, 3000), (512, 1024, 6000),
     (2048, 4096, 20000)],
)  # fmt: skip
def test_pipe_moves_exactly_n_packets_intact(
    nm: Netmap, batch: int, slots: int, total: int
) -> None:
    nm.sysctl.ring_size = 256 + 16 * 4096
    nm.sysctl.buf_num = 2 * slots + 2
    a, atx, _ = open_port(nm, "p{0", slots=slots)
    b, _, brx = open_port(nm, "p}0", pid=2)
    assert atx.num_slots == brx.num_slots == slots
    got = pump(a, atx, b, brx, total, batch)
    assert got == [payload(i) for i in range(total)]  # wrapped total // slots times
    assert atx.head == total % slots and brx.head == total % slots
    na = a.np_na
    assert na is not None
    assert na.tx_rings[0].kr_slots == total and nm.stats.slots_moved == 2 * total
    assert nm.stats.txsync_ioctl + nm.stats.rxsync_ioctl > 0 and nm.stats.ring_reinits == 0
    netmap_close(a)
    netmap_close(b)


def test_pipe_shares_buffers_no_copy(nm: Netmap) -> None:
    """The RX slot names the very buffer the TX slot named: a descriptor moved."""
    a, atx, _ = open_port(nm, "q{1", slots=16)
    b, _, brx = open_port(nm, "q}1", pid=2)
    idx0 = atx.slot(0)[0]
    atx.send([b"x" * 100])
    netmap_ioctl(a, NIOCTXSYNC, b"")
    netmap_ioctl(b, NIOCRXSYNC, b"")
    assert brx.slot(0)[:2] == (idx0, 100)
    assert bytes(brx.buf(idx0)[:100]) == b"x" * 100
    netmap_close(b)
    netmap_close(a)


def test_reader_swaps_an_extra_buffer_in(nm: Netmap) -> None:
    """B.8: the reader keeps the received buffer (swapping in one of its extra
    buffers, NS_BUF_CHANGED); the writer gets the extra buffer back in its slot."""
    a, atx, _ = open_port(nm, "s{1", slots=8)
    b, _, brx = open_port(nm, "s}1", pid=2, extra=3)
    assert b.np_extra_head != 0
    got = b.np_extra_head
    atx.send([b"keep me"])
    netmap_ioctl(a, NIOCTXSYNC, b"")
    netmap_ioctl(b, NIOCRXSYNC, b"")
    idx, ln, _ = brx.slot(0)
    brx.set_slot(0, got, 0, NS_BUF_CHANGED)
    brx.head = brx.cur = 1
    netmap_ioctl(b, NIOCRXSYNC, b"")
    netmap_ioctl(a, NIOCTXSYNC, b"")
    assert atx.slot(0)[0] == got  # the writer's slot now holds the swapped buffer
    assert bytes(brx.buf(idx)[:ln]) == b"keep me"
    # The reader's list from ni_bufs_head no longer holds `got`: put idx in its place.
    mem = b.np_na.mem if b.np_na else None
    assert mem is not None
    nxt = bytes(mem.buf(got)[:4])
    mem.buf(idx)[:4] = nxt
    o = b.np_nifp + NETMAP_IF_OFF["ni_bufs_head"]
    mem.view[o : o + 4] = idx.to_bytes(4, "little")
    netmap_close(b)
    netmap_close(a)
    assert nm.stats.bad_buf_frees == 0


def test_morefrag_publishes_complete_packets_only(nm: Netmap) -> None:
    a, atx, _ = open_port(nm, "f{1", slots=8)
    b, _, brx = open_port(nm, "f}1", pid=2)
    for i, fl in enumerate((NS_MOREFRAG, 0, NS_MOREFRAG)):
        idx = atx.slot(i)[0]
        atx.set_slot(i, idx, 10, fl)
    atx.head = atx.cur = 3
    netmap_ioctl(a, NIOCTXSYNC, b"")
    netmap_ioctl(b, NIOCRXSYNC, b"")
    assert brx.tail == 2  # the third slot waits for the rest of its packet
    atx.set_slot(3, atx.slot(3)[0], 10, 0)
    atx.head = atx.cur = 4
    netmap_ioctl(a, NIOCTXSYNC, b"")
    netmap_ioctl(b, NIOCRXSYNC, b"")
    assert brx.tail == 4
    netmap_close(a)
    netmap_close(b)


def test_pipe_limit_and_names(nm: Netmap) -> None:
    nm.sysctl.buf_num = 2 * 2 * NM_MAXPIPES * 4 + 2
    nm.sysctl.ring_num = 4 * NM_MAXPIPES + 4
    nm.sysctl.if_num = NM_MAXPIPES + 2
    ports = [open_port(nm, f"m{{{i}", slots=4) for i in range(NM_MAXPIPES)]
    privs = [p[0] for p in ports]
    with pytest.raises(OSError) as ei:
        open_port(nm, f"m{{{NM_MAXPIPES}", slots=4)
    assert ei.value.errno == errno.EINVAL
    # The other pipes still work.
    b, _, brx = open_port(nm, "m}5", pid=2)
    ports[5][1].send([b"ok"])
    netmap_ioctl(privs[5], NIOCTXSYNC, b"")
    netmap_ioctl(b, NIOCRXSYNC, b"")
    assert brx.recv(4) == [b"ok"]
    with pytest.raises(OSError) as ei:
        open_port(nm, "m}5", pid=3)  # that end is bound
    assert ei.value.errno == errno.EBUSY
    for bad in ("{1", "m{", "nosuchport"):
        with pytest.raises(OSError) as ei:
            open_port(nm, bad)
        assert ei.value.errno in (errno.EINVAL, errno.ENXIO)
    netmap_close(b)
    for p in privs:
        netmap_close(p)


@settings(max_examples=40, deadline=None)
@given(
    slots=st.integers(2, 40),
    ops=st.lists(st.tuples(st.sampled_from("wtrR"), st.integers(0, 50)), max_size=120),
)
def test_pipe_any_interleaving_keeps_order(slots: int, ops: list[tuple[str, int]]) -> None:
    """Writes, txsyncs, rxsyncs and reads in any order: what is read is a prefix
    of what was written, in order and intact; nothing leaks."""
    nm = Netmap()
    nm.sysctl.buf_num = 2 * slots + 2
    a, atx, _ = open_port(nm, "h{0", slots=slots)
    b, _, brx = open_port(nm, "h}0", pid=2)
    sent = 0
    got: list[bytes] = []
    for op, k in ops:
        if op == "w":
            k = min(k, atx.space())
            atx.send([payload(i) for i in range(sent, sent + k)])
            sent += k
        elif op == "t":
            netmap_ioctl(a, NIOCTXSYNC, b"")
        elif op == "r":
            netmap_ioctl(b, NIOCRXSYNC, b"")
        else:
            got += brx.recv(k)
        assert 0 <= atx.space() < slots and 0 <= brx.space() < slots
    assert got == [payload(i) for i in range(len(got))] and len(got) <= sent
    netmap_close(a)
    netmap_close(b)
    assert nm.statistics().leaks() == {}
