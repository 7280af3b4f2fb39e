"""Zero-copy mode: two buffers in the capturing process's memory, handed over by generation numbers.

Theory of operation. The process loans the kernel two equal, page-aligned
buffers of its own memory (BIOCSETZBUF). Each starts with a 32-byte
`struct bpf_zbuf_header`; records follow it. Ownership is two words of that
header: `bzh_kernel_gen == bzh_user_gen` means the kernel owns the buffer,
different means the process does (reference A.5). The kernel hands a buffer
over in exactly two places: `bpf_zerocopy_bufheld` (the buffer just rotated
into the hold slot) and `bpf_zerocopy_buffull` (the store buffer cannot take a
packet and there is no free buffer), each at most once per fill, marking it
ASSIGNED and writing the data length *before* bumping `bzh_kernel_gen`
(`atomic_add_rel_int`). The process gives it back by writing `bzh_user_gen =
bzh_kernel_gen`; no system call: `catchpacket` notices at the next packet
(`bpf_zerocopy_canfreebuf`, the lazy reclaim) and the buffer becomes free
again. `read(2)` answers EOPNOTSUPP; BIOCROTZBUF rotates a non-empty store
buffer on demand (after a read timeout); BIOCGETZMAX says how large one buffer
may be.

The process's memory reaches the model as a `Uvm`: the writable mapping of the
shared-memory file the process passed (the device layer maps it from the
SCM_RIGHTS descriptor) and the user address it is mapped at in the process.
`struct bpf_zbuf` carries user addresses, as in C; the kernel translates them
into the mapping, checking alignment on the real addresses.

Ordering in the model: the kernel writes the records, then `bzh_kernel_len`,
then `bzh_kernel_gen` (three stores in program order into shared memory,
each a 4-byte aligned `pack_into`, which amd64 keeps in order: its stores are
release stores); it reads `bzh_user_gen` before it reuses a buffer, and reads
nothing of the buffer after. userland/zbuf.py holds the process's half.

A consequence of the kernel's rules the reader must live with: an acknowledged
hold buffer is only reclaimed by the next `catchpacket`, and BIOCROTZBUF rotates
only into an empty hold slot, so on a quiet link the last records wait in the
store buffer until one more packet arrives (tests/bpf/test_zerocopy.py,
`test_rotzbuf_after_ack_waits_for_a_packet`; the 2008-2019 code and the current
one alike).

Models: sys/net/bpf_zerocopy.c (`zbuf_setup`, `zbuf_free`,
`bpf_zerocopy_append_bytes`, `bpf_zerocopy_append_mbuf`,
`bpf_zerocopy_bufheld`, `bpf_zerocopy_buffull`, `bpf_zerocopy_buf_reclaimed`,
`bpf_zerocopy_canfreebuf`, `bpf_zerocopy_canwritebuf`,
`bpf_zerocopy_ioctl_getzmax`, `bpf_zerocopy_ioctl_rotzbuf`,
`bpf_zerocopy_ioctl_setzbuf`), as after the follow-up that lets the process
own both buffers (A.1): the 2008-2019 code.

Deliberate differences: the kernel wires each page and maps it with an
sf_buf, so it copies one page at a time (scatter-gather); the mapping here is
one contiguous view, so a record is copied in one piece per mbuf. Buffers
that overlap are refused (EINVAL): the kernel does not check, and would
write two buffers into the same pages. A buffer outside the mapping answers
EFAULT, as a page the kernel cannot hold does. Appends from unmapped mbufs go
through m_copydata's page walk, as in buffered mode (the kernel's
`bpf_zerocopy_append_mbuf` used `mtod`, reference A.10).
"""

from __future__ import annotations

import errno
from typing import TYPE_CHECKING

from bpf.bpf_h import (
    BPF_BUFMODE_ZBUF,
    BPF_MAX_PAGES,
    BPF_ZBUF_HEADER,
    BZH_KERNEL_GEN,
    BZH_KERNEL_LEN,
    BZH_USER_GEN,
    U_INT,
)
from bpf.bpfdesc import BpfBuf
from mbuf.kassert import kassert, kpanic
from mbuf.mbuf import Mbuf, m_chain_iov
from mbuf.param import PAGE_SIZE

if TYPE_CHECKING:
    from bpf.bpfdesc import BpfD

