"""/dev/netmap's kernel side: open, close, registration and the NIOCCTRL API.

Theory of operation. One open file is a `NetmapPrivD` (`netmap_open`). A file
binds to a port with NETMAP_REQ_REGISTER (`netmap_register`, netmap_do_regif):
the port is found or created by its name and mode (a pipe end `x{id` / `x}id`,
a null port with NR_REG_NULL, a copy monitor of an interface with
NR_MONITOR_TX / NR_MONITOR_RX), the ring range of the binding is chosen from
nr_mode / nr_ringid (netmap_interp_ringid), a `netmap_if` is written into the
region with the offsets of the port's rings, and extra buffers are linked from
`ni_bufs_head`. Closing the file (`netmap_close`) stops its kernel loop, frees
the extra buffers the list from ni_bufs_head names then, the netmap_if, and the
port when it was its last file; the region goes with its last user.

`netmap_ioctl(priv, cmd, arg)` is the device's entry: the ioctl number and the
argument bytes in, the bytes the kernel writes back out. NIOCCTRL's argument
is a whole request message: `struct nmreq_header` at offset 0, and wherever
`nr_body` and `nr_options` / `nro_next` point, as offsets into the message (0
is NULL), at most NETMAP_REQ_MAXSIZE bytes. As nmreq_copyout does, the message
is written back even when the request fails: the errno travels in
`NetmapIoctlError`, with the bytes in `.data` (a wrong nr_version answers
EINVAL with NETMAP_API written back). Options: each known option's
`nro_status` says what became of it; one the request does not use keeps
EOPNOTSUPP and fails the request with EOPNOTSUPP, before anything is done
(nmreq_checkoptions).

Models: netmap_ioctl's NIOCCTRL switch, netmap_do_regif / netmap_do_unregif,
netmap_interp_ringid, netmap_mem_if_new, netmap_extra_alloc, nmreq_copyin /
nmreq_copyout / nmreq_checkoptions, netmap_dtor in sys/dev/netmap/netmap.c.

Deliberate differences: no port takes over an interface (`netmap:nm0` itself
answers EOPNOTSUPP: nm0 stays the server's; only its monitors exist); VALE
requests (3-11) and unknown types answer EINVAL as netmap built without VALE
does; EXTMEM, OFFSETS and the kloop's EVENTFDS / MODE options are not
modeled (EOPNOTSUPP). A request pointer outside the message is EFAULT.
"""

from __future__ import annotations

import errno

from mypy_extensions import mypyc_attr

from netmap.netmap_h import (
    IFNAMSIZ,
    NETMAP_API,
    NETMAP_IF,
    NETMAP_IF_OFF,
    NETMAP_MAX_API,
    NETMAP_MIN_API,
    NETMAP_REQ_CSB_ENABLE,
    NETMAP_REQ_MAXSIZE,
    NETMAP_REQ_OPT_CSB,
    NETMAP_REQ_OPT_MAX,
    NETMAP_REQ_POOLS_INFO_GET,
    NETMAP_REQ_PORT_INFO_GET,
    NETMAP_REQ_REGISTER,
    NETMAP_REQ_SYNC_KLOOP_START,
    NETMAP_REQ_SYNC_KLOOP_STOP,
    NI_PRIV_MEM,
    NIOCCTRL,
    NIOCGINFO,
    NIOCREGIF,
    NIOCRXSYNC,
    NIOCTXSYNC,
    NMREQ_HEADER,
    NMREQ_HEADER_OFF,
    NMREQ_OPT_CSB,
    NMREQ_OPTION,
    NMREQ_OPTION_OFF,
    NMREQ_POOLS_INFO,
    NMREQ_PORT_INFO_GET,
    NMREQ_REGISTER,
    NMREQ_REGISTER_OFF,
    NMREQ_SYNC_KLOOP_START,
    NR_MONITOR_RX,
    NR_MONITOR_TX,
    NR_REG_ALL_NIC,
    NR_REG_DEFAULT,
    NR_REG_NULL,
    NR_REG_ONE_NIC,
    NR_REG_PIPE_MASTER,
    NR_REG_PIPE_SLAVE,
    NR_RX,
    NR_RX_RINGS_ONLY,
    NR_TX,
    NR_TX_RINGS_ONLY,
    NR_ZCOPY_MON,
    RING_OFS,
)
from netmap.netmap_kern import (
    Netmap,
    NetmapAdapter,
    NetmapPrivD,
    netmap_mem_find,
)
from netmap.netmap_kloop import (
    SyncKloop,
    netmap_csb_validate,
    netmap_sync_kloop_start,
    netmap_sync_kloop_stop,
)
from netmap.netmap_legacy import nmreq_from_legacy, nmreq_to_legacy
from netmap.netmap_mem2 import NetmapMem
from netmap.netmap_monitor import NM_GLOBAL_MEM_ID, NM_MONITOR_SLOTS, netmap_get_monitor_na
from netmap.netmap_null import netmap_get_null_na
from netmap.netmap_pipe import netmap_get_pipe_na, nm_pipe_split
from netmap.netmap_sync import netmap_sync


