"""ktls.session: a batch whose encryption fails (ktls_encrypt's error path).

Reference 6.5: on failure the kernel counts `failed_crypto`, aborts the
connection with EIO and frees what the batch allocated; the records stay in
the socket buffer, never sent, until the socket is closed.
"""

from __future__ import annotations

import errno
import os
import pathlib
import queue
from collections.abc import Callable
from typing import Any

import pytest

import ktls.ocf
import ktls.session
from ktls.nonce import SEQNO_LIMIT
from ktls.workers import KtlsWorkers
from mbuf.kern import Kernel
from mbuf.param import PAGE_SIZE
from mbuf.sendfile import SendfileJob, SendfileStatus, sendfile_step, vm_pager_iodone
from mbuf.sockbuf import SBS_CANTSENDMORE
from mbuf.socket import sosend
from mbuf.tcp_output import tcp_output
from mbuf.vm_object import PagerRequest
from tests.ktls.harness import CASE_IDS, CASES, PHYS_MEM, Case, KtlsConn, ServerContexts, handshake
from tests.support.certs import CertFiles
from tests.support.tlsseal import CT_APPLICATION_DATA, open_record, parse_records

SIZE = 16384 + 3616  # two records: four pages, then one
FILE_PAGES = 5


class CryptoFailure(Exception):
    """Raised by the patched encryption to make a batch fail."""


@pytest.mark.parametrize("threads", [0, 1], ids=["inline", "worker"])
@pytest.mark.parametrize("fail_at", [0, 1], ids=["first-record", "second-record"])
@pytest.mark.parametrize("source", ["sosend", "sendfile"])
def test_failed_encryption_aborts_the_connection(
    contexts: ServerContexts,
    certs: dict[str, CertFiles],
    tmp_path: pathlib.Path,
    monkeypatch: pytest.MonkeyPatch,
    source: str,
    fail_at: int,
    threads: int,
) -> None:
    real = ktls.ocf.ktls_ocf_encrypt  # the session's sw_encrypt
    calls = []

    def failing(tls: Any, phys: Any, pgs: Any, dst: Any, scratch: bytearray) -> int:
        calls.append(pgs.seqno)
        if len(calls) > fail_at:
            raise CryptoFailure("crypto(9) returned an error")
        return real(tls, phys, pgs, dst, scratch)

    posted: queue.Queue[Callable[[], None]] = queue.Queue()
    workers = KtlsWorkers(threads, post=posted.put)
    pair = handshake(contexts, certs, CASES[0])
    kern = Kernel(PHYS_MEM)
    conn = KtlsConn(kern, workers, pair.hs.established(), pair)
    conn.tls.sw_encrypt = failing
    wakeups: list[int] = []
    conn.so.so_upcall = lambda: wakeups.append(conn.so.so_error)
    data = os.urandom(SIZE)
    fd = -1
    try:
        if source == "sosend":
            assert sosend(conn.so, data) == SIZE
        else:
            path = tmp_path / "file"
            path.write_bytes(data)
            fd = os.open(path, os.O_RDONLY)
            obj = kern.pagecache.lookup(os.fstat(fd))
            io: list[PagerRequest] = []
            assert sendfile_step(SendfileJob(conn.so, obj, fd, 0, SIZE), io) is (
                SendfileStatus.DONE
            )
            for req in io:
                req.run()
                vm_pager_iodone(kern, req)
        if threads:
            posted.get(timeout=10)()

        ktls_st = kern.stats.ktls
        assert calls == [conn.est.tx_seq + i for i in range(fail_at + 1)]
        assert ktls_st.failed_crypto == 1
        assert ktls_st.records_encrypted == 0
        assert ktls_st.tasks_active == 0
        assert conn.so.so_pending == 0
        assert conn.so.so_error == errno.EIO
        assert conn.so.so_snd.sb_state & SBS_CANTSENDMORE
        assert wakeups and wakeups[-1] == errno.EIO  # the owner was told
        # Destination pages are gone, and the batch itself was freed at once
        # (mb_free_notready), not when the socket closes: its pages are released.
        assert kern.stats.vm.pages_anon == 0 and kern.stats.vm.pages_wired == 0
        assert conn.so.so_snd.sb_ccc == 0 and conn.so.so_snd.sb_mb is None
        assert kern.stats.mb.ext_pgs_in_use == 0
        if source == "sendfile":
            for pindex in range(FILE_PAGES):  # partly encrypted or not: never written
                page = data[pindex * PAGE_SIZE : (pindex + 1) * PAGE_SIZE].ljust(PAGE_SIZE, b"\0")
                assert bytes(kern.phys.phys_view(obj.pages[pindex].phys_addr)) == page

        # Nothing of the batch is ever sent, and the socket takes no more.
        assert conn.so.so_snd.sb_acc == 0
        assert tcp_output(conn.so) == 0
        assert conn.pump() == 0
        assert pair.client_read() == b""
        with pytest.raises(OSError) as err:
            sosend(conn.so, b"more")
        assert err.value.errno == errno.EIO
        if source == "sendfile":
            with pytest.raises(OSError) as err:
                sendfile_step(SendfileJob(conn.so, obj, fd, 0, SIZE), [])
            assert err.value.errno == errno.EIO
    finally:
        if fd >= 0:
            os.close(fd)
        workers.shutdown()

    conn.close()
    assert kern.leaks() == {}
    assert kern.stats.ktls.sessions_active == 0


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_sequence_numbers_never_wrap(
    contexts: ServerContexts, certs: dict[str, CertFiles], case: Case
) -> None:
    """RFC 8446 5.3 / RFC 5246 6.1: a sequence number must not wrap. The last legal
    number, 2^64 - 1, still encrypts; a batch that would need 2^64 fails like any
    other crypto failure (EIO), whatever the suite, and leaks nothing."""
    pair = handshake(contexts, certs, case)
    kern = Kernel(PHYS_MEM)
    conn = KtlsConn(kern, KtlsWorkers(0), pair.hs.established(), pair)
    conn.so.so_snd.sb_tls_seqno = SEQNO_LIMIT - 2
    assert sosend(conn.so, b"a" * 100) == 100  # 2^64 - 2
    assert sosend(conn.so, b"b" * 100) == 100  # 2^64 - 1
    assert conn.so.so_error == 0
    conn.pump()
    for i, (header, body) in enumerate(parse_records(conn.wire)):
        assert open_record(case.suite, conn.est.tx, SEQNO_LIMIT - 2 + i, header, body) == (
            CT_APPLICATION_DATA,
            b"ab"[i : i + 1] * 100,
        )

    try:
        sosend(conn.so, b"c" * 100)  # 2^64: would reuse nonce 0
    except OSError as e:  # refusing the write is as good as aborting
        assert e.errno == errno.EIO
    else:
        assert conn.so.so_error == errno.EIO
        assert kern.stats.ktls.failed_crypto == 1
    assert conn.pump() == 0
    conn.close()
    assert kern.leaks() == {}
