"""ktls.session + ktls.ocf: records from files and from sosend, checked end to end.

A real handshake, then file -> sendfile -> ktls_frame/ktls_seq -> encryption
-> tcp_output -> ip_output -> NIC queue -> the stdlib TLS client. The client
must read back exactly what was sent; the harness also parses the wire and
opens every record itself to check sizes, sequence numbers and nonces.
"""

from __future__ import annotations

import errno
import os
import pathlib
import queue
import ssl
from collections.abc import Callable, Iterator

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from ktls.session import KtlsSession
from ktls.suites import TlsVersion
from ktls.workers import KtlsWorkers
from mbuf.ifnet import IFCAP_NOMAP, IFCAP_TSO4, IFCAP_TXCSUM
from mbuf.kern import Kernel
from mbuf.mbuf import MBUF_PEXT_FLAG_ANON, Mbuf
from mbuf.param import PAGE_SIZE
from mbuf.sendfile import SendfileJob, SendfileStatus, sendfile_step, vm_pager_iodone
from mbuf.socket import TLS_RLTYPE_ALERT, sosend
from mbuf.vm_object import PagerRequest, VmObject
from tests.ktls.harness import CASE_IDS, CASES, PHYS_MEM, Case, KtlsConn, ServerContexts, handshake
from tests.support.certs import CertFiles
from tests.support.files import file_bytes, open_file
from tests.support.tlsseal import (
    CT_ALERT,
    CT_APPLICATION_DATA,
    MAX_PLAINTEXT,
    open_record,
    parse_records,
    plaintext_len,
)

EDGE_SIZES = [0, 1, 4095, 4096, 4097, 16383, 16384, 16385, 65536, 70000]
EDGE_OFFSETS = [0, 1, 4095, 4096, 4097, 16384]
HEADS = [b"", b"HTTP/1.1 200 OK\r\n\r\n", b"H" * 300, b"h" * 16385]
CAPS = {
    "nomap+csum+tso": IFCAP_NOMAP | IFCAP_TXCSUM | IFCAP_TSO4,
    "csum+tso": IFCAP_TXCSUM | IFCAP_TSO4,  # ip_output maps every record (mb_unmapped_to_ext)
    "none": 0,  # and checksums it in software, one MSS per packet
}


