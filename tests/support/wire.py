"""The wire in memory: what the host socket would take from the NIC queue.

`wire_take` is one sendmsg: the queued scatter-gather list (or its first
`chunk` bytes, so that `IfTxQueue.complete` and `sbdrop` see partial packets
and partial records) leaves the queue and TCP gets the ACK for it. `drain`
runs `tcp_output` and the wire until nothing more is ready.
"""

from __future__ import annotations

from mbuf.socket import Socket
from mbuf.tcp_output import tcp_acked, tcp_output

IOV_MAX = 1 << 20  # far more segments than any test queues: one take moves everything


def wire_take(so: Socket, chunk: int | None = None) -> bytes:
    """The host socket takes what is queued (at most `chunk` bytes); TCP gets the ACK."""
    txq = so.so_txq
    data = b"".join(bytes(v) for v in txq.pending_iov(IOV_MAX))
    if chunk is not None:
        data = data[:chunk]
    if data:
        txq.complete(len(data))
        tcp_acked(so, len(data))
    return data


def drain(so: Socket, chunk: int | None = None) -> bytes:
    """tcp_output and the wire, until nothing is ready; what the wire took."""
    out = bytearray()
    for _ in range(1_000_000):
        tcp_output(so)
        data = wire_take(so, chunk)
        if not data:
            return bytes(out)
        out += data
    raise AssertionError("drain: no end to the data")
