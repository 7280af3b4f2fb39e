"""The whole transmit path as a hypothesis state machine (reference sections 3-5, 9, 12).

Theory of operation
-------------------
`DataPathMachine` owns one `Kernel` with little physical memory (64-128 page
frames, so page-ins evict cached pages and allocations find memory short), up
to three sockets and a few files of awkward sizes. Its rules do what the
server's event loop and worker threads do, in whatever order hypothesis picks:
start a sendfile on an idle socket (one at a time per socket, as `sblock`
makes it), step it, complete one pending page-in out of order, "encrypt" one
queued batch (TLS sockets), `sosend`, `tcp_output`, let the wire take some
bytes, let the client send (inbound packets into so_rcv) and the reader read,
grab or release anonymous pages, close a socket once its work is done and
accept another. Variants cover IPv4 and IPv6 connections. TLS variants use
either FakeTls or the real `KtlsSession` (AES-128-GCM, TLS 1.3) with workers
that run a batch only when a rule says so.

After every rule the invariants recount everything from the objects
themselves, never from the counters under test:

* bytes: per socket, wire taken + sb_ccc == bytes appended, and what the
  wire took is a prefix of the expected stream (on a lossy wire too: what
  it lost is sent again, once it has drained to the hole) (the sendfile heads and file
  ranges, framed record by record on TLS sockets); the NIC queue holds
  exactly the bytes [0, snd_nxt) of the send buffer;
* references (checklist 1): every storage owner's ext_count equals the live
  mbufs referring to it, plus the conversion page mbufs holding the original;
  an owner not in any chain is a zombie kept by its duplicates;
* wiring: every page frame's wire_count equals the references live owners
  hold on it (plus the anonymous pages the test holds); a page under I/O may
  carry one more (a readahead page has no mbuf yet);
* zone and VM counters: mbufs, ext_pgs, clusters, sf_bufs; vm.pages_wired,
  pages_anon, pages_cached, pages_free;
* the receive direction: per socket, what the client sent (`if_rx`) is what
  the reader took (`soreceive`) followed by what so_rcv holds, in order;
  rcv_nxt counts it; so_rcv's sb_ccc, sb_acc, sb_mcnt, sb_ccnt, sb_mbcnt and
  sbspace recount from its chains; receive clusters count in the zones. With
  real KTLS the client sends sealed records (KTLS RX): every whole record
  that came is decrypted in sb_mb, the rest waits in sb_mtls (sb_tlscc);
* send buffers (checklist 4, 5): sb_ccc, sb_acc over the ready prefix only,
  sb_fnrdy, M_BLOCKED behind it, sb_mbcnt/sb_mcnt/sb_ccnt, M_NOTREADY exactly
  when nrdy > 0, no record with `tls` set is ready or in the NIC queue;
* file pages (checklist 7): every valid page of every file holds the file's
  bytes;
* KTLS reservations: each real session holds exactly one reserved frame per
  file page of its records that wait for their page-in (not yet queued for
  encryption), and the VM's reservation is the sum over sessions;
* wake-ups: a connection told NEED_MEMORY (or NoMemory by sosend), or whose
  packet ip_output dropped for want of sf_bufs, has a wake-up armed until one
  is delivered.

Teardown drains everything (page-ins, encryption, output, the wire) until
every sendfile has finished, checks each socket's whole stream, closes every
socket and expects `kern.leaks() == {}` and no wired page.
"""

from __future__ import annotations

import os
import random
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from ktls.keys import TrafficKeys
from ktls.rx import KtlsRxSession
from ktls.session import KtlsSession
from ktls.suites import SUITES
from ktls.workers import KtlsWorkers
from mbuf.ifnet import (
    CSUM_DELAY_DATA,
    CSUM_DELAY_DATA_IPV6,
    IFCAP_NOMAP,
    IFCAP_TSO4,
    IFCAP_TSO6,
    IFCAP_TXCSUM,
    IFCAP_TXCSUM_IPV6,
)
from mbuf.kern import Kernel
from mbuf.mb_unmapped import NoMemory, mb_unmapped_free_mext
from mbuf.mbuf import (
    EXT_CLUSTER,
    EXT_JUMBOP,
    EXT_PGS,
    EXT_SFBUF,
    M_BLOCKED,
    M_EXT,
    M_FREED,
    M_NOMAP,
    M_NOTREADY,
    M_ZOMBIE,
    MBUF_PEXT_FLAG_ANON,
    Mbuf,
    m_copydata,
    mb_ext_pgs_check,
)
from mbuf.param import MSIZE, PAGE_SIZE, TCPIP6_HDR_LEN, TCPIP_HDR_LEN
from mbuf.sendfile import (
    SendfileJob,
    SendfileStatus,
    sendfile_free_mext,
    sendfile_step,
    vm_pager_iodone,
)
from mbuf.socket import Socket, ktls_enable_rx, soclose, soreceive, sosend
from mbuf.tcp_input import if_rx
from mbuf.tcp_output import tcp_acked, tcp_output
from mbuf.vm_object import PagerRequest, VmObject
from mbuf.vm_page import VmPage
from tests.mbuf.builders import (
    FAKE_HDR,
    FAKE_TRAIL,
    DiskFile,
    FakeTls,
    chain,
    write_file,
)
from tests.support.pair import (
    new_socket,
)
from tests.support.tlsseal import CT_APPLICATION_DATA, Sealer, parse_records
from tests.support.wire import tcp6_checksum_ok, tcp_checksum_ok, wire_take

