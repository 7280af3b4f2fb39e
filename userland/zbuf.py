"""The capturing process's half of zero-copy BPF, as libpcap's pcap-bpf.c does it.

Theory of operation. The process owns two equal buffers of shared memory,
A and B, each opening with a `struct bpf_zbuf_header`. A buffer is the
process's while `bzh_kernel_gen != bzh_user_gen`; the kernel fills A first and
then alternates, so the reader always looks at "the other" buffer next
(`pcap_next_zbuf_shm`). It acknowledges a buffer it has finished with at the
start of the *next* read (`pcap_ack_zbuf`: `bzh_user_gen = bzh_kernel_gen`),
so the records it returned stay valid until then. When neither buffer is
ready it waits for readiness or its timeout and then asks the kernel to rotate
a partly filled store buffer (BIOCROTZBUF), and checks again.

`ZbufReader` does no I/O: `next_buffer()` returns the records of the next
buffer the kernel handed over, or None; the caller supplies the rotation
(`rotate`, a function that performs BIOCROTZBUF). `bpf_records(data)` splits a
buffer's bytes into (header, packet) records by `bh_hdrlen` and
`BPF_WORDALIGN`, as `pcap_read_bpf` does.

Ordering: the generation words are read before the data (load-acquire of
`bzh_kernel_gen`) and the acknowledgement is the last write (store-release
of `bzh_user_gen`); in Python each is one 4-byte `unpack_from`/`pack_into` on
the shared mapping, after or before the plain reads. The records are copied
out (`bytes`) before the acknowledgement.

Models: libpcap pcap-bpf.c (`pcap_next_zbuf_shm`, `pcap_next_zbuf`,
`pcap_ack_zbuf`, `pcap_read_bpf`'s record walk). Imports only bpf's header.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from bpf.bpf_h import (
    BPF_HDR,
    BPF_WORDALIGN,
    BPF_XHDR,
    BPF_ZBUF_HEADER,
    BZH_KERNEL_GEN,
    BZH_KERNEL_LEN,
    BZH_USER_GEN,
    U_INT,
)


@dataclass(frozen=True)
class BpfRecord:
    """One captured packet: bpf_hdr's fields and the captured bytes."""

    tv_sec: int
    tv_frac: int  # microseconds (bpf_hdr) or the bpf_xhdr fraction
    caplen: int
    datalen: int
    data: bytes


def bpf_records(buf: bytes, xhdr: bool = False) -> list[BpfRecord]:
    """The records of one buffer's data area (`bd_hlen` / `bzh_kernel_len` bytes)."""
    hdr = BPF_XHDR if xhdr else BPF_HDR
    out: list[BpfRecord] = []
    p = 0
    n = len(buf)
    while p < n:
        sec, frac, caplen, datalen, hdrlen = hdr.unpack_from(buf, p)
        start = p + hdrlen
        out.append(BpfRecord(sec, frac, caplen, datalen, bytes(buf[start : start + caplen])))
        p += BPF_WORDALIGN(hdrlen + caplen)
    return out


class ZbufReader:
    """pcap_next_zbuf over the two shared buffers `bufa` and `bufb` (whole buffers,
    header included); `rotate()` performs BIOCROTZBUF."""

    def __init__(
        self, bufa: memoryview, bufb: memoryview, rotate: Callable[[], None], xhdr: bool = False
    ) -> None:
        self.bufs = (bufa, bufb)
        self.rotate = rotate
        self.xhdr = xhdr
        self.cur = 1  # index of the buffer read last; A (0) comes first
        self.held: memoryview | None = None  # the buffer to acknowledge at the next read

    @staticmethod
    def _user_owns(buf: memoryview) -> bool:
        kgen = U_INT.unpack_from(buf, BZH_KERNEL_GEN)[0]  # atomic_load_acq_int
        return bool(kgen != U_INT.unpack_from(buf, BZH_USER_GEN)[0])

    def ack(self) -> None:
        """pcap_ack_zbuf: give the buffer read last back to the kernel."""
        buf = self.held
        if buf is not None:
            kgen = U_INT.unpack_from(buf, BZH_KERNEL_GEN)[0]
            U_INT.pack_into(buf, BZH_USER_GEN, kgen)  # atomic_store_rel_int
            self.held = None

    def _take(self) -> list[BpfRecord] | None:
        other = 1 - self.cur
        buf = self.bufs[other]
        if not self._user_owns(buf):
            return None
        length = U_INT.unpack_from(buf, BZH_KERNEL_LEN)[0]
        start = BPF_ZBUF_HEADER.size
        records = bpf_records(bytes(buf[start : start + length]), self.xhdr)
        self.cur = other
        self.held = buf
        return records

    def next_buffer(self, timed_out: bool = False) -> list[BpfRecord] | None:
        """pcap_next_zbuf: acknowledge the previous buffer, then return the records of
        the other one if the kernel handed it over. With `timed_out` (the caller's
        wait for readiness ended by its timeout), rotate a partly filled store
        buffer first. None: nothing yet (wait for readiness and call again)."""
        self.ack()
        got = self._take()
        if got is not None or not timed_out:
            return got
        self.rotate()
        return self._take()
