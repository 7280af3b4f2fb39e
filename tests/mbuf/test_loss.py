"""A lossy wire: packets lost after the NIC, TCP going back to snd_una (mbuf/tcp_timer.py).

The client (the peer of a ConnectionPair) must read every byte exactly once and
in order whatever is lost; the retransmissions are counted, cost fresh
m_copym chains and, without IFCAP_NOMAP, fresh conversions with new sf_bufs;
nothing leaks."""

from __future__ import annotations

import random
from collections.abc import Callable

import pytest

from mbuf.ifnet import IFCAP_NOMAP, IFCAP_TSO4, IFCAP_TXCSUM
from mbuf.kern import Kernel
from mbuf.socket import soclose, sosend
from mbuf.tcp_output import tcp_output
from mbuf.tcp_timer import tcp_timer_rexmt
from tests.mbuf.builders import SMALL_MEM, DiskFile, FakeTls
from tests.support.pair import ConnectionPair, new_socket
from tests.support.wire import wire_take

MakeFile = Callable[[bytes], DiskFile]
CAPS = {
    "nomap": IFCAP_NOMAP | IFCAP_TXCSUM | IFCAP_TSO4,
    "no-nomap": IFCAP_TXCSUM | IFCAP_TSO4,
    "no-tso": IFCAP_NOMAP | IFCAP_TXCSUM,
    "no-txcsum": IFCAP_NOMAP,
}


@pytest.mark.parametrize("mode", list(CAPS))
@pytest.mark.parametrize("loss", [0.02, 0.3])
@pytest.mark.parametrize("seed", [1, 2])
def test_every_byte_once_in_order(make_file: MakeFile, mode: str, loss: float, seed: int) -> None:
    data = random.Random(seed).randbytes(700_000)
    tf = make_file(data)
    kern = Kernel(SMALL_MEM, capenable=CAPS[mode], loss=loss, loss_seed=seed)
    pair = ConnectionPair(new_socket(kern, 256 * 1024))
    got = pair.sendfile(tf.obj(kern), tf.fd, 0, len(data), head=b"HTTP/1.1 200 OK\r\n\r\n")
    assert got == b"HTTP/1.1 200 OK\r\n\r\n" + data
    st = kern.stats
    assert st.ifnet.tx_lost > 0 and 0 < st.tcp.rexmttimeo <= st.ifnet.tx_lost
    assert st.tcp.sndrexmitpack > 0 and st.tcp.sndrexmitbyte > 0
    # What the wire carried once, plus what it carried again, is what TCP sent.
    assert st.tcp.sndbyte == len(got) + st.tcp.sndrexmitbyte
    if mode == "no-nomap":
        assert st.ip.unmapped_converted == st.ip.output_packets  # retransmissions too
    pair.close()
    assert kern.leaks() == {}


def test_retransmission_costs_conversions_without_nomap(make_file: MakeFile) -> None:
    data = bytes(500_000)
    tf = make_file(data)
    converted = []
    for loss in (0.0, 0.2):
        kern = Kernel(SMALL_MEM, capenable=CAPS["no-nomap"], loss=loss, loss_seed=3)
        pair = ConnectionPair(new_socket(kern))
        assert pair.sendfile(tf.obj(kern), tf.fd, 0, len(data)) == data
        converted.append(kern.stats.ip.unmapped_converted)
        pair.close()
        assert kern.leaks() == {}
    assert converted[1] > converted[0]


def test_go_back_to_snd_una() -> None:
    """The lost packet's bytes (and those behind it) go again from snd_una: the
    send pointer cache is reset, and the retransmitted headers carry the same
    sequence numbers."""
    kern = Kernel(loss=0.0)
    so = new_socket(kern)
    sosend(so, bytes(range(256)) * 100)
    kern.ifnet.if_loss = 0.999  # the first packet is lost
    tcp_output(so)
    kern.ifnet.if_loss = 0.0
    txq = so.so_txq
    assert txq.stalled() and txq.pending_iov() == []
    assert wire_take(so) == bytes(range(256)) * 100  # went back, resent, taken
    assert kern.stats.tcp.rexmttimeo == 1
    assert so.so_snd.sb_ccc == 0 and so.so_tcp.snd_nxt == so.so_tcp.snd_max == 0
    assert not tcp_timer_rexmt(so)  # nothing stalled: nothing to do
    soclose(so)
    assert kern.leaks() == {}


def test_ktls_records_are_resent_as_they_were(make_file: MakeFile) -> None:
    """Retransmitted TLS records are the same ciphertext: their sequence numbers
    were given when they entered the buffer, not when they are sent."""
    data = random.Random(9).randbytes(300_000)
    tf = make_file(data)
    kern = Kernel(SMALL_MEM, loss=0.2, loss_seed=4)
    tls = FakeTls()
    pair = ConnectionPair(new_socket(kern, tls=tls), tls=tls, encrypt=tls.encrypt_all)
    pair.sendfile(tf.obj(kern), tf.fd, 0, len(data))
    assert tls.seqnos == list(range(len(tls.seqnos)))
    assert kern.stats.tcp.sndrexmitpack > 0
    pair.close()
    assert kern.leaks() == {}
