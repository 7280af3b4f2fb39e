"""The tap as the driver will call it: BpfIf behind IfTap, Ethernet framing, nothing left."""

from __future__ import annotations

import random

import pytest

from bpf.bpf import BpfIf, bpf_close, bpfopen, bpfread
from bpf.bpf_ioctl import bpf_ioctl_setif
from bpf.bpfdesc import Bpf
from mbuf.if_tap import (
    ETHERTYPE_IP,
    ETHERTYPE_IPV6,
    PFIL_IN,
    PFIL_OUT,
    IfTap,
    ether_header_mbuf,
    if_tap_ether,
)
from mbuf.kern import Kernel
from mbuf.mbuf import m_freem
from tests.bpf.conftest import DST_MAC, SRC_MAC, chain_of, frame, unmapped_frame
from userland.zbuf import bpf_records


def as_tap(bif: BpfIf) -> IfTap:
    return bif  # the static check: BpfIf is an IfTap (mypy holds it)


@pytest.mark.parametrize(("ipv6", "ethertype"), [(False, ETHERTYPE_IP), (True, ETHERTYPE_IPV6)])
def test_if_tap_ether_frames_an_ip_chain(
    kern: Kernel, bpf: Bpf, bif: BpfIf, ipv6: bool, ethertype: int
) -> None:
    d = bpfopen(bpf, pid=1)
    bpf_ioctl_setif(d, "nm0")
    f = frame(ipv6=ipv6, payload=b"t" * 300).data
    m = chain_of(kern, f[14:], [20])  # the chain as ip_output hands it over
    before = kern.stats.mb.mbufs_in_use
    if_tap_ether(as_tap(bif), m, DST_MAC, SRC_MAC, ethertype, PFIL_OUT)
    assert kern.stats.mb.mbufs_in_use == before  # the header mbuf is gone again
    assert m.m_len == 20 and m.m_next is not None  # the chain is untouched
    m_freem(m)
    (rec,) = bpf_records(bpfread(d, d.bd_bufsize, nonblock=True))
    assert rec.data == f
    bpf_close(d)


def test_tap_without_listeners_does_nothing(kern: Kernel, bpf: Bpf, bif: BpfIf) -> None:
    m, _ = unmapped_frame(kern, random.Random(1))
    bif.tap(m, PFIL_IN)
    m_freem(m)
    assert bpf.stats.packets_tapped == 0 and bpf.stats.unmapped_copies == 0


def test_ether_header_mbuf_checks(kern: Kernel) -> None:
    m = ether_header_mbuf(kern, DST_MAC, SRC_MAC, ETHERTYPE_IP)
    assert m.m_len == 14 and m.m_dat is not None and bytes(m.m_dat[12:14]) == b"\x08\x00"
    m_freem(m)
    with pytest.raises(ValueError, match="6 bytes"):
        ether_header_mbuf(kern, b"\0" * 5, SRC_MAC, ETHERTYPE_IP)
    with pytest.raises(ValueError, match="ethertype"):
        ether_header_mbuf(kern, DST_MAC, SRC_MAC, 0x0806)
