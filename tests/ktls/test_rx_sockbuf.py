"""KTLS RX in the receive buffer: tcp_input -> sb_mtls -> ktls_check_rx -> sb_mb -> soreceive.

The client's records (sealed independently, tests/support/tlsseal.py) arrive
as packets (`ConnectionPair.to_server`), whole, a byte per read, or in random
reads; the kernel decrypts each whole record in place and soreceive hands it
up as OpenSSL's ktls_read_record reads it; `TlsControl.receive_records` acts
on it. Every test ends with the socket closed and nothing leaked."""

from __future__ import annotations

import errno
import random

import pytest

from ktls.alerts import BAD_RECORD_MAC, RECORD_OVERFLOW
from mbuf.kern import Kernel
from mbuf.mbuf import EXT_CLUSTER
from mbuf.socket import ktls_enable_rx, soreceive
from mbuf.tcp_input import if_rx
from tests.ktls.test_rx import TLS12, TLS13, Conn, connect
from tests.mbuf.builders import chain
from tests.support.pair import ConnectionPair, new_socket
from tests.support.tlsseal import CT_APPLICATION_DATA, CT_HANDSHAKE

SUITES = [TLS13[0], TLS12[0], TLS13[2]]
IDS = ["TLS13-AES128", "TLS12-AES128", "TLS13-CHACHA"]


def _setup(suite: object, pending: bytes = b"") -> tuple[Kernel, ConnectionPair, Conn]:
    kern = Kernel()
    conn = connect(suite)  # type: ignore[arg-type]
    pair = ConnectionPair(new_socket(kern))
    ktls_enable_rx(pair.so, conn.ctl.rx, pending)
    return kern, pair, conn


def _close(kern: Kernel, pair: ConnectionPair) -> None:
    pair.close()
    assert kern.leaks() == {}


@pytest.mark.parametrize("suite", SUITES, ids=IDS)
@pytest.mark.parametrize("how", ["whole", "byte", "random"])
def test_records_decrypted_in_the_buffer(suite: object, how: str) -> None:
    kern, pair, conn = _setup(suite)
    rnd = random.Random(5)
    texts = [rnd.randbytes(n) for n in (1, 100, 1500, 16384, 3)]
    wire = b"".join(conn.client.data(t) for t in texts)
    up = pair.to_server_as(wire, how)
    assert conn.ctl.receive_records(up) == b"".join(texts)
    assert conn.stats.rx_records == len(texts)
    assert conn.stats.rx_bytes == sum(map(len, texts))
    rcv = pair.so.so_rcv
    assert rcv.sb_ccc == rcv.sb_tlscc == rcv.sb_mbcnt == 0 and not rcv.sb_rxctl
    _close(kern, pair)


@pytest.mark.parametrize("suite", SUITES, ids=IDS)
def test_accounting_while_a_record_is_incomplete(suite: object) -> None:
    kern, pair, conn = _setup(suite)
    rec = conn.client.data(b"x" * 3000)
    so = pair.so
    rcv = so.so_rcv
    if_rx(so, rec[:-1])
    assert rcv.sb_tlscc == rcv.sb_ccc == len(rec) - 1
    assert rcv.sb_acc == 0 and rcv.sb_mb is None
    # Three segments; the short third one was copied into the second's cluster
    # (sbcompress_ktls_rx), so two clusters hold them.
    mtls = list(chain(rcv.sb_mtls))
    assert rcv.sb_mcnt == len(mtls) == 2
    assert [m.m_len for m in mtls] == [1448, len(rec) - 1 - 1448]
    assert rcv.sbspace() == rcv.sb_hiwat - (len(rec) - 1)
    assert soreceive(so, 1 << 20) == b""  # nothing to read yet
    if_rx(so, rec[-1:])
    # Decrypted in place: the plaintext sits in the clusters it arrived in.
    assert rcv.sb_tlscc == 0 and rcv.sb_ccc == rcv.sb_acc == 3000
    ms = list(chain(rcv.sb_mb))
    assert all(m.m_ext is not None and m.m_ext.ext_type == EXT_CLUSTER for m in ms)
    assert list(rcv.sb_rxctl) == [(CT_APPLICATION_DATA, 3, 3, 3000)]
    assert conn.ctl.receive_records(soreceive(so, 1 << 20)) == b"x" * 3000
    _close(kern, pair)


