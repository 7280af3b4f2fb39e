"""A BPF capture on the modeled kernel's /dev/bpf, as libpcap's pcap-bpf.c sets one up on FreeBSD.

Theory of operation. `BpfCapture.open(path, ...)` opens one worker's
/dev/bpf (userland/devdir.py: `device_paths(find_instance(...), "bpf")`) and
configures it in pcap_activate_bpf's order:

  buffered mode (`mode="buffer"`): BIOCSBLEN (the buffer size), BIOCSETIF;
  zero-copy mode (`mode="zbuf"`, the default): BIOCSETBUFMODE(BPF_BUFMODE_ZBUF),
      BIOCGETZMAX, two page-aligned buffers of equal size (at most zmax) in a
      memfd this process creates and maps, BIOCSETZBUF with the memfd, then
      BIOCSETIF;
  then BIOCIMMEDIATE, BIOCSDIRECTION, BIOCSETF (the caller's program, else
      `ret #snaplen`), BIOCSRTIMEOUT.

`next_batch()` returns the next buffer's packets, or [] when the read timeout
passed with nothing captured. Buffered: one read(2) of the buffer size (the
kernel sleeps until a buffer is full, immediate mode, or the timeout).
Zero-copy: userland/zbuf.py's loop: acknowledge the previous buffer, check
the other one, else poll(2) for the kernel's wakeup up to the timeout, then
BIOCROTZBUF (timed-out or immediate data sits in the store buffer) and check
again; no system call while full buffers keep coming. The packets of a
zero-copy buffer are copied out before it is acknowledged, so a `Packet`
stays valid.

`keylog_enable()` and `keylog()` are nomapd's TLS key export
(BIOCSKEYLOG, BIOCGKEYLOG: bpf/bpf_keylog.py; not FreeBSD's).
`stats()` is BIOCGSTATS (received, dropped); `close()` closes the file (the
kernel unmaps the buffers), then unmaps and closes the memfd here.

Models: libpcap pcap-bpf.c (pcap_activate_bpf, pcap_read_bpf,
pcap_next_zbuf, pcap_stats_bpf). Imports only the kernel's headers.
"""

from __future__ import annotations

import ctypes
import fcntl
import mmap
import os
from collections.abc import Sequence
from dataclasses import dataclass

from bpf import bpf_h as h
from userland.dev import DevFile
from userland.zbuf import BpfRecord, ZbufReader, bpf_records

BPF_RET_K = 0x06  # BPF_RET | BPF_K: accept, keeping k bytes
DEFAULT_SNAPLEN = 262144  # libpcap's MAXIMUM_SNAPLEN
DEFAULT_BUFSIZE = 1 << 19  # 512 KiB, net.bpf.maxbufsize
KEYLOG_CHUNK = 1 << 16  # bytes asked of one BIOCGKEYLOG

Insn = tuple[int, int, int, int]  # struct bpf_insn: code, jt, jf, k


@dataclass(frozen=True)
class Packet:
    """One captured packet: when (bpf_hdr's timeval), how much was kept, how long it was."""

    ts_sec: int
    ts_usec: int
    caplen: int  # bytes captured (len(data))
    wirelen: int  # bytes the frame had on the wire
    data: bytes

    @property
    def timestamp(self) -> float:
        return self.ts_sec + self.ts_usec / 1e6

    @classmethod
    def from_record(cls, r: BpfRecord) -> Packet:
        return cls(r.tv_sec, r.tv_frac, r.caplen, r.datalen, r.data)


def bpf_program(insns: Sequence[Insn]) -> bytes:
    """BIOCSETF's argument: struct bpf_program (bf_insns non-null) and the instructions."""
    body = b"".join(h.BPF_INSN.pack(*i) for i in insns)
    return h.BPF_PROGRAM.pack(len(insns), 1 if insns else 0) + body


def ifreq(name: str) -> bytes:
    return name.encode("ascii").ljust(h.SIZEOF_IFREQ, b"\0")


