"""The legacy control API: NIOCREGIF / NIOCGINFO with struct nmreq, on NIOCCTRL.

Theory of operation. As netmap_legacy.c does, a legacy request is translated
into a new one (a message of nmreq_header + nmreq_register or
nmreq_port_info_get), run through NIOCCTRL, and the answer translated back into
the fields of struct nmreq the caller expects. Registration: the mode comes from
the low 4 bits of nr_flags, or, when those are NR_REG_DEFAULT, from nr_ringid
(NETMAP_SW_RING: host rings, NETMAP_HW_RING: one NIC ring, else all NIC rings);
the ring number is nr_ringid & NETMAP_RING_MASK; NETMAP_NO_TX_POLL /
NETMAP_DO_RX_POLL become NR_NO_TX_POLL / NR_DO_RX_POLL; nr_arg2 is the memory
id, nr_arg3 the extra buffers (granted count written back); the deprecated pipe
modes become `{id` / `}id` name suffixes (ENOBUFS when the name has no room).

Models: nmreq_from_legacy, nmreq_register_from_legacy, nmreq_to_legacy and
netmap_ioctl_legacy in sys/dev/netmap/netmap_legacy.c.

Deliberate differences: only nr_cmd 0 (registration / port info) is
translated; the VALE commands answer EINVAL (no VALE here).
"""

from __future__ import annotations

import errno
from typing import Final

from netmap.netmap_h import (
    IFNAMSIZ,
    NETMAP_API,
    NETMAP_DO_RX_POLL,
    NETMAP_HW_RING,
    NETMAP_NO_TX_POLL,
    NETMAP_REQ_IFNAMSIZ,
    NETMAP_REQ_PORT_INFO_GET,
    NETMAP_REQ_REGISTER,
    NETMAP_RING_MASK,
    NETMAP_SW_RING,
    NIOCREGIF,
    NMREQ,
    NMREQ_HEADER,
    NMREQ_PORT_INFO_GET,
    NMREQ_REGISTER,
    NR_DO_RX_POLL,
    NR_NO_TX_POLL,
    NR_REG_ALL_NIC,
    NR_REG_DEFAULT,
    NR_REG_MASK,
    NR_REG_ONE_NIC,
    NR_REG_PIPE_MASTER,
    NR_REG_PIPE_SLAVE,
    NR_REG_SW,
)

LEGACY_MIN_API: Final = 14
BODY_OFF: Final = NMREQ_HEADER.size


def nmreq_from_legacy(cmd: int, arg: bytes) -> bytes:
    """The NIOCCTRL message for a legacy NIOCREGIF / NIOCGINFO argument."""
    if len(arg) != NMREQ.size:
        raise OSError(errno.EINVAL, "legacy ioctl: argument is not a struct nmreq")
    (
        rawname, version, offset, memsize, tx_slots, rx_slots, tx_rings, rx_rings,
        ringid, ncmd, _arg1, arg2, arg3, flags, _spare,
    ) = NMREQ.unpack(arg)  # fmt: skip
    if version < LEGACY_MIN_API:
        raise OSError(errno.EINVAL, f"legacy ioctl: minimum supported API is {LEGACY_MIN_API}")
    if ncmd:
        raise OSError(errno.EINVAL, f"legacy ioctl: nr_cmd {ncmd} (VALE) not supported")
    name = bytes(rawname)[: IFNAMSIZ - 1].split(b"\0", 1)[0]
    if cmd == NIOCREGIF:
        reqtype = NETMAP_REQ_REGISTER
        mode = flags & NR_REG_MASK
        if mode == NR_REG_DEFAULT:
            if ringid & NETMAP_SW_RING:
                mode = NR_REG_SW
            elif ringid & NETMAP_HW_RING:
                mode = NR_REG_ONE_NIC
            else:
                mode = NR_REG_ALL_NIC
        ring = ringid & NETMAP_RING_MASK
        if mode in (NR_REG_PIPE_MASTER, NR_REG_PIPE_SLAVE):
            suffix = ("{" if mode == NR_REG_PIPE_MASTER else "}") + str(ring)
            if len(name) + len(suffix) >= NETMAP_REQ_IFNAMSIZ:
                raise OSError(errno.ENOBUFS, "legacy ioctl: no room for the pipe suffix")
            name += suffix.encode()
            mode = NR_REG_ALL_NIC
            ring = 0
        nflags = flags & ~NR_REG_MASK
        if ringid & NETMAP_NO_TX_POLL:
            nflags |= NR_NO_TX_POLL
        if ringid & NETMAP_DO_RX_POLL:
            nflags |= NR_DO_RX_POLL
        body = NMREQ_REGISTER.pack(
            offset, memsize, tx_slots, rx_slots, tx_rings, rx_rings, 0, 0,
            arg2, ring, mode, arg3, nflags,
        )  # fmt: skip
    else:
        reqtype = NETMAP_REQ_PORT_INFO_GET
        body = NMREQ_PORT_INFO_GET.pack(
            memsize, tx_slots, rx_slots, tx_rings, rx_rings, 0, 0, arg2, b""
        )
    hdr = NMREQ_HEADER.pack(NETMAP_API, reqtype, 0, name, 0, BODY_OFF)
    return hdr + body


def nmreq_to_legacy(arg: bytes, reply: bytes) -> bytes:
    """The struct nmreq written back from the NIOCCTRL answer (nmreq_to_legacy)."""
    f = list(NMREQ.unpack(arg))
    reqtype = NMREQ_HEADER.unpack_from(reply)[1]
    if reqtype == NETMAP_REQ_REGISTER:
        r = NMREQ_REGISTER.unpack_from(reply, BODY_OFF)
        # nr_offset, nr_memsize, slots, rings, nr_arg2 (mem id), nr_arg3 (extra bufs)
        f[2], f[3], f[4], f[5], f[6], f[7] = r[0], r[1], r[2], r[3], r[4], r[5]
        f[11] = r[8]
        f[12] = r[11]
    else:
        p = NMREQ_PORT_INFO_GET.unpack_from(reply, BODY_OFF)
        f[3], f[4], f[5], f[6], f[7], f[11] = p[0], p[1], p[2], p[3], p[4], p[7]
    return NMREQ.pack(*f)
