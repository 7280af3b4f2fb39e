"""The control API and bad input: each refusal carries the kernel's errno and
touches only the file, port or ring it was about; everything else goes on."""

from __future__ import annotations

import errno

import pytest

from netmap.netmap import NetmapIoctlError, netmap_close, netmap_ctrl, netmap_ioctl, netmap_open
from netmap.netmap_h import (
    NETMAP_API,
    NETMAP_DO_RX_POLL,
    NETMAP_NO_TX_POLL,
    NETMAP_REQ_CSB_ENABLE,
    NETMAP_REQ_OPT_OFFSETS,
    NETMAP_REQ_POOLS_INFO_GET,
    NETMAP_REQ_PORT_INFO_GET,
    NETMAP_REQ_REGISTER,
    NETMAP_REQ_VALE_ATTACH,
    NIOCCTRL,
    NIOCGINFO,
    NIOCREGIF,
    NIOCRXSYNC,
    NIOCTXSYNC,
    NMREQ,
    NMREQ_HEADER,
    NMREQ_OPTION,
    NMREQ_OPTION_OFF,
    NMREQ_POOLS_INFO,
    NMREQ_PORT_INFO_GET,
    NR_DO_RX_POLL,
    NR_NO_TX_POLL,
    NR_REG_NULL,
    NR_REG_ONE_NIC,
    NR_REG_PIPE_MASTER,
    NR_REG_SW,
    NR_TX_RINGS_ONLY,
    POLLERR,
    POLLIN,
    POLLOUT,
)
from netmap.netmap_kern import Netmap
from netmap.netmap_sync import netmap_poll
from tests.netmap.conftest import (
    open_port,
    register,
    register_body,
    req_message,
    user_rings,
)


def ctrl_error(nm: Netmap, msg: bytes) -> NetmapIoctlError:
    priv = netmap_open(nm, 1)
    try:
        with pytest.raises(NetmapIoctlError) as ei:
            netmap_ioctl(priv, NIOCCTRL, msg)
        assert priv.np_na is None  # nothing bound by a refused request
    finally:
        netmap_close(priv)
    return ei.value


def test_wrong_version_answers_einval_and_netmap_api(nm: Netmap) -> None:
    e = ctrl_error(nm, req_message(NETMAP_REQ_REGISTER, "a{1", register_body(), version=11))
    assert e.errno == errno.EINVAL
    assert NMREQ_HEADER.unpack_from(e.data)[0] == NETMAP_API


@pytest.mark.parametrize("reqtype", [0, NETMAP_REQ_VALE_ATTACH, 16, 999])
def test_unknown_request_types(nm: Netmap, reqtype: int) -> None:
    e = ctrl_error(nm, req_message(reqtype, "a{1", register_body()))
    assert e.errno == errno.EINVAL
    assert nm.stats.requests_failed == 1


def test_unknown_option_is_eopnotsupp_and_registers_nothing(nm: Netmap) -> None:
    known_later = NMREQ_OPTION.pack(0, NETMAP_REQ_OPT_OFFSETS, 0, 0)  # not modeled
    unknown = NMREQ_OPTION.pack(0, 77, 0, 0)
    msg = req_message(NETMAP_REQ_REGISTER, "o{1", register_body(), [known_later, unknown])
    e = ctrl_error(nm, msg)
    assert e.errno == errno.EOPNOTSUPP
    first = NMREQ_HEADER.size + len(register_body())
    for off in (first, first + NMREQ_OPTION.size):
        assert NMREQ_OPTION.unpack_from(e.data, off)[2] == errno.EOPNOTSUPP
    assert nm.stats.options_unknown == 2 and nm.stats.registers == 0