@pytest.mark.parametrize("suite", SUITES, ids=IDS)
def test_close_frees_an_incomplete_record(suite: object) -> None:
    kern, pair, conn = _setup(suite)
    rec = conn.client.data(bytes(5000))
    if_rx(pair.so, rec[: len(rec) // 2])
    assert kern.stats.mb.clusters_in_use > 0
    _close(kern, pair)


@pytest.mark.parametrize("suite", SUITES, ids=IDS)
def test_a_bad_record_comes_after_the_good_ones(suite: object) -> None:
    kern, pair, conn = _setup(suite)
    good = conn.client.data(b"fine")
    bad = bytearray(conn.client.data(b"tampered"))
    bad[-1] ^= 1
    after = conn.client.data(b"never read")
    up = pair.to_server(good + bytes(bad) + after)
    assert conn.ctl.receive_records(up) == b"fine"
    with pytest.raises(OSError) as e:
        soreceive(pair.so, 1 << 20)
    assert e.value.errno == errno.EBADMSG
    assert conn.ctl.rx.error is not None and conn.ctl.rx.error.description == BAD_RECORD_MAC
    assert conn.stats.rx_failures == 1 and conn.stats.rx_records == 1
    _close(kern, pair)


def test_an_overlong_record_is_refused_on_its_header() -> None:
    kern, pair, conn = _setup(TLS13[0])
    if_rx(pair.so, bytes((23, 3, 3, 0xFF, 0xFF)))  # before any of its body
    with pytest.raises(OSError) as e:
        soreceive(pair.so, 1 << 20)
    assert e.value.errno == errno.EMSGSIZE
    assert conn.ctl.rx.error is not None and conn.ctl.rx.error.description == RECORD_OVERFLOW
    _close(kern, pair)


@pytest.mark.parametrize("request_update", [0, 1])
def test_key_update_holds_decryption_until_the_new_keys(request_update: int) -> None:
    kern, pair, conn = _setup(TLS13[0])
    wire = conn.client.data(b"before") + conn.client.key_update(request_update)
    wire += conn.client.data(b"after")  # under the next keys
    up = pair.to_server(wire)
    rx = conn.ctl.rx
    assert rx.held and pair.so.so_rcv.sb_tlscc > 0  # "after" waits, encrypted
    assert [up[0], up[5 + 6]] == [CT_APPLICATION_DATA, CT_HANDSHAKE]
    assert conn.ctl.receive_records(up) == b"before"
    assert not rx.held and conn.ctl.key_update_owed == bool(request_update)
    rx.ktls_check_rx(pair.so.so_rcv)  # what KtlsTransport does next (recv_decrypted)
    assert conn.ctl.receive_records(soreceive(pair.so, 1 << 20)) == b"after"
    _close(kern, pair)


@pytest.mark.parametrize("cut", [0, 3, 5, 20])
def test_enable_rx_puts_the_handshake_leftover_back(cut: int) -> None:
    """What OpenSSL read past its Finished goes to the front of so_rcv."""
    kern = Kernel()
    conn = connect(TLS12[0])
    wire = conn.client.data(b"GET / HTTP/1.1\r\n\r\n") + conn.client.data(b"second")
    pair = ConnectionPair(new_socket(kern))
    ktls_enable_rx(pair.so, conn.ctl.rx, wire[:cut])
    up = soreceive(pair.so, 1 << 20) + pair.to_server(wire[cut:])
    assert conn.ctl.receive_records(up) == b"GET / HTTP/1.1\r\n\r\nsecond"
    _close(kern, pair)