@mypyc_attr(native_class=False)  # mypyc compiles no native subclass of OSError
class NetmapIoctlError(OSError):
    """An ioctl that failed after the kernel wrote its answer back: `data`."""

    def __init__(self, err: int, msg: str, data: bytes) -> None:
        super().__init__(err, msg)
        self.data = data


def netmap_open(nm: Netmap, pid: int) -> NetmapPrivD:
    """open("/dev/netmap"): an unbound file of process pid."""
    return NetmapPrivD(nm, pid)


# -- registration --------------------------------------------------------------


# struct nmreq_register as a dict of its fields (in and out).
RegisterReq = dict[str, int]
REGISTER_FIELDS: tuple[str, ...] = tuple(NMREQ_REGISTER_OFF)


def register_unpack(data: bytes | memoryview) -> RegisterReq:
    return dict(zip(REGISTER_FIELDS, NMREQ_REGISTER.unpack_from(data), strict=True))


def register_pack(req: RegisterReq) -> bytes:
    return NMREQ_REGISTER.pack(*[req[f] for f in REGISTER_FIELDS])


def netmap_get_na(nm: Netmap, name: str, req: RegisterReq) -> NetmapAdapter:
    """The port a registration names, created if it must be (netmap_get_na)."""
    mode = req["nr_mode"]
    if mode == NR_REG_NULL:
        return netmap_get_null_na(
            nm, name, req["nr_mem_id"], req["nr_tx_rings"], req["nr_rx_rings"],
            req["nr_tx_slots"], req["nr_rx_slots"],
        )  # fmt: skip
    if req["nr_flags"] & NR_ZCOPY_MON:
        raise OSError(errno.EOPNOTSUPP, "zero-copy monitors are not modeled")
    if req["nr_flags"] & (NR_MONITOR_TX | NR_MONITOR_RX):
        if mode not in (NR_REG_DEFAULT, NR_REG_ALL_NIC, NR_REG_ONE_NIC) or req["nr_ringid"]:
            raise OSError(errno.EINVAL, f"{name}: a monitor watches ring 0 of an interface")
        return netmap_get_monitor_na(nm, name, int(req["nr_flags"]))
    if nm_pipe_split(name) is not None:
        if mode not in (NR_REG_DEFAULT, NR_REG_ALL_NIC, NR_REG_ONE_NIC):
            raise OSError(errno.EINVAL, f"{name}: pipes take NR_REG_ALL_NIC or NR_REG_ONE_NIC")
        mem: NetmapMem | None = netmap_mem_find(nm, req["nr_mem_id"]) if req["nr_mem_id"] else None
        return netmap_get_pipe_na(nm, name, mem, int(req["nr_tx_slots"]))
    if name in nm.ifnets:
        raise OSError(errno.EOPNOTSUPP, f"{name}: the interface stays the stack's (monitor it)")
    raise OSError(errno.ENXIO, f"{name}: no such port")


