"""Zero-copy mode: setup rules, the generation protocol, and the kernel with libpcap's reader.

The buffers live in memory the test (the "capturing process") owns: an
anonymous shared mmap or a memfd mapping, reached by the kernel through a
`Uvm` at a made-up user address, as the device layer will map the file the
process passes.
"""

from __future__ import annotations

import errno
import mmap
import os
import struct
import time
from collections.abc import Iterator

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from bpf.bpf import (
    BpfIf,
    bpf_canwritebuf,
    bpf_close,
    bpf_mtap,
    bpf_ready,
    bpfattach,
    bpfopen,
    bpfread,
)
from bpf.bpf_h import (
    BPF_BUFMODE_BUFFER,
    BPF_BUFMODE_ZBUF,
    BPF_MAX_PAGES,
    BZH_USER_GEN,
    DLT_EN10MB,
    ETHER_HDR_LEN,
)
from bpf.bpf_ioctl import (
    bpf_ioctl_flush,
    bpf_ioctl_getzmax,
    bpf_ioctl_gstats,
    bpf_ioctl_immediate,
    bpf_ioctl_rotzbuf,
    bpf_ioctl_sblen,
    bpf_ioctl_setbufmode,
    bpf_ioctl_setif,
    bpf_ioctl_setzbuf,
)
from bpf.bpf_zerocopy import Uvm
from bpf.bpfdesc import Bpf, BpfD
from mbuf.if_tap import PFIL_OUT
from mbuf.kern import Kernel
from mbuf.mbuf import m_freem
from mbuf.param import PAGE_SIZE
from tests.bpf.conftest import FakeClock, chain_of, frame
from tests.mbuf.builders import SMALL_MEM
from userland.zbuf import ZbufReader, bpf_records

BASE = 0x8_0000_0000  # where the "process" mapped its shared memory
BUFLEN = 2 * PAGE_SIZE


class Shm:
    """The process's shared memory: an anonymous mapping, or a memfd's."""

    def __init__(self, size: int, memfd: bool = False) -> None:
        self.fd = -1
        if memfd:
            self.fd = os.memfd_create("bpf-zbuf")
            os.ftruncate(self.fd, size)
            self.map = mmap.mmap(self.fd, size)
        else:
            self.map = mmap.mmap(-1, size)
        self.view = memoryview(self.map)
        self.handed: list[memoryview] = []  # views given out, released by close()

    def uvm(self) -> Uvm:
        return Uvm(BASE, self.view)

    def buf(self, i: int, length: int = BUFLEN) -> memoryview:
        v = self.view[i * length : (i + 1) * length]
        self.handed.append(v)
        return v

    def words(self, i: int, length: int = BUFLEN) -> tuple[int, int, int]:
        b = self.buf(i, length)
        gen, length, user = struct.unpack_from("=III", b)
        return gen, length, user

    def close(self) -> None:
        for v in self.handed:
            v.release()
        self.view.release()
        self.map.close()
        if self.fd >= 0:
            os.close(self.fd)


@pytest.fixture(params=["anon", "memfd"])
def shm(request: pytest.FixtureRequest) -> Iterator[Shm]:
    s = Shm(4 * BUFLEN, memfd=request.param == "memfd")
    yield s
    s.close()


def zopen(bpf: Bpf, shm: Shm, length: int = BUFLEN) -> BpfD:
    d = bpfopen(bpf, pid=7)
    bpf_ioctl_setbufmode(d, BPF_BUFMODE_ZBUF)
    bpf_ioctl_setzbuf(d, shm.uvm(), BASE, BASE + length, length)
    bpf_ioctl_setif(d, "nm0")
    return d


def send(kern: Kernel, bif: BpfIf, data: bytes) -> None:
    m = chain_of(kern, data, [14])
    bpf_mtap(bif, m, PFIL_OUT)
    m_freem(m)


def err(fn: object, *args: object) -> int:
    with pytest.raises(OSError) as e:
        fn(*args)  # type: ignore[operator]
    assert e.value.errno is not None
    return e.value.errno


# -- setup rules --------------------------------------------------------------


