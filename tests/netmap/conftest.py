"""Fixtures and a tiny user side for the netmap tests.

`req_message` builds a NIOCCTRL message the way a program lays one out (header
at 0, body after it, options after the body, pointers as message offsets);
`UserRing` reads and writes a ring in the region as a program does through its
mapping (head, cur, tail, slots, buffers), with the layouts of netmap_h only.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator

import pytest

from netmap.netmap import netmap_close, netmap_ctrl, netmap_open
from netmap.netmap_h import (
    NETMAP_API,
    NETMAP_IF,
    NETMAP_IF_OFF,
    NETMAP_REQ_OPT_CSB,
    NETMAP_REQ_REGISTER,
    NETMAP_RING,
    NETMAP_RING_OFF,
    NETMAP_SLOT,
    NMREQ_HEADER,
    NMREQ_OPT_CSB,
    NMREQ_REGISTER,
    NR_REG_ALL_NIC,
    RING_OFS,
    nm_ring_next,
)
from netmap.netmap_kern import Netmap, NetmapPrivD

U32 = struct.Struct("=I")


def req_message(
    reqtype: int,
    name: str,
    body: bytes,
    options: list[bytes] | None = None,
    version: int = NETMAP_API,
) -> bytes:
    """Header, body, then the options chained in order (nro_next patched)."""
    hsz = NMREQ_HEADER.size
    opts = options or []
    offs: list[int] = []
    o = hsz + len(body)
    for opt in opts:
        offs.append(o)
        o += len(opt)
    first = offs[0] if offs else 0
    msg = bytearray(
        NMREQ_HEADER.pack(version, reqtype, 0, name.encode(), first, hsz if body else 0)
    )
    msg += body
    for i, opt in enumerate(opts):
        b = bytearray(opt)
        nxt = offs[i + 1] if i + 1 < len(offs) else 0
        b[0:8] = nxt.to_bytes(8, "little")
        msg += b
    return bytes(msg)


def register_body(
    mode: int = NR_REG_ALL_NIC,
    flags: int = 0,
    mem_id: int = 0,
    extra: int = 0,
    slots: int = 0,
    rings: int = 0,
    ringid: int = 0,
) -> bytes:
    return NMREQ_REGISTER.pack(
        0, 0, slots, slots, rings, rings, 0, 0, mem_id, ringid, mode, extra, flags
    )


def csb_option(atok: int, ktoa: int) -> bytes:
    return NMREQ_OPT_CSB.pack(0, NETMAP_REQ_OPT_CSB, 0, 0, atok, ktoa)


def register(priv: NetmapPrivD, name: str, **kw: int) -> dict[str, int]:
    """NETMAP_REQ_REGISTER; the nmreq_register fields written back."""
    reply, _ = netmap_ctrl(priv, req_message(NETMAP_REQ_REGISTER, name, register_body(**kw)))
    names = [
        "nr_offset",
        "nr_memsize",
        "nr_tx_slots",
        "nr_rx_slots",
        "nr_tx_rings",
        "nr_rx_rings",
        "nr_host_tx_rings",
        "nr_host_rx_rings",
        "nr_mem_id",
        "nr_ringid",
        "nr_mode",
        "nr_extra_bufs",
        "nr_flags",
    ]
    return dict(zip(names, NMREQ_REGISTER.unpack_from(reply, NMREQ_HEADER.size), strict=True))


class UserRing:
    """A ring seen through the region, as a program sees it."""

    def __init__(self, view: memoryview, ofs: int) -> None:
        self.view = view
        self.ofs = ofs
        f = NETMAP_RING.unpack_from(view, ofs)
        self.buf_ofs, self.num_slots, self.buf_size = f[0], f[1], f[2]

    def _get(self, name: str) -> int:
        return int(U32.unpack_from(self.view, self.ofs + NETMAP_RING_OFF[name])[0])

    def _set(self, name: str, v: int) -> None:
        U32.pack_into(self.view, self.ofs + NETMAP_RING_OFF[name], v)

    @property
    def head(self) -> int:
        return self._get("head")

    @head.setter
    def head(self, v: int) -> None:
        self._set("head", v)

    @property
    def cur(self) -> int:
        return self._get("cur")

    @cur.setter
    def cur(self, v: int) -> None:
        self._set("cur", v)

    @property
    def tail(self) -> int:
        return self._get("tail")

    @tail.setter
    def tail(self, v: int) -> None:
        self._set("tail", v)

    def slot_ofs(self, i: int) -> int:
        return self.ofs + NETMAP_RING.size + i * NETMAP_SLOT.size

    def slot(self, i: int) -> tuple[int, int, int]:
        idx, ln, fl, _ = NETMAP_SLOT.unpack_from(self.view, self.slot_ofs(i))
        return int(idx), int(ln), int(fl)

    def set_slot(self, i: int, idx: int, ln: int, fl: int = 0) -> None:
        NETMAP_SLOT.pack_into(self.view, self.slot_ofs(i), idx, ln, fl, 0)

    def buf(self, idx: int) -> memoryview:
        o = self.ofs + self.buf_ofs + idx * self.buf_size
        return self.view[o : o + self.buf_size]

    def space(self) -> int:
        d = self.tail - self.head
        return d + self.num_slots if d < 0 else d

    def send(self, payloads: list[bytes]) -> None:
        """Fill slots from head and advance head = cur past them."""
        h = self.head
        for p in payloads:
            idx, _, _ = self.slot(h)
            self.buf(idx)[: len(p)] = p
            self.set_slot(h, idx, len(p))
            h = nm_ring_next(self.num_slots, h)
        self.head = self.cur = h

    def recv(self, n: int) -> list[bytes]:
        """Take up to n packets from head, release them."""
        out: list[bytes] = []
        h = self.head
        while len(out) < n and h != self.tail:
            idx, ln, _ = self.slot(h)
            out.append(bytes(self.buf(idx)[:ln]))
            h = nm_ring_next(self.num_slots, h)
        self.head = self.cur = h
        return out


def user_rings(view: memoryview, nifp: int) -> tuple[list[UserRing], list[UserRing]]:
    """The TX and RX rings a netmap_if at nifp lists."""
    f = NETMAP_IF.unpack_from(view, nifp)
    ntx, nrx = int(f[3]), int(f[4])
    assert NETMAP_IF_OFF["ni_tx_rings"] == 24
    ofs = [
        int(RING_OFS.unpack_from(view, nifp + NETMAP_IF.size + 8 * i)[0]) for i in range(ntx + nrx)
    ]
    rings = [UserRing(view, nifp + o) for o in ofs]
    return rings[:ntx], rings[ntx:]


@pytest.fixture
def nm() -> Iterator[Netmap]:
    n = Netmap()
    n.sysctl.buf_num = 8192
    yield n
    assert n.statistics().leaks() == {}, "netmap objects leaked"


def open_port(
    nm: Netmap, name: str, pid: int = 1, **kw: int
) -> tuple[NetmapPrivD, UserRing, UserRing]:
    """Open, register `name`, and the first TX and RX rings of the binding."""
    priv = netmap_open(nm, pid)
    try:
        r = register(priv, name, **kw)
    except OSError:
        netmap_close(priv)
        raise
    assert priv.np_na is not None
    tx, rx = user_rings(priv.np_na.mem.view, r["nr_offset"])
    return priv, tx[0], rx[0]