@pytest.fixture(scope="session")
def files(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    return tmp_path_factory.mktemp("files")


def assert_page_cache_holds_file(kern: Kernel, obj: VmObject, data: bytes, offset: int) -> None:
    """The pages sendfile read from `offset` on are cached and hold the file's
    bytes (zero-filled past EOF): never ciphertext."""
    assert sent_pages(len(data), offset) <= obj.pages.keys()
    for pindex, pg in obj.pages.items():
        assert pg.valid and not pg.anon
        page = data[pindex * PAGE_SIZE : (pindex + 1) * PAGE_SIZE].ljust(PAGE_SIZE, b"\0")
        assert bytes(kern.phys.phys_view(pg.phys_addr)) == page, f"file page {pindex} written"


def sent_pages(size: int, offset: int) -> set[int]:
    return set(range(offset // PAGE_SIZE, -(-size // PAGE_SIZE))) if offset < size else set()


def check_wire(conn: KtlsConn, expected: bytes) -> int:
    """Every record on the wire: application data, at most 2^14 bytes, numbered
    consecutively from tx_seq in wire order. Returns the record count."""
    est = conn.est
    suite = est.suite
    plain = bytearray()
    records = parse_records(conn.wire)
    for i, (header, body) in enumerate(records):
        seqno = est.tx_seq + i
        assert header[:3] == bytes((CT_APPLICATION_DATA, 3, 3))
        assert 0 < plaintext_len(suite, body) <= MAX_PLAINTEXT
        if suite.explicit_nonce_len:  # TLS 1.2 GCM: the explicit nonce is the seqno
            assert body[:8] == seqno.to_bytes(8, "big")
        ctype, text = open_record(suite, est.tx, seqno, header, body)
        assert ctype == CT_APPLICATION_DATA
        assert len(text) == plaintext_len(suite, body)
        plain += text
    assert plain == expected
    assert conn.so.so_snd.sb_tls_seqno == est.tx_seq + len(records)
    return len(records)


@st.composite
def layouts(draw: st.DrawFn) -> tuple[int, int]:
    """(file size, sendfile offset); nbytes is the rest of the file."""
    size = draw(st.one_of(st.sampled_from(EDGE_SIZES), st.integers(0, 70_000)))
    offset = draw(
        st.one_of(
            st.sampled_from([o for o in EDGE_OFFSETS if o <= size] + [size]),
            st.integers(0, size),
        )
    )
    return size, offset


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    layout=layouts(),
    head=st.sampled_from(HEADS),
    sndbuf=st.sampled_from([16384, 65536, 262144]),
    chunk=st.sampled_from([None, 1448, 5000]),
    caps=st.sampled_from(sorted(CAPS)),
    passes=st.integers(1, 2),
)
@example(layout=(1, 0), head=b"", sndbuf=262144, chunk=None, caps="nomap+csum+tso", passes=1)
@example(layout=(16383, 0), head=b"", sndbuf=262144, chunk=None, caps="none", passes=1)
@example(layout=(16384, 0), head=HEADS[1], sndbuf=65536, chunk=None, caps="csum+tso", passes=2)
@example(
    layout=(16385, 1), head=HEADS[3], sndbuf=16384, chunk=1448, caps="nomap+csum+tso", passes=1
)
@example(layout=(0, 0), head=HEADS[1], sndbuf=262144, chunk=None, caps="nomap+csum+tso", passes=1)
@example(layout=(0, 0), head=b"", sndbuf=262144, chunk=None, caps="nomap+csum+tso", passes=1)
def test_sendfile_records_decrypt_to_the_file(
    contexts: ServerContexts,
    certs: dict[str, CertFiles],
    files: pathlib.Path,
    case: Case,
    layout: tuple[int, int],
    head: bytes,
    sndbuf: int,
    chunk: int | None,
    caps: str,
    passes: int,
) -> None:
    size, offset = layout
    data = file_bytes(size)
    pair = handshake(contexts, certs, case)
    est = pair.hs.established()
    kern = Kernel(PHYS_MEM, capenable=CAPS[caps])
    conn = KtlsConn(kern, KtlsWorkers(0), est, pair, sndbuf=sndbuf)
    fd, obj = open_file(files, data, kern)
    try:
        expected = head + data[offset:]
        for _ in range(passes):  # the second pass finds the pages cached
            got = conn.sendfile(obj, fd, offset, size - offset, head, chunk)
            assert got == expected
            assert_page_cache_holds_file(kern, obj, data, offset)
        sf = kern.stats.sf  # read by the batches or ahead of them
        assert sf.pages_read + sf.rhpages_read == len(sent_pages(size, offset))

        nrec = check_wire(conn, expected * passes)
        ktls = kern.stats.ktls
        assert ktls.records_framed == ktls.records_encrypted == nrec
        assert ktls.bytes_encrypted == len(expected) * passes
        assert ktls.failed_crypto == ktls.tasks_active == 0
        assert conn.so.so_error == 0
    finally:
        os.close(fd)
    conn.close()
    assert kern.leaks() == {}
    assert kern.stats.ktls.sessions_active == 0
    assert_page_cache_holds_file(kern, obj, data, offset)


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
@settings(max_examples=15, deadline=None)
@given(
    sizes=st.lists(
        st.one_of(st.sampled_from([1, 224, 225, 16383, 16384, 16385]), st.integers(1, 40_000)),
        min_size=1,
        max_size=4,
    )
)
def test_sosend_records_decrypt(
    contexts: ServerContexts, certs: dict[str, CertFiles], case: Case, sizes: list[int]
) -> None:
    """Writes of any size: anonymous pages, at most 2^14 bytes per record."""
    pair = handshake(contexts, certs, case)
    kern = Kernel(PHYS_MEM)
    conn = KtlsConn(kern, KtlsWorkers(0), pair.hs.established(), pair)
    expected = b"".join(file_bytes(n) for n in sizes)
    got = bytearray()
    for n in sizes:
        assert sosend(conn.so, file_bytes(n)) == n
        conn.pump()
        got += pair.client_read()
    assert got == expected
    nrec = check_wire(conn, expected)
    assert nrec == sum(-(-n // MAX_PLAINTEXT) for n in sizes)
    assert kern.stats.ktls.records_encrypted == nrec
    assert kern.stats.ktls.bytes_encrypted == len(expected)
    conn.close()
    assert kern.leaks() == {}


# ---------------------------------------------------------------------------
# Where the ciphertext goes: in place for anonymous pages, fresh pages for file pages
# ---------------------------------------------------------------------------


@pytest.fixture
def deferred() -> Iterator[tuple[KtlsWorkers, queue.Queue[Callable[[], None]]]]:
    """One worker thread whose completions wait in a queue for the test."""
    posted: queue.Queue[Callable[[], None]] = queue.Queue()
    workers = KtlsWorkers(1, post=posted.put)
    yield workers, posted
    workers.shutdown()


def records_in(conn: KtlsConn) -> list[Mbuf]:
    out = []
    m = conn.so.so_snd.sb_mb
    while m is not None:
        out.append(m)
        m = m.m_next
    return out


def page_bytes(kern: Kernel, m: Mbuf) -> bytes:
    pgs = m.ext_pgs
    return b"".join(
        bytes(kern.phys.phys_view(pa, pgs.first_pg_off if i == 0 else 0, pgs.page_len(i)))
        for i, pa in enumerate(pgs.pa)
    )


def ciphertext_of(conn: KtlsConn, body: bytes) -> bytes:
    """The encrypted payload part of a record body (no explicit nonce, no trailer)."""
    suite = conn.est.suite
    start = suite.explicit_nonce_len
    return body[start : start + plaintext_len(suite, body)]


@pytest.mark.parametrize("source", ["sosend", "sendfile"])
@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_where_the_ciphertext_is_written(
    contexts: ServerContexts,
    certs: dict[str, CertFiles],
    files: pathlib.Path,
    deferred: tuple[KtlsWorkers, queue.Queue[Callable[[], None]]],
    case: Case,
    source: str,
) -> None:
    """sosend data is encrypted in the pages that hold it (ANON); file pages are
    replaced by fresh anonymous pages, and the file pages go back to the cache."""
    workers, posted = deferred
    pair = handshake(contexts, certs, case)
    kern = Kernel(PHYS_MEM)
    conn = KtlsConn(kern, workers, pair.hs.established(), pair)
    data = file_bytes(3 * PAGE_SIZE + 1000)  # one record of four pages, none compressed
    fd = -1
    if source == "sosend":
        assert sosend(conn.so, data) == len(data)
    else:
        fd, obj = open_file(files, data, kern)
        io: list[PagerRequest] = []
        job = SendfileJob(conn.so, obj, fd, 0, len(data))
        assert sendfile_step(job, io) is SendfileStatus.DONE
        for req in io:
            req.run()
            vm_pager_iodone(kern, req)  # sendfile_iodone -> ktls_enqueue -> the worker
    [m] = records_in(conn)
    before = list(m.ext_pgs.pa)
    anon_before = kern.stats.vm.pages_anon
    assert anon_before == len(before) == 4  # sosend: the data; sendfile: the destination
    assert kern.stats.ktls.tasks_active == 1

    posted.get(timeout=10)()  # the completion, on this thread

    pgs = m.ext_pgs
    assert pgs.tls is None
    assert pgs.flags & MBUF_PEXT_FLAG_ANON
    assert all(kern.phys.phys_to_vm_page(pa).anon for pa in pgs.pa)
    in_pages = page_bytes(kern, m)
    if source == "sosend":
        assert pgs.pa == before
        assert kern.stats.vm.pages_anon == anon_before
    else:
        assert not set(pgs.pa) & set(before)
        # The destination pages were allocated at enqueue time, before this snapshot.
        assert kern.stats.vm.pages_anon == anon_before
        for pa in before:
            pg = kern.phys.phys_to_vm_page(pa)
            assert pg.valid and pg.wire_count == 0 and not pg.anon  # cached again
        assert_page_cache_holds_file(kern, obj, data, 0)
    assert in_pages != data
    conn.pump()
    assert pair.client_read() == data
    [(_, body)] = parse_records(conn.wire)
    assert ciphertext_of(conn, body) == in_pages
    if fd >= 0:
        os.close(fd)
    conn.close()
    assert kern.leaks() == {}


# ---------------------------------------------------------------------------
# Record types, tampering, frame length
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_close_notify_record(
    contexts: ServerContexts, certs: dict[str, CertFiles], case: Case
) -> None:
    """A non-application record type (TLS_SET_RECORD_TYPE): TLS 1.2 puts it in the
    header and the AAD, TLS 1.3 in the encrypted inner content type."""
    pair = handshake(contexts, certs, case)
    kern = Kernel(PHYS_MEM)
    conn = KtlsConn(kern, KtlsWorkers(0), pair.hs.established(), pair)
    assert sosend(conn.so, b"bye") == 3
    conn.pump()
    assert pair.client_read() == b"bye"
    with pytest.raises(ssl.SSLWantReadError):  # open, nothing to read
        pair.client.read(1)
    assert sosend(conn.so, b"\x01\x00", TLS_RLTYPE_ALERT) == 2  # warning, close_notify
    conn.pump()
    assert pair.client.read(1) == b""  # the stdlib's clean EOF: close_notify received
    pair.client.unwrap()  # would want to read if the peer had not closed
    [_, (header, body)] = parse_records(conn.wire)
    outer = CT_APPLICATION_DATA if case.version is TlsVersion.TLS13 else CT_ALERT
    assert header[0] == outer
    assert open_record(case.suite, conn.est.tx, conn.est.tx_seq + 1, header, body) == (
        CT_ALERT,
        b"\x01\x00",
    )
    conn.close()
    assert kern.leaks() == {}


def flip_in_second_record(position: str, first_len: int) -> Callable[[bytes], bytes]:
    def deliver(data: bytes) -> bytes:
        [_, (_, body)] = parse_records(data)
        index = {"first": 0, "middle": len(body) // 2, "last": len(body) - 1}[position]
        out = bytearray(data)
        out[first_len + 5 + index] ^= 0x01
        return bytes(out)

    return deliver


@pytest.mark.parametrize("position", ["first", "middle", "last"])
@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_tampered_record_fails_the_mac(
    contexts: ServerContexts, certs: dict[str, CertFiles], case: Case, position: str
) -> None:
    """One flipped bit anywhere in a record body - explicit nonce, ciphertext or
    tag - and the client rejects it; the untouched record before it is fine."""
    pair = handshake(contexts, certs, case)
    kern = Kernel(PHYS_MEM)
    conn = KtlsConn(kern, KtlsWorkers(0), pair.hs.established(), pair)
    first = b"intact" * 50
    sosend(conn.so, first)
    sosend(conn.so, b"tampered" * 50)
    first_record = 5 + len(first) + case.suite.explicit_nonce_len + case.suite.tls_tlen
    conn.pump(deliver=flip_in_second_record(position, first_record))
    assert pair.client.read(len(first)) == first
    with pytest.raises(ssl.SSLError) as err:
        pair.client_read()
    assert err.value.reason == "DECRYPTION_FAILED_OR_BAD_RECORD_MAC"
    conn.close()


@pytest.mark.parametrize("max_frame_len", [4096, 8192, 12288])
@pytest.mark.parametrize("source", ["sosend", "sendfile"])
def test_records_respect_max_frame_len(
    contexts: ServerContexts,
    certs: dict[str, CertFiles],
    files: pathlib.Path,
    source: str,
    max_frame_len: int,
) -> None:
    """kern.ipc.tls.maxlen below 2^14: no record carries more than max_frame_len
    bytes, whether it was built by sosend or by sendfile (reference 6.3: callers
    limit each mbuf to max_frame_len before ktls_frame)."""
    case = CASES[0]
    pair = handshake(contexts, certs, case)
    kern = Kernel(PHYS_MEM)
    conn = KtlsConn(kern, KtlsWorkers(0), pair.hs.established(), pair, max_frame_len=max_frame_len)
    data = file_bytes(40_000)
    if source == "sosend":
        assert sosend(conn.so, data) == len(data)
        conn.pump()
        got = pair.client_read()
    else:
        fd, obj = open_file(files, data, kern)
        try:
            got = conn.sendfile(obj, fd, 1, len(data) - 1)
        finally:
            os.close(fd)
        data = data[1:]
    assert got == data
    lengths = [plaintext_len(case.suite, body) for _, body in parse_records(conn.wire)]
    assert max(lengths) <= max_frame_len
    assert sum(lengths) == len(data)
    conn.close()
    assert kern.leaks() == {}


@pytest.mark.parametrize("max_frame_len", [0, 1000, 10000, 16385, 20480])
def test_max_frame_len_must_be_whole_pages(
    contexts: ServerContexts, certs: dict[str, CertFiles], max_frame_len: int
) -> None:
    """sendfile cuts records every max_frame_len/PAGE_SIZE pages, so the session
    refuses lengths that are not whole pages (or exceed 2^14)."""
    pair = handshake(contexts, certs, CASES[0])
    est = pair.hs.established()
    with pytest.raises(ValueError, match="max_frame_len"):
        KtlsSession(Kernel(PHYS_MEM), KtlsWorkers(0), est.suite, est.tx.key, est.tx.iv,
                    max_frame_len=max_frame_len)  # fmt: skip


# ---------------------------------------------------------------------------
# Memory short: sendfile wires file pages only with their ciphertext frames reserved
# ---------------------------------------------------------------------------

SMALL_MEM = 64 * PAGE_SIZE  # the smallest PhysMem there is
HOG_PAGES = 40  # anonymous pages held by another connection's unsent records
FILE_PAGES = 16


def starved(
    contexts: ServerContexts, certs: dict[str, CertFiles], files: pathlib.Path
) -> tuple[Kernel, KtlsConn, KtlsConn, bytes, int, SendfileJob]:
    """40 of 64 pages are held by `hog`'s unsent records, leaving 24: a 16-page
    sendfile can wire only 12 file pages, because each needs a ciphertext page
    reserved with it (12 + 12 = 24), and then waits for memory holding nothing
    it cannot encrypt."""
    kern = Kernel(SMALL_MEM)
    hog_pair = handshake(contexts, certs, CASES[0])
    hog = KtlsConn(kern, KtlsWorkers(0), hog_pair.hs.established(), hog_pair)
    assert sosend(hog.so, bytes(HOG_PAGES * PAGE_SIZE)) == HOG_PAGES * PAGE_SIZE
    assert kern.stats.vm.pages_anon == HOG_PAGES

    pair = handshake(contexts, certs, CASES[3])
    conn = KtlsConn(kern, KtlsWorkers(0), pair.hs.established(), pair)
    data = file_bytes(FILE_PAGES * PAGE_SIZE)
    fd, obj = open_file(files, data, kern)
    io: list[PagerRequest] = []
    job = SendfileJob(conn.so, obj, fd, 0, len(data))
    waits = kern.stats.vm.waits
    assert sendfile_step(job, io) is SendfileStatus.NEED_MEMORY
    assert kern.stats.vm.waits > waits
    assert job.sbytes == 12 * PAGE_SIZE
    assert kern.phys.reserved == 12  # one ciphertext frame per wired file page
    for req in io:
        req.run()
        vm_pager_iodone(kern, req)
    assert kern.phys.reserved == 0  # the batch encrypted into its reserved pages
    assert kern.stats.ktls.tasks_active == 0
    assert conn.so.so_pending == 0
    return kern, hog, conn, data, fd, job


def test_sendfile_reserves_ciphertext_pages_under_starvation(
    contexts: ServerContexts, certs: dict[str, CertFiles], files: pathlib.Path
) -> None:
    kern, hog, conn, data, fd, job = starved(contexts, certs, files)
    try:
        conn.pump()  # the 12 encrypted pages go out
        assert conn.peer.client_read() == data[: 12 * PAGE_SIZE]
        hog.pump()  # the hog's records go out and their pages are freed
        assert hog.peer.client_read() == bytes(HOG_PAGES * PAGE_SIZE)
        io: list[PagerRequest] = []
        assert sendfile_step(job, io) is SendfileStatus.DONE
        for req in io:
            req.run()
            vm_pager_iodone(kern, req)
        conn.pump()
        assert conn.peer.client_read() == data[12 * PAGE_SIZE :]
    finally:
        os.close(fd)
    hog.close()
    conn.close()
    assert kern.leaks() == {}
    assert kern.phys.reserved == 0


def test_reservation_released_when_the_connection_dies(
    contexts: ServerContexts, certs: dict[str, CertFiles], files: pathlib.Path
) -> None:
    """A session that reserved frames and is closed before using them gives them back."""
    kern = Kernel(SMALL_MEM)
    pair = handshake(contexts, certs, CASES[0])
    conn = KtlsConn(kern, KtlsWorkers(0), pair.hs.established(), pair)
    assert conn.tls.ktls_reserve(10)
    assert kern.phys.reserved == 10
    assert kern.phys.free_count() == SMALL_MEM // PAGE_SIZE - 10
    conn.so.soabort(errno.ECONNRESET)
    conn.close()
    assert kern.phys.reserved == 0
    assert kern.leaks() == {}


def test_two_connections_send_a_file_under_io(
    contexts: ServerContexts, certs: dict[str, CertFiles], files: pathlib.Path
) -> None:
    """The second sendfile finds the pages busy (being read for the first) and waits
    for the same read; each connection then encrypts the shared file pages into
    its own destination pages, with its own keys."""
    kern = Kernel(PHYS_MEM)
    conns = []
    for case in (CASES[0], CASES[3]):
        pair = handshake(contexts, certs, case)
        conns.append(KtlsConn(kern, KtlsWorkers(0), pair.hs.established(), pair))
    data = file_bytes(50_000)
    npages = -(-len(data) // PAGE_SIZE)
    fd, obj = open_file(files, data, kern)
    try:
        reads: list[list[PagerRequest]] = []
        for conn in conns:
            io: list[PagerRequest] = []
            job = SendfileJob(conn.so, obj, fd, 0, len(data), b"HTTP/1.1 200 OK\r\n\r\n")
            assert sendfile_step(job, io) is SendfileStatus.DONE
            reads.append(io)
        assert reads[0] and not reads[1]  # one read, two waiters
        assert kern.stats.sf.pages_read == kern.stats.sf.busy_waits == npages
        assert all(c.pump() == 0 for c in conns)  # nothing is ready before the read
        for req in reads[0]:
            req.run()
            vm_pager_iodone(kern, req)
        for conn in conns:
            conn.pump()
            assert conn.peer.client_read() == b"HTTP/1.1 200 OK\r\n\r\n" + data
            check_wire(conn, b"HTTP/1.1 200 OK\r\n\r\n" + data)
        assert_page_cache_holds_file(kern, obj, data, 0)
    finally:
        os.close(fd)
    for conn in conns:
        conn.close()
    assert kern.leaks() == {}
    assert kern.stats.ktls.sessions_active == 0