def test_message_shape_errors(nm: Netmap) -> None:
    priv = netmap_open(nm, 1)
    with pytest.raises(OSError) as ei:
        netmap_ioctl(priv, NIOCCTRL, b"\0" * 10)
    assert ei.value.errno == errno.EINVAL
    with pytest.raises(OSError) as ei:
        netmap_ioctl(priv, NIOCCTRL, b"\0" * 5000)
    assert ei.value.errno == errno.EMSGSIZE
    hdr = NMREQ_HEADER.pack(NETMAP_API, NETMAP_REQ_REGISTER, 0, b"a{1", 0, 4000)
    with pytest.raises(OSError) as ei:
        netmap_ioctl(priv, NIOCCTRL, hdr)  # nr_body outside the message
    assert ei.value.errno == errno.EFAULT
    loop = NMREQ_HEADER.pack(NETMAP_API, NETMAP_REQ_REGISTER, 0, b"a{1", 88, 0)
    opt = bytearray(NMREQ_OPTION.pack(88, 3, 0, 0))  # points at itself
    with pytest.raises(OSError) as ei:
        netmap_ioctl(priv, NIOCCTRL, loop + bytes(opt))
    assert ei.value.errno == errno.EINVAL
    with pytest.raises(OSError) as ei:
        netmap_ioctl(priv, 0x1234, b"")
    assert ei.value.errno == errno.ENOTTY
    for cmd in (NIOCTXSYNC, NIOCRXSYNC):
        with pytest.raises(OSError) as ei:
            netmap_ioctl(priv, cmd, b"")
        assert ei.value.errno == errno.ENXIO
    assert netmap_poll(priv, POLLIN) == POLLERR
    assert NMREQ_OPTION_OFF["nro_status"] == 12
    netmap_close(priv)


@pytest.mark.parametrize(
    ("kw", "err"),
    [
        ({"mode": NR_REG_ONE_NIC, "ringid": 1}, errno.EINVAL),  # a pipe end has ring 0 only
        ({"mode": NR_REG_SW}, errno.EINVAL),  # no host rings
        ({"mode": NR_REG_NULL}, errno.EINVAL),  # null port without a region
        ({"mode": NR_REG_NULL, "mem_id": 99}, errno.EINVAL),  # ... or with no such region
        ({"mem_id": 42}, errno.EINVAL),  # a pipe in a region that does not exist
    ],
)
def test_register_refusals(nm: Netmap, kw: dict[str, int], err: int) -> None:
    other, otx, _ = open_port(nm, "z{9", slots=8)  # an unrelated port, unaffected
    with pytest.raises(OSError) as ei:
        open_port(nm, "r{1", **kw)
    assert ei.value.errno == err
    assert nm.statistics().ports_in_use == 2  # z{9 and z}9 only
    otx.send([b"still fine"])
    netmap_ioctl(other, NIOCTXSYNC, b"")
    assert otx.head == 1 and nm.stats.ring_reinits == 0
    netmap_close(other)


def test_second_register_on_a_file_is_ebusy(nm: Netmap) -> None:
    priv, _, _ = open_port(nm, "d{1")
    with pytest.raises(OSError) as ei:
        register(priv, "d{2")
    assert ei.value.errno == errno.EBUSY
    netmap_close(priv)


def test_interface_itself_is_not_taken_over(nm: Netmap) -> None:
    from mbuf.kern import Kernel
    from netmap.netmap_monitor import netmap_attach_ifnet

    netmap_attach_ifnet(nm, Kernel().ifnet)
    with pytest.raises(OSError) as ei:
        open_port(nm, "nm0")
    assert ei.value.errno == errno.EOPNOTSUPP


@pytest.mark.parametrize("what", ["head_beyond_tail", "cur_before_head", "head_out_of_range"])
def test_bad_ring_indexes_reinit_that_ring_only(nm: Netmap, what: str) -> None:
    a, atx, _ = open_port(nm, "b{1", slots=16)
    b, _, brx = open_port(nm, "b}1", pid=2)
    c, ctx, _ = open_port(nm, "b{2", slots=16, pid=3)
    atx.send([b"one", b"two"])
    netmap_ioctl(a, NIOCTXSYNC, b"")
    netmap_ioctl(b, NIOCRXSYNC, b"")
    assert brx.tail == 2
    if what == "head_beyond_tail":
        brx.head = brx.cur = 5
    elif what == "cur_before_head":
        brx.head, brx.cur = 2, 1
    else:
        brx.head = brx.cur = 16
    assert netmap_poll(b, POLLIN) & POLLERR
    assert nm.stats.ring_reinits == 1
    assert b.np_na is not None and b.np_na.rx_rings[0].kr_reinits == 1
    assert (brx.head, brx.cur, brx.tail) == (0, 0, 2)  # back to the kernel's view
    assert brx.recv(5) == [b"one", b"two"]  # the ring is usable again
    netmap_ioctl(b, NIOCRXSYNC, b"")
    netmap_ioctl(a, NIOCTXSYNC, b"")
    assert atx.space() == 15
    ctx.send([b"other"])
    netmap_ioctl(c, NIOCTXSYNC, b"")  # another pipe of the same parent: untouched
    assert ctx.head == 1 and nm.stats.ring_reinits == 1
    for p in (a, b, c):
        netmap_close(p)


