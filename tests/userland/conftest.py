"""Fixtures for the userland tests: packets the model really put on nm0.

`server_capture` runs a request and a 100 KiB response through a
ConnectionPair on a kernel whose nm0 has a BPF descriptor (as
tests/bpf/test_nm0_taps.py does) and returns the records the descriptor
read: Ethernet frames carrying the model's own IPv4 or IPv6 and TCP headers.
`conversation` builds the segments a data transfer does not show (SYN,
SYN-ACK, FIN, RST) with the model's own header writer (tcpip_fillheaders).
"""

from __future__ import annotations

import pathlib
import ssl
import struct
import subprocess

from bpf.bpf import bpf_close, bpfdetach, bpfread
from mbuf.if_tap import ETHERTYPE_IP, ETHERTYPE_IPV6, IF_LLADDR, PEER_LLADDR
from mbuf.kern import Kernel
from mbuf.tcpip_hdr import tcpip_fillheaders
from tests.bpf.conftest import nm0_descriptor
from tests.support.certs import HOSTNAME, make_cert
from tests.support.clients import client_context
from tests.support.pair import ConnectionPair, new_socket
from userland.zbuf import BpfRecord, bpf_records

REQUEST = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"
BODY = bytes(range(256)) * 400  # 100 KiB: TSO bursts and full segments
TH_FIN, TH_SYN, TH_RST, TH_PUSH, TH_ACK = 0x01, 0x02, 0x04, 0x08, 0x10


T0 = 1_700_000_000_123_456_789  # a timestamp with every nanosecond digit set


def run(*argv: str) -> str:
    """A tool's standard output; it must succeed."""
    return subprocess.run(argv, check=True, capture_output=True, text=True, timeout=60).stdout


def record_ns(r: BpfRecord) -> int:
    """A bpf_hdr record's timestamp (microseconds) in nanoseconds."""
    return r.tv_sec * 1_000_000_000 + r.tv_frac * 1000


def server_capture(ipv6: bool) -> list[BpfRecord]:
    """The frames nm0 saw (both directions) serving BODY to one request."""
    kern = Kernel()
    bpf, bif, d = nm0_descriptor(kern)
    pair = ConnectionPair(new_socket(kern, isipv6=ipv6))
    assert pair.to_server(REQUEST) == REQUEST
    assert pair.send(BODY) == BODY
    recs = bpf_records(bpfread(d, d.bd_bufsize, nonblock=True))
    bpf_close(d)
    bpfdetach(bif)
    pair.close()
    assert kern.leaks() == {} and bpf.stats.leaks() == {}
    assert len(recs) >= 3
    return recs


def frame(
    ipv6: bool,
    out: bool,
    seq: int,
    ack: int,
    flags: int,
    payload: bytes = b"",
    win: int = 65535,
    port: int = 443,
) -> bytes:
    """An Ethernet frame of one TCP segment between the model's addresses
    (server `port`, client port 50000), headers by tcpip_fillheaders."""
    if ipv6:
        srv, cli = 1, (0xFE80 << 112) | 0x1234
    else:
        srv, cli = 0x7F000001, 0x7F000002
    src, dst, sport, dport = (srv, cli, port, 50000) if out else (cli, srv, 50000, port)
    hdr = bytearray(60)
    n = tcpip_fillheaders(hdr, ipv6, src, dst, sport, dport, seq, ack, flags, win, 7, len(payload))
    ether = struct.pack(
        "!6s6sH",
        PEER_LLADDR if out else IF_LLADDR,
        IF_LLADDR if out else PEER_LLADDR,
        ETHERTYPE_IPV6 if ipv6 else ETHERTYPE_IP,
    )
    return ether + bytes(hdr[:n]) + payload