def _round_page(n: int) -> int:
    return -(-n // mmap.PAGESIZE) * mmap.PAGESIZE


class BpfCapture:
    """One /dev/bpf descriptor, configured and read as libpcap does (module head)."""

    def __init__(self, dev: DevFile, mode: str, bufsize: int, timeout: float | None) -> None:
        self.dev = dev
        self.mode = mode
        self.bufsize = bufsize
        self.timeout = timeout
        self.memfd = -1
        self.shm: mmap.mmap | None = None
        self.views: list[memoryview] = []
        self.reader: ZbufReader | None = None

    @classmethod
    def open(
        cls,
        path: str | os.PathLike[str],
        ifname: str = "nm0",
        *,
        mode: str = "zbuf",
        bufsize: int = DEFAULT_BUFSIZE,
        snaplen: int = DEFAULT_SNAPLEN,
        program: Sequence[Insn] | None = None,
        immediate: bool = False,
        direction: int = h.BPF_D_INOUT,
        timeout: float | None = 0.1,
    ) -> BpfCapture:
        """Open and configure a capture; OSError carries the kernel's errno."""
        if mode not in ("zbuf", "buffer"):
            raise ValueError(f"mode {mode!r}: zbuf or buffer")
        dev = DevFile.open(path)
        cap = cls(dev, mode, bufsize, timeout)
        try:
            if mode == "zbuf":
                cap._setup_zbuf(bufsize)
            else:
                (cap.bufsize,) = h.U_INT.unpack(dev.ioctl(h.BIOCSBLEN, h.U_INT.pack(bufsize)))
            dev.ioctl(h.BIOCSETIF, ifreq(ifname))
            dev.ioctl(h.BIOCIMMEDIATE, h.U_INT.pack(1 if immediate else 0))
            dev.ioctl(h.BIOCSDIRECTION, h.U_INT.pack(direction))
            cap.setfilter(program if program is not None else [(BPF_RET_K, 0, 0, snaplen)])
            if timeout is not None:
                usec = round(timeout * 1e6)
                dev.ioctl(h.BIOCSRTIMEOUT, h.TIMEVAL.pack(usec // 1_000_000, usec % 1_000_000))
        except BaseException:
            cap.close()
            raise
        return cap

    def _setup_zbuf(self, bufsize: int) -> None:
        dev = self.dev
        dev.ioctl(h.BIOCSETBUFMODE, h.U_INT.pack(h.BPF_BUFMODE_ZBUF))
        (zmax,) = h.SIZE_T.unpack(dev.ioctl(h.BIOCGETZMAX))
        buflen = min(_round_page(bufsize), zmax - zmax % mmap.PAGESIZE)
        self.memfd, self.shm, base = shm_create(2 * buflen)
        dev.ioctl_shm(h.BIOCSETZBUF, h.BPF_ZBUF.pack(base, base + buflen, buflen), self.memfd, base)
        whole = memoryview(self.shm)
        self.views = [whole, whole[:buflen], whole[buflen : 2 * buflen]]
        self.bufsize = buflen
        self.reader = ZbufReader(self.views[1], self.views[2], self._rotate)

    def _rotate(self) -> None:
        self.dev.ioctl(h.BIOCROTZBUF)

    def setfilter(self, insns: Sequence[Insn]) -> None:
        """BIOCSETF: the kernel validates the program (EINVAL) and flushes the buffers."""
        self.dev.ioctl(h.BIOCSETF, bpf_program(insns))

    def next_batch(self) -> list[Packet]:
        """The next buffer's packets; [] if the read timeout passed with none."""
        if self.reader is None:
            data = self.dev.read(self.bufsize)
            return [Packet.from_record(r) for r in bpf_records(data)]
        recs = self.reader.next_buffer()
        while recs is None:
            woken = self.dev.poll(self.timeout)
            # pcap_next_zbuf: check again, forcing a rotation (BIOCROTZBUF) to dislodge
            # timed-out or immediate data that the store buffer holds.
            recs = self.reader.next_buffer(timed_out=True)
            if recs is None and not woken:
                return []
        return [Packet.from_record(r) for r in recs]

    def keylog_enable(self) -> None:
        """BIOCSKEYLOG(1), nomapd's own ioctl: ask the worker for the TLS key log
        lines of the sessions that complete their handshake from now on."""
        self.dev.ioctl(h.BIOCSKEYLOG, h.U_INT.pack(1))

    def keylog(self) -> bytes:
        """BIOCGKEYLOG until empty: the key log lines handed over since the last call."""
        out = []
        while chunk := self.dev.ioctl(h.BIOCGKEYLOG, h.U_INT.pack(KEYLOG_CHUNK)):
            out.append(chunk)
        return b"".join(out)

    def stats(self) -> tuple[int, int]:
        """BIOCGSTATS: (packets received by the descriptor, packets dropped)."""
        recv, drop = h.BPF_STAT.unpack(self.dev.ioctl(h.BIOCGSTATS))
        return int(recv), int(drop)

    def close(self) -> None:
        self.dev.close()
        self.reader = None
        for v in reversed(self.views):
            v.release()
        self.views = []
        if self.shm is not None:
            self.shm.close()
            self.shm = None
        if self.memfd >= 0:
            os.close(self.memfd)
            self.memfd = -1

    def __enter__(self) -> BpfCapture:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def shm_create(size: int) -> tuple[int, mmap.mmap, int]:
    """A memfd of `size` bytes mapped shared here: (fd, mapping, its address).
    Its size is sealed (the kernel maps only a file that cannot shrink)."""
    fd = os.memfd_create("nomapd-bpf-zbuf", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
    try:
        os.ftruncate(fd, size)
        fcntl.fcntl(
            fd, fcntl.F_ADD_SEALS, fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_SEAL
        )
        shm = mmap.mmap(fd, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
    except BaseException:
        os.close(fd)
        raise
    probe = ctypes.c_char.from_buffer(shm)
    base = ctypes.addressof(probe)
    del probe  # releases the export, so that the mapping can be closed
    return fd, shm, base
