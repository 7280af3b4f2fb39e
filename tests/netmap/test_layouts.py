"""The header's layouts against netmap.h, offsets read off the C declarations by
hand (amd64: natural alignment, 8-byte pointers and int64 / ssize_t), and the
ioctl numbers as FreeBSD's _IOWR / _IO encode them."""

from __future__ import annotations

import struct

import pytest

from netmap import netmap_h as h

# (layout, expected size, expected offset of every field), from sys/net/netmap.h
# and netmap_legacy.h (API 14).
EXPECTED: list[tuple[str, int, dict[str, int]]] = [
    ("NETMAP_SLOT", 16, {"buf_idx": 0, "len": 4, "flags": 6, "ptr": 8}),
    (
        "NETMAP_RING",
        256,  # sem[128] is __aligned__(NM_CACHE_ALIGN 128): slot[] starts at 256
        {
            "buf_ofs": 0, "num_slots": 8, "nr_buf_size": 12, "ringid": 16, "dir": 18,
            "head": 20, "cur": 24, "tail": 28, "flags": 32, "ts_sec": 40, "ts_usec": 48,
            "offset_mask": 56, "buf_align": 64, "sem": 128,
        },
    ),
    (
        "NETMAP_IF",
        56,  # ring_ofs[] (ssize_t) follows at 56
        {
            "ni_name": 0, "ni_version": 16, "ni_flags": 20, "ni_tx_rings": 24,
            "ni_rx_rings": 28, "ni_bufs_head": 32, "ni_host_tx_rings": 36,
            "ni_host_rx_rings": 40, "ni_spare1": 44,
        },
    ),
    ("NMREQ_OPTION", 24, {"nro_next": 0, "nro_reqtype": 8, "nro_status": 12, "nro_size": 16}),
    (
        "NMREQ_HEADER",
        88,
        {"nr_version": 0, "nr_reqtype": 2, "nr_reserved": 4, "nr_name": 8, "nr_options": 72,
         "nr_body": 80},
    ),
    (
        "NMREQ_REGISTER",
        56,
        {
            "nr_offset": 0, "nr_memsize": 8, "nr_tx_slots": 16, "nr_rx_slots": 20,
            "nr_tx_rings": 24, "nr_rx_rings": 26, "nr_host_tx_rings": 28,
            "nr_host_rx_rings": 30, "nr_mem_id": 32, "nr_ringid": 34, "nr_mode": 36,
            "nr_extra_bufs": 40, "nr_flags": 48,
        },
    ),
    (
        "NMREQ_PORT_INFO_GET",
        32,
        {
            "nr_memsize": 0, "nr_tx_slots": 8, "nr_rx_slots": 12, "nr_tx_rings": 16,
            "nr_rx_rings": 18, "nr_host_tx_rings": 20, "nr_host_rx_rings": 22,
            "nr_mem_id": 24, "pad": 26,
        },
    ),
    (
        "NMREQ_POOLS_INFO",
        64,
        {
            "nr_memsize": 0, "nr_mem_id": 8, "pad1": 10, "nr_if_pool_offset": 16,
            "nr_if_pool_objtotal": 24, "nr_if_pool_objsize": 28, "nr_ring_pool_offset": 32,
            "nr_ring_pool_objtotal": 40, "nr_ring_pool_objsize": 44, "nr_buf_pool_offset": 48,
            "nr_buf_pool_objtotal": 56, "nr_buf_pool_objsize": 60,
        },
    ),
    ("NMREQ_SYNC_KLOOP_START", 8, {"sleep_us": 0, "pad1": 4}),
    ("NM_CSB_ATOK", 64, {"head": 0, "cur": 4, "appl_need_kick": 8, "sync_flags": 12, "pad": 16}),
    ("NM_CSB_KTOA", 64, {"hwcur": 0, "hwtail": 4, "kern_need_kick": 8, "pad": 12}),
    (
        "NMREQ_OPT_CSB",
        40,
        {"nro_next": 0, "nro_reqtype": 8, "nro_status": 12, "nro_size": 16, "csb_atok": 24,
         "csb_ktoa": 32},
    ),
    (
        "NMREQ",
        60,
        {
            "nr_name": 0, "nr_version": 16, "nr_offset": 20, "nr_memsize": 24,
            "nr_tx_slots": 28, "nr_rx_slots": 32, "nr_tx_rings": 36, "nr_rx_rings": 38,
            "nr_ringid": 40, "nr_cmd": 42, "nr_arg1": 44, "nr_arg2": 46, "nr_arg3": 48,
            "nr_flags": 52, "spare2": 56,
        },
    ),
]  # fmt: skip