def netmap_interp_ringid(priv: NetmapPrivD, na: NetmapAdapter, req: RegisterReq) -> None:
    """The rings of the binding from nr_mode / nr_ringid / nr_flags (EINVAL:
    host rings asked for, or a ring number out of range)."""
    mode = req["nr_mode"]
    if mode in (NR_REG_DEFAULT, NR_REG_ALL_NIC, NR_REG_NULL):
        first = [0, 0]
        last = [len(na.tx_rings), len(na.rx_rings)]
    elif mode == NR_REG_ONE_NIC:
        i = int(req["nr_ringid"])
        if i >= max(len(na.tx_rings), len(na.rx_rings)):
            raise OSError(errno.EINVAL, f"{na.name}: ring {i} out of range")
        first = [min(i, len(na.tx_rings)), min(i, len(na.rx_rings))]
        last = [min(i + 1, len(na.tx_rings)), min(i + 1, len(na.rx_rings))]
    else:  # NR_REG_SW, NIC_SW, ONE_SW: no host rings here; PIPE_* translated before
        raise OSError(errno.EINVAL, f"{na.name}: mode {mode} (no host rings)")
    if req["nr_flags"] & NR_TX_RINGS_ONLY:
        last[NR_RX] = first[NR_RX]
    if req["nr_flags"] & NR_RX_RINGS_ONLY:
        last[NR_TX] = first[NR_TX]
    priv.np_qfirst = first
    priv.np_qlast = last


def netmap_mem_if_new(na: NetmapAdapter) -> int:
    """Write a netmap_if for the port into its region: its offset."""
    mem = na.mem
    ntx = len(na.tx_rings)
    nrx = len(na.rx_rings)
    if NETMAP_IF.size + (ntx + nrx) * RING_OFS.size > mem.if_pool.objsize:
        raise OSError(errno.ENOMEM, f"{na.name}: too many rings for if_size")
    nifp = mem.if_malloc()
    if nifp < 0:
        raise OSError(errno.ENOMEM, f"no netmap_if left in region {mem.nm_id}")
    NETMAP_IF.pack_into(
        mem.view, nifp, na.name.encode()[: IFNAMSIZ - 1], NETMAP_API,
        NI_PRIV_MEM if mem.nm_id != 1 else 0, ntx, nrx, 0, 0, 0, b"",
    )  # fmt: skip
    o = nifp + NETMAP_IF.size
    for kring in na.tx_rings + na.rx_rings:
        RING_OFS.pack_into(mem.view, o, kring.ring_ofs - nifp)
        o += RING_OFS.size
    return nifp


def _bufs_head_ofs(priv: NetmapPrivD) -> int:
    return priv.np_nifp + NETMAP_IF_OFF["ni_bufs_head"]


def netmap_register(priv: NetmapPrivD, name: str, req: RegisterReq) -> None:
    """NETMAP_REQ_REGISTER: bind the file to the port; fills req's out fields.
    EBUSY when the file is bound already or the port is bound by another."""
    nm = priv.nm
    if priv.np_na is not None:
        raise OSError(errno.EBUSY, "file already bound")
    if req["nr_mode"] in (NR_REG_PIPE_MASTER, NR_REG_PIPE_SLAVE):  # deprecated spelling
        name += ("{" if req["nr_mode"] == NR_REG_PIPE_MASTER else "}") + str(req["nr_ringid"])
        req["nr_mode"] = NR_REG_ALL_NIC
        req["nr_ringid"] = 0
    na = netmap_get_na(nm, name, req)
    if na.na_users and req["nr_mode"] != NR_REG_NULL:
        raise OSError(errno.EBUSY, f"{na.name}: bound by another file")
    try:
        netmap_interp_ringid(priv, na, req)
        nifp = netmap_mem_if_new(na)
    except OSError:
        if not na.na_users:
            na.nm_unbind()
        raise
    na.na_users += 1
    priv.np_na = na
    priv.np_nifp = nifp
    priv.np_flags = int(req["nr_flags"])
    mem = na.mem
    head, got = mem.extra_alloc(int(req["nr_extra_bufs"]))
    mem.view[_bufs_head_ofs(priv) : _bufs_head_ofs(priv) + 4] = head.to_bytes(4, "little")
    priv.np_extra_head = head
    nm.stats.extra_bufs_granted += got
    nm.stats.registers += 1
    req["nr_offset"] = nifp
    req["nr_memsize"] = mem.nm_memsize
    req["nr_tx_rings"] = len(na.tx_rings)
    req["nr_rx_rings"] = len(na.rx_rings)
    req["nr_tx_slots"] = na.tx_rings[0].nkr_num_slots if na.tx_rings else 0
    req["nr_rx_slots"] = na.rx_rings[0].nkr_num_slots if na.rx_rings else 0
    req["nr_host_tx_rings"] = 0
    req["nr_host_rx_rings"] = 0
    req["nr_mem_id"] = mem.nm_id
    req["nr_extra_bufs"] = got