def test_knob_off_refuses_zbuf_mode(bpf: Bpf) -> None:
    bpf.sysctl.zerocopy_enable = False
    d = bpfopen(bpf, pid=1)
    assert err(bpf_ioctl_setbufmode, d, BPF_BUFMODE_ZBUF) == errno.EINVAL  # as bpf.c answers
    assert err(bpf_ioctl_setbufmode, d, 3) == errno.EINVAL
    bpf_ioctl_setbufmode(d, BPF_BUFMODE_BUFFER)
    bpf_close(d)


def test_mode_is_fixed_once_buffers_exist(bpf: Bpf, bif: BpfIf, shm: Shm) -> None:
    d = zopen(bpf, shm)
    assert err(bpf_ioctl_setbufmode, d, BPF_BUFMODE_BUFFER) == errno.EBUSY
    bpf_close(d)


def test_zero_copy_only_ioctls(bpf: Bpf, bif: BpfIf, shm: Shm) -> None:
    d = bpfopen(bpf, pid=1)
    assert err(bpf_ioctl_getzmax, d) == errno.EOPNOTSUPP
    assert err(bpf_ioctl_rotzbuf, d) == errno.EOPNOTSUPP
    assert err(bpf_ioctl_setzbuf, d, shm.uvm(), BASE, BASE + BUFLEN, BUFLEN) == errno.EOPNOTSUPP
    bpf_ioctl_setbufmode(d, BPF_BUFMODE_ZBUF)
    assert bpf_ioctl_getzmax(d) == BPF_MAX_PAGES * PAGE_SIZE == 2 * 1024 * 1024
    assert err(bpf_ioctl_sblen, d, 8192) == errno.EOPNOTSUPP
    assert err(bpf_ioctl_setif, d, "nm0") == errno.EINVAL  # BIOCSETIF before BIOCSETZBUF
    bpf_ioctl_setzbuf(d, shm.uvm(), BASE, BASE + BUFLEN, BUFLEN)
    bpf_ioctl_setif(d, "nm0")
    assert err(bpfread, d, d.bd_bufsize, True) == errno.EOPNOTSUPP
    assert d.bd_bufsize == BUFLEN - 32
    bpf_close(d)


@pytest.mark.parametrize(
    ("a", "b", "length", "want"),
    [
        pytest.param(BASE + 1, BASE + BUFLEN, BUFLEN, errno.EINVAL, id="a-unaligned"),
        pytest.param(BASE, BASE + BUFLEN + 8, BUFLEN, errno.EINVAL, id="b-unaligned"),
        pytest.param(BASE, BASE + BUFLEN, BUFLEN - 1, errno.EINVAL, id="not-whole-pages"),
        pytest.param(BASE, BASE + BUFLEN, 0, errno.EINVAL, id="empty"),
        pytest.param(0, BASE, BUFLEN, errno.EINVAL, id="null-a"),
        pytest.param(BASE, 0, BUFLEN, errno.EINVAL, id="null-b"),
        pytest.param(BASE, BASE + PAGE_SIZE, BUFLEN, errno.EINVAL, id="overlap"),
        pytest.param(BASE, BASE + 4 * BUFLEN, BUFLEN, errno.EFAULT, id="b-unmapped"),
        pytest.param(BASE - BUFLEN, BASE, BUFLEN, errno.EFAULT, id="a-below"),
    ],
)
def test_setzbuf_refuses(bpf: Bpf, shm: Shm, a: int, b: int, length: int, want: int) -> None:
    d = bpfopen(bpf, pid=1)
    bpf_ioctl_setbufmode(d, BPF_BUFMODE_ZBUF)
    assert err(bpf_ioctl_setzbuf, d, shm.uvm(), a, b, length) == want
    assert bpf.stats.buffers_in_use == 0
    bpf_close(d)


def test_setzbuf_over_zmax(bpf: Bpf) -> None:
    big = Shm(2 * (BPF_MAX_PAGES + 1) * PAGE_SIZE)
    d = bpfopen(bpf, pid=1)
    bpf_ioctl_setbufmode(d, BPF_BUFMODE_ZBUF)
    n = (BPF_MAX_PAGES + 1) * PAGE_SIZE
    assert err(bpf_ioctl_setzbuf, d, big.uvm(), BASE, BASE + n, n) == errno.EINVAL
    n = BPF_MAX_PAGES * PAGE_SIZE  # exactly zmax is fine
    bpf_ioctl_setzbuf(d, big.uvm(), BASE, BASE + n, n)
    bpf_close(d)
    big.close()


