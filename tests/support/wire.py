"""The wire in memory: what the host socket would take from the NIC queue.

`wire_take` is one sendmsg: the queued scatter-gather list (or its first
`chunk` bytes, so that `IfTxQueue.complete` and `sbdrop` see partial packets
and partial records) leaves the queue and TCP gets the ACK for it. `drain`
runs `tcp_output` and the wire until nothing more is ready. `tcp_checksum_ok`
checks a packet's TCP checksum the receiver's way (RFC 1071), independently
of mbuf's in_cksum.
"""

from __future__ import annotations

import struct

from mbuf.socket import Socket
from mbuf.tcp_output import tcp_acked, tcp_output
from mbuf.tcp_timer import tcp_timer_rexmt

IOV_MAX = 1 << 20  # far more segments than any test queues: one take moves everything


def wire_take(so: Socket, chunk: int | None = None) -> bytes:
    """The host socket takes what is queued (at most `chunk` bytes); TCP gets the ACK.
    If the lossy wire lost the next packet, TCP goes back first (tcp_timer_rexmt)."""
    txq = so.so_txq
    if tcp_timer_rexmt(so):
        tcp_output(so)
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
        if not data and not so.so_txq.stalled():
            return bytes(out)
        out += data
    raise AssertionError("drain: no end to the data")


def fold16(data: bytes) -> int:
    """Ones'-complement sum of big-endian 16-bit words (RFC 1071), folded."""
    if len(data) % 2:
        data += b"\0"
    s: int = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return s


def tcp_checksum_ok(packet: bytes) -> bool:
    """RFC 793/1071: the ones'-complement sum over the pseudo-header and the segment
    of an IPv4 packet (20-byte header) is all ones."""
    seg = packet[20:]
    pseudo = packet[12:20] + struct.pack("!BBH", 0, 6, len(seg))
    return fold16(pseudo + seg) == 0xFFFF


def tcp6_checksum_ok(packet: bytes) -> bool:
    """The same for an IPv6 packet (40-byte header, TCP next): the pseudo-header is
    both addresses, the 32-bit upper-layer length, three zero bytes and 6."""
    seg = packet[40:]
    pseudo = packet[8:40] + struct.pack("!IxxxB", len(seg), 6)
    return fold16(pseudo + seg) == 0xFFFF


def ip_header_checksum_ok(packet: bytes) -> bool:
    """RFC 791: the ones'-complement sum of the IPv4 header's words is all ones."""
    return fold16(packet[: (packet[0] & 0x0F) * 4]) == 0xFFFF
