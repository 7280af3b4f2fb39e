"""SYNC_KLOOP over a CSB: packets cross a pipe with the application making no
sync call at all, only CSB writes and reads; start / stop errors as the kernel
gives them. The CSB lives in the region, in two of the application's extra
buffers past their first 64 bytes (the list link stays intact)."""

from __future__ import annotations

import errno
import struct

import pytest

from netmap.netmap import (
    NetmapIoctlError,
    netmap_close,
    netmap_ctrl,
    netmap_ioctl,
    netmap_open,
)
from netmap.netmap_h import (
    NETMAP_REQ_CSB_ENABLE,
    NETMAP_REQ_REGISTER,
    NETMAP_REQ_SYNC_KLOOP_START,
    NETMAP_REQ_SYNC_KLOOP_STOP,
    NIOCTXSYNC,
    NM_CSB_ATOK,
    NM_CSB_KTOA,
    NMREQ_HEADER,
    NMREQ_OPT_CSB,
    NMREQ_SYNC_KLOOP_START,
    NR_EXCLUSIVE,
    nm_ring_next,
)
from netmap.netmap_kern import Netmap, NetmapPrivD
from netmap.netmap_kloop import SyncKloop, sync_kloop_step
from tests.netmap.conftest import csb_option, open_port, register_body, req_message

U32 = struct.Struct("=I")


class CsbApp:
    """The application side of CSB mode for a file bound to one TX and one RX ring."""

    def __init__(self, priv: NetmapPrivD, atok: int, ktoa: int) -> None:
        assert priv.np_na is not None
        self.view = priv.np_na.mem.view
        self.atok = atok
        self.ktoa = ktoa

    def appl_write(self, i: int, cur: int, head: int) -> None:
        """nm_sync_kloop_appl_write: cur first, then head."""
        a = self.atok + 64 * i
        U32.pack_into(self.view, a + 4, cur)
        U32.pack_into(self.view, a, head)

    def appl_read(self, i: int) -> tuple[int, int]:
        """nm_sync_kloop_appl_read: hwtail first, then hwcur."""
        k = self.ktoa + 64 * i
        hwtail = int(U32.unpack_from(self.view, k + 4)[0])
        hwcur = int(U32.unpack_from(self.view, k)[0])
        return hwtail, hwcur


def csb_place(priv: NetmapPrivD) -> tuple[int, int]:
    """Two extra buffers' region offsets, past their first 64 bytes."""
    assert priv.np_na is not None
    mem = priv.np_na.mem
    first = priv.np_extra_head
    second = int.from_bytes(mem.buf(first)[:4], "little")
    return mem.buf_ofs(first) + 64, mem.buf_ofs(second) + 64


def enable_csb(priv: NetmapPrivD, name: str) -> CsbApp:
    atok, ktoa = csb_place(priv)
    netmap_ctrl(priv, req_message(NETMAP_REQ_CSB_ENABLE, name, b"", [csb_option(atok, ktoa)]))
    return CsbApp(priv, atok, ktoa)


def start(priv: NetmapPrivD, name: str, sleep_us: int = 100) -> SyncKloop:
    body = NMREQ_SYNC_KLOOP_START.pack(sleep_us, 0)
    _, kl = netmap_ctrl(priv, req_message(NETMAP_REQ_SYNC_KLOOP_START, name, body))
    assert kl is not None
    return kl


@pytest.mark.parametrize("batch", [1, 5, 31])
def test_kloop_moves_packets_with_zero_sync_calls(nm: Netmap, batch: int) -> None:
    slots = 32
    a, atx, _ = open_port(nm, "k{0", slots=slots, flags=NR_EXCLUSIVE, extra=2)
    b, _, brx = open_port(nm, "k}0", pid=2, flags=NR_EXCLUSIVE, extra=2)
    app_a = enable_csb(a, "k{0")
    app_b = enable_csb(b, "k}0")
    assert app_a.appl_read(0) == (slots - 1, 0)  # the CSB starts as the kring
    kla = start(a, "k{0")
    klb = start(b, "k}0")
    total = 200
    sent = 0
    got: list[bytes] = []
    ahead = 0  # the applications' own head of A's TX ring and B's RX ring
    bhead = 0
    while len(got) < total:
        hwtail, _ = app_a.appl_read(0)  # A's TX space ends at hwtail
        space = (hwtail - ahead) % slots
        for _ in range(min(batch, space, total - sent)):
            idx = atx.slot(ahead)[0]
            p = sent.to_bytes(4, "little") * 8
            atx.buf(idx)[: len(p)] = p
            atx.set_slot(ahead, idx, len(p))
            ahead = nm_ring_next(slots, ahead)
            sent += 1
        app_a.appl_write(0, ahead, ahead)
        sync_kloop_step(kla)
        sync_kloop_step(klb)
        hwtail, _ = app_b.appl_read(1)  # B's RX ring is entry 1 (after its TX ring)
        while bhead != hwtail:
            idx, ln, _ = brx.slot(bhead)
            got.append(bytes(brx.buf(idx)[:ln]))
            bhead = nm_ring_next(slots, bhead)
        app_b.appl_write(1, bhead, bhead)
        sync_kloop_step(klb)
        sync_kloop_step(kla)
    assert got == [i.to_bytes(4, "little") * 8 for i in range(total)]
    s = nm.stats
    assert s.txsync_ioctl == 0 and s.rxsync_ioctl == 0  # no sync system call at all
    assert s.txsync_kloop > 0 and s.rxsync_kloop > 0 and s.kloop_iterations >= 4
    assert s.slots_moved == 2 * total and s.kloops_running == 2
    assert not sync_kloop_step(kla) or not sync_kloop_step(kla)  # idle: sleep
    with pytest.raises(OSError) as ei:
        netmap_ioctl(a, NIOCTXSYNC, b"")
    assert ei.value.errno == errno.EBUSY  # no syncs in CSB mode
    netmap_ctrl(a, req_message(NETMAP_REQ_SYNC_KLOOP_STOP, "k{0", b""))
    assert kla.stopping and not sync_kloop_step(kla) and s.kloops_running == 1
    netmap_close(a)
    netmap_close(b)  # closing stops its loop
    assert klb.stopping and s.kloops_running == 0


