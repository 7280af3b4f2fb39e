"""Copy monitors of nm0, driven by an in-memory connection (as
tests/bpf/test_nm0_taps.py drives the BPF tap): a monitor sees the same frames
a BPF descriptor sees, in the same order, cut to the buffer size; /t and /r see
one direction each; nobody monitoring costs nothing."""

from __future__ import annotations

import errno

import pytest

from bpf.bpf import bpf_close, bpfattach, bpfdetach, bpfopen, bpfread
from bpf.bpf_h import DLT_EN10MB
from bpf.bpf_ioctl import bpf_ioctl_sblen, bpf_ioctl_setif
from bpf.bpfdesc import Bpf
from mbuf.if_tap import ETHER_HDR_LEN
from mbuf.kern import Kernel
from netmap.netmap import netmap_close, netmap_ioctl
from netmap.netmap_h import NIOCRXSYNC, NR_MONITOR_RX, NR_MONITOR_TX, NS_TXMON, POLLIN
from netmap.netmap_kern import Netmap, NetmapPrivD
from netmap.netmap_monitor import netmap_attach_ifnet
from netmap.netmap_sync import netmap_poll
from tests.bpf.conftest import FakeClock
from tests.netmap.conftest import UserRing, open_port
from tests.support.pair import ConnectionPair, new_socket
from userland.zbuf import bpf_records

REQUEST = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"
BODY = bytes(range(256)) * 400  # 100 KiB: TSO bursts longer than a buffer


def drain(priv: NetmapPrivD, rx: UserRing) -> list[tuple[bytes, int]]:
    """Every frame waiting in the monitor ring: (bytes, slot flags)."""
    netmap_ioctl(priv, NIOCRXSYNC, b"")
    out = []
    while rx.head != rx.tail:
        idx, ln, fl = rx.slot(rx.head)
        out.append((bytes(rx.buf(idx)[:ln]), fl))
        rx.head = rx.cur = (rx.head + 1) % rx.num_slots
    netmap_ioctl(priv, NIOCRXSYNC, b"")
    return out


@pytest.mark.parametrize("ipv6", [False, True])
def test_monitor_sees_what_bpf_sees(nm: Netmap, ipv6: bool) -> None:
    kern = Kernel()
    bpf = Bpf(clock=FakeClock())
    bif = bpfattach(bpf, "nm0", DLT_EN10MB, ETHER_HDR_LEN)
    kern.ifnet.if_bpf = bif
    netmap_attach_ifnet(nm, kern.ifnet)
    d = bpfopen(bpf, pid=1)
    bpf_ioctl_sblen(d, 0x80000)
    bpf_ioctl_setif(d, "nm0")
    both, _, brx = open_port(nm, "nm0", flags=NR_MONITOR_TX | NR_MONITOR_RX)
    txm, _, trx = open_port(nm, "nm0", pid=2, flags=NR_MONITOR_TX)
    rxm, _, rrx = open_port(nm, "nm0", pid=3, flags=NR_MONITOR_RX)
    assert kern.ifnet.if_netmap is not None
    assert both.np_na is not None and both.np_na.mem.nm_id == 1  # the interface's region
    pair = ConnectionPair(new_socket(kern, isipv6=ipv6))
    assert pair.to_server(REQUEST) == REQUEST
    assert pair.send(BODY) == BODY
    assert netmap_poll(both, POLLIN) == POLLIN
    recs = bpf_records(bpfread(d, d.bd_bufsize, nonblock=True))
    frames = drain(both, brx)
    size = brx.buf_size
    assert [f for f, _ in frames] == [r.data[:size] for r in recs]
    long = sum(1 for r in recs if len(r.data) > size)
    # Only TSO bursts (outbound) are longer: the both-ways and the /t monitor cut each.
    assert long > 0 and nm.stats.monitor_truncated == 2 * long
    outbound = [f for f, fl in frames if fl & NS_TXMON]
    inbound = [f for f, fl in frames if not fl & NS_TXMON]
    assert [f for f, _ in drain(txm, trx)] == outbound
    assert [f for f, _ in drain(rxm, rrx)] == inbound
    assert len(inbound) >= 1 and len(outbound) == kern.stats.ifnet.tx_packets
    assert nm.stats.monitor_drops == 0
    for p in (both, txm, rxm):
        netmap_close(p)
    assert kern.ifnet.if_netmap is None  # the last monitor took the hook away
    bpf_close(d)
    bpfdetach(bif)
    pair.close()
    assert kern.leaks() == {} and bpf.stats.leaks() == {}


def test_full_monitor_ring_drops(nm: Netmap) -> None:
    kern = Kernel()
    netmap_attach_ifnet(nm, kern.ifnet)
    mon, _, mrx = open_port(nm, "nm0", flags=NR_MONITOR_TX)
    assert mon.np_na is not None
    mon.np_na.rx_rings[0].nr_hwtail = mrx.num_slots - 2  # as if nearly full
    pair = ConnectionPair(new_socket(kern))
    assert pair.to_server(REQUEST) == REQUEST
    assert pair.send(BODY) == BODY
    assert nm.stats.monitor_frames == 1
    assert nm.stats.monitor_drops == kern.stats.ifnet.tx_packets - 1
    netmap_close(mon)
    pair.close()
    assert kern.leaks() == {}


def _run(monitor: bool) -> tuple[int, Netmap]:
    nm = Netmap()
    nm.sysctl.buf_num = 4096
    kern = Kernel()
    netmap_attach_ifnet(nm, kern.ifnet)
    mon = open_port(nm, "nm0", flags=NR_MONITOR_RX)[0] if monitor else None
    if mon is not None:
        netmap_close(mon)  # watched once, not any more
    assert kern.ifnet.if_netmap is None
    pair = ConnectionPair(new_socket(kern))
    assert pair.to_server(REQUEST) == REQUEST
    assert pair.send(BODY) == BODY
    pair.close()
    assert kern.leaks() == {} and nm.statistics().leaks() == {}
    return kern.stats.mb.mbufs_total, nm


def test_no_monitor_no_netmap_work() -> None:
    """With no monitor left the hook is None: not one more mbuf, no frame copied."""
    bare, _ = _run(monitor=False)
    mbufs, nm = _run(monitor=True)
    assert mbufs == bare
    assert nm.stats.monitor_frames == 0 and nm.stats.monitor_drops == 0


def test_monitor_of_unknown_interface(nm: Netmap) -> None:
    with pytest.raises(OSError) as ei:
        open_port(nm, "nm9", flags=NR_MONITOR_TX)
    assert ei.value.errno == errno.ENXIO