def netmap_close(priv: NetmapPrivD) -> None:
    """The last close of the file (netmap_dtor): stop its loop, free its extra
    buffers (the list ni_bufs_head names now), its netmap_if, and the port with
    its last file."""
    nm = priv.nm
    na = priv.np_na
    if na is not None:
        if priv.np_kloop is not None:
            netmap_sync_kloop_stop(priv)
        mem = na.mem
        head = int.from_bytes(mem.view[_bufs_head_ofs(priv) : _bufs_head_ofs(priv) + 4], "little")
        _, bad = mem.extra_free(head)
        nm.stats.bad_buf_frees += bad
        mem.if_free(priv.np_nifp)
        priv.np_na = None
        priv.np_nifp = -1
        na.na_users -= 1
        if not na.na_users:
            na.nm_unbind()
    nm.stats.privs_in_use -= 1


# -- NIOCCTRL ------------------------------------------------------------------


def _field(data: bytearray, off: int, size: int) -> memoryview:
    """The `size` bytes a request pointer names (EFAULT outside the message)."""
    if off <= 0 or off + size > len(data):
        raise OSError(errno.EFAULT, f"request pointer {off} outside the message")
    return memoryview(data)[off : off + size]


def _options(data: bytearray, first: int) -> list[int]:
    """The options' offsets, in list order (EINVAL for a loop)."""
    out: list[int] = []
    off = first
    while off:
        if off in out:
            raise OSError(errno.EINVAL, "option list loops")
        opt = _field(data, off, NMREQ_OPTION.size)
        out.append(off)
        off = int(NMREQ_OPTION.unpack_from(opt)[0])
    return out


def _set_status(data: bytearray, opt: int, status: int) -> None:
    o = opt + NMREQ_OPTION_OFF["nro_status"]
    data[o : o + 4] = status.to_bytes(4, "little")


# The options each request understands.
REQ_OPTIONS: dict[int, tuple[int, ...]] = {
    NETMAP_REQ_REGISTER: (NETMAP_REQ_OPT_CSB,),
    NETMAP_REQ_CSB_ENABLE: (NETMAP_REQ_OPT_CSB,),
}