def test_second_setzbuf_and_after_attach(bpf: Bpf, bif: BpfIf, shm: Shm) -> None:
    d = bpfopen(bpf, pid=1)
    bpf_ioctl_setbufmode(d, BPF_BUFMODE_ZBUF)
    bpf_ioctl_setzbuf(d, shm.uvm(), BASE, BASE + BUFLEN, BUFLEN)
    uvm = shm.uvm()
    assert err(bpf_ioctl_setzbuf, d, uvm, BASE + 2 * BUFLEN, BASE + 3 * BUFLEN, BUFLEN) == 22
    bpf_ioctl_setif(d, "nm0")
    assert err(bpf_ioctl_setzbuf, d, uvm, BASE + 2 * BUFLEN, BASE + 3 * BUFLEN, BUFLEN) == 22
    bpf_close(d)


def test_uvm_must_be_writable() -> None:
    with pytest.raises(ValueError, match="writable"):
        Uvm(BASE, memoryview(b"\0" * PAGE_SIZE))


# -- the generation protocol ------------------------------------------------------


def test_handover_sequence_of_reference_a5(kern: Kernel, bpf: Bpf, bif: BpfIf, shm: Shm) -> None:
    """A full -> held and handed over; B fills while A is unacknowledged -> B handed over
    by buffull and the packet dropped; ack A -> next packet reclaims A, rotates B
    (no second bump) and lands in A."""
    d = zopen(bpf, shm)
    f = frame(payload=b"z" * 3000).data  # 3054 bytes + 26 of header: 3080 a record
    per = d.bd_bufsize // 3080
    assert per == 2
    assert shm.words(0) == shm.words(1) == (0, 0, 0)  # all zero: the kernel owns both
    for _ in range(per):
        send(kern, bif, f)
    assert shm.words(0) == (0, 0, 0)  # still filling A: nothing handed over
    send(kern, bif, f)  # does not fit: rotate, A handed over
    gen, length, user = shm.words(0)
    assert (gen, user, length) == (1, 0, 2 * 3080)  # bzh_kernel_len = bd_hlen
    send(kern, bif, f)  # second packet in B
    send(kern, bif, f)  # B full, no free buffer: buffull hands B over, drop
    assert shm.words(1)[:2] == (1, 2 * 3080)  # handed over with its length
    assert bpf_ioctl_gstats(d) == (5, 1)
    send(kern, bif, f)  # still no free buffer: dropped, B not handed over twice
    assert shm.words(1)[0] == 1 and bpf_ioctl_gstats(d) == (6, 2)
    struct.pack_into("=I", shm.buf(0), BZH_USER_GEN, 1)  # the process acknowledges A
    send(kern, bif, f)
    assert d.bd_sbuf is not None and d.bd_fbuf is None
    assert shm.words(1)[0] == 1  # B rotated into hold without a second bump
    assert shm.words(0)[0] == 1  # A is the kernel's again (gen == user gen)
    assert d.bd_slen == 3080  # the packet landed in A
    assert bpf.stats.zbuf_handovers == 2 and bpf.stats.zbuf_reclaims == 1
    assert d.bd_zcopy == 5 and bpf.stats.zerocopy_appends == 5
    bpf_close(d)


def test_rotzbuf(kern: Kernel, bpf: Bpf, bif: BpfIf, shm: Shm) -> None:
    d = zopen(bpf, shm)
    assert bpf_ioctl_rotzbuf(d) == (0, 0)  # nothing stored
    f = frame().data
    send(kern, bif, f)
    assert bpf_ioctl_rotzbuf(d) == (BASE, 26 + len(f))
    assert shm.words(0) == (1, 26 + len(f), 0)
    send(kern, bif, f)
    assert bpf_ioctl_rotzbuf(d) == (0, 0)  # hold slot taken: no rotation
    bpf_close(d)


