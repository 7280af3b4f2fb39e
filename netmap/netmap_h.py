"""net/netmap.h (and net/netmap_legacy.h): what a netmap program includes.

Theory of operation. This is the one module of `netmap/` that userland may
import (DESIGN.md: userland takes the kernel's headers only), so it holds no
state and imports nothing of ours. Every number is the header's; ioctl numbers
are computed as sys/sys/ioccom.h's `_IO` / `_IOWR` compute them over the LP64
(amd64) size of the argument struct. Each struct is a `struct` format in host
byte order ("=") with its C padding spelled out as pad bytes, so the sizes and
field offsets are those a C compiler gives netmap.h on amd64; `*_OFF` tables
name every field's offset (tests/netmap/test_layouts.py holds them to the
values read off netmap.h by hand).

A netmap region is addressed by offsets only: `NETMAP_TXRING`,
`NETMAP_RXRING` and `NETMAP_BUF` here return offsets into the region, not
pointers; `NETMAP_IF(mem, nr_offset)` is nr_offset itself (the name NETMAP_IF
is the struct's layout here).

Models: sys/net/netmap.h (API 14: struct netmap_slot, netmap_ring, netmap_if,
nmreq_header, nmreq_option, nmreq_register, nmreq_port_info_get,
nmreq_pools_info, nmreq_sync_kloop_start, nm_csb_atok, nm_csb_ktoa,
nmreq_opt_csb, the request and option types, NR_REG_*, NR_* flags, NS_* slot
flags, NIOCCTRL / NIOCTXSYNC / NIOCRXSYNC, nm_ring_next / nm_ring_space /
nm_ring_empty / nm_tx_pending), sys/net/netmap_legacy.h (struct nmreq,
NIOCGINFO / NIOCREGIF, NETMAP_HW_RING / SW_RING / NO_TX_POLL / DO_RX_POLL),
sys/dev/netmap/netmap_kern.h (NM_MAXPIPES) and sys/sys/ioccom.h.

Deliberate differences: pointers in the requests (`nr_body`, `nr_options`,
`nro_next`) are offsets into the request message (0 = NULL: the header itself
is at offset 0), since a user address cannot cross the device socket; the CSB
arrays of `nmreq_opt_csb` are offsets into the port's region (see
netmap/netmap_kloop.py). `struct timeval ts` in the ring is two int64.
"""

from __future__ import annotations

import struct
from typing import Final

NETMAP_API: Final = 14  # current API version
NETMAP_MIN_API: Final = 14
NETMAP_MAX_API: Final = 15
IFNAMSIZ: Final = 16
NETMAP_REQ_IFNAMSIZ: Final = 64
NETMAP_REQ_MAXSIZE: Final = 4096  # header + body + options, at most
NM_CACHE_ALIGN: Final = 128
NM_MAXPIPES: Final = 64  # pipes per parent port (netmap_kern.h)
NM_PIPE_MAXSLOTS: Final = 4096

# -- sys/sys/ioccom.h ---------------------------------------------------------
IOCPARM_MASK: Final = (1 << 13) - 1
IOC_VOID: Final = 0x20000000
IOC_INOUT: Final = 0x80000000 | 0x40000000


def _ioc(inout: int, group: str, num: int, length: int) -> int:
    return inout | ((length & IOCPARM_MASK) << 16) | (ord(group) << 8) | num


# -- struct layouts (LP64, host byte order) -----------------------------------
Field = tuple[str, str]  # (field name or "" for C padding, struct code)


def _layout(fields: list[Field]) -> tuple[struct.Struct, dict[str, int]]:
    """The Struct of `fields` in order, and each named field's offset."""
    fmt = "="
    offsets: dict[str, int] = {}
    for name, code in fields:
        if name:
            offsets[name] = struct.calcsize(fmt)
        fmt += code
    return struct.Struct(fmt), offsets


