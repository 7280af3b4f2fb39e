"""m_pullup: refuses an unmapped first mbuf; pulls bytes out of unmapped ones after it."""

from __future__ import annotations

import pytest

from mbuf.kassert import KernelAssertion
from mbuf.kern import Kernel
from mbuf.mb_unmapped import m_uiotombuf
from mbuf.mbuf import M_NOMAP, m_copydata, m_freem, m_get, m_length, m_pullup


def test_unmapped_first_mbuf_is_refused() -> None:
    kern = Kernel(8 << 20)
    m = m_uiotombuf(kern, b"x" * 5000, nomap=True)
    assert m is not None
    with pytest.raises(KernelAssertion, match="m_pullup"):
        m_pullup(m, 40)
    m_freem(m)
    assert kern.leaks() == {}


@pytest.mark.parametrize("length", [1, 10, 40, 100, 168])
def test_pullup_through_an_unmapped_mbuf(length: int) -> None:
    kern = Kernel(8 << 20)
    data = bytes(range(256)) * 40
    hdr = m_get(kern, pkthdr=True)
    assert hdr.m_dat is not None
    hdr.m_dat[:10] = data[:10]
    hdr.m_len = 10
    hdr.m_next = m_uiotombuf(kern, data[10:], nomap=True)
    hdr.m_pkthdr_len = len(data)
    m = m_pullup(hdr, length)
    assert not m.m_flags & M_NOMAP
    assert m.m_len >= length
    assert m_length(m)[0] == len(data)
    assert m_copydata(m, 0, len(data)) == data
    m_freem(m)
    assert kern.leaks() == {}


def test_pullup_beyond_mhlen_with_a_packet_header_is_refused() -> None:
    kern = Kernel(8 << 20)
    hdr = m_get(kern, pkthdr=True)
    hdr.m_len = 10
    hdr.m_next = m_uiotombuf(kern, bytes(1000), nomap=True)
    with pytest.raises(ValueError):
        m_pullup(hdr, 169)  # MHLEN is 168
    m_freem(hdr)
    assert kern.leaks() == {}


def test_pullup_beyond_mlen_or_chain_is_refused() -> None:
    kern = Kernel(8 << 20)
    m = m_get(kern)
    m.m_len = 20
    with pytest.raises(ValueError):
        m_pullup(m, 225)
    with pytest.raises(ValueError):
        m_pullup(m, 21)
    m_freem(m)
    assert kern.leaks() == {}
