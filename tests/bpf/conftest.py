"""Fixtures for the bpf tests: a kernel, a BPF subsystem on a fake clock, frames and chains.

Frames are built here byte by byte (Ethernet, IPv4 or IPv6, TCP), without the
model's own header code, so a filter's verdict can be checked against what
the frame is known to hold. `chain_of` cuts a frame's bytes into a chain of
plain and cluster mbufs at given offsets; `unmapped_frame` puts the TCP
payload of a frame into an unmapped EXT_PGS mbuf behind a plain header mbuf,
as tcp_output's chains look on the wire.
"""

from __future__ import annotations

import itertools
import random
import struct
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from bpf.bpf import BpfIf, bpfattach, bpfopen
from bpf.bpf_h import DLT_EN10MB, ETHER_HDR_LEN
from bpf.bpf_ioctl import bpf_ioctl_sblen, bpf_ioctl_setif
from bpf.bpfdesc import Bpf, BpfD
from mbuf.kern import Kernel
from mbuf.mbuf import Mbuf, m_freem, m_get, m_getcl
from mbuf.param import MCLBYTES, MLEN, PAGE_SIZE
from tests.mbuf.builders import SMALL_MEM, make_pgs

DST_MAC = bytes.fromhex("020000000002")
SRC_MAC = bytes.fromhex("020000000001")
TH_FIN, TH_SYN, TH_RST, TH_PUSH, TH_ACK = 0x01, 0x02, 0x04, 0x08, 0x10


class FakeClock:
    """A clock that moves 1.5 ms per reading, from a fixed epoch second."""

    def __init__(self) -> None:
        self.now = 1_700_000_000 * 1_000_000_000 + 123_456_789

    def __call__(self) -> int:
        self.now += 1_500_000
        return self.now


def nm0_descriptor(kern: Kernel) -> tuple[Bpf, BpfIf, BpfD]:
    """A BPF subsystem on a fake clock attached to `kern`'s nm0 (its if_bpf) and
    one descriptor on it with a 512 KiB buffer: what a capture sees of nm0."""
    bpf = Bpf(clock=FakeClock())
    bif = bpfattach(bpf, "nm0", DLT_EN10MB, ETHER_HDR_LEN)
    kern.ifnet.if_bpf = bif
    d = bpfopen(bpf, pid=1)
    bpf_ioctl_sblen(d, 0x80000)
    bpf_ioctl_setif(d, "nm0")
    return bpf, bif, d


@dataclass(frozen=True)
class Frame:
    """An Ethernet frame's bytes and what it is known to hold."""

    data: bytes
    ipv6: bool
    proto: int
    sport: int
    dport: int
    flags: int
    fragment: bool


def frame(
    *,
    ipv6: bool = False,
    proto: int = 6,
    sport: int = 443,
    dport: int = 50000,
    flags: int = TH_ACK,
    payload: bytes = b"",
    ip_options: int = 0,
    fragment: bool = False,
) -> Frame:
    """Ethernet + IPv4 (with `ip_options` 4-byte words of options) or IPv6 + TCP + payload."""
    tcp = struct.pack("!HHIIBBHHH", sport, dport, 1000, 2000, 5 << 4, flags, 65535, 0, 0)
    l4 = (tcp if proto == 6 else b"\0" * 8) + payload
    if ipv6:
        ip = struct.pack("!IHBB", 6 << 28, len(l4), proto, 64) + bytes(range(32))
        ethertype = 0x86DD
    else:
        ihl = 5 + ip_options
        frag = 0x2000 | 1 if fragment else 0x4000  # MF and offset 8 bytes, or DF
        ip = struct.pack(
            "!BBHHHBBH4s4s", (4 << 4) | ihl, 0, ihl * 4 + len(l4), 1, frag, 64, proto, 0,
            bytes([10, 0, 0, 1]), bytes([10, 0, 0, 2]),
        ) + b"\x01" * (4 * ip_options)  # fmt: skip
        ethertype = 0x0800
    eth = DST_MAC + SRC_MAC + ethertype.to_bytes(2, "big")
    return Frame(eth + ip + l4, ipv6, proto, sport, dport, flags, fragment)


def chain_of(kern: Kernel, data: bytes, cuts: list[int]) -> Mbuf:
    """A chain holding `data`, cut at the sorted offsets `cuts` (pieces of at most
    MCLBYTES: longer pieces are cut again), plain mbufs for short pieces."""
    bounds = [0, *sorted(c for c in set(cuts) if 0 < c < len(data)), len(data)]
    pieces: list[bytes] = []
    for a, b in itertools.pairwise(bounds):
        for s in range(a, b, MCLBYTES):
            pieces.append(data[s : min(b, s + MCLBYTES)])
    if not pieces:
        pieces = [b""]
    top: Mbuf | None = None
    tail: Mbuf | None = None
    for piece in pieces:
        if len(piece) <= MLEN:
            m = m_get(kern, pkthdr=top is None)
            assert m.m_dat is not None
            m.m_dat[: len(piece)] = piece
        else:
            m = m_getcl(kern, pkthdr=top is None)
            assert m.m_ext is not None and m.m_ext.ext_buf is not None
            m.m_ext.ext_buf[: len(piece)] = piece
        m.m_len = len(piece)
        if tail is None:
            top = m
        else:
            tail.m_next = m
        tail = m
    assert top is not None
    top.m_pkthdr_len = len(data)
    return top


def unmapped_frame(
    kern: Kernel, rng: random.Random, npgs: int = 2, first_pg_off: int = 100, **kw: object
) -> tuple[Mbuf, bytes]:
    """A frame whose TCP payload lies in an unmapped EXT_PGS mbuf (random page
    bytes) behind a plain mbuf holding its headers; the chain and its bytes."""
    last = PAGE_SIZE - 7 if npgs > 1 else 300
    pgs, payload = make_pgs(kern, rng, npgs=npgs, first_pg_off=first_pg_off, last_pg_len=last)
    f = frame(payload=payload, **kw)  # type: ignore[arg-type]
    hlen = len(f.data) - len(payload)
    head = chain_of(kern, f.data[:hlen], [])
    head.m_next = pgs
    return head, f.data


@pytest.fixture
def kern() -> Iterator[Kernel]:
    k = Kernel(SMALL_MEM)
    yield k
    assert k.leaks() == {}, "mbufs or pages leaked"


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def bpf(clock: FakeClock) -> Iterator[Bpf]:
    b = Bpf(clock=clock)
    b.sysctl.zerocopy_enable = True
    yield b
    assert b.stats.leaks() == {}, "descriptors or buffers leaked"


@pytest.fixture
def bif(bpf: Bpf) -> BpfIf:
    return bpfattach(bpf, "nm0", DLT_EN10MB, ETHER_HDR_LEN)


def free(m: Mbuf) -> None:
    m_freem(m)