NETMAP_SLOT, NETMAP_SLOT_OFF = _layout(
    [("buf_idx", "I"), ("len", "H"), ("flags", "H"), ("ptr", "Q")]
)
NETMAP_RING, NETMAP_RING_OFF = _layout(
    [
        ("buf_ofs", "q"),
        ("num_slots", "I"),
        ("nr_buf_size", "I"),
        ("ringid", "H"),
        ("dir", "H"),
        ("head", "I"),
        ("cur", "I"),
        ("tail", "I"),
        ("flags", "I"),
        ("", "4x"),  # struct timeval is 8-aligned
        ("ts_sec", "q"),
        ("ts_usec", "q"),
        ("offset_mask", "Q"),
        ("buf_align", "Q"),
        ("", "56x"),  # sem[] is aligned to NM_CACHE_ALIGN
        ("sem", "128s"),
    ]
)
NETMAP_IF, NETMAP_IF_OFF = _layout(
    [
        ("ni_name", f"{IFNAMSIZ}s"),
        ("ni_version", "I"),
        ("ni_flags", "I"),
        ("ni_tx_rings", "I"),
        ("ni_rx_rings", "I"),
        ("ni_bufs_head", "I"),
        ("ni_host_tx_rings", "I"),
        ("ni_host_rx_rings", "I"),
        ("ni_spare1", "12s"),
    ]
)
RING_OFS: Final = struct.Struct("=q")  # one entry of netmap_if's ring_ofs[]
NMREQ_OPTION, NMREQ_OPTION_OFF = _layout(
    [("nro_next", "Q"), ("nro_reqtype", "I"), ("nro_status", "I"), ("nro_size", "Q")]
)
NMREQ_HEADER, NMREQ_HEADER_OFF = _layout(
    [
        ("nr_version", "H"),
        ("nr_reqtype", "H"),
        ("nr_reserved", "I"),
        ("nr_name", f"{NETMAP_REQ_IFNAMSIZ}s"),
        ("nr_options", "Q"),
        ("nr_body", "Q"),
    ]
)
NMREQ_REGISTER, NMREQ_REGISTER_OFF = _layout(
    [
        ("nr_offset", "Q"),
        ("nr_memsize", "Q"),
        ("nr_tx_slots", "I"),
        ("nr_rx_slots", "I"),
        ("nr_tx_rings", "H"),
        ("nr_rx_rings", "H"),
        ("nr_host_tx_rings", "H"),
        ("nr_host_rx_rings", "H"),
        ("nr_mem_id", "H"),
        ("nr_ringid", "H"),
        ("nr_mode", "I"),
        ("nr_extra_bufs", "I"),
        ("", "4x"),
        ("nr_flags", "Q"),
    ]
)
NMREQ_PORT_INFO_GET, NMREQ_PORT_INFO_GET_OFF = _layout(
    [
        ("nr_memsize", "Q"),
        ("nr_tx_slots", "I"),
        ("nr_rx_slots", "I"),
        ("nr_tx_rings", "H"),
        ("nr_rx_rings", "H"),
        ("nr_host_tx_rings", "H"),
        ("nr_host_rx_rings", "H"),
        ("nr_mem_id", "H"),
        ("pad", "6s"),
    ]
)
NMREQ_POOLS_INFO, NMREQ_POOLS_INFO_OFF = _layout(
    [
        ("nr_memsize", "Q"),
        ("nr_mem_id", "H"),
        ("pad1", "6s"),
        ("nr_if_pool_offset", "Q"),
        ("nr_if_pool_objtotal", "I"),
        ("nr_if_pool_objsize", "I"),
        ("nr_ring_pool_offset", "Q"),
        ("nr_ring_pool_objtotal", "I"),
        ("nr_ring_pool_objsize", "I"),
        ("nr_buf_pool_offset", "Q"),
        ("nr_buf_pool_objtotal", "I"),
        ("nr_buf_pool_objsize", "I"),
    ]
)
NMREQ_SYNC_KLOOP_START, NMREQ_SYNC_KLOOP_START_OFF = _layout([("sleep_us", "I"), ("pad1", "I")])
NM_CSB_ATOK, NM_CSB_ATOK_OFF = _layout(
    [("head", "I"), ("cur", "I"), ("appl_need_kick", "I"), ("sync_flags", "I"), ("pad", "48s")]
)
NM_CSB_KTOA, NM_CSB_KTOA_OFF = _layout(
    [("hwcur", "I"), ("hwtail", "I"), ("kern_need_kick", "I"), ("pad", "52s")]
)
NMREQ_OPT_CSB, NMREQ_OPT_CSB_OFF = _layout(
    [
        ("nro_next", "Q"),
        ("nro_reqtype", "I"),
        ("nro_status", "I"),
        ("nro_size", "Q"),
        ("csb_atok", "Q"),
        ("csb_ktoa", "Q"),
    ]
)
# struct nmreq (netmap_legacy.h), the argument of NIOCGINFO and NIOCREGIF.
NMREQ, NMREQ_OFF = _layout(
    [
        ("nr_name", f"{IFNAMSIZ}s"),
        ("nr_version", "I"),
        ("nr_offset", "I"),
        ("nr_memsize", "I"),
        ("nr_tx_slots", "I"),
        ("nr_rx_slots", "I"),
        ("nr_tx_rings", "H"),
        ("nr_rx_rings", "H"),
        ("nr_ringid", "H"),
        ("nr_cmd", "H"),
        ("nr_arg1", "H"),
        ("nr_arg2", "H"),
        ("nr_arg3", "I"),
        ("nr_flags", "I"),
        ("spare2", "I"),
    ]
)