ALL_CAPS = IFCAP_NOMAP | IFCAP_TXCSUM | IFCAP_TSO4
ALL_CAPS6 = IFCAP_NOMAP | IFCAP_TXCSUM_IPV6 | IFCAP_TSO6
FILE_SIZES = (0, 1, 4095, 4097, 3 * PAGE_SIZE, 19 * PAGE_SIZE + 1, 45 * PAGE_SIZE + 123)
SNDBUFS = (16 * 1024, 32 * 1024, 64 * 1024, 100_000)
FRAMING = len(FAKE_HDR) + len(FAKE_TRAIL)  # bytes FakeTls adds to each record
MAX_SOCKETS = 3
DRAIN_ROUNDS = 5_000


@dataclass(frozen=True)
class Variant:
    name: str
    mb_use_ext_pgs: bool
    capenable: int = ALL_CAPS
    nsfbufs: int = 0
    tls: str = ""  # "", "fake" (FakeTls) or "real" (KtlsSession)
    readahead: int | None = None  # None: the rest of the request (up to MAXPHYS)
    ipv6: bool = False  # the sockets are IPv6 connections (ip6_output, ip6_input)
    loss: float = 0.0  # the wire loses segments; TCP goes back to snd_una


VARIANTS = (
    Variant("ext_pgs", True),
    # SF_USER_READAHEAD-style: 8 pages past every batch, even past the request.
    Variant("ext_pgs_readahead8", True, readahead=8),
    Variant("sfbuf_mbufs", False),
    # E0 sendfile on a platform without a direct map: 6 sf_bufs for everyone.
    Variant("sfbuf_mbufs_pool6", False, nsfbufs=6),
    # ip_output converts every packet; a second TSO burst (up to 17 pages) finds
    # the pool empty and is dropped with ENOBUFS until the wire frees the first.
    Variant("no_nomap_pool18", True, capenable=IFCAP_TXCSUM | IFCAP_TSO4, nsfbufs=18),
    # No checksum offload: convert, then checksum in software; no TSO either.
    Variant("sw_csum", True, capenable=IFCAP_NOMAP),
    Variant("fake_tls", True, tls="fake"),
    # Real encryption into reserved ciphertext frames; file pages released after.
    Variant("ktls", True, tls="real"),
    # IPv6: 60-byte headers, TSO6, the IPv6 MSS; and without any offload.
    Variant("ipv6", True, capenable=ALL_CAPS6, ipv6=True),
    Variant("ipv6_sw_csum", True, capenable=IFCAP_NOMAP, ipv6=True),
    # A lossy wire: retransmissions from the send buffer, with and without NOMAP.
    Variant("lossy", True, loss=0.1),
    Variant(
        "lossy_no_nomap_pool18", True, capenable=IFCAP_TXCSUM | IFCAP_TSO4, nsfbufs=18, loss=0.1
    ),
    Variant("lossy_ktls", True, tls="real", loss=0.1),
)
SUITE = SUITES["TLS_AES_128_GCM_SHA256"]
KEY = bytes(range(16))
IV = bytes(range(100, 112))
RX_KEY = bytes(range(32, 48))  # the client's direction (KTLS RX)
RX_IV = bytes(range(60, 72))
TLS13_OVERHEAD = 5 + 17  # record header; inner content type and tag

SOCK = st.integers(0, MAX_SOCKETS - 1)
OFFSETS = st.one_of(st.sampled_from([0, 1, 4095, 4096, 4097]), st.integers(0, 200_000))
LENGTHS = st.one_of(
    st.none(), st.sampled_from([0, 1, 4095, 4096, 4097, 16384, 16385]), st.integers(0, 200_000)
)
HDR_LENS = st.sampled_from([0, 0, 1, 225, 5000, 16385])


class DeferredWorkers(KtlsWorkers):
    """Stands in for KtlsWorkers: a submitted batch waits until a rule runs it
    (per session in order, as one worker thread per session's queue would).
    A subclass, because the compiled KtlsSession takes nothing else."""

    def __init__(self) -> None:
        super().__init__(0)
        self.items: list[Any] = []

    def pick_queue(self) -> int:
        return 0

    def submit(self, wq_index: int, item: Any) -> None:
        self.items.append(item)

    def run_next(self, tls: KtlsSession) -> None:
        item = next(it for it in self.items if it.tls is tls)
        self.items.remove(item)
        item.run()  # the worker thread
        item.complete()  # back on the event loop

    def pending(self, tls: KtlsSession) -> bool:
        return any(it.tls is tls for it in self.items)