def test_rotzbuf_after_ack_reclaims_and_rotates(
    kern: Kernel, bpf: Bpf, bif: BpfIf, shm: Shm
) -> None:
    """BIOCROTZBUF takes back an acknowledged hold buffer first (the model's deliberate
    difference, bpf/bpf_ioctl.py), so on a quiet link a timed-out store buffer goes
    out at once instead of waiting for one more packet while poll says readable."""
    d = zopen(bpf, shm)
    send(kern, bif, frame().data)
    assert bpf_ioctl_rotzbuf(d) == (BASE, 26 + 54)
    send(kern, bif, frame().data)  # into B
    assert bpf_ioctl_rotzbuf(d) == (0, 0)  # A held, not acknowledged: nothing rotates
    struct.pack_into("=I", shm.buf(0), BZH_USER_GEN, 1)  # the process is done with A
    assert bpf_ioctl_rotzbuf(d) == (BASE + BUFLEN, 26 + 54)  # A reclaimed, B handed over
    assert bpf.stats.zbuf_reclaims >= 1 and d.bd_fbuf is None and d.bd_slen == 0
    bpf_close(d)


def test_flush_keeps_an_unacknowledged_hold(kern: Kernel, bpf: Bpf, bif: BpfIf, shm: Shm) -> None:
    d = zopen(bpf, shm)
    send(kern, bif, frame().data)
    bpf_ioctl_rotzbuf(d)
    bpf_ioctl_flush(d)
    assert d.bd_hbuf is not None  # the process owns it: reset_d may not take it back
    struct.pack_into("=I", shm.buf(0), BZH_USER_GEN, 1)
    bpf_ioctl_flush(d)
    assert d.bd_hbuf is None and d.bd_fbuf is not None
    bpf_close(d)


def test_ready_follows_the_acknowledgement(kern: Kernel, bpf: Bpf, bif: BpfIf, shm: Shm) -> None:
    d = zopen(bpf, shm)
    send(kern, bif, frame().data)
    assert not bpf_ready(d)
    bpf_ioctl_immediate(d, True)
    assert bpf_ready(d)
    bpf_ioctl_rotzbuf(d)
    assert bpf_ready(d)  # a held buffer the process has not acknowledged
    struct.pack_into("=I", shm.buf(0), BZH_USER_GEN, 1)
    assert not bpf_ready(d)
    bpf_close(d)