# -- ioctls -------------------------------------------------------------------
NIOCGINFO: Final = _ioc(IOC_INOUT, "i", 145, NMREQ.size)  # legacy: port info
NIOCREGIF: Final = _ioc(IOC_INOUT, "i", 146, NMREQ.size)  # legacy: register
NIOCTXSYNC: Final = _ioc(IOC_VOID, "i", 148, 0)  # sync the bound TX rings
NIOCRXSYNC: Final = _ioc(IOC_VOID, "i", 149, 0)  # sync the bound RX rings
NIOCCTRL: Final = _ioc(IOC_INOUT, "i", 151, NMREQ_HEADER.size)  # every new request

# -- nmreq_header.nr_reqtype --------------------------------------------------
NETMAP_REQ_REGISTER: Final = 1
NETMAP_REQ_PORT_INFO_GET: Final = 2
NETMAP_REQ_VALE_ATTACH: Final = 3
NETMAP_REQ_VALE_DETACH: Final = 4
NETMAP_REQ_VALE_LIST: Final = 5
NETMAP_REQ_PORT_HDR_SET: Final = 6
NETMAP_REQ_PORT_HDR_GET: Final = 7
NETMAP_REQ_VALE_NEWIF: Final = 8
NETMAP_REQ_VALE_DELIF: Final = 9
NETMAP_REQ_VALE_POLLING_ENABLE: Final = 10
NETMAP_REQ_VALE_POLLING_DISABLE: Final = 11
NETMAP_REQ_POOLS_INFO_GET: Final = 12
NETMAP_REQ_SYNC_KLOOP_START: Final = 13
NETMAP_REQ_SYNC_KLOOP_STOP: Final = 14
NETMAP_REQ_CSB_ENABLE: Final = 15

# -- nmreq_option.nro_reqtype -------------------------------------------------
NETMAP_REQ_OPT_EXTMEM: Final = 1
NETMAP_REQ_OPT_SYNC_KLOOP_EVENTFDS: Final = 2
NETMAP_REQ_OPT_CSB: Final = 3
NETMAP_REQ_OPT_SYNC_KLOOP_MODE: Final = 4
NETMAP_REQ_OPT_OFFSETS: Final = 5
NETMAP_REQ_OPT_MAX: Final = 6

# -- nmreq_register.nr_mode ---------------------------------------------------
NR_REG_DEFAULT: Final = 0
NR_REG_ALL_NIC: Final = 1
NR_REG_SW: Final = 2
NR_REG_NIC_SW: Final = 3
NR_REG_ONE_NIC: Final = 4
NR_REG_PIPE_MASTER: Final = 5
NR_REG_PIPE_SLAVE: Final = 6
NR_REG_NULL: Final = 7
NR_REG_ONE_SW: Final = 8