ZBUF_FLAG_ASSIGNED = 0x00000001  # given to user space; the kernel may not write it
U32 = 0xFFFFFFFF


class Uvm:
    """The capturing process's shared memory as the kernel reaches it: `view`, a
    writable mapping of the shared-memory file, mapped at user address `base`."""

    __slots__ = ("base", "view")

    def __init__(self, base: int, view: memoryview) -> None:
        if view.readonly:
            raise ValueError("Uvm: the shared mapping must be writable")
        self.base = base
        self.view = view.cast("B") if view.format != "B" else view


class Zbuf(BpfBuf):
    """struct zbuf: one loaned buffer; `data` is the area after the header."""

    __slots__ = ("zb_flags", "zb_header", "zb_pages", "zb_size", "zb_uaddr")

    def __init__(self, uaddr: int, view: memoryview) -> None:
        hdr = BPF_ZBUF_HEADER.size
        super().__init__(view[hdr:])
        self.zb_uaddr = uaddr  # the process's address for it (BIOCROTZBUF answers it)
        self.zb_size = len(view)  # bytes, header included
        self.zb_pages = view  # the whole buffer (the kernel's wired pages)
        self.zb_header = view[:hdr]  # struct bpf_zbuf_header, shared
        self.zb_flags = 0

    def kernel_gen(self) -> int:
        return int(U_INT.unpack_from(self.zb_header, BZH_KERNEL_GEN)[0])

    def user_gen(self) -> int:
        return int(U_INT.unpack_from(self.zb_header, BZH_USER_GEN)[0])

    def publish(self, length: int) -> None:
        """Hand the buffer to user space: length first, then the generation number."""
        self.zb_flags |= ZBUF_FLAG_ASSIGNED
        U_INT.pack_into(self.zb_header, BZH_KERNEL_LEN, length)
        U_INT.pack_into(self.zb_header, BZH_KERNEL_GEN, (self.kernel_gen() + 1) & U32)


def zbuf_setup(uvm: Uvm, uaddr: int, length: int) -> Zbuf:
    """zbuf_setup: check one buffer's geometry and reach its pages; EINVAL or EFAULT."""
    if uaddr % PAGE_SIZE or length % PAGE_SIZE or length == 0:
        raise OSError(errno.EINVAL, f"BIOCSETZBUF: buffer {uaddr:#x}+{length} not whole pages")
    if length // PAGE_SIZE > BPF_MAX_PAGES:
        raise OSError(errno.EINVAL, f"BIOCSETZBUF: {length} bytes is over zmax")
    off = uaddr - uvm.base
    if off < 0 or off + length > len(uvm.view):
        raise OSError(errno.EFAULT, f"BIOCSETZBUF: {uaddr:#x}+{length} is not mapped")
    zb = Zbuf(uaddr, uvm.view[off : off + length])
    zb.zb_header[:] = bytes(BPF_ZBUF_HEADER.size)  # both generations 0: the kernel's
    return zb


def zbuf_free(zb: Zbuf) -> None:
    """zbuf_free: drop the kernel's hold on the pages (the views into the mapping),
    so the process can unmap its memory."""
    zb.data.release()
    zb.zb_header.release()
    zb.zb_pages.release()


def bpf_zerocopy_ioctl_setzbuf(d: BpfD, uvm: Uvm, bufa: int, bufb: int, buflen: int) -> None:
    """BIOCSETZBUF: install buffers A (store, filled first) and B (free); only once and
    only before BIOCSETIF (EINVAL)."""
    if bufa == 0 or bufb == 0:
        raise OSError(errno.EINVAL, "BIOCSETZBUF: both buffers are required")
    if d.bd_sbuf is not None or d.bd_hbuf is not None or d.bd_fbuf is not None:
        raise OSError(errno.EINVAL, "BIOCSETZBUF: buffers already installed")
    if d.bd_bif is not None:
        raise OSError(errno.EINVAL, "BIOCSETZBUF: descriptor already attached")
    if bufa < bufb + buflen and bufb < bufa + buflen:
        raise OSError(errno.EINVAL, "BIOCSETZBUF: the buffers overlap")
    zba = zbuf_setup(uvm, bufa, buflen)
    try:
        zbb = zbuf_setup(uvm, bufb, buflen)
    except OSError:
        zbuf_free(zba)
        raise
    d.bd_sbuf = zba
    d.bd_fbuf = zbb
    d.bd_hbuf = None
    d.bd_slen = 0
    d.bd_hlen = 0
    d.bd_bufsize = buflen - BPF_ZBUF_HEADER.size
    st = d.bd_bpf.stats
    st.buffers_in_use += 2
    st.buffer_bytes += 2 * buflen