def test_kloop_bad_head_reinits_through_the_csb(nm: Netmap) -> None:
    a, _, _ = open_port(nm, "g{0", slots=8, flags=NR_EXCLUSIVE, extra=2)
    app = enable_csb(a, "g{0")
    kl = start(a, "g{0")
    app.appl_write(0, 3, 5)  # cur before head
    sync_kloop_step(kl)
    assert nm.stats.ring_reinits == 1
    assert U32.unpack_from(app.view, app.ktoa + 8)[0] == 1  # kern_need_kick back on
    netmap_close(a)


def test_kloop_start_errors(nm: Netmap) -> None:
    a, _, _ = open_port(nm, "w{0", flags=NR_EXCLUSIVE, extra=2)
    with pytest.raises(NetmapIoctlError) as ei:
        start(a, "w{0")  # no CSB
    assert ei.value.errno == errno.EINVAL
    enable_csb(a, "w{0")
    with pytest.raises(NetmapIoctlError) as ei:
        start(a, "w{0", sleep_us=1_000_001)
    assert ei.value.errno == errno.EINVAL
    start(a, "w{0")
    with pytest.raises(NetmapIoctlError) as ei:
        start(a, "w{0")  # twice
    assert ei.value.errno == errno.EBUSY
    assert nm.stats.kloops_running == 1
    netmap_ctrl(a, req_message(NETMAP_REQ_SYNC_KLOOP_STOP, "w{0", b""))
    start(a, "w{0")  # stopped: may start again
    netmap_close(a)
    u, _, _ = open_port(nm, "w}0", pid=2)
    netmap_close(u)


def test_csb_option_at_register(nm: Netmap) -> None:
    """NETMAP_REQ_OPT_CSB at registration: needs NR_EXCLUSIVE (EINVAL in its
    nro_status, and the registration undone), an aligned place in the region."""
    opened: list[NetmapPrivD] = []

    def new_file() -> NetmapPrivD:
        opened.append(netmap_open(nm, 9))
        return opened[-1]

    helper, _, _ = open_port(nm, "v{0", extra=2)  # owns the region and the CSB room
    atok, ktoa = csb_place(helper)
    assert helper.np_na is not None
    mem_id = helper.np_na.mem.nm_id
    for flags, at, err in (
        (0, atok, errno.EINVAL),
        (NR_EXCLUSIVE, atok + 8, errno.EINVAL),
        (NR_EXCLUSIVE, 10**12, errno.EINVAL),
    ):
        msg = req_message(
            NETMAP_REQ_REGISTER, "v}0", register_body(flags=flags, mem_id=mem_id),
            [csb_option(at, ktoa)],
        )  # fmt: skip
        with pytest.raises(NetmapIoctlError) as ei:
            netmap_ctrl(new_file(), msg)
        assert ei.value.errno == err
        opt = NMREQ_HEADER.size + len(register_body())
        assert NMREQ_OPT_CSB.unpack_from(ei.value.data, opt)[2] == err  # nro_status
    msg = req_message(
        NETMAP_REQ_REGISTER, "v}0", register_body(flags=NR_EXCLUSIVE), [csb_option(atok, ktoa)]
    )
    priv = new_file()
    netmap_ctrl(priv, msg)
    assert priv.np_csb_atok == atok
    assert priv.np_na is not None
    view = priv.np_na.mem.view
    # Initialised from the krings: TX hwcur 0 / hwtail n-1, then RX 0 / 0; kicks on.
    assert NM_CSB_KTOA.unpack_from(view, ktoa)[:3] == (0, 1023, 1)
    assert NM_CSB_KTOA.unpack_from(view, ktoa + 64)[:3] == (0, 0, 1)
    assert NM_CSB_ATOK.unpack_from(view, atok)[:4] == (0, 0, 1, 1)
    assert NM_CSB_ATOK.size == 64
    assert all(p.np_na is None for p in opened[:-1])  # refused registrations undone
    for p in opened:
        netmap_close(p)
    netmap_close(helper)
