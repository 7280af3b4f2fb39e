"""Buffered mode: two kernel buffers per descriptor, and read(2) copies the hold buffer out.

Theory of operation. The descriptor owns a store and a free buffer of
`bd_bufsize` bytes each, allocated when it is attached to an interface
(BIOCSETIF) and sized before that by BIOCSBLEN, clamped to
[BPF_MINBUFSIZE, net.bpf.maxbufsize]. `catchpacket` appends records to the
store buffer; when one does not fit, the buffers rotate and the full one waits
in the hold slot; `bpfread` copies it out whole (one copy and one system call
per buffer) and it becomes the free buffer again. The buffer model has no say
in ownership here: a hold buffer is never freed behind the reader's back
(`canfreebuf` is false) and the store buffer is always writable.

Models: sys/net/bpf_buffer.c (`bpf_buffer_init`, `bpf_buffer_alloc`,
`bpf_buffer_free`, `bpf_buffer_append_bytes`, `bpf_buffer_append_mbuf`,
`bpf_buffer_uiomove`, `bpf_buffer_ioctl_sblen`), 2019 revision.

Deliberate differences: appending from an mbuf chain walks it with
`m_chain_iov`, the walk under `m_copydata`, so unmapped mbufs are read through
their pages (the 2019 bpf_buffer.c copied with `mtod` + `bcopy`, which an
unmapped mbuf cannot take; later revisions call `m_copydata`). BIOCSBLEN frees
any buffers already allocated and the next BIOCSETIF allocates at the new
size, which is what a process can observe of the kernel's allocate-now.
"""

from __future__ import annotations

import errno
from typing import TYPE_CHECKING

from bpf.bpf_h import BPF_MINBUFSIZE
from bpf.bpfdesc import BpfBuf
from mbuf.mbuf import Mbuf, m_chain_iov

if TYPE_CHECKING:
    from bpf.bpfdesc import BpfD


def bpf_buffer_alloc(d: BpfD) -> None:
    """Allocate the store and free buffers (BIOCSETIF of a descriptor that has none)."""
    st = d.bd_bpf.stats
    d.bd_sbuf = BpfBuf(memoryview(bytearray(d.bd_bufsize)))
    d.bd_fbuf = BpfBuf(memoryview(bytearray(d.bd_bufsize)))
    d.bd_hbuf = None
    d.bd_slen = 0
    d.bd_hlen = 0
    st.buffers_in_use += 2
    st.buffer_bytes += 2 * d.bd_bufsize


def bpf_buffer_free(d: BpfD) -> None:
    """Free whichever buffers the descriptor holds (close, or BIOCSBLEN before attach)."""
    st = d.bd_bpf.stats
    for buf in (d.bd_sbuf, d.bd_hbuf, d.bd_fbuf):
        if buf is not None:
            st.buffers_in_use -= 1
            st.buffer_bytes -= len(buf.data)
    d.bd_sbuf = d.bd_hbuf = d.bd_fbuf = None
    d.bd_slen = d.bd_hlen = 0


def bpf_buffer_append_bytes(d: BpfD, buf: BpfBuf, offset: int, src: bytes) -> None:
    buf.data[offset : offset + len(src)] = src


def bpf_buffer_append_mbuf(d: BpfD, buf: BpfBuf, offset: int, m: Mbuf, length: int) -> None:
    """Copy the first `length` bytes of the chain into buf at offset: one copy per piece."""
    data = buf.data
    for piece in m_chain_iov(m, 0, length):
        n = len(piece)
        data[offset : offset + n] = piece
        offset += n


def bpf_buffer_uiomove(d: BpfD, buf: BpfBuf, length: int) -> bytes:
    """read(2)'s copy-out of the hold buffer's `length` bytes."""
    return bytes(buf.data[:length])


def bpf_buffer_ioctl_sblen(d: BpfD, size: int) -> int:
    """BIOCSBLEN: the buffer size to use, clamped; EINVAL once attached. Returns the
    size set (the ioctl writes it back)."""
    if d.bd_bif is not None:
        raise OSError(errno.EINVAL, "BIOCSBLEN: descriptor already attached (set the size first)")
    maxbuf = d.bd_bpf.sysctl.maxbufsize  # net.bpf.maxbufsize: read per BIOCSBLEN
    size = min(max(size, BPF_MINBUFSIZE), maxbuf)
    bpf_buffer_free(d)
    d.bd_bufsize = size
    return size
