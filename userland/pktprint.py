"""One line per packet, as tcpdump prints Ethernet/IPv4/IPv6 TCP by default.

Theory of operation. `PacketPrinter.line(ts_ns, frame, wirelen)` returns the
line `tcpdump -nn` prints for the frame, with the time of day in UTC (or, as
`tcpdump -tt`, seconds since the epoch):

    12:34:56.123456 IP 127.0.0.1.443 > 127.0.0.2.50000: Flags [P.], seq 1:518,
        ack 28, win 65535, length 517   (one line)

Sequence and acknowledgement numbers are relative, as tcpdump's are without
-S: the printer keeps tcpdump's table of conversations (one entry per address
and port pair, both directions under one collating order), recorded from the
first ACK-bearing segment seen or from a SYN, and subtracts the initial
numbers from later segments. Segments without ACK print absolute numbers, as
tcpdump's do. TCP options are printed in tcpdump's words (mss, nop, wscale,
sackOK, TS val/ecr, eol; any other as "unknown-K 0x..."); other IP protocols
print "ip-proto-N LEN" and non-IP frames their ethertype (tcpdump decodes
UDP, ICMP, ARP... in its own words: not done here, nm0 carries TCP only).

Models: tcpdump print-ether.c (no link header without -e), print-ip.c /
print-ip6.c ("IP" / "IP6", the addresses), print-tcp.c (`tcp_print`: flags,
the seq hash, options, length), util-print.c (`ts_format`, -nn).

Deliberate differences: the time of day is always UTC (tcpdump uses the
local zone; TZ=UTC tcpdump prints the same line); port numbers are never
turned into names (-nn); payload protocols tcpdump decodes on well-known
ports (HTTP on 80, DNS on 53, BGP, ...) are not decoded, so the line ends at
"length N" for every port; IP options and fragments are not described; a
TCP header length out of bounds prints "[bad hdr length N]" after the flags,
not tcpdump's longer wording.
"""

from __future__ import annotations

import ipaddress
import struct
import time
from typing import Final

ETHERTYPE_IP: Final = 0x0800
ETHERTYPE_IPV6: Final = 0x86DD
IPPROTO_TCP: Final = 6
_ETHER: Final = struct.Struct("!12xH")
_TCP: Final = struct.Struct("!HHIIBBHHH")
# print-tcp.c tcp_flag_values, in its order.
_FLAG_NAMES: Final = ((0x01, "F"), (0x02, "S"), (0x04, "R"), (0x08, "P"), (0x10, "."),
                      (0x20, "U"), (0x40, "E"), (0x80, "W"))  # fmt: skip
TH_SYN: Final = 0x02
TH_ACK: Final = 0x10
TH_URG: Final = 0x20


def ts_format(ts_ns: int, epoch: bool = False) -> str:
    """HH:MM:SS.ffffff of the time of day, UTC (tcpdump's default), or with
    `epoch` seconds.ffffff since the epoch (tcpdump -tt)."""
    sec, ns = divmod(ts_ns, 1_000_000_000)
    if epoch:
        return f"{sec}.{ns // 1000:06d}"
    return f"{time.strftime('%H:%M:%S', time.gmtime(sec))}.{ns // 1000:06d}"


def tcp_flags(flags: int) -> str:
    s = "".join(name for bit, name in _FLAG_NAMES if flags & bit)
    return s or "none"


def _tcp_options(opts: bytes) -> str:
    out: list[str] = []
    i = 0
    while i < len(opts):
        kind = opts[i]
        if kind == 0:
            out.append("eol")
            break
        if kind == 1:
            out.append("nop")
            i += 1
            continue
        if i + 1 >= len(opts) or opts[i + 1] < 2 or i + opts[i + 1] > len(opts):
            out.append("[bad opt]")
            break
        n = opts[i + 1]
        body = opts[i + 2 : i + n]
        if kind == 2 and n == 4:
            out.append(f"mss {struct.unpack('!H', body)[0]}")
        elif kind == 3 and n == 3:
            out.append(f"wscale {body[0]}")
        elif kind == 4 and n == 2:
            out.append("sackOK")
        elif kind == 8 and n == 10:
            out.append("TS val {} ecr {}".format(*struct.unpack("!II", body)))
        else:
            out.append(f"unknown-{kind} 0x{body.hex()}")
        i += n
    return ",".join(out)