def _ctrl(priv: NetmapPrivD, data: bytearray) -> SyncKloop | None:
    """One NIOCCTRL request over the message `data`, written in place."""
    nm = priv.nm
    version, reqtype, reserved, rawname, options, body = NMREQ_HEADER.unpack_from(data)
    if not NETMAP_MIN_API <= version <= NETMAP_MAX_API:
        o = NMREQ_HEADER_OFF["nr_version"]
        data[o : o + 2] = NETMAP_API.to_bytes(2, "little")
        raise OSError(errno.EINVAL, f"API {version} not supported (kernel API {NETMAP_API})")
    if reserved:
        raise OSError(errno.EINVAL, "nr_reserved must be zero")
    name = bytes(rawname).split(b"\0", 1)[0].decode("ascii", "replace")
    opts = _options(data, int(options))
    by_type: dict[int, int] = {}
    understood = REQ_OPTIONS.get(int(reqtype), ())
    for opt in opts:
        otype = int(NMREQ_OPTION.unpack_from(data, opt)[1])
        _set_status(data, opt, errno.EOPNOTSUPP)
        if otype in by_type or otype >= NETMAP_REQ_OPT_MAX:
            continue
        if otype in understood:
            by_type[otype] = opt
            _set_status(data, opt, 0)
    if len(by_type) != len(opts):
        nm.stats.options_unknown += len(opts) - len(by_type)
        raise OSError(errno.EOPNOTSUPP, "an option was not understood")
    kloop: SyncKloop | None = None
    if reqtype == NETMAP_REQ_REGISTER:
        bv = _field(data, int(body), NMREQ_REGISTER.size)
        req = register_unpack(bv)
        netmap_register(priv, name, req)
        csb = by_type.get(NETMAP_REQ_OPT_CSB, 0)
        if csb:
            try:
                _csb_option(priv, data, csb)
            except OSError:
                netmap_close_binding(priv)
                raise
        bv[:] = register_pack(req)
    elif reqtype == NETMAP_REQ_PORT_INFO_GET:
        bv = _field(data, int(body), NMREQ_PORT_INFO_GET.size)
        mem_id = int(NMREQ_PORT_INFO_GET.unpack_from(bv)[7])
        bv[:] = netmap_port_info(nm, name, mem_id)
    elif reqtype == NETMAP_REQ_POOLS_INFO_GET:
        bv = _field(data, int(body), NMREQ_POOLS_INFO.size)
        mem_id = int(NMREQ_POOLS_INFO.unpack_from(bv)[1])
        bv[:] = netmap_pools_info(nm, name, mem_id)
    elif reqtype == NETMAP_REQ_CSB_ENABLE:
        if priv.np_na is None:
            raise OSError(errno.ENXIO, "CSB_ENABLE: file not bound")
        csb = by_type.get(NETMAP_REQ_OPT_CSB, 0)
        if not csb:
            raise OSError(errno.EINVAL, "CSB_ENABLE without NETMAP_REQ_OPT_CSB")
        _csb_option(priv, data, csb)
    elif reqtype == NETMAP_REQ_SYNC_KLOOP_START:
        bv = _field(data, int(body), NMREQ_SYNC_KLOOP_START.size)
        kloop = netmap_sync_kloop_start(priv, int(NMREQ_SYNC_KLOOP_START.unpack_from(bv)[0]))
    elif reqtype == NETMAP_REQ_SYNC_KLOOP_STOP:
        netmap_sync_kloop_stop(priv)
    else:
        raise OSError(errno.EINVAL, f"request type {reqtype} not supported")
    return kloop


def _csb_option(priv: NetmapPrivD, data: bytearray, opt: int) -> None:
    ov = _field(data, opt, NMREQ_OPT_CSB.size)
    atok, ktoa = NMREQ_OPT_CSB.unpack_from(ov)[4:6]
    try:
        netmap_csb_validate(priv, int(atok), int(ktoa))
    except OSError as e:
        _set_status(data, opt, e.errno or errno.EINVAL)
        raise


def netmap_close_binding(priv: NetmapPrivD) -> None:
    """Undo a registration (a later step of the request failed): the file
    stays open and unbound."""
    nm = priv.nm
    netmap_close(priv)
    nm.stats.privs_in_use += 1  # the file itself is still open


