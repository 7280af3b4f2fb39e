"""The classic pcap savefile, as libpcap's pcap_dump writes it (pcap-savefile(5)).

Theory of operation. A savefile is a 24-byte global header (magic, version
2.4, thiszone 0, sigfigs 0, snaplen, linktype) followed by one 16-byte record
header per packet (ts_sec, ts_usec or ts_nsec, caplen, len) and the captured
bytes, with no padding (reference A.13). Everything is in the writer's byte
order; this writer uses the host's, as libpcap does, and readers swap by the
magic. `PcapWriter` streams to any binary file object (a file, a pipe,
stdout's buffer): the header at construction, one `write()` per record
(header and data in one call), and `flush()` after every record when
`flush_each` is set, which is tcpdump -U ("packet-buffered") so a reader at
the other end of a pipe sees each packet as it is captured.

Timestamps are integer nanoseconds since the epoch, the form the capture
library hands out; the microsecond magic truncates them to microseconds, as
libpcap does for a microsecond savefile. Packets longer than the snap length
are cut to it (caplen) and keep their wire length (len).

Models: libpcap sf-pcap.c (`sf_write_header`, `pcap_dump`), pcap/pcap.h
(`struct pcap_file_header`, `struct pcap_sf_pkthdr`), pcap-common.c
(LINKTYPE_ETHERNET = DLT_EN10MB = 1).

Deliberate difference: libpcap's dumper buffers in stdio and only
pcap_dump_flush() pushes it out; here the file object's own buffering plays
that part and `flush_each` calls its flush().
"""

from __future__ import annotations

import struct
from typing import BinaryIO, Final

from bpf.bpf_h import DLT_EN10MB

TCPDUMP_MAGIC: Final = 0xA1B2C3D4  # microsecond timestamps
NSEC_TCPDUMP_MAGIC: Final = 0xA1B23C4D  # nanosecond timestamps
PCAP_VERSION_MAJOR: Final = 2
PCAP_VERSION_MINOR: Final = 4
LINKTYPE_ETHERNET: Final = DLT_EN10MB  # the same number for Ethernet (reference A.13)
MAXIMUM_SNAPLEN: Final = 262144  # libpcap's default and largest snap length

PCAP_FILE_HEADER: Final = struct.Struct("=IHHiIII")
PCAP_SF_PKTHDR: Final = struct.Struct("=IIII")
NSEC_PER_SEC: Final = 1_000_000_000


class PcapWriter:
    """A pcap savefile being written to `f` (pcap_dump_open / pcap_dump)."""

    __slots__ = ("f", "flush_each", "linktype", "nanosecond", "packets", "snaplen")

    def __init__(
        self,
        f: BinaryIO,
        snaplen: int = MAXIMUM_SNAPLEN,
        linktype: int = LINKTYPE_ETHERNET,
        nanosecond: bool = False,
        flush_each: bool = False,
    ) -> None:
        if not 0 < snaplen <= MAXIMUM_SNAPLEN:
            raise ValueError(f"snaplen {snaplen} is not in 1..{MAXIMUM_SNAPLEN}")
        self.f = f
        self.snaplen = snaplen
        self.linktype = linktype
        self.nanosecond = nanosecond
        self.flush_each = flush_each
        self.packets = 0
        magic = NSEC_TCPDUMP_MAGIC if nanosecond else TCPDUMP_MAGIC
        f.write(
            PCAP_FILE_HEADER.pack(
                magic, PCAP_VERSION_MAJOR, PCAP_VERSION_MINOR, 0, 0, snaplen, linktype
            )
        )
        if flush_each:
            f.flush()

    def write(self, ts_ns: int, data: bytes, wirelen: int | None = None) -> None:
        """One record: `data` as captured (cut to the snap length), `wirelen` the
        packet's length on the wire (len(data) if not given)."""
        if wirelen is None:
            wirelen = len(data)
        if len(data) > self.snaplen:
            data = data[: self.snaplen]
        sec, ns = divmod(ts_ns, NSEC_PER_SEC)
        frac = ns if self.nanosecond else ns // 1000
        self.f.write(PCAP_SF_PKTHDR.pack(sec, frac, len(data), wirelen) + data)
        self.packets += 1
        if self.flush_each:
            self.f.flush()

    def flush(self) -> None:
        self.f.flush()


def pcap_read(data: bytes) -> tuple[int, int, list[tuple[int, bytes, int]]]:
    """A savefile's (linktype, snaplen, records as (ts_ns, bytes, wirelen)), in
    either byte order and either timestamp resolution; ValueError if it is not one."""
    if len(data) < PCAP_FILE_HEADER.size:
        raise ValueError("not a pcap savefile: shorter than its header")
    for order in ("<", ">"):
        (magic,) = struct.unpack_from(order + "I", data)
        if magic in (TCPDUMP_MAGIC, NSEC_TCPDUMP_MAGIC):
            break
    else:
        raise ValueError(f"not a pcap savefile: magic 0x{magic:08x}")
    scale = 1 if magic == NSEC_TCPDUMP_MAGIC else 1000
    _, _, _, _, _, snaplen, linktype = struct.unpack_from(order + "IHHiIII", data)
    rec = struct.Struct(order + "IIII")
    out: list[tuple[int, bytes, int]] = []
    off = PCAP_FILE_HEADER.size
    while off < len(data):
        if off + rec.size > len(data):
            raise ValueError(f"truncated record header at offset {off}")
        sec, frac, caplen, wirelen = rec.unpack_from(data, off)
        off += rec.size
        if off + caplen > len(data):
            raise ValueError(f"truncated record at offset {off}")
        out.append((sec * NSEC_PER_SEC + frac * scale, data[off : off + caplen], wirelen))
        off += caplen
    return linktype, snaplen, out
