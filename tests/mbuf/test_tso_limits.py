"""tcp_m_copym's segment limits and busdma's segments (mbuf/tcp_output.py, ifnet.py).

The 2019 tcp_m_copym charges a mapped mbuf howmany(bytes, segsize) DMA segments
and an unmapped one 3 more at min(segsize, PAGE_SIZE) each, keeps one for the
header, and cuts the burst at the mbuf that does not fit. busdma merges
physically adjacent pieces whether they come from sf_buf or unmapped mbufs.
"""

from __future__ import annotations

import random
from collections.abc import Callable

import pytest

from mbuf.ifnet import (
    IF_HW_TSOMAX_DEFAULT,
    IF_HW_TSOMAXSEGCOUNT_DEFAULT,
    IF_HW_TSOMAXSEGSIZE_DEFAULT,
    IFCAP_TSO4,
    IFCAP_TXCSUM,
)
from mbuf.kern import Kernel
from mbuf.mb_unmapped import m_uiotombuf
from mbuf.mbuf import m_freem
from mbuf.param import IP_MAXPACKET, MCLBYTES, PAGE_SIZE, TCP_MSS
from mbuf.sendfile import SendfileJob, SendfileStatus, sendfile_step
from mbuf.socket import soclose
from mbuf.tcp_output import tcp_m_copym_len
from mbuf.vm_object import PagerRequest
from tests.mbuf.builders import SMALL_MEM, DiskFile, FakeTls, link, make_cluster
from tests.support.pair import new_socket, run_io
from tests.support.wire import drain

MakeFile = Callable[[bytes], DiskFile]


def test_if_attach_defaults() -> None:
    """sys/net/if.c if_attach_internal, for a driver that sets no TSO limits."""
    assert IF_HW_TSOMAX_DEFAULT == min(IP_MAXPACKET, 32 * MCLBYTES - (14 + 4)) == 65518
    assert (IF_HW_TSOMAXSEGCOUNT_DEFAULT, IF_HW_TSOMAXSEGSIZE_DEFAULT) == (35, 2048)
    ifp = Kernel(SMALL_MEM).ifnet
    assert (ifp.if_hw_tsomax, ifp.if_hw_tsomaxsegcount, ifp.if_hw_tsomaxsegsize) == (
        65518,
        35,
        2048,
    )


@pytest.mark.parametrize(
    ("tsomax", "segcount", "segsize"), [(1000, 35, 2048), (65518, 4, 2048), (65518, 35, 100)]
)
def test_set_tso_limits_refuses_unusable_values(tsomax: int, segcount: int, segsize: int) -> None:
    with pytest.raises(ValueError, match="if_hw_tsomax"):
        Kernel(SMALL_MEM).ifnet.set_tso_limits(tsomax, segcount, segsize)


@pytest.mark.parametrize(
    ("nbytes", "seglimit", "segsize", "expect"),
    [
        (65160, 35, 2048, 63488),  # 3 + 32 >= 35: cut to (35 - 3 - 1) * 2048
        (63488, 35, 2048, 63488),  # 3 + 31 < 35: whole
        (65160, 0, 2048, 65160),  # no limit (no TSO)
        (65160, 35, 4096, 65160),  # fragsize min(4096, PAGE_SIZE): 3 + 16
        (65160, 19, 4096, 15 * PAGE_SIZE),  # 3 + 16 >= 19: (19 - 3 - 1) pages
        (40000, 5, 2048, 2048),  # only one segment left after the 3 charged
    ],
)
def test_unmapped_mbuf_charge(
    kern: Kernel, nbytes: int, seglimit: int, segsize: int, expect: int
) -> None:
    m = m_uiotombuf(kern, bytes(nbytes), nomap=True)
    assert m is not None and m.m_next is None
    assert tcp_m_copym_len(m, 0, nbytes, seglimit, segsize) == expect
    m_freem(m)


def test_mapped_mbufs_charge_per_segment(kern: Kernel) -> None:
    """Twenty 2 KiB clusters: one segment each; the 35th segment is the header's,
    so 34 clusters fit and a burst over them stops after the 34th."""
    rng = random.Random(1)
    ms = [make_cluster(kern, MCLBYTES, MCLBYTES, rng)[0] for _ in range(40)]
    top = link(*ms)
    assert tcp_m_copym_len(top, 0, 40 * MCLBYTES, 35, 2048) == 34 * MCLBYTES
    assert tcp_m_copym_len(top, 100, 20 * MCLBYTES, 35, 2048) == 20 * MCLBYTES
    # Four clusters at 1 KiB segments: 2 each; at 35 the 18th no longer fits whole.
    assert tcp_m_copym_len(top, 0, 40 * MCLBYTES, 35, 1024) == 17 * MCLBYTES
    m_freem(top)