def test_user_written_tail_is_restored(nm: Netmap) -> None:
    a, atx, _ = open_port(nm, "t{1", slots=8)
    atx.tail = 3
    netmap_ioctl(a, NIOCTXSYNC, b"")
    assert atx.tail == 7 and nm.stats.tail_restored == 1 and nm.stats.ring_reinits == 0
    assert netmap_poll(a, POLLOUT) == POLLOUT
    netmap_close(a)


def test_null_port_in_an_existing_region(nm: Netmap) -> None:
    a, _, _ = open_port(nm, "n{1", slots=8)
    assert a.np_na is not None
    mem_id = a.np_na.mem.nm_id
    before = nm.statistics().bufs_in_use
    n = netmap_open(nm, 2)
    r = register(n, "anything", mode=NR_REG_NULL, mem_id=mem_id, rings=2, slots=4, extra=5)
    assert (r["nr_mem_id"], r["nr_tx_rings"], r["nr_rx_rings"], r["nr_extra_bufs"]) == (
        mem_id, 2, 2, 5,
    )  # fmt: skip
    assert nm.statistics().bufs_in_use == before + 4 * 4 + 5
    assert n.np_na is not None
    tx, rx = user_rings(n.np_na.mem.view, r["nr_offset"])
    tx[1].head = tx[1].cur = 3
    netmap_ioctl(n, NIOCTXSYNC, b"")  # does nothing but accept the pointers
    netmap_ioctl(n, NIOCRXSYNC, b"")
    assert tx[1].tail == 3 and rx[0].tail == 0 and nm.stats.ring_reinits == 0
    netmap_close(n)
    assert nm.statistics().bufs_in_use == before
    zero = netmap_open(nm, 3)
    r = register(zero, "empty", mode=NR_REG_NULL, mem_id=mem_id, extra=2)
    assert (r["nr_tx_rings"], r["nr_rx_rings"], r["nr_extra_bufs"]) == (0, 0, 2)
    netmap_close(zero)
    netmap_close(a)


def test_extra_buffers_list(nm: Netmap) -> None:
    priv, _, _ = open_port(nm, "e{1", extra=4)
    na = priv.np_na
    assert na is not None
    idx = priv.np_extra_head
    seen = []
    while idx:
        seen.append(idx)
        idx = int.from_bytes(na.mem.buf(idx)[:4], "little")
    assert len(seen) == 4 and all(i >= 2 for i in seen) and len(set(seen)) == 4
    assert nm.stats.extra_bufs_granted == 4
    netmap_close(priv)


def test_port_and_pools_info(nm: Netmap) -> None:
    priv, _, _ = open_port(nm, "i{1", slots=32)
    assert priv.np_na is not None
    mem = priv.np_na.mem
    q = netmap_open(nm, 2)  # info needs no binding
    body = NMREQ_PORT_INFO_GET.pack(0, 0, 0, 0, 0, 0, 0, 0, b"")
    reply, _ = netmap_ctrl(q, req_message(NETMAP_REQ_PORT_INFO_GET, "i}1", body))
    f = NMREQ_PORT_INFO_GET.unpack_from(reply, NMREQ_HEADER.size)
    assert f[:5] == (mem.nm_memsize, 32, 32, 1, 1) and f[7] == mem.nm_id
    body = NMREQ_POOLS_INFO.pack(0, 0, b"", 0, 0, 0, 0, 0, 0, 0, 0, 0)
    reply, _ = netmap_ctrl(q, req_message(NETMAP_REQ_POOLS_INFO_GET, "i{1", body))
    p = NMREQ_POOLS_INFO.unpack_from(reply, NMREQ_HEADER.size)
    sc = nm.sysctl
    assert (
        p[0]
        == mem.nm_memsize
        == sc.if_num * sc.if_size + sc.ring_num * sc.ring_size + (sc.buf_num * sc.buf_size)
    )
    assert p[3:6] == (0, sc.if_num, sc.if_size)
    assert p[6:9] == (sc.if_num * sc.if_size, sc.ring_num, sc.ring_size)
    assert p[10:12] == (sc.buf_num, 2048)
    with pytest.raises(NetmapIoctlError) as ei:
        netmap_ctrl(q, req_message(NETMAP_REQ_PORT_INFO_GET, "nosuch", body[:32]))
    assert ei.value.errno == errno.ENXIO
    netmap_close(q)
    netmap_close(priv)


def test_csb_enable_needs_the_option(nm: Netmap) -> None:
    priv, _, _ = open_port(nm, "c{1")
    with pytest.raises(NetmapIoctlError) as ei:
        netmap_ctrl(priv, req_message(NETMAP_REQ_CSB_ENABLE, "c{1", b""))
    assert ei.value.errno == errno.EINVAL
    netmap_close(priv)


