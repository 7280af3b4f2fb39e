"""The taps wired into the data path: nm0's transmit (IfTxQueue.if_transmit, PFIL_OUT)
and receive (ether_input, PFIL_IN), seen by a descriptor in an in-memory connection."""

from __future__ import annotations

import struct

import pytest

from bpf.bpf import bpf_close, bpfattach, bpfdetach, bpfread
from bpf.bpf_h import DLT_EN10MB
from bpf.bpfdesc import Bpf
from mbuf.if_tap import ETHER_HDR_LEN, ETHERTYPE_IP, ETHERTYPE_IPV6, IF_LLADDR, PEER_LLADDR
from mbuf.kern import Kernel
from tests.bpf.conftest import nm0_descriptor
from tests.support.pair import ConnectionPair, new_socket
from userland.zbuf import bpf_records

REQUEST = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"
BODY = bytes(range(256)) * 400  # 100 KiB: TSO bursts


def _parse(f: bytes, ipv6: bool) -> tuple[bytes, bytes, int, int, int, int, int]:
    """dst, src, sport, dport, seq, ack, payload length of an Ethernet/IP/TCP frame."""
    dst, src, etype = struct.unpack_from("!6s6sH", f)
    ip = f[ETHER_HDR_LEN:]
    if ipv6:
        assert etype == ETHERTYPE_IPV6 and ip[0] >> 4 == 6 and ip[6] == 6
        assert struct.unpack_from("!H", ip, 4)[0] == len(ip) - 40
        ihl = 40
    else:
        assert etype == ETHERTYPE_IP and ip[0] >> 4 == 4 and ip[9] == 6
        assert struct.unpack_from("!H", ip, 2)[0] == len(ip)  # ip_len: the whole frame
        ihl = (ip[0] & 0xF) * 4
    sport, dport, seq, ack, off = struct.unpack_from("!HHIIB", ip, ihl)
    thl = (off >> 4) * 4
    return dst, src, sport, dport, seq, ack, len(ip) - ihl - thl


@pytest.mark.parametrize("ipv6", [False, True])
def test_descriptor_on_nm0_sees_both_directions(ipv6: bool) -> None:
    kern = Kernel()
    bpf, bif, d = nm0_descriptor(kern)
    pair = ConnectionPair(new_socket(kern, isipv6=ipv6))
    assert pair.to_server(REQUEST) == REQUEST
    assert pair.send(BODY) == BODY
    recs = bpf_records(bpfread(d, d.bd_bufsize, nonblock=True))
    assert all(r.caplen == r.datalen == len(r.data) for r in recs)
    pkts = [_parse(r.data, ipv6) for r in recs]
    inbound = [p for p in pkts if p[2] == 50000]
    outbound = [p for p in pkts if p[2] == 443]
    assert len(inbound) == 1 and len(outbound) == len(pkts) - 1 >= 2
    i_dst, i_src, _, i_dport, i_seq, i_ack, i_len = inbound[0]
    assert (i_dst, i_src, i_dport, i_len) == (IF_LLADDR, PEER_LLADDR, 443, len(REQUEST))
    assert pkts[0] == inbound[0]  # the request came first
    seq = i_ack  # what the peer acknowledged is where the server's data starts
    for o_dst, o_src, _, o_dport, o_seq, o_ack, o_len in outbound:
        assert (o_dst, o_src, o_dport) == (PEER_LLADDR, IF_LLADDR, 50000)
        assert o_seq == seq and o_ack == (i_seq + i_len) & 0xFFFFFFFF
        seq = (seq + o_len) & 0xFFFFFFFF
    assert sum(p[6] for p in outbound) == len(BODY)
    mss = pair.so.so_tcp.t_maxseg
    assert max(p[6] for p in outbound) > mss  # a TSO burst is one large frame
    assert bpf.stats.packets_tapped == len(recs) == d.bd_rcount == d.bd_fcount
    assert kern.stats.ifnet.tx_packets == len(outbound)
    bpf_close(d)
    bpfdetach(bif)
    pair.close()
    assert kern.leaks() == {} and bpf.stats.leaks() == {}


def _run_without_descriptor(attached: bool) -> tuple[int, Bpf]:
    kern = Kernel()
    bpf = Bpf()
    if attached:  # a tap point with nobody listening: bpf_peers_present says no
        kern.ifnet.if_bpf = bpfattach(bpf, "nm0", DLT_EN10MB, ETHER_HDR_LEN)
    pair = ConnectionPair(new_socket(kern))
    assert pair.to_server(REQUEST) == REQUEST
    assert pair.send(BODY) == BODY
    assert kern.stats.ifnet.tx_packets > 0
    pair.close()
    assert kern.leaks() == {}
    return kern.stats.mb.mbufs_total, bpf


def test_no_descriptor_no_bpf_work() -> None:
    """An attached tap point nobody listens on costs nothing but the check: no
    counter moves and not one more mbuf (no Ethernet header mbuf) is allocated."""
    bare, _ = _run_without_descriptor(attached=False)
    mbufs, bpf = _run_without_descriptor(attached=True)
    assert mbufs == bare
    assert all(v == 0 for _, v in bpf.stats.items())