def test_unmapped_chain_stops_at_the_mbuf_that_cannot_start(kern: Kernel) -> None:
    """Records of 4 pages (16 KiB): 3 + 8 segments each at 2048; three use 33 of
    the 35, and the fourth cannot even start (3 + 1 >= 2)."""
    m = m_uiotombuf(kern, bytes(6 * 16384), nomap=True, maxseg=16384)
    assert m is not None
    assert tcp_m_copym_len(m, 0, 65160, 35, 2048) == 3 * 16384
    m_freem(m)


def _sendfile(kern: Kernel, make_file: MakeFile, size: int, tls: FakeTls | None = None) -> bytes:
    data = random.Random(size).randbytes(size)
    tf = make_file(data)
    so = new_socket(kern, tls=tls)
    job = SendfileJob(so, tf.obj(kern), tf.fd, 0, size)
    io: list[PagerRequest] = []
    assert sendfile_step(job, io) is SendfileStatus.DONE
    run_io(kern, io)
    if tls is not None:
        tls.encrypt_all()
    out = drain(so)
    job.close()
    soclose(so)
    assert kern.leaks() == {}
    return out


def test_unmapped_bursts_are_cut_and_counted(make_file: MakeFile) -> None:
    kern = Kernel(SMALL_MEM)
    size = 200_000
    assert len(_sendfile(kern, make_file, size)) == size
    st = kern.stats
    assert st.tcp.tso_segcount_cut == st.tcp.sndtotal - 1  # all but the last
    assert st.ifnet.tx_defrag == 0  # the charge keeps every burst within the NIC's limit
    assert st.tcp.sndbyte == size and st.tcp.sndpack == st.tcp.sndtotal == 4


def test_sf_buf_bursts_are_not_cut(make_file: MakeFile) -> None:
    """One EXT_SFBUF mbuf per page costs 2 segments of 2048: 17 pages fit, more
    than one 65160-byte burst needs."""
    kern = Kernel(SMALL_MEM, mb_use_ext_pgs=False)
    assert len(_sendfile(kern, make_file, 200_000)) == 200_000
    assert kern.stats.tcp.tso_segcount_cut == 0 and kern.stats.ifnet.tx_defrag == 0


def test_ktls_records_cut_bursts_to_three(make_file: MakeFile) -> None:
    kern = Kernel(SMALL_MEM)
    tls = FakeTls()
    size = 10 * 16384
    out = _sendfile(kern, make_file, size, tls)
    assert len(out) == size + 10 * (5 + 16)
    st = kern.stats
    assert st.tcp.sndtotal == 4  # 3 + 3 + 3 + 1 records
    assert st.tcp.tso_segcount_cut == 3 and st.ifnet.tx_defrag == 0


@pytest.mark.parametrize("caps", [IFCAP_TXCSUM | IFCAP_TSO4, None])
def test_dma_segments_alike_for_sf_buf_and_unmapped_pages(
    make_file: MakeFile, caps: int | None
) -> None:
    """The same file, bursts cut alike (segment limit lifted): EXT_SFBUF mbufs from
    sendfile (or from ip_output's conversion without IFCAP_NOMAP) and unmapped
    mbufs load into the same busdma segments, adjacent pages merged."""
    counts = []
    for ext_pgs in (True, False):
        kern = Kernel(SMALL_MEM, mb_use_ext_pgs=ext_pgs)
        if caps is not None and ext_pgs:
            kern.ifnet.set_capenable(caps)  # unmapped chains converted in ip_output
        kern.ifnet.set_tso_limits(IF_HW_TSOMAX_DEFAULT, 64, 2048)
        assert len(_sendfile(kern, make_file, 300_000)) == 300_000
        st = kern.stats
        counts.append((st.ifnet.tx_packets, st.ifnet.tx_dma_segments))
    assert counts[0] == counts[1]
    packets, dma = counts[0]
    # Adjacent 2048-byte pieces: about one segment per 2 KiB, plus a header each.
    assert dma == pytest.approx(300_000 / 2048 + packets, abs=packets * 2)


def test_dma_segments_split_at_maxsegsize(make_file: MakeFile) -> None:
    kern = Kernel(SMALL_MEM, capenable=IFCAP_TXCSUM | IFCAP_TSO4)
    kern.ifnet.set_tso_limits(IF_HW_TSOMAX_DEFAULT, 64, IP_MAXPACKET)
    _sendfile(kern, make_file, TCP_MSS * 10)  # one burst of contiguous pages
    assert kern.stats.ifnet.tx_dma_segments == 2  # header + one merged run
