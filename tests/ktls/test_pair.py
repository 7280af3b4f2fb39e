"""The whole transmit path in memory, through `ConnectionPair` (tests/support/pair.py).

file -> sendfile -> (KTLS records, encrypted inline) -> tcp_output -> ip_output
-> NIC -> the wire's bytes, with no trio and no socket. Plain TCP must put the
file itself on the wire; KTLS must put records that the tests' own opener
(tests/support/tlsseal.py) decrypts to the file, numbered from the session's
first sequence number. Each runs with the interface's unmapped-mbuf support
(IFCAP_NOMAP) on and off and with checksum offload (IFCAP_TXCSUM) off, and
ends with the leak assertion.
"""

from __future__ import annotations

import os
import pathlib
import random

import pytest

from ktls.keys import TrafficKeys
from ktls.session import KtlsSession
from ktls.suites import SUITES
from ktls.workers import KtlsWorkers
from mbuf.ifnet import IFCAP_NOMAP, IFCAP_TSO4, IFCAP_TXCSUM
from mbuf.kern import Kernel
from mbuf.param import MLEN, PAGE_SIZE
from tests.support.files import file_bytes, open_file
from tests.support.pair import ConnectionPair, new_socket
from tests.support.tlsseal import open_stream, parse_records

PHYS_MEM = 16 * 1024 * 1024
SNDBUF = 64 * 1024  # smaller than the larger files: sendfile waits for space
CAPS = {
    "nomap": IFCAP_NOMAP | IFCAP_TXCSUM | IFCAP_TSO4,
    "no-nomap": IFCAP_TXCSUM | IFCAP_TSO4,  # ip_output maps every unmapped mbuf
    "no-txcsum": IFCAP_NOMAP | IFCAP_TSO4,  # ... and here checksums them in software
}
SIZES = [0, 1, PAGE_SIZE - 1, PAGE_SIZE, PAGE_SIZE + 1, 16383, 16384, 16385, 300_001]
HEAD = b"HTTP/1.1 200 OK\r\nContent-Length: n\r\n\r\n"
SUITE_NAMES = ["TLS_AES_128_GCM_SHA256", "ECDHE-ECDSA-CHACHA20-POLY1305"]


def _check_path_counters(kern: Kernel, caps: str, file_sent: int) -> None:
    """The knobs did what they say to the file's unmapped mbufs: mapped by
    ip_output without NOMAP, checksummed in software without TXCSUM, gathered
    unmapped by the NIC with both."""
    ip = kern.stats.ip
    if file_sent <= MLEN:  # sbcompress copied it into a plain mbuf (mb_unmapped_compress)
        return
    assert (ip.unmapped_converted > 0) == (caps != "nomap")
    assert (ip.sw_csum_packets > 0) == (caps == "no-txcsum")
    assert (kern.stats.ifnet.tx_unmapped_mbufs > 0) == (caps == "nomap")


@pytest.mark.parametrize("caps", list(CAPS))
@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize(("offset", "chunk"), [(0, None), (1, 1448)])
def test_plain_wire_is_the_file(
    tmp_path: pathlib.Path, caps: str, size: int, offset: int, chunk: int | None
) -> None:
    kern = Kernel(PHYS_MEM, capenable=CAPS[caps])
    data = file_bytes(size)
    offset = min(offset, size)
    fd, obj = open_file(tmp_path, data, kern)
    pair = ConnectionPair(new_socket(kern, SNDBUF))
    try:
        got = pair.sendfile(obj, fd, offset, size - offset, HEAD, chunk)
    finally:
        os.close(fd)
    assert got == bytes(pair.wire) == HEAD + data[offset:]
    _check_path_counters(kern, caps, size - offset)
    pair.close()
    assert kern.leaks() == {}


@pytest.mark.parametrize("caps", list(CAPS))
@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("name", SUITE_NAMES)
def test_ktls_wire_decrypts_to_the_file(
    tmp_path: pathlib.Path, caps: str, size: int, name: str
) -> None:
    suite = SUITES[name]
    rng = random.Random(f"{name}/{size}")
    keys = TrafficKeys(rng.randbytes(suite.key_len), rng.randbytes(suite.fixed_iv_len))
    seq0 = 1  # TLS 1.2's Finished took 0; TLS 1.3 may start anywhere as well
    kern = Kernel(PHYS_MEM, capenable=CAPS[caps])
    data = file_bytes(size)
    fd, obj = open_file(tmp_path, data, kern)
    tls = KtlsSession(kern, KtlsWorkers(0), suite, keys.key, keys.iv)
    pair = ConnectionPair(new_socket(kern, SNDBUF), tls=tls, seqno=seq0)
    try:
        pair.sendfile(obj, fd, 0, size, HEAD)
    finally:
        os.close(fd)
    assert open_stream(suite, keys, seq0, pair.wire) == HEAD + data
    nrec = len(parse_records(pair.wire))
    assert pair.so.so_snd.sb_tls_seqno == seq0 + nrec
    assert kern.stats.ktls.records_encrypted == nrec
    _check_path_counters(kern, caps, size)
    pair.close()
    assert kern.leaks() == {}
    assert kern.stats.ktls.sessions_active == 0


@pytest.mark.parametrize("caps", list(CAPS))
def test_ktls_writes_and_sendfile_share_one_record_stream(
    tmp_path: pathlib.Path, caps: str
) -> None:
    """sosend records (anonymous pages) and sendfile records interleave on one
    numbering, as a response head, a body and a trailer written separately."""
    suite = SUITES["TLS_AES_256_GCM_SHA384"]
    keys = TrafficKeys(bytes(range(32)), bytes(range(12)))
    kern = Kernel(PHYS_MEM, capenable=CAPS[caps])
    data = file_bytes(70_000, seed=3)
    fd, obj = open_file(tmp_path, data, kern)
    tls = KtlsSession(kern, KtlsWorkers(0), suite, keys.key, keys.iv)
    pair = ConnectionPair(new_socket(kern, SNDBUF), tls=tls)
    try:
        pair.send(HEAD)
        pair.sendfile(obj, fd, 0, len(data))
        pair.send(b"trailer " * 4000)
    finally:
        os.close(fd)
    assert open_stream(suite, keys, 0, pair.wire) == HEAD + data + b"trailer " * 4000
    pair.close()
    assert kern.leaks() == {}