class SpyKtls(KtlsSession):
    """The real session, remembering the payload length of each record it frames."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.payloads: list[int] = []

    def ktls_frame(self, top: Mbuf, record_type: int) -> int:
        self.payloads.extend(m.m_len for m in chain(top))
        return super().ktls_frame(top, record_type)


@dataclass(eq=False)
class Conn:
    """One socket and what the test knows it must carry."""

    so: Socket
    tls: FakeTls | SpyKtls | None
    job: SendfileJob | None = None
    job_payload: bytes = b""  # head + file range of the running sendfile
    job_seen: int = 0  # job.sbytes already added to `payload`
    payload: bytearray = field(default_factory=bytearray)  # plaintext appended so far
    wire: bytearray = field(default_factory=bytearray)  # what the wire took
    sealed: list[bytes] = field(default_factory=list)  # expected records (real TLS)
    waiting: bool = False  # told to wait for memory or sf_bufs; not woken since
    sent_in: bytearray = field(default_factory=bytearray)  # what the client sent us
    read_in: bytearray = field(default_factory=bytearray)  # what the reader took (soreceive)
    # KTLS RX (real TLS variants): the client's records, sealed at once, fed as they go.
    rx_sealer: Sealer | None = None
    rx_wire: bytearray = field(default_factory=bytearray)  # ciphertext the client wrote
    rx_fed: int = 0  # ... of which the wire delivered so far
    rx_recs: list[tuple[int, int]] = field(default_factory=list)  # (cipher, plain) lengths

    def rcv_fed(self) -> int:
        """Bytes the wire delivered to this socket (tcp_input's, ciphertext with TLS)."""
        return self.rx_fed if self.rx_sealer is not None else len(self.sent_in)

    def account(self) -> None:
        """Move the bytes the running sendfile queued since last time into `payload`."""
        job = self.job
        if job is None:
            return
        assert self.job_seen <= job.sbytes <= len(self.job_payload)
        self.payload += self.job_payload[self.job_seen : job.sbytes]
        self.job_seen = job.sbytes

    def unsent(self) -> int:
        """Ready bytes tcp_output has not handed to the NIC yet."""
        return self.so.so_snd.sb_acc - self.so.so_tcp.snd_nxt

    def holds_data(self) -> bool:
        return self.job is not None or self.so.so_snd.sb_mb is not None

    def record_payloads(self) -> list[int]:
        if isinstance(self.tls, SpyKtls):
            return self.tls.payloads
        return [] if self.tls is None else [r.payload for r in self.tls.records]

    def expected_wire(self) -> bytes:
        """The stream the appended plaintext must become on the wire."""
        if self.tls is None:
            return bytes(self.payload)
        out = bytearray()
        pos = 0
        for i, n in enumerate(self.record_payloads()):
            chunk = bytes(self.payload[pos : pos + n])
            if isinstance(self.tls, SpyKtls):
                if i == len(self.sealed):
                    self.sealed.append(Sealer(SUITE, TrafficKeys(KEY, IV), i).data(chunk))
                out += self.sealed[i]
            else:
                out += FAKE_HDR + chunk + FAKE_TRAIL
            pos += n
        assert pos == len(self.payload), "framed records and appended bytes disagree"
        return bytes(out)

    def appended(self) -> int:
        """Bytes appended to the send buffer, framing included."""
        per_record = TLS13_OVERHEAD if isinstance(self.tls, SpyKtls) else FRAMING
        return len(self.payload) + per_record * len(self.record_payloads())


class DataPathMachine(RuleBasedStateMachine):
    # Set on a subclass per test run (hypothesis builds the machine with no arguments).
    variant: ClassVar[Variant]
    files: ClassVar[list[DiskFile]]

    def __init__(self) -> None:
        super().__init__()
        self.by_ino = {os.fstat(f.fd).st_ino: f.data for f in self.files}
        self.kern: Kernel | None = None
        self.conns: list[Conn] = []
        self.pending: list[PagerRequest] = []
        self.hog: list[VmPage] = []  # anonymous pages the test holds (memory pressure)
        self.jobs_started = 0
        self.objects: list[VmObject] = []  # every object a job used (the cache may forget them)
        self.workers = DeferredWorkers()
        self.closed_rcvbyte = 0  # bytes received by sockets closed since

    # -- helpers ---------------------------------------------------------------

    @property
    def k(self) -> Kernel:
        assert self.kern is not None
        return self.kern

    def open_conn(self, sndbuf: int) -> None:
        tls: FakeTls | SpyKtls | None = None
        if self.variant.tls == "fake":
            tls = FakeTls()
        elif self.variant.tls == "real":
            tls = SpyKtls(self.k, self.workers, SUITE, KEY, IV)
        so = new_socket(self.k, sndbuf, tls=tls, isipv6=self.variant.ipv6)
        c = Conn(so, tls)
        if isinstance(tls, SpyKtls):  # TCP_RXTLS_ENABLE too
            ktls_enable_rx(so, KtlsRxSession(SUITE, RX_KEY, RX_IV, 0), b"")
            c.rx_sealer = Sealer(SUITE, TrafficKeys(RX_KEY, RX_IV), 0)
        self.conns.append(c)

    def wakeup(self) -> None:
        """vm_wakeup / sf_buf wakeup: the server wakes every waiting connection."""
        for c in self.conns:
            c.waiting = False

    def encrypting(self, c: Conn) -> bool:
        if isinstance(c.tls, SpyKtls):
            return self.workers.pending(c.tls)
        return c.tls is not None and bool(c.tls.queue)

    def encrypt(self, c: Conn) -> None:
        if isinstance(c.tls, SpyKtls):
            self.workers.run_next(c.tls)
        else:
            assert c.tls is not None
            c.tls.encrypt_one()

    def output_once(self, c: Conn) -> None:
        drops = self.k.stats.tcp.drops
        tcp_output(c.so)
        if self.k.stats.tcp.drops != drops:
            c.waiting = True  # ip_output found no sf_buf: resent on the next wake-up

    def pick(self, i: int, cands: list[Conn]) -> Conn:
        assert cands
        return cands[i % len(cands)]

    def idle(self) -> list[Conn]:
        return [c for c in self.conns if c.job is None]

    def busy(self) -> list[Conn]:
        return [c for c in self.conns if c.job is not None]

    def step(self, c: Conn) -> SendfileStatus:
        job = c.job
        assert job is not None
        sb = c.so.so_snd
        # Checklist 10: sendfile waits while less than the low-water mark (at
        # least hiwat/2) is free, unless everything left fits.
        lowat = max(sb.sb_lowat, sb.sb_hiwat // 2, PAGE_SIZE)
        space = sb.sbspace()
        left = job.rem + (len(job.hdr) if job.hdr is not None else 0)
        must_wait = left > 0 and space < left and (space <= 0 or space < lowat)
        sent = job.sbytes
        io: list[PagerRequest] = []
        status = sendfile_step(job, io)
        self.pending.extend(io)
        c.account()
        if must_wait:
            assert status is SendfileStatus.NEED_SPACE and job.sbytes == sent, (space, left)
        if status is SendfileStatus.DONE:
            assert job.done and job.sbytes == len(c.job_payload)
            c.job = None
        elif status is SendfileStatus.NEED_SPACE:
            space = sb.sbspace()
            left = job.rem + (len(job.hdr) if job.hdr is not None else 0)
            assert space < left and (space <= 0 or space < lowat), (space, left, lowat)
        else:
            assert status is SendfileStatus.NEED_MEMORY
            c.waiting = True
        return status

    def complete(self, req: PagerRequest) -> None:
        req.run()
        vm_pager_iodone(self.k, req)
        assert req.error == 0, req.error

    def take(self, c: Conn, n: int | None) -> None:
        """The host socket takes n bytes (all when None) of the NIC queue; TCP gets the ACK."""
        data = wire_take(c.so, None if n is None else max(1, n))
        if not data:
            return
        c.wire += data
        exp = c.expected_wire()
        assert bytes(c.wire) == exp[: len(c.wire)], "the wire carried bytes out of order"

    def quiesce(self, c: Conn) -> None:
        """Finish the disk reads and encryptions that hold this socket's mbufs."""
        for _ in range(1000):
            if not c.so.so_pending:
                return
            mine = [r for r in self.pending if any(w.so is c.so for w in r.waiters)]
            for r in mine:
                self.pending.remove(r)
                self.complete(r)
            while self.encrypting(c):
                self.encrypt(c)
        raise AssertionError(f"socket still has {c.so.so_pending} operations pending")

    # -- rules -----------------------------------------------------------------

    @initialize(
        npages=st.sampled_from([64, 80, 128]),
        sndbufs=st.lists(st.sampled_from(SNDBUFS), min_size=1, max_size=MAX_SOCKETS),
    )
    def boot(self, npages: int, sndbufs: list[int]) -> None:
        v = self.variant
        self.kern = Kernel(
            npages * PAGE_SIZE,
            capenable=v.capenable,
            mb_use_ext_pgs=v.mb_use_ext_pgs,
            nsfbufs=v.nsfbufs,
            readahead=v.readahead,
            loss=v.loss,
            loss_seed=npages,
        )
        self.kern.set_wakeup(self.wakeup)
        for sndbuf in sndbufs:
            self.open_conn(sndbuf)

    @precondition(lambda self: any(c.job is None for c in self.conns))
    @rule(
        i=SOCK,
        f=st.integers(0, len(FILE_SIZES) - 1),
        off=OFFSETS,
        n=LENGTHS,
        hdr_len=HDR_LENS,
    )
    def start_sendfile(self, i: int, f: int, off: int, n: int | None, hdr_len: int) -> None:
        c = self.pick(i, self.idle())
        tf = self.files[f]
        size = len(tf.data)
        off = min(off, size)
        n = size - off if n is None else min(n, size - off)
        self.jobs_started += 1
        hdr = random.Random(self.jobs_started).randbytes(hdr_len)
        obj = tf.obj(self.k)
        if obj not in self.objects:
            self.objects.append(obj)
        job = SendfileJob(c.so, obj, tf.fd, off, n, hdr)
        c.job, c.job_payload, c.job_seen = job, hdr + tf.data[off : off + n], 0
        self.step(c)

    @precondition(lambda self: any(c.job is not None for c in self.conns))
    @rule(i=SOCK)
    def step_sendfile(self, i: int) -> None:
        self.step(self.pick(i, self.busy()))

    @precondition(lambda self: self.pending)
    @rule(k=st.integers(0, 63))
    def complete_pagein(self, k: int) -> None:
        self.complete(self.pending.pop(k % len(self.pending)))

    @precondition(lambda self: any(self.encrypting(c) for c in self.conns))
    @rule(i=SOCK)
    def encrypt_batch(self, i: int) -> None:
        self.encrypt(self.pick(i, [c for c in self.conns if self.encrypting(c)]))

    @precondition(lambda self: any(c.job is None for c in self.conns))
    @rule(i=SOCK, n=st.sampled_from([1, 224, 225, 4096, 5000, 20000]))
    def write(self, i: int, n: int) -> None:
        c = self.pick(i, self.idle())
        self.jobs_started += 1
        data = random.Random(-self.jobs_started).randbytes(n)
        sb = c.so.so_snd
        before = (sb.sb_ccc, sb.sb_mcnt)
        try:
            took = sosend(c.so, data)
        except NoMemory:
            assert c.tls is not None, "a mapped write needs no page frames"
            assert (sb.sb_ccc, sb.sb_mcnt) == before, "a failed write appended something"
            c.waiting = True
            return
        assert 0 <= took <= n
        c.payload += data[:took]

    @precondition(lambda self: any(c.unsent() for c in self.conns))
    @rule(i=SOCK)
    def output(self, i: int) -> None:
        self.output_once(self.pick(i, [c for c in self.conns if c.unsent()]))

    @precondition(lambda self: any(not c.so.so_txq.empty() for c in self.conns))
    @rule(i=SOCK, n=st.one_of(st.none(), st.integers(1, 3000), st.integers(1, 1 << 18)))
    def wire_takes(self, i: int, n: int | None) -> None:
        c = self.pick(i, [c for c in self.conns if not c.so.so_txq.empty()])
        self.take(c, n)

    @precondition(lambda self: any(c.so.so_rcv.sbspace() > 0 for c in self.conns))
    @rule(i=SOCK, n=st.sampled_from([1, 100, 1427, 1428, 1448, 1449, 5000, 65536]))
    def client_sends(self, i: int, n: int) -> None:
        """One host read of what the client sent: inbound packets into so_rcv (at most
        what the window has room for, as the server reads)."""
        c = self.pick(i, [c for c in self.conns if c.so.so_rcv.sbspace() > 0])
        if c.rx_sealer is not None:  # a record of up to n bytes; the wire takes up to n more
            text = random.Random(len(c.sent_in)).randbytes(min(n, 1 << 14))
            rec = c.rx_sealer.data(text)
            c.rx_wire += rec
            c.rx_recs.append((len(rec), len(text)))
            c.sent_in += text
            self.feed_rx(c, n)
            return
        n = min(n, c.so.so_rcv.sbspace())
        data = random.Random(len(c.sent_in)).randbytes(n)
        if_rx(c.so, data)
        c.sent_in += data

    def feed_rx(self, c: Conn, n: int) -> None:
        """The wire delivers up to n more bytes of the client's records."""
        k = min(n, c.so.so_rcv.sbspace(), len(c.rx_wire) - c.rx_fed)
        if k > 0:
            if_rx(c.so, c.rx_wire[c.rx_fed : c.rx_fed + k])
            c.rx_fed += k

    def read(self, c: Conn, n: int) -> None:
        """soreceive: bytes, or with KTLS RX whole records (header rebuilt, then plaintext)."""
        got = soreceive(c.so, n)
        if c.rx_sealer is None:
            assert len(got) <= n
            c.read_in += got
            return
        for hdr, body in parse_records(got):
            assert hdr[0] == CT_APPLICATION_DATA and hdr[1:3] == b"\x03\x03"
            c.read_in += body

    @precondition(lambda self: any(c.so.so_rcv.sb_acc for c in self.conns))
    @rule(i=SOCK, n=st.sampled_from([1, 7, 1448, 4096, 1 << 20]))
    def reader_reads(self, i: int, n: int) -> None:
        self.read(self.pick(i, [c for c in self.conns if c.so.so_rcv.sb_acc]), n)

    @precondition(lambda self: self.hog or any(c.holds_data() for c in self.conns))
    @rule(n=st.integers(-48, 48))
    def memory_pressure(self, n: int) -> None:
        """Grab n anonymous pages (evicting cached file pages), or give back -n."""
        phys = self.k.phys
        for _ in range(n):
            pg = phys.page_alloc_anon()
            if pg is None:
                break
            self.hog.append(pg)
        for _ in range(min(-n, len(self.hog))):
            phys.page_free_anon(self.hog.pop())

    @precondition(lambda self: any(c.holds_data() for c in self.conns))
    @rule(i=SOCK, sndbuf=st.sampled_from(SNDBUFS))
    def close_and_accept(self, i: int, sndbuf: int) -> None:
        """Close a connection with data still queued (once its page-ins and
        encryptions are done, as the server does) and accept a new one."""
        c = self.pick(i, [c for c in self.conns if c.holds_data()])
        self.quiesce(c)
        soclose(c.so)  # frees what the reader never took, too
        if c.tls is not None:
            c.tls.free()
        self.conns.remove(c)
        self.closed_rcvbyte += c.rcv_fed()
        assert not c.so.so_snd.sb_mb and c.so.so_txq.empty()
        self.open_conn(sndbuf)

    # -- invariants ------------------------------------------------------------

    @invariant()
    def everything_adds_up(self) -> None:
        if self.kern is None:
            return
        for c in self.conns:
            self.check_bytes(c)
            self.check_sockbuf(c)
            self.check_receive(c)
        self.check_references_and_wiring()
        self.check_file_pages()
        self.check_reservations()
        if any(c.waiting for c in self.conns):
            # Whoever was told to wait must be woken when memory or sf_bufs come back.
            assert self.k.phys.vm_wanted or self.k.sfbufs.wanted, "a waiter with no wake-up"

    def check_bytes(self, c: Conn) -> None:
        so = c.so
        sb = so.so_snd
        txq = so.so_txq
        tp = so.so_tcp
        if isinstance(c.tls, FakeTls):
            assert c.tls.seqnos == list(range(len(c.tls.seqnos)))
        assert len(c.wire) + sb.sb_ccc == c.appended()
        assert tp.snd_una_total == len(c.wire)
        # Everything in the NIC queue, lost packets included; the wire may take
        # only the part before the first lost one.
        queued = b"".join(bytes(seg) for pkt in txq.ring for seg in pkt.segs)[txq.head_off :]
        takeable = b"".join(txq.pending_iov(1 << 30))
        assert queued[: len(takeable)] == takeable
        first_lost = next((i for i, p in enumerate(txq.ring) if p.lost), len(txq.ring))
        before_hole = sum(p.payload for p in list(txq.ring)[:first_lost])
        assert len(takeable) == max(0, before_hole - txq.head_off)
        assert len(queued) == txq.bytes_queued - txq.head_off == tp.snd_nxt
        assert tp.snd_nxt <= tp.snd_max <= sb.sb_acc
        if queued:
            assert queued == m_copydata(sb.sb_mb, 0, tp.snd_nxt)
        caps = self.k.ifnet.if_capenable
        ipv6 = self.variant.ipv6
        hdrlen = TCPIP6_HDR_LEN if ipv6 else TCPIP_HDR_LEN
        txcsum = IFCAP_TXCSUM_IPV6 if ipv6 else IFCAP_TXCSUM
        for pkt in txq.ring:
            hdr = pkt.m
            assert hdr.m_len == hdrlen
            assert hdr.m_pkthdr_len == hdrlen + pkt.payload
            for m in chain(hdr.m_next):
                assert not m.m_flags & M_NOTREADY
                if m.m_flags & M_NOMAP:
                    # Checklist 8: unmapped data reaches only a NOMAP, checksumming NIC.
                    assert caps & IFCAP_NOMAP and caps & txcsum
                    assert m.ext_pgs.tls is None, "an unencrypted record reached the NIC"
            if not caps & txcsum:
                assert not hdr.m_pkthdr_csum_flags & (CSUM_DELAY_DATA | CSUM_DELAY_DATA_IPV6)
                self.check_tcp_checksum(hdr)

    def check_tcp_checksum(self, hdr: Mbuf) -> None:
        ip_tcp = m_copydata(hdr, 0, hdr.m_pkthdr_len)
        ok = tcp6_checksum_ok if self.variant.ipv6 else tcp_checksum_ok
        assert ok(ip_tcp), "software TCP checksum is wrong"

    def check_receive(self, c: Conn) -> None:
        """The other direction: every byte the client sent is read once or waits in
        so_rcv, in order; rcv_nxt counts them; so_rcv's accounting recounts."""
        so = c.so
        rcv = so.so_rcv
        tp = so.so_tcp
        fed = c.rcv_fed()
        # Records: the whole ones that came are decrypted at once (KTLS RX); the
        # rest of the ciphertext waits in sb_mtls.
        whole_cipher = whole_plain = 0
        for clen, plen in c.rx_recs:
            if whole_cipher + clen > fed:
                break
            whole_cipher += clen
            whole_plain += plen
        arrived = whole_plain if c.rx_sealer is not None else len(c.sent_in)
        assert rcv.sb_tlscc == fed - whole_cipher if c.rx_sealer is not None else rcv.sb_tlscc == 0
        assert arrived == len(c.read_in) + rcv.sb_acc
        assert c.read_in == c.sent_in[: len(c.read_in)]
        assert m_copydata(rcv.sb_mb, 0, rcv.sb_acc) == c.sent_in[len(c.read_in) : arrived]
        assert tp.rcv_nxt == (tp.irs + 1 + fed) & 0xFFFFFFFF
        ms = list(chain(rcv.sb_mb))
        mtls = list(chain(rcv.sb_mtls))
        assert rcv.sb_mbtail is (ms[-1] if ms else None)
        assert rcv.sb_mtlstail is (mtls[-1] if mtls else None)
        assert rcv.sb_acc == sum(m.m_len for m in ms)
        assert rcv.sb_tlscc == sum(m.m_len for m in mtls)
        assert rcv.sb_ccc == rcv.sb_acc + rcv.sb_tlscc
        assert rcv.sb_mcnt == len(ms) + len(mtls)
        assert rcv.sb_ccnt == sum(1 for m in ms + mtls if m.m_flags & M_EXT)
        assert rcv.sb_mbcnt == sum(
            MSIZE + (m.m_ext.ext_size if m.m_ext is not None and m.m_flags & M_EXT else 0)
            for m in ms + mtls
        )
        assert not any(m.m_flags & (M_NOTREADY | M_NOMAP) for m in ms + mtls)
        assert rcv.sbspace() == min(rcv.sb_hiwat - rcv.sb_ccc, rcv.sb_mbmax - rcv.sb_mbcnt)
        st = self.k.stats.tcp
        assert st.rcvbyte == sum(x.rcv_fed() for x in self.conns) + self.closed_rcvbyte

    def check_sockbuf(self, c: Conn) -> None:
        sb = c.so.so_snd
        ms = list(chain(sb.sb_mb))
        assert sb.sb_mbtail is (ms[-1] if ms else None)
        nrdy_at = next((i for i, m in enumerate(ms) if m.m_flags & M_NOTREADY), len(ms))
        assert sb.sb_ccc == sum(m.m_len for m in ms)
        assert sb.sb_acc == sum(m.m_len for m in ms[:nrdy_at]), "sb_acc is not the ready prefix"
        assert sb.sb_fnrdy is (ms[nrdy_at] if nrdy_at < len(ms) else None)
        assert not any(m.m_flags & (M_NOTREADY | M_BLOCKED) for m in ms[:nrdy_at])
        assert all(m.m_flags & M_BLOCKED for m in ms[nrdy_at + 1 :])
        assert sb.sb_mcnt == len(ms)
        assert sb.sb_ccnt == sum(1 for m in ms if m.m_flags & M_EXT)
        assert sb.sb_mbcnt == sum(
            MSIZE + (m.m_ext.ext_size if m.m_ext is not None and m.m_flags & M_EXT else 0)
            for m in ms
        )
        seqnos = []
        for m in ms:
            if not m.m_flags & M_NOMAP:
                continue
            pgs = m.ext_pgs
            mb_ext_pgs_check(m)
            assert bool(m.m_flags & M_NOTREADY) == (pgs.nrdy > 0), (m, pgs.nrdy)
            if pgs.tls is not None:
                assert m.m_flags & M_NOTREADY, "a record with tls set is ready"
            if c.tls is not None:
                seqnos.append(pgs.seqno)
        assert seqnos == sorted(set(seqnos)), "records out of sequence-number order"

    def check_references_and_wiring(self) -> None:
        kern = self.k
        live: dict[int, Mbuf] = {}
        for c in self.conns:
            for m in chain(c.so.so_snd.sb_mb):
                live[id(m)] = m
            for m in chain(c.so.so_rcv.sb_mb):
                live[id(m)] = m
            for m in chain(c.so.so_rcv.sb_mtls):
                live[id(m)] = m
            for pkt in c.so.so_txq.ring:
                for m in chain(pkt.m):
                    live[id(m)] = m
        owners: dict[int, Mbuf] = {}
        refs: Counter[int] = Counter()
        for m in live.values():
            assert not m.m_flags & (M_FREED | M_ZOMBIE), f"freed mbuf still linked: {m!r}"
            if m.m_flags & M_EXT:
                assert m.m_ext is not None
                o = m.m_ext.ext_mref
                owners[id(o)] = o
                refs[id(o)] += 1
        for o in list(owners.values()):
            assert o.m_ext is not None
            if o.m_ext.ext_type == EXT_SFBUF and o.m_ext.ext_free is mb_unmapped_free_mext:
                orig: Mbuf = o.m_ext.ext_arg2  # a conversion page mbuf holds the original
                owners[id(orig)] = orig
                refs[id(orig)] += 1
        wires: Counter[int] = Counter(pg.phys_addr for pg in self.hog)
        anon = {pg.phys_addr for pg in self.hog}
        for item in self.workers.items:  # ciphertext pages of batches not yet installed
            for pas in item.dst:
                wires.update(pas or ())
                anon.update(pas or ())
        zone: Counter[int] = Counter()
        sfbufs = 0
        for key, o in owners.items():
            ext = o.m_ext
            assert ext is not None and ext.ext_mref is o
            assert ext.ext_count == refs[key], (o, ext.ext_count, refs[key])
            if key not in live:
                assert o.m_flags & M_ZOMBIE, f"owner {o!r} is neither linked nor a zombie"
            zone[ext.ext_type] += 1
            if ext.ext_type == EXT_PGS:
                pgs = ext.ext_pgs
                assert pgs is not None and len(pgs.pa) == pgs.npgs
                assert ext.ext_size == pgs.npgs * PAGE_SIZE
                wires.update(pgs.pa)
                if pgs.flags & MBUF_PEXT_FLAG_ANON:
                    anon.update(pgs.pa)
            elif ext.ext_type == EXT_SFBUF:
                sfbufs += 1
                sf = ext.ext_arg1
                assert not sf.freed and sf.page.wire_count > 0
                if ext.ext_free is sendfile_free_mext:
                    wires[sf.page.phys_addr] += 1
        everyone = {**live, **owners}
        st = kern.stats
        assert st.mb.mbufs_in_use == len(everyone)
        assert st.mb.ext_pgs_in_use == zone[EXT_PGS]
        assert st.mb.clusters_in_use == zone[EXT_CLUSTER]
        assert st.mb.jumbop_in_use == zone[EXT_JUMBOP]
        assert st.sfbuf.in_use == sfbufs == zone[EXT_SFBUF]
        assert st.mb.sfbuf_mbufs_in_use == sum(
            1 for m in everyone.values() if m.m_ext is not None and m.m_ext.ext_type == EXT_SFBUF
        )
        if self.variant.nsfbufs:
            assert sfbufs <= self.variant.nsfbufs
        under_io = {pg.phys_addr for r in self.pending for pg in r.pages}
        wired = cached = 0
        for pg in kern.phys.pages:
            pa = pg.phys_addr
            if pa in under_io:
                assert not pg.valid and pg.wire_count >= 1
                assert wires[pa] <= pg.wire_count <= wires[pa] + 1, (pg, wires[pa])
            else:
                assert pg.wire_count == wires[pa], (pg, wires[pa])
            assert pg.anon == (pa in anon), pg
            if pg.wire_count:
                wired += 1
            elif pg.valid:
                assert pg.object is not None and pg.object.page_lookup(pg.pindex) is pg, pg
                cached += 1
            else:
                assert pg.object is None, f"an invalid unwired page is still in its object: {pg}"
        vm = st.vm
        assert (vm.pages_wired, vm.pages_anon, vm.pages_cached) == (wired, len(anon), cached)
        assert vm.pages_free == vm.pages_total - wired - cached

    def check_reservations(self) -> None:
        phys = self.k.phys
        assert phys.free_count() >= 0, "more frames reserved than free or evictable"
        total = 0
        for c in self.conns:
            if not isinstance(c.tls, SpyKtls):
                continue
            queued = {id(r) for it in self.workers.items if it.tls is c.tls for r in it.records}
            waiting = sum(
                m.ext_pgs.npgs
                for m in chain(c.so.so_snd.sb_mb)
                if m.m_flags & M_NOMAP
                and m.ext_pgs.tls is not None
                and not m.ext_pgs.flags & MBUF_PEXT_FLAG_ANON
                and id(m) not in queued
                and not c.so.so_error
            )
            if not c.so.so_error:
                assert c.tls.reserved == waiting, (c.tls.reserved, waiting)
            total += c.tls.reserved
        assert phys.reserved == total

    def check_file_pages(self) -> None:
        """Checklist 7: nothing on the path writes into a file page."""
        phys = self.k.phys
        objs = {id(o): o for o in (*self.k.pagecache.objects.values(), *self.objects)}
        for obj in objs.values():
            data = self.by_ino[obj.key[1]]
            for pindex, pg in obj.pages.items():
                if not pg.valid or pg.object is not obj:
                    continue
                want = data[pindex * PAGE_SIZE : (pindex + 1) * PAGE_SIZE]
                got = phys.phys_view(pg.phys_addr)
                assert got[: len(want)] == want and not any(got[len(want) :]), (obj, pindex)

    # -- the end -----------------------------------------------------------------

    def teardown(self) -> None:
        if self.kern is None:
            return
        kern = self.kern
        while self.hog:
            kern.phys.page_free_anon(self.hog.pop())
        for _ in range(DRAIN_ROUNDS):
            for c in self.busy():
                self.step(c)
            while self.pending:
                self.complete(self.pending.pop(0))
            for c in self.conns:
                while self.encrypting(c):
                    self.encrypt(c)
                while True:
                    self.output_once(c)
                    if c.so.so_txq.empty():
                        break
                    self.take(c, None)
            if not self.busy() and all(c.so.so_snd.sb_ccc == 0 for c in self.conns):
                break
        else:
            raise AssertionError("the data path made no progress once everything was released")
        self.everything_adds_up()
        for c in self.conns:
            assert bytes(c.wire) == c.expected_wire()
            for _ in range(DRAIN_ROUNDS):  # the rest of the client's records, then read all
                self.read(c, 1 << 30)
                if c.rcv_fed() == len(c.rx_wire) or c.rx_sealer is None:
                    break
                self.feed_rx(c, 1 << 20)
            self.read(c, 1 << 30)
            assert c.read_in == c.sent_in
            assert c.so.so_pending == 0
            soclose(c.so)
            if c.tls is not None:
                c.tls.free()
        self.conns.clear()
        self.everything_adds_up()
        assert kern.leaks() == {}
        assert kern.phys.reserved == 0
        vm = kern.stats.vm
        assert vm.pages_wired == 0
        assert vm.pages_free + vm.pages_cached == vm.pages_total


SETTINGS = settings(
    max_examples=25,
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)


@pytest.mark.parametrize("variant", VARIANTS, ids=[v.name for v in VARIANTS])
def test_data_path_state_machine(variant: Variant, tmp_path: Path) -> None:
    files = [
        write_file(tmp_path / f"f{i}", random.Random(i).randbytes(size))
        for i, size in enumerate(FILE_SIZES)
    ]

    class Machine(DataPathMachine):
        """A fresh subclass per variant: hypothesis keys its state on the class."""

    Machine.variant = variant
    Machine.files = files
    try:
        run_state_machine_as_test(Machine, settings=SETTINGS)
    finally:
        for f in files:
            os.close(f.fd)


def test_enobufs_leaves_the_sf_buf_wakeup_armed(tmp_path: Path) -> None:
    """Found by the state machine (variant no_nomap_pool18), fixed in 6864787. A connection whose
    packet ip_output drops because the conversion found the sf_buf pool empty
    must be woken when the mappings held by packets still queued are freed.
    The failed conversion frees the sf_bufs it had already mapped, and that
    free used to consume the pool's wake-up (clear `wanted`, call the waiters)
    before ip_output had even returned ENOBUFS, so nobody was woken later."""
    kern = Kernel(64 * PAGE_SIZE, capenable=IFCAP_TXCSUM | IFCAP_TSO4, nsfbufs=18)
    woken: list[int] = []
    kern.set_wakeup(lambda: woken.append(kern.stats.sfbuf.in_use))
    tf = write_file(tmp_path / "f", random.Random(1).randbytes(20 * PAGE_SIZE))
    try:
        so = new_socket(kern, sndbuf=100_000)
        io: list[PagerRequest] = []
        sendfile_step(SendfileJob(so, tf.obj(kern), tf.fd, 0, len(tf.data)), io)
        for req in io:
            req.run()
            vm_pager_iodone(kern, req)
        # First burst: 16 pages mapped; the second needs 4 and finds 2.
        assert tcp_output(so) == 1 and kern.stats.ip.odropped == 1
        assert kern.stats.sfbuf.in_use == 16
        woken.clear()
        assert kern.sfbufs.wanted, "the dropped packet's connection waits with no wake-up armed"
        # The wire takes the first burst: its 16 sf_bufs are freed.
        txq = so.so_txq
        n = txq.ring[0].payload
        txq.complete(n)
        tcp_acked(so, n)
        assert kern.stats.sfbuf.in_use == 0
        assert woken, "no wake-up when the sf_bufs came back"
        soclose(so)
        assert kern.leaks() == {}
    finally:
        os.close(tf.fd)