def netmap_port_info(nm: Netmap, name: str, mem_id: int) -> bytes:
    """NETMAP_REQ_PORT_INFO_GET: a port's rings and slots, or with an empty name
    the memory of allocator mem_id (1 by default). ENXIO: no such port."""
    na = nm.ports.get(name)
    if na is None and name:
        tap = nm.ifnets.get(name)
        if tap is None:
            raise OSError(errno.ENXIO, f"{name}: no such port")
        # An interface: one ring pair of the monitors' size, allocator 1.
        size = tap.mem.nm_memsize if tap.mem is not None else 0
        n = NM_MONITOR_SLOTS
        return NMREQ_PORT_INFO_GET.pack(size, n, n, 1, 1, 0, 0, NM_GLOBAL_MEM_ID, b"")
    if na is None:
        mem = netmap_mem_find(nm, mem_id or 1)
        return NMREQ_PORT_INFO_GET.pack(mem.nm_memsize, 0, 0, 0, 0, 0, 0, mem.nm_id, b"")
    return NMREQ_PORT_INFO_GET.pack(
        na.mem.nm_memsize,
        na.tx_rings[0].nkr_num_slots if na.tx_rings else 0,
        na.rx_rings[0].nkr_num_slots if na.rx_rings else 0,
        len(na.tx_rings), len(na.rx_rings), 0, 0, na.mem.nm_id, b"",
    )  # fmt: skip


def netmap_pools_info(nm: Netmap, name: str, mem_id: int) -> bytes:
    """NETMAP_REQ_POOLS_INFO_GET: the three pools of a port's allocator, or of
    allocator mem_id for an empty name."""
    if name:
        na = nm.ports.get(name)
        if na is None:
            raise OSError(errno.ENXIO, f"{name}: no such port")
        mem = na.mem
    else:
        mem = netmap_mem_find(nm, mem_id or 1)
    p = (mem.if_pool, mem.ring_pool, mem.buf_pool)
    return NMREQ_POOLS_INFO.pack(
        mem.nm_memsize, mem.nm_id, b"",
        p[0].offset, p[0].objtotal, p[0].objsize,
        p[1].offset, p[1].objtotal, p[1].objsize,
        p[2].offset, p[2].objtotal, p[2].objsize,
    )  # fmt: skip


def netmap_ctrl(priv: NetmapPrivD, msg: bytes) -> tuple[bytes, SyncKloop | None]:
    """NIOCCTRL: the request message in, the message as written back out, and
    the loop a SYNC_KLOOP_START started (the device runs it). Errors:
    NetmapIoctlError with the written-back message."""
    if len(msg) < NMREQ_HEADER.size:
        raise OSError(errno.EINVAL, "NIOCCTRL: short nmreq_header")
    if len(msg) > NETMAP_REQ_MAXSIZE:
        raise OSError(errno.EMSGSIZE, "NIOCCTRL: request over NETMAP_REQ_MAXSIZE")
    data = bytearray(msg)
    try:
        kloop = _ctrl(priv, data)
    except OSError as e:
        priv.nm.stats.requests_failed += 1
        raise NetmapIoctlError(e.errno or errno.EINVAL, e.strerror or str(e), bytes(data)) from e
    return bytes(data), kloop


def netmap_ioctl(priv: NetmapPrivD, cmd: int, arg: bytes) -> bytes:
    """The device's ioctl: NIOCCTRL (see netmap_ctrl; a started kernel loop is
    left in priv.np_kloop), NIOCTXSYNC / NIOCRXSYNC (b""), the legacy
    NIOCREGIF / NIOCGINFO. Anything else: ENOTTY."""
    if cmd == NIOCCTRL:
        return netmap_ctrl(priv, arg)[0]
    if cmd == NIOCTXSYNC:
        netmap_sync(priv, NR_TX)
        return b""
    if cmd == NIOCRXSYNC:
        netmap_sync(priv, NR_RX)
        return b""
    if cmd in (NIOCREGIF, NIOCGINFO):
        msg = nmreq_from_legacy(cmd, arg)
        return nmreq_to_legacy(arg, netmap_ctrl(priv, msg)[0])
    raise OSError(errno.ENOTTY, f"netmap: ioctl {cmd:#x} unknown")


def netmap_port_mem(priv: NetmapPrivD) -> NetmapMem | None:
    """The region the file's port lives in (the device maps it for the process)."""
    return priv.np_na.mem if priv.np_na is not None else None