def test_never_acknowledging_reader(kern: Kernel, bpf: Bpf, bif: BpfIf, shm: Shm) -> None:
    """Both buffers handed over and never given back: every later packet is dropped,
    counted, and costs the tap no more than the filter and the reclaim check."""
    d = zopen(bpf, shm)
    f = frame(payload=b"n" * 1000).data
    m = chain_of(kern, f, [14])
    start = time.perf_counter()
    for _ in range(5000):
        bpf_mtap(bif, m, PFIL_OUT)
    elapsed = time.perf_counter() - start
    m_freem(m)
    recv, drop = bpf_ioctl_gstats(d)
    assert recv == 5000 and drop == 5000 - bpf.stats.packets_captured
    assert bpf.stats.packets_captured == 2 * (d.bd_bufsize // 1080)
    assert elapsed < 5.0  # generous bound on a shared machine: ~20 us a packet pure
    assert shm.words(0)[0] == shm.words(1)[0] == 1
    bpf_close(d)


def test_close_ends_the_loan(kern: Kernel, bpf: Bpf, bif: BpfIf, shm: Shm) -> None:
    d = zopen(bpf, shm)
    send(kern, bif, frame().data)
    bpf_close(d)
    assert bpf.stats.leaks() == {}
    shm.view[0:4] = b"abcd"  # the process's memory is still its own


# -- the kernel with libpcap's reader ----------------------------------------------


def make_reader(d: BpfD, shm: Shm, length: int = BUFLEN) -> ZbufReader:
    def rotate() -> None:
        bpf_ioctl_rotzbuf(d)

    return ZbufReader(shm.buf(0, length), shm.buf(1, length), rotate)


def seq_frame(i: int, size: int) -> bytes:
    return frame(payload=i.to_bytes(4, "big") + b"s" * size).data


def seqs(records: list[bytes]) -> list[int]:
    return [int.from_bytes(r[54:58], "big") for r in records]


def test_reader_gets_every_packet_in_order(kern: Kernel, bpf: Bpf, bif: BpfIf, shm: Shm) -> None:
    d = zopen(bpf, shm)
    reader = make_reader(d, shm)
    got: list[int] = []
    for i in range(300):
        send(kern, bif, seq_frame(i, i % 700))
        recs = reader.next_buffer()
        if recs:
            got += seqs([r.data for r in recs])
    while (recs := reader.next_buffer(timed_out=True)) is not None:
        got += seqs([r.data for r in recs])
    assert got == list(range(300)) and bpf_ioctl_gstats(d) == (300, 0)
    # the drain's last BIOCROTZBUF took the last acknowledged buffer back
    assert bpf.stats.zbuf_handovers == bpf.stats.zbuf_reclaims
    bpf_close(d)


def test_reader_keeps_records_stable_until_the_next_read(
    kern: Kernel, bpf: Bpf, bif: BpfIf, shm: Shm
) -> None:
    d = zopen(bpf, shm)
    reader = make_reader(d, shm)
    send(kern, bif, seq_frame(1, 10))
    first = reader.next_buffer(timed_out=True)
    assert first is not None and shm.words(0)[2] == 0  # not acknowledged yet
    assert reader.next_buffer() is None
    assert shm.words(0)[2] == 1  # acknowledged at the start of the next read
    bpf_close(d)


class ZbufMachine(RuleBasedStateMachine):
    """Random interleavings of packets, reads, timeouts and a reader that is slow to
    acknowledge: every packet is delivered once, in order, or counted dropped."""

    def __init__(self) -> None:
        super().__init__()
        self.kern = Kernel(SMALL_MEM)
        self.bpf = Bpf(clock=FakeClock())
        self.bpf.sysctl.zerocopy_enable = True
        self.bif = bpfattach(self.bpf, "nm0", DLT_EN10MB, ETHER_HDR_LEN)
        self.shm = Shm(2 * PAGE_SIZE)
        self.d = zopen(self.bpf, self.shm, PAGE_SIZE)
        self.reader = make_reader(self.d, self.shm, PAGE_SIZE)
        self.sent = 0
        self.delivered: list[int] = []

    @rule(size=st.sampled_from([0, 1, 100, 700, 1500, 5000]))
    def packet(self, size: int) -> None:
        send(self.kern, self.bif, seq_frame(self.sent, size))
        self.sent += 1

    @rule(timed_out=st.booleans())
    def read(self, timed_out: bool) -> None:
        recs = self.reader.next_buffer(timed_out=timed_out)
        if recs:
            self.delivered += seqs([r.data for r in recs])

    @precondition(lambda self: self.reader.held is not None)
    @rule()
    def ack_only(self) -> None:
        self.reader.ack()

    @invariant()
    def exactly_once_in_order(self) -> None:
        assert self.delivered == sorted(set(self.delivered))
        recv, drop = bpf_ioctl_gstats(self.d)
        assert recv == self.sent
        assert len(self.delivered) + drop <= recv

    def teardown(self) -> None:
        while (recs := self.reader.next_buffer(timed_out=True)) is not None:
            self.delivered += seqs([r.data for r in recs])
        # What BIOCROTZBUF could not dislodge (see test_rotzbuf_after_ack_waits_for_a_packet)
        stranded = []
        sbuf = self.d.bd_sbuf
        if self.d.bd_slen and sbuf is not None and bpf_canwritebuf(self.d):  # not handed over
            stranded = seqs([r.data for r in bpf_records(bytes(sbuf.data[: self.d.bd_slen]))])
        recv, drop = bpf_ioctl_gstats(self.d)
        assert self.delivered + stranded == sorted(set(self.delivered + stranded))
        assert recv == self.sent == len(self.delivered) + len(stranded) + drop
        bpf_close(self.d)
        self.shm.close()
        assert self.bpf.stats.leaks() == {} and self.kern.leaks() == {}


TestZbufMachine = ZbufMachine.TestCase
TestZbufMachine.settings = settings(max_examples=60, stateful_step_count=40, deadline=None)


def test_records_parse_like_pcap_read_bpf(kern: Kernel, bpf: Bpf, bif: BpfIf, shm: Shm) -> None:
    d = zopen(bpf, shm)
    frames = [seq_frame(i, i * 37) for i in range(5)]
    for f in frames:
        send(kern, bif, f)
    bpf_ioctl_rotzbuf(d)
    _, length, _ = shm.words(0)
    recs = bpf_records(bytes(shm.buf(0)[32 : 32 + length]))
    assert [r.data for r in recs] == frames
    bpf_close(d)