def bpf_zerocopy_free(d: BpfD) -> None:
    """zbuf_free of both buffers (close): the loan ends; the process keeps its memory."""
    st = d.bd_bpf.stats
    for buf in (d.bd_sbuf, d.bd_hbuf, d.bd_fbuf):
        if isinstance(buf, Zbuf):
            st.buffers_in_use -= 1
            st.buffer_bytes -= buf.zb_size
            zbuf_free(buf)
    d.bd_sbuf = d.bd_hbuf = d.bd_fbuf = None
    d.bd_slen = d.bd_hlen = 0


def _zbuf(buf: BpfBuf | None) -> Zbuf:
    if not isinstance(buf, Zbuf):
        kpanic("bpf_zerocopy: zero-copy descriptor without a zero-copy buffer (%r)", buf)
    assert isinstance(buf, Zbuf)
    return buf


def bpf_zerocopy_append_bytes(d: BpfD, buf: BpfBuf, offset: int, src: bytes) -> None:
    zb = _zbuf(buf)
    kassert(not zb.zb_flags & ZBUF_FLAG_ASSIGNED, "bpf_zerocopy_append_bytes: ZBUF_FLAG_ASSIGNED")
    zb.data[offset : offset + len(src)] = src


def bpf_zerocopy_append_mbuf(d: BpfD, buf: BpfBuf, offset: int, m: Mbuf, length: int) -> None:
    zb = _zbuf(buf)
    kassert(not zb.zb_flags & ZBUF_FLAG_ASSIGNED, "bpf_zerocopy_append_mbuf: ZBUF_FLAG_ASSIGNED")
    data = zb.data
    for piece in m_chain_iov(m, 0, length):
        n = len(piece)
        data[offset : offset + n] = piece
        offset += n
    d.bd_zcopy += 1
    d.bd_bpf.stats.zerocopy_appends += 1


def bpf_zerocopy_bufheld(d: BpfD) -> None:
    """A buffer entered the hold slot: hand it over unless buffull already did."""
    zb = _zbuf(d.bd_hbuf)
    if not zb.zb_flags & ZBUF_FLAG_ASSIGNED:
        zb.publish(d.bd_hlen)
        d.bd_bpf.stats.zbuf_handovers += 1


def bpf_zerocopy_buffull(d: BpfD) -> None:
    """The store buffer is full and there is no free one: hand it over too, so the
    process can drain both (every later packet drops until it acknowledges)."""
    zb = _zbuf(d.bd_sbuf)
    if not zb.zb_flags & ZBUF_FLAG_ASSIGNED:
        zb.publish(d.bd_slen)
        d.bd_bpf.stats.zbuf_handovers += 1


def bpf_zerocopy_buf_reclaimed(d: BpfD) -> None:
    """The (acknowledged) hold buffer just became the free buffer."""
    zb = _zbuf(d.bd_fbuf)
    zb.zb_flags &= ~ZBUF_FLAG_ASSIGNED
    d.bd_bpf.stats.zbuf_reclaims += 1


def bpf_zerocopy_canfreebuf(d: BpfD) -> bool:
    """Has the process acknowledged the hold buffer (bzh_user_gen == bzh_kernel_gen)?"""
    hbuf = d.bd_hbuf
    if hbuf is None:
        return False
    zb = _zbuf(hbuf)
    return zb.kernel_gen() == zb.user_gen()  # user_gen: atomic_load_acq_int


def bpf_zerocopy_canwritebuf(d: BpfD) -> bool:
    """The store buffer is writable unless buffull handed it over."""
    return not _zbuf(d.bd_sbuf).zb_flags & ZBUF_FLAG_ASSIGNED


def bpf_zerocopy_ioctl_getzmax(d: BpfD) -> int:
    if d.bd_bufmode != BPF_BUFMODE_ZBUF:
        raise OSError(errno.EOPNOTSUPP, "BIOCGETZMAX: not in zero-copy mode")
    return BPF_MAX_PAGES * PAGE_SIZE