def conversation(ipv6: bool, port: int = 443) -> list[bytes]:
    """SYN, SYN-ACK, ACK, request, response data, FIN both ways, and a RST."""
    c, s, n = 1000, 5_000_000, len(REQUEST)
    return [
        frame(ipv6, False, c, 0, TH_SYN, port=port),
        frame(ipv6, True, s, c + 1, TH_SYN | TH_ACK, port=port),
        frame(ipv6, False, c + 1, s + 1, TH_ACK, port=port),
        frame(ipv6, False, c + 1, s + 1, TH_PUSH | TH_ACK, REQUEST, port=port),
        frame(ipv6, True, s + 1, c + 1 + n, TH_PUSH | TH_ACK, BODY[:517], port=port),
        frame(ipv6, True, s + 518, c + 1 + n, TH_FIN | TH_ACK, port=port),
        frame(ipv6, False, c + 1 + n, s + 519, TH_FIN | TH_ACK, port=port),
        frame(ipv6, False, c + 2 + n, 0, TH_RST, port=port),
    ]


def stream_frames(ipv6: bool, flights: list[tuple[bool, bytes]], mss: int = 1400) -> list[bytes]:
    """A whole TCP conversation carrying `flights` (out = server to client, bytes)
    as segments of at most `mss`: handshake, data with consistent numbers, FINs."""
    c, s = 1000, 5_000_000
    frames = [
        frame(ipv6, False, c, 0, TH_SYN),
        frame(ipv6, True, s, c + 1, TH_SYN | TH_ACK),
        frame(ipv6, False, c + 1, s + 1, TH_ACK),
    ]
    cs, ss = c + 1, s + 1
    for out, data in flights:
        for i in range(0, len(data), mss):
            chunk = data[i : i + mss]
            if out:
                frames.append(frame(ipv6, True, ss, cs, TH_PUSH | TH_ACK, chunk))
                ss += len(chunk)
            else:
                frames.append(frame(ipv6, False, cs, ss, TH_PUSH | TH_ACK, chunk))
                cs += len(chunk)
    frames.append(frame(ipv6, True, ss, cs, TH_FIN | TH_ACK))
    frames.append(frame(ipv6, False, cs, ss + 1, TH_FIN | TH_ACK))
    return frames


def tls_session(
    tmp: pathlib.Path, version: ssl.TLSVersion, request: bytes, response: bytes
) -> tuple[list[tuple[bool, bytes]], bytes]:
    """A real TLS session between two stdlib SSLObjects over memory BIOs: the
    flights of bytes each side sent (in order; True = server) and the NSS key
    log the client wrote (keylog_filename)."""
    certs = make_cert(tmp, "ec")
    sctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    sctx.load_cert_chain(certs.cert, certs.key)
    sctx.minimum_version = sctx.maximum_version = version
    cctx = client_context(version=version)
    keylog = tmp / f"keylog-{version.name}.txt"
    cctx.keylog_filename = str(keylog)
    c_in, c_out, s_in, s_out = ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO()
    cli = cctx.wrap_bio(c_in, c_out, server_hostname=HOSTNAME)
    srv = sctx.wrap_bio(s_in, s_out, server_side=True)
    flights: list[tuple[bool, bytes]] = []

    def move() -> None:
        if c_out.pending:
            data = c_out.read()
            flights.append((False, data))
            s_in.write(data)
        if s_out.pending:
            data = s_out.read()
            flights.append((True, data))
            c_in.write(data)

    done = [False, False]
    for _ in range(20):
        for i, end in enumerate((cli, srv)):
            if not done[i]:
                try:
                    end.do_handshake()
                    done[i] = True
                except ssl.SSLWantReadError:
                    pass
        move()
        if all(done):
            break
    assert all(done)
    cli.write(request)
    move()
    got = b""
    while len(got) < len(request):
        got += srv.read(65536)
        move()
    assert got == request
    srv.write(response)
    move()
    body = b""
    while len(body) < len(response):
        try:
            body += cli.read(65536)
        except ssl.SSLWantReadError:
            move()
    assert body == response
    return flights, keylog.read_bytes()


def packets(ipv6: bool) -> list[tuple[int, bytes, int]]:
    """(ts_ns, frame, wirelen): handshake/FIN/RST frames, then what nm0 really
    captured serving a response (one second later)."""
    out = [(T0 + i * 1_500_001, f, len(f)) for i, f in enumerate(conversation(ipv6))]
    out += [(record_ns(r) + 10**9, r.data, r.datalen) for r in server_capture(ipv6)]
    return out