def test_legacy_niocregif_registers_a_pipe(nm: Netmap) -> None:
    """NR_REG_PIPE_MASTER in nr_flags with the pipe id in nr_ringid becomes `x{3`;
    nr_arg3 asks for extra buffers and gets the granted count back."""
    priv = netmap_open(nm, 1)
    arg = NMREQ.pack(b"leg", 14, 0, 0, 16, 16, 0, 0, 3, 0, 0, 0, 2, NR_REG_PIPE_MASTER, 0)
    out = NMREQ.unpack(netmap_ioctl(priv, NIOCREGIF, arg))
    assert priv.np_na is not None and priv.np_na.name == "leg{3"
    mem = priv.np_na.mem
    assert out[2] == priv.np_nifp and out[3] == mem.nm_memsize
    assert out[4:8] == (16, 16, 1, 1) and out[11] == mem.nm_id and out[12] == 2
    g = netmap_open(nm, 2)
    ginfo = NMREQ.pack(b"leg{3", 14, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0)
    info = NMREQ.unpack(netmap_ioctl(g, NIOCGINFO, ginfo))
    assert info[3] == mem.nm_memsize and info[4] == 16
    netmap_close(g)
    old = NMREQ.pack(b"leg", 11, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0)
    with pytest.raises(OSError) as ei:
        netmap_ioctl(priv, NIOCREGIF, old)
    assert ei.value.errno == errno.EINVAL
    netmap_close(priv)


def test_regions_come_from_the_device_and_go_back() -> None:
    """The device's region maker is asked for nm_memsize bytes; the view goes
    back to it when the last port of the region closes, not before."""
    made: list[memoryview] = []
    freed: list[memoryview] = []

    def alloc(size: int) -> memoryview:
        made.append(memoryview(bytearray(size)))
        return made[-1]

    nm = Netmap(region_alloc=alloc, region_free=freed.append)
    nm.sysctl.buf_num = 256
    a, _, _ = open_port(nm, "r{1", slots=8)
    b, _, _ = open_port(nm, "r}1", pid=2)
    c, _, _ = open_port(nm, "r{2", slots=8, pid=3)  # same parent: same region
    assert len(made) == 1 and a.np_na is not None and len(made[0]) == a.np_na.mem.nm_memsize
    netmap_close(a)
    netmap_close(b)
    assert freed == []  # pipe 2 still lives in it
    netmap_close(c)
    assert freed == made and nm.stats.leaks() == {}


def test_tx_rings_only_binding_syncs_tx_only(nm: Netmap) -> None:
    a, atx, _ = open_port(nm, "u{1", slots=8, flags=NR_TX_RINGS_ONLY)
    assert (a.np_qfirst, a.np_qlast) == ([0, 0], [1, 0])
    b, _, brx = open_port(nm, "u}1", pid=2)
    atx.send([b"a"])
    netmap_ioctl(a, NIOCTXSYNC, b"")
    netmap_ioctl(a, NIOCRXSYNC, b"")  # no RX ring bound: nothing synced
    assert a.np_na is not None and a.np_na.rx_rings[0].kr_syncs == 0
    assert a.np_na.tx_rings[0].kr_syncs == 1
    netmap_ioctl(b, NIOCRXSYNC, b"")
    assert brx.recv(2) == [b"a"]
    netmap_close(a)
    netmap_close(b)


def test_legacy_poll_flags_and_default_mode(nm: Netmap) -> None:
    """nr_flags' mode bits 0 (NR_REG_DEFAULT): the mode comes from nr_ringid;
    NETMAP_NO_TX_POLL / NETMAP_DO_RX_POLL become NR_NO_TX_POLL / NR_DO_RX_POLL."""
    a, _, _ = open_port(nm, "lp{1", slots=8)
    priv = netmap_open(nm, 2)
    ringid = NETMAP_NO_TX_POLL | NETMAP_DO_RX_POLL
    arg = NMREQ.pack(b"lp}1", 14, 0, 0, 0, 0, 0, 0, ringid, 0, 0, 0, 0, 0, 0)
    netmap_ioctl(priv, NIOCREGIF, arg)
    assert priv.np_flags == NR_NO_TX_POLL | NR_DO_RX_POLL
    assert (priv.np_qfirst, priv.np_qlast) == ([0, 0], [1, 1])  # NR_REG_ALL_NIC
    netmap_close(priv)
    netmap_close(a)