# -- nmreq_register.nr_flags --------------------------------------------------
NR_MONITOR_TX: Final = 0x100
NR_MONITOR_RX: Final = 0x200
NR_ZCOPY_MON: Final = 0x400
NR_EXCLUSIVE: Final = 0x800
NR_RX_RINGS_ONLY: Final = 0x2000
NR_TX_RINGS_ONLY: Final = 0x4000
NR_ACCEPT_VNET_HDR: Final = 0x8000
NR_DO_RX_POLL: Final = 0x10000
NR_NO_TX_POLL: Final = 0x20000

# -- netmap_legacy.h ----------------------------------------------------------
NETMAP_HW_RING: Final = 0x4000  # nr_ringid: a single NIC ring pair
NETMAP_SW_RING: Final = 0x2000  # nr_ringid: the host ring pair
NETMAP_RING_MASK: Final = 0x0FFF
NETMAP_NO_TX_POLL: Final = 0x1000
NETMAP_DO_RX_POLL: Final = 0x8000
NR_REG_MASK: Final = 0xF  # legacy nr_flags: the NR_REG_* mode

# -- netmap_if / netmap_ring / netmap_slot flags -------------------------------
NI_PRIV_MEM: Final = 0x1
NR_TIMESTAMP: Final = 0x0002
NR_FORWARD: Final = 0x0004
NS_BUF_CHANGED: Final = 0x0001
NS_REPORT: Final = 0x0002
NS_FORWARD: Final = 0x0004
NS_NO_LEARN: Final = 0x0008
NS_INDIRECT: Final = 0x0010
NS_MOREFRAG: Final = 0x0020
NS_TXMON: Final = 0x0040
NS_PORT_SHIFT: Final = 8
NS_PORT_MASK: Final = 0xFF << NS_PORT_SHIFT

# poll(2) events (sys/sys/poll.h) the device answers with.
POLLIN: Final = 0x0001
POLLOUT: Final = 0x0004
POLLERR: Final = 0x0008
POLLRDNORM: Final = 0x0040
POLLWRNORM: Final = POLLOUT

NR_TX: Final = 0  # netmap_ring.dir
NR_RX: Final = 1


# -- ring helpers (netmap.h / netmap_user.h), all in slot indexes --------------
def nm_ring_next(num_slots: int, i: int) -> int:
    """The slot after i (wrapping at num_slots)."""
    i += 1
    return 0 if i == num_slots else i


def nm_ring_space(num_slots: int, head: int, tail: int) -> int:
    """Slots the user owns: (tail - head) mod num_slots."""
    ret = tail - head
    return ret + num_slots if ret < 0 else ret


def nm_ring_empty(head: int, tail: int) -> bool:
    return head == tail


def nm_tx_pending(num_slots: int, head: int, tail: int) -> bool:
    """TX slots given to the kernel and not yet completed."""
    return nm_ring_next(num_slots, tail) != head


def NETMAP_TXRING(ring_ofs: list[int], nifp: int, i: int) -> int:
    """Region offset of TX ring i: nifp + ring_ofs[i]."""
    return nifp + ring_ofs[i]


def NETMAP_RXRING(ring_ofs: list[int], nifp: int, i: int, ntx: int, nhtx: int) -> int:
    """Region offset of RX ring i: ring_ofs[i + ni_tx_rings + ni_host_tx_rings]."""
    return nifp + ring_ofs[i + ntx + nhtx]


def NETMAP_BUF(ring: int, buf_ofs: int, nr_buf_size: int, idx: int) -> int:
    """Region offset of buffer idx seen from the ring at offset `ring`."""
    return ring + buf_ofs + idx * nr_buf_size


def netmap_slot_off(ring: int, i: int) -> int:
    """Region offset of slot i of the ring at offset `ring`."""
    return ring + NETMAP_RING.size + i * NETMAP_SLOT.size
