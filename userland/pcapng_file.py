"""The pcapng capture file: sections, interfaces, packets, statistics, TLS secrets.

Theory of operation. A pcapng file is a sequence of blocks, each `type, total
length, body, total length` with the body padded to 4 bytes, options as
`code, length, value padded to 4` ending in opt_endofopt (draft-ietf-opsawg-
pcapng). `PcapngWriter` writes, in the host's byte order (readers swap by
the Section Header's byte-order magic):

- the **Section Header Block** at construction (version 1.0, section length
  -1 "not known", shb_userappl);
- one **Interface Description Block** per interface added, each named `nm0`
  with an if_description saying whose nm0 it is, if_tsresol 9 (nanosecond
  timestamps), the snap length and link type DLT_EN10MB. With several workers
  the capture adds one interface per worker, in worker order, so interface id
  N is worker N's nm0 and a merged capture keeps which worker saw each packet
  (Wireshark shows it as frame.interface_id / interface description);
- one **Enhanced Packet Block** per packet (interface id, 64-bit timestamp in
  the interface's units, captured and original lengths);
- **Decryption Secrets Blocks** (secrets type 0x544c534b "TLSK", the bytes of
  an NSS key log) whenever `write_secrets` is called: a reader applies a DSB
  to the packets after it, so the caller writes the secrets of a TLS session
  before that session's first encrypted record;
- at `close`, one **Interface Statistics Block** per interface with
  isb_ifrecv / isb_ifdrop (the descriptor's BIOCGSTATS bs_recv / bs_drop)
  and isb_endtime.

Every block is packed in one `struct` call plus its data and written with one
`write`; `flush_each` flushes after every packet block (tcpdump -U).

Models: libpcap sf-pcapng.c (the reader's view of SHB/IDB/EPB/ISB), Wireshark
wiretap/pcapng.c (DSB, TLSK), the pcapng specification's block and option
codes.

Deliberate difference: libpcap's own dumper writes only pcap; pcapng writing
follows Wireshark's dumpcap (which also writes IDBs up front and ISBs last).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import BinaryIO, Final

from bpf.bpf_h import DLT_EN10MB

BT_SHB: Final = 0x0A0D0D0A
BT_IDB: Final = 0x00000001
BT_ISB: Final = 0x00000005
BT_EPB: Final = 0x00000006
BT_DSB: Final = 0x0000000A
BYTE_ORDER_MAGIC: Final = 0x1A2B3C4D
SECRETS_TYPE_TLS: Final = 0x544C534B  # "TLSK": an NSS key log

OPT_ENDOFOPT: Final = 0
SHB_USERAPPL: Final = 4
IF_NAME: Final = 2
IF_DESCRIPTION: Final = 3
IF_TSRESOL: Final = 9
ISB_STARTTIME: Final = 2
ISB_ENDTIME: Final = 3
ISB_IFRECV: Final = 4
ISB_IFDROP: Final = 5
TSRESOL_NS: Final = 9  # 10^-9 s per timestamp unit

_BLOCK_HEAD: Final = struct.Struct("=II")
_U32: Final = struct.Struct("=I")
_U64: Final = struct.Struct("=Q")
_SHB: Final = struct.Struct("=IHHq")
_IDB: Final = struct.Struct("=HHI")
_EPB: Final = struct.Struct("=IIIIIII")  # type, length, then the EPB's five fields
_OPT: Final = struct.Struct("=HH")


def _pad(n: int) -> int:
    return -n & 3


def _opt(code: int, value: bytes) -> bytes:
    return _OPT.pack(code, len(value)) + value + b"\0" * _pad(len(value))


def _options(opts: list[bytes]) -> bytes:
    return b"".join(opts) + _OPT.pack(OPT_ENDOFOPT, 0) if opts else b""


def _block(btype: int, body: bytes) -> bytes:
    total = 12 + len(body)
    return _BLOCK_HEAD.pack(btype, total) + body + _U32.pack(total)


@dataclass(frozen=True)
class PcapngInterface:
    """One Interface Description Block: which nm0 and how it is captured."""

    name: str = "nm0"
    description: str = "nomapd nm0"
    snaplen: int = 262144
    linktype: int = DLT_EN10MB


class PcapngWriter:
    """A pcapng file being written to `f`, one section."""

    __slots__ = ("f", "flush_each", "interfaces", "packets")

    def __init__(
        self, f: BinaryIO, userappl: str = "nomapd capture", flush_each: bool = False
    ) -> None:
        self.f = f
        self.flush_each = flush_each
        self.interfaces: list[PcapngInterface] = []
        self.packets = 0
        opts = _options([_opt(SHB_USERAPPL, userappl.encode())])
        body = _SHB.pack(BYTE_ORDER_MAGIC, 1, 0, -1) + opts
        f.write(_block(BT_SHB, body))

    def add_interface(self, intf: PcapngInterface) -> int:
        """Write the interface's IDB; returns its interface id (0, 1, ... in order)."""
        opts = [
            _opt(IF_NAME, intf.name.encode()),
            _opt(IF_DESCRIPTION, intf.description.encode()),
            _opt(IF_TSRESOL, bytes([TSRESOL_NS])),
        ]
        self.f.write(_block(BT_IDB, _IDB.pack(intf.linktype, 0, intf.snaplen) + _options(opts)))
        self.interfaces.append(intf)
        return len(self.interfaces) - 1

    def write_secrets(self, keylog: bytes, secrets_type: int = SECRETS_TYPE_TLS) -> None:
        """A Decryption Secrets Block: NSS key log lines (CLIENT_RANDOM ..., or the
        TLS 1.3 *_TRAFFIC_SECRET lines) for the packets written after it."""
        body = _BLOCK_HEAD.pack(secrets_type, len(keylog)) + keylog + b"\0" * _pad(len(keylog))
        self.f.write(_block(BT_DSB, body))
        if self.flush_each:
            self.f.flush()

    def write(self, ts_ns: int, data: bytes, wirelen: int | None = None, ifid: int = 0) -> None:
        """One Enhanced Packet Block on interface `ifid`, cut to its snap length."""
        if not 0 <= ifid < len(self.interfaces):
            raise ValueError(f"interface id {ifid} has no IDB (have {len(self.interfaces)})")
        if wirelen is None:
            wirelen = len(data)
        snaplen = self.interfaces[ifid].snaplen
        if len(data) > snaplen:
            data = data[:snaplen]
        pad = _pad(len(data))
        total = 32 + len(data) + pad
        head = _EPB.pack(BT_EPB, total, ifid, ts_ns >> 32, ts_ns & 0xFFFFFFFF, len(data), wirelen)
        self.f.write(head + data + b"\0" * pad + _U32.pack(total))
        self.packets += 1
        if self.flush_each:
            self.f.flush()

    def write_stats(self, ifid: int, ts_ns: int, ifrecv: int, ifdrop: int) -> None:
        """An Interface Statistics Block: BIOCGSTATS's bs_recv and bs_drop at `ts_ns`."""
        opts = [
            _opt(ISB_ENDTIME, _U32.pack(ts_ns >> 32) + _U32.pack(ts_ns & 0xFFFFFFFF)),
            _opt(ISB_IFRECV, _U64.pack(ifrecv)),
            _opt(ISB_IFDROP, _U64.pack(ifdrop)),
        ]
        body = struct.pack("=III", ifid, ts_ns >> 32, ts_ns & 0xFFFFFFFF) + _options(opts)
        self.f.write(_block(BT_ISB, body))

    def close(self, ts_ns: int, stats: list[tuple[int, int] | None]) -> None:
        """The ISBs, one per interface (`stats[i]` = (bs_recv, bs_drop); None: that
        interface has none to give, its device is gone), then flush."""
        if len(stats) != len(self.interfaces):
            raise ValueError(f"{len(stats)} statistics for {len(self.interfaces)} interfaces")
        for ifid, st in enumerate(stats):
            if st is not None:
                self.write_stats(ifid, ts_ns, *st)
        self.f.flush()