@pytest.mark.parametrize(("name", "size", "offsets"), EXPECTED, ids=[e[0] for e in EXPECTED])
def test_struct_layout(name: str, size: int, offsets: dict[str, int]) -> None:
    s = getattr(h, name)
    assert isinstance(s, struct.Struct)
    assert s.size == size
    assert getattr(h, name + "_OFF") == offsets


def test_ring_fields_land_where_declared() -> None:
    """Packing puts each value at its offset (the pad bytes stay zero)."""
    b = h.NETMAP_RING.pack(-7, 1024, 2048, 3, 1, 11, 12, 13, 4, 5, 6, 7, 8, b"\xaa" * 128)
    u32 = struct.Struct("=I")
    off = h.NETMAP_RING_OFF
    assert struct.unpack_from("=q", b, off["buf_ofs"])[0] == -7
    assert [u32.unpack_from(b, off[f])[0] for f in ("head", "cur", "tail")] == [11, 12, 13]
    assert struct.unpack_from("=H", b, off["dir"])[0] == 1
    assert b[36:40] == bytes(4) and b[72:128] == bytes(56) and b[128:] == b"\xaa" * 128


def test_ioctl_numbers() -> None:
    """_IOWR('i', n, T) = 0xC0000000 | sizeof(T) << 16 | 'i' << 8 | n; _IO = 0x20000000 | ..."""
    assert h.NIOCCTRL == 0xC0586997  # sizeof(struct nmreq_header) 88 = 0x58
    assert h.NIOCTXSYNC == 0x20006994
    assert h.NIOCRXSYNC == 0x20006995
    assert h.NIOCREGIF == 0xC03C6992  # sizeof(struct nmreq) 60 = 0x3c
    assert h.NIOCGINFO == 0xC03C6991


def test_constants() -> None:
    assert h.NETMAP_API == 14 and h.NM_MAXPIPES == 64 and h.NETMAP_REQ_MAXSIZE == 4096
    assert (h.NETMAP_REQ_REGISTER, h.NETMAP_REQ_POOLS_INFO_GET) == (1, 12)
    assert (h.NETMAP_REQ_SYNC_KLOOP_START, h.NETMAP_REQ_SYNC_KLOOP_STOP) == (13, 14)
    assert h.NETMAP_REQ_CSB_ENABLE == 15 and h.NETMAP_REQ_OPT_CSB == 3
    assert (h.NR_REG_ALL_NIC, h.NR_REG_ONE_NIC, h.NR_REG_NULL, h.NR_REG_ONE_SW) == (1, 4, 7, 8)
    assert (h.NR_MONITOR_TX, h.NR_MONITOR_RX, h.NR_EXCLUSIVE) == (0x100, 0x200, 0x800)
    assert (h.NS_BUF_CHANGED, h.NS_MOREFRAG, h.NS_TXMON) == (1, 0x20, 0x40)


@pytest.mark.parametrize(
    ("n", "head", "tail", "space"), [(8, 0, 7, 7), (8, 7, 0, 1), (8, 3, 3, 0), (5, 4, 2, 3)]
)
def test_ring_helpers(n: int, head: int, tail: int, space: int) -> None:
    assert h.nm_ring_space(n, head, tail) == space
    assert h.nm_ring_empty(head, tail) == (space == 0)
    assert h.nm_ring_next(n, n - 1) == 0 and h.nm_ring_next(n, 0) == 1
    assert h.nm_tx_pending(n, head, tail) == (h.nm_ring_next(n, tail) != head)


def test_offset_macros() -> None:
    ring_ofs = [100, 200, 300, 400]
    assert h.NETMAP_TXRING(ring_ofs, 1000, 1) == 1200
    assert h.NETMAP_RXRING(ring_ofs, 1000, 0, 2, 0) == 1300
    assert h.NETMAP_BUF(5000, -1000, 2048, 3) == 5000 - 1000 + 3 * 2048
    assert h.netmap_slot_off(5000, 2) == 5000 + 256 + 32