class PacketPrinter:
    """tcpdump's line printer with its per-conversation relative numbers."""

    __slots__ = ("_seqs", "epoch")

    def __init__(self, epoch: bool = False) -> None:
        self.epoch = epoch  # -tt: seconds since the epoch instead of the time of day
        # (low address, high address, ports) -> (seq, ack) of the "low" side
        self._seqs: dict[tuple[bytes, bytes, int], tuple[int, int]] = {}

    def line(self, ts_ns: int, frame: bytes, wirelen: int | None = None) -> str:
        n = len(frame) if wirelen is None else wirelen
        return f"{ts_format(ts_ns, self.epoch)} {self.describe(frame, n)}"

    def describe(self, frame: bytes, wirelen: int) -> str:
        """The line without its timestamp."""
        if len(frame) < 14:
            return f"[|ether] length {wirelen}"
        (etype,) = _ETHER.unpack_from(frame)
        if etype == ETHERTYPE_IP and len(frame) >= 34:
            ihl = (frame[14] & 0xF) * 4
            (ip_len,) = struct.unpack_from("!H", frame, 16)
            proto = frame[23]
            src, dst = frame[26:30], frame[30:34]
            s = str(ipaddress.IPv4Address(src))
            d = str(ipaddress.IPv4Address(dst))
            return self._l4("IP", proto, src, dst, s, d, frame, 14 + ihl, ip_len - ihl)
        if etype == ETHERTYPE_IPV6 and len(frame) >= 54:
            (plen,) = struct.unpack_from("!H", frame, 18)
            proto = frame[20]
            src, dst = frame[22:38], frame[38:54]
            s = ipaddress.IPv6Address(src).compressed
            d = ipaddress.IPv6Address(dst).compressed
            return self._l4("IP6", proto, src, dst, s, d, frame, 54, plen)
        return f"ethertype 0x{etype:04x}, length {wirelen}"

    def _l4(
        self, fam: str, proto: int, src: bytes, dst: bytes, s: str, d: str,
        frame: bytes, off: int, length: int,
    ) -> str:  # fmt: skip
        if proto != IPPROTO_TCP or len(frame) < off + _TCP.size:
            return f"{fam} {s} > {d}: ip-proto-{proto} {length}"
        sport, dport, seq, ack, offx, flags, win, _sum, urp = _TCP.unpack_from(frame, off)
        hlen = (offx >> 4) * 4
        head = f"{fam} {s}.{sport} > {d}.{dport}: Flags [{tcp_flags(flags)}]"
        if hlen < 20 or hlen > length:
            return f"{head}, [bad hdr length {hlen}]"
        if flags & TH_ACK:
            seq, ack = self._relative(src, dst, sport, dport, seq, ack, flags)
        datalen = length - hlen
        parts = [head]
        if datalen > 0 or flags & 0x07:
            end = f":{(seq + datalen) & 0xFFFFFFFF}" if datalen > 0 else ""
            parts.append(f"seq {seq}{end}")
        if flags & TH_ACK:
            parts.append(f"ack {ack}")
        parts.append(f"win {win}")
        if flags & TH_URG:
            parts.append(f"urg {urp}")
        if hlen > 20:
            parts.append(f"options [{_tcp_options(frame[off + 20 : off + hlen])}]")
        parts.append(f"length {datalen}")
        return ", ".join(parts)

    def _relative(
        self, src: bytes, dst: bytes, sport: int, dport: int, seq: int, ack: int, flags: int
    ) -> tuple[int, int]:
        rev = sport > dport or (sport == dport and src > dst)
        key = (dst, src, dport << 16 | sport) if rev else (src, dst, sport << 16 | dport)
        base = self._seqs.get(key)
        if base is None or flags & TH_SYN:
            # print-tcp.c: th->seq/th->ack from this segment, numbers printed as they are
            if rev:
                self._seqs[key] = ((ack - 1) & 0xFFFFFFFF, seq)
            else:
                self._seqs[key] = (seq, (ack - 1) & 0xFFFFFFFF)
            return seq, ack
        th_seq, th_ack = base
        if rev:
            return (seq - th_ack) & 0xFFFFFFFF, (ack - th_seq) & 0xFFFFFFFF
        return (seq - th_seq) & 0xFFFFFFFF, (ack - th_ack) & 0xFFFFFFFF
