"""Rules the 2019 kernel has that the model follows: ktls_enable_tx's ENXIO,
sendfile headers within sbspace, M_RDONLY on copies, in_delayed_cksum on
mapped data only, in_cksum_hdr without CSUM_IP offload, mb_free_notready."""

from __future__ import annotations

import errno
import random
from collections.abc import Callable

import pytest

from ktls.session import KtlsSession
from ktls.suites import SUITES
from ktls.workers import KtlsWorkers
from mbuf.ifnet import CSUM_IP, CSUM_IP_TCP, IFCAP_NOMAP, IFCAP_TSO4, IFCAP_TXCSUM
from mbuf.ip_output import in_delayed_cksum, ip_output
from mbuf.kassert import KernelAssertion
from mbuf.kern import Kernel
from mbuf.mb_unmapped import m_uiotombuf, mb_free_mext_pgs
from mbuf.mbuf import (
    M_NOTREADY,
    M_RDONLY,
    Mbuf,
    m_copydata,
    m_copym,
    m_freem,
    m_get,
    mb_alloc_ext_pgs,
    mb_free_notready,
)
from mbuf.param import MCLBYTES, PAGE_SIZE, TCPIP_HDR_LEN
from mbuf.sendfile import SendfileJob, SendfileStatus, sendfile_step
from mbuf.socket import soclose
from mbuf.vm_object import PagerRequest
from tests.mbuf.builders import SMALL_MEM, DiskFile, make_cluster, take_ready
from tests.support.pair import DST_IP, SRC_IP, new_socket, run_io
from tests.support.wire import fold16

MakeFile = Callable[[bytes], DiskFile]


def test_ktls_enable_tx_refuses_a_kernel_without_ext_pgs() -> None:
    kern = Kernel(SMALL_MEM, mb_use_ext_pgs=False)
    with pytest.raises(OSError) as err:
        KtlsSession(kern, KtlsWorkers(0), SUITES["TLS_AES_128_GCM_SHA256"], bytes(16), bytes(12))
    assert err.value.errno == errno.ENXIO


def test_sendfile_headers_are_limited_to_sbspace(make_file: MakeFile) -> None:
    """m_uiotombuf(hdr_uio, ..., space): a head larger than the free space goes in
    parts, the rest on the next pass, and the buffer never holds more than hiwat."""
    kern = Kernel(SMALL_MEM)
    sndbuf = 4 * PAGE_SIZE
    so = new_socket(kern, sndbuf=sndbuf)
    head = random.Random(1).randbytes(3 * sndbuf // 2)
    data = random.Random(2).randbytes(100)
    tf = make_file(data)
    job = SendfileJob(so, tf.obj(kern), tf.fd, 0, len(data), head)
    io: list[PagerRequest] = []
    assert sendfile_step(job, io) is SendfileStatus.NEED_SPACE
    assert so.so_snd.sb_ccc == sndbuf and job.sbytes == sndbuf
    out = take_ready(so.so_snd)
    assert sendfile_step(job, io) is SendfileStatus.DONE
    run_io(kern, io)
    out += take_ready(so.so_snd)
    assert out == head + data and job.sbytes == len(head) + len(data)
    job.close()
    soclose(so)
    assert kern.leaks() == {}


def test_copies_inherit_m_rdonly(kern: Kernel) -> None:
    """mb_dupcl passes M_RDONLY on from the source; page vectors are born read-only
    (mb_alloc_ext_pgs), a cluster is not, and neither is its copy."""
    pgs = mb_alloc_ext_pgs(kern, False, mb_free_mext_pgs)
    assert pgs.m_flags & M_RDONLY
    m_freem(pgs)
    unmapped = m_uiotombuf(kern, bytes(5000), nomap=True)
    assert unmapped is not None
    cl, _ = make_cluster(kern, MCLBYTES, 1000, random.Random(3))
    for src, rdonly in ((unmapped, True), (cl, False)):
        dup = m_copym(src, 10, 100)
        assert bool(dup.m_flags & M_RDONLY) is rdonly
        m_freem(dup)
    m_freem(unmapped)
    m_freem(cl)
    assert kern.leaks() == {}


def _packet(kern: Kernel, payload: bytes, nomap: bool) -> Mbuf:
    hdr = m_get(kern, pkthdr=True)
    assert hdr.m_dat is not None
    hdr.m_dat[:TCPIP_HDR_LEN] = bytes.fromhex("45000000000140004006") + bytes(30)
    hdr.m_dat[2:4] = (TCPIP_HDR_LEN + len(payload)).to_bytes(2, "big")
    hdr.m_dat[12:16] = SRC_IP.to_bytes(4, "big")
    hdr.m_dat[16:20] = DST_IP.to_bytes(4, "big")
    hdr.m_len = TCPIP_HDR_LEN
    hdr.m_next = m_uiotombuf(kern, payload, nomap=nomap)
    hdr.m_pkthdr_len = TCPIP_HDR_LEN + len(payload)
    hdr.m_pkthdr_csum_flags = CSUM_IP | CSUM_IP_TCP
    return hdr


def test_in_delayed_cksum_refuses_an_unmapped_chain(kern: Kernel) -> None:
    pkt = _packet(kern, bytes(3000), nomap=True)
    with pytest.raises(KernelAssertion, match="convert first"):
        in_delayed_cksum(pkt, SRC_IP, DST_IP)
    m_freem(pkt)
    assert kern.leaks() == {}


@pytest.mark.parametrize("txcsum", [True, False])
def test_ip_header_checksum_in_software_without_csum_ip(txcsum: bool) -> None:
    """No CSUM_IP in if_hwassist: ip_output computes ip_sum (in_cksum_hdr); with
    the offload the header goes to the NIC with ip_sum 0 for it to fill."""
    caps = IFCAP_NOMAP | (IFCAP_TXCSUM | IFCAP_TSO4 if txcsum else 0)
    kern = Kernel(SMALL_MEM, capenable=caps)
    pkt = _packet(kern, bytes(1000), nomap=True)
    txq = kern.new_txq()
    assert ip_output(kern, pkt, txq, SRC_IP, DST_IP, 1) == 0
    ip = m_copydata(txq.ring[0].m, 0, 20)
    if txcsum:
        assert ip[10:12] == b"\0\0" and kern.stats.ip.sw_hdr_csum == 0
    else:
        assert fold16(ip) == 0xFFFF and kern.stats.ip.sw_hdr_csum == 1
    txq.drain()
    assert kern.leaks() == {}


def test_mb_free_notready_counts_pages(kern: Kernel) -> None:
    """An EXT_PGS mbuf is freed once its nrdy pages are counted; others count one."""
    top = m_uiotombuf(kern, bytes(3 * PAGE_SIZE + 10), nomap=True, maxseg=2 * PAGE_SIZE)
    assert top is not None and top.m_next is not None
    tail = m_get(kern)
    top.m_next.m_next = tail
    for m in (top, top.m_next, tail):
        m.m_flags |= M_NOTREADY
    top.ext_pgs.nrdy, top.m_next.ext_pgs.nrdy = 2, 2
    mb_free_notready(top, 5)
    assert kern.leaks() == {}
    with pytest.raises(KernelAssertion, match="removed only"):
        mb_free_notready(m_get(kern), 2)
