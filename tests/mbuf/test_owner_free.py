"""An owner that has dropped its own reference trips on a second free at once."""

from __future__ import annotations

import pytest

from mbuf.kassert import KernelAssertion
from mbuf.kern import Kernel
from mbuf.mb_unmapped import m_uiotombuf
from mbuf.mbuf import M_ZOMBIE, m_copydata, m_copym, m_free


def test_owner_double_free_with_live_duplicate() -> None:
    kern = Kernel(8 << 20)
    data = bytes(range(256)) * 40
    owner = m_uiotombuf(kern, data, nomap=True)
    assert owner is not None and owner.m_next is None
    dup = m_copym(owner, 100, 1000)
    m_free(owner)  # the owner's own reference; the duplicate keeps the pages
    assert owner.m_flags & M_ZOMBIE
    assert m_copydata(dup, 0, 1000) == data[100:1100]
    with pytest.raises(KernelAssertion, match="use after free"):
        m_free(owner)
    m_free(dup)
    assert kern.leaks() == {}
