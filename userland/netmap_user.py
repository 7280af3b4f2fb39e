"""libnetmap for the modeled kernel: `nmport_open(name)`, rings, syncs, poll and the kernel loop.

Theory of operation. `nmport_parse(name)` reads libnetmap's port-name grammar
(reference B.17): `netmap:IF` then at most one of `{id` / `}id` (pipe master /
slave end, part of the port's name), `-NN` (one NIC ring pair), `^` / `^NN`
(host rings), `*` (NIC and host rings); then `/` and flag letters (`x`
exclusive, `z` zero-copy monitor, `t` / `r` copy monitor of TX / RX, `R` RX
rings only, `T` TX rings only); then options, each after `@`: `@NN` (memory
region NN) or `@conf:rings=,tx-rings=,rx-rings=,host-rings=,slots=,tx-slots=,
rx-slots=`. A bad name is EINVAL with a one-line reason, before any device is
opened, as nmport_parse reports through nmctx_ferror.

`nmport_open(name)` (nmport_prepare + nmport_open_desc): opens a worker's
/dev/netmap (userland/devdir.py), sends NIOCCTRL(NETMAP_REQ_REGISTER), maps
the region the kernel passes back with the reply (the memfd is netmap's mmap
of the fd) read-write, and finds the netmap_if at nr_offset and its rings.
`NmRing` reads and writes one ring through the mapping: head, cur, tail,
the slot array as a NumPy structured view, and the buffer area as a 2-D
array (buffer index x byte), so a program fills or checks a batch of
packets with array operations. `txsync()` / `rxsync()` are NIOCTXSYNC /
NIOCRXSYNC; `poll(events, timeout)` is poll(2).

Kernel-loop mode (`kloop=True`, libnetmap's sync-kloop users): the port is
opened exclusive (`/x`) with one extra buffer, whose bytes after the first 64
(the first four link the extra-buffer list) hold the CSB (`nm_csb_atok` then
`nm_csb_ktoa`, one 64-byte entry per bound ring, TX first); NETMAP_REQ_CSB_ENABLE
hands it to the kernel and `kloop_start()` starts a thread that issues
NIOCCTRL(SYNC_KLOOP_START) and stays blocked in it until `kloop_stop()`
(SYNC_KLOOP_STOP from this thread) or the close. Then `txsync()` / `rxsync()`
make no system call: they publish head and cur in atok (cur first, then head:
nm_sync_kloop_appl_write) and read hwtail then hwcur from ktoa
(nm_sync_kloop_appl_read); every field is one aligned 4-byte access of the
shared mapping (an item of its `memoryview.cast("I")`), which keeps that
order (netmap/netmap_kloop.py).

Models: libnetmap (nmreq.c: nmport_parse, nmreq_header_decode's suffixes and
options; nmport.c: nmport_open, nmport_close, nmport_register, nmport_mmap),
net/netmap_user.h (NETMAP_IF / NETMAP_TXRING / NETMAP_RXRING / NETMAP_BUF,
nm_ring_space, nm_ring_next, nm_sync_kloop_appl_write / _read). Differences:
pointers in requests are message offsets and the CSB is region offsets
(netmap/netmap_h.py); the region arrives with the REGISTER reply instead of
an mmap of the fd; `@share=`, `@extmem:` and `@offset:` are refused (EINVAL);
VALE names parse but the kernel has no VALE (ENXIO at registration).
"""

from __future__ import annotations

import errno
import mmap
import os
import re
import struct
import threading
from dataclasses import dataclass, field
from typing import Any, Final

import numpy as np

from mbuf.sys_devio import DEVOP_IOCTL, POLLIN, dev_req
from netmap.netmap_h import (
    NETMAP_API,
    NETMAP_IF,
    NETMAP_IF_OFF,
    NETMAP_REQ_CSB_ENABLE,
    NETMAP_REQ_OPT_CSB,
    NETMAP_REQ_REGISTER,
    NETMAP_REQ_SYNC_KLOOP_START,
    NETMAP_REQ_SYNC_KLOOP_STOP,
    NETMAP_RING,
    NETMAP_RING_OFF,
    NIOCCTRL,
    NIOCRXSYNC,
    NIOCTXSYNC,
    NMREQ_HEADER,
    NMREQ_OPT_CSB,
    NMREQ_REGISTER,
    NMREQ_SYNC_KLOOP_START,
    NR_EXCLUSIVE,
    NR_MONITOR_RX,
    NR_MONITOR_TX,
    NR_REG_ALL_NIC,
    NR_REG_NIC_SW,
    NR_REG_ONE_NIC,
    NR_REG_ONE_SW,
    NR_REG_SW,
    NR_RX_RINGS_ONLY,
    NR_TX_RINGS_ONLY,
    NR_ZCOPY_MON,
    RING_OFS,
    nm_ring_next,
    nm_ring_space,
)
from userland.dev import DevFile
from userland.devdir import device_paths, find_instance

SLOT_DTYPE: Final = np.dtype([("buf_idx", "=u4"), ("len", "=u2"), ("flags", "=u2"), ("ptr", "=u8")])
U32: Final = struct.Struct("=I")
WORD: Final = 4
PTRS: Final = struct.Struct("=III")  # head, cur, tail
HEAD_OFF: Final = NETMAP_RING_OFF["head"]
CUR_OFF: Final = NETMAP_RING_OFF["cur"]
TAIL_OFF: Final = NETMAP_RING_OFF["tail"]
CSB_ENTRY: Final = 64
CSB_SKIP: Final = 64  # the extra buffer's first bytes link the list (ni_bufs_head)
KLOOP_SLEEP_US: Final = 20  # the kernel loop's sleep when idle

FLAG_LETTERS: Final = {
    "x": NR_EXCLUSIVE,
    "z": NR_ZCOPY_MON,
    "t": NR_MONITOR_TX,
    "r": NR_MONITOR_RX,
    "R": NR_RX_RINGS_ONLY,
    "T": NR_TX_RINGS_ONLY,
}
CONF_KEYS: Final = ("rings", "tx-rings", "rx-rings", "host-rings", "slots", "tx-slots", "rx-slots")
_IDENT = re.compile(r"[A-Za-z0-9_.]+")


class NmportError(OSError):
    """A port name libnetmap refuses (EINVAL), or a failed open."""


def _bad(name: str, why: str) -> NmportError:
    return NmportError(errno.EINVAL, f"{name}: {why}")


@dataclass
class NmportSpec:
    """What a port name asks for: the nmreq_header name and nmreq_register fields."""

    name: str  # nr_name: the interface, with a pipe's {id / }id
    mode: int = NR_REG_ALL_NIC
    ringid: int = 0
    flags: int = 0
    mem_id: int = 0
    tx_rings: int = 0
    rx_rings: int = 0
    host_rings: int = 0
    tx_slots: int = 0
    rx_slots: int = 0


def _number(name: str, text: str, what: str) -> int:
    if not text.isdigit():
        raise _bad(name, f"invalid {what} '{text}'")
    return int(text)


def nmport_parse(name: str) -> NmportSpec:
    """The request a port name describes (see the module head); EINVAL with the
    reason for a name libnetmap would refuse."""
    m = re.match(r"(netmap|vale[A-Za-z0-9_]*):", name)
    if m is None:
        raise _bad(name, "invalid request (must begin with 'netmap:' or 'vale')")
    rest = name[m.end() :]
    port = _IDENT.match(rest)
    if port is None:
        raise _bad(name, "missing port name")
    prefix = "" if m.group(1) == "netmap" else m.group(1) + ":"
    spec = NmportSpec(prefix + port.group(0))
    rest = rest[port.end() :]
    # The mode: at most one of { } - ^ *.
    if rest[:1] in ("{", "}"):
        pid = _IDENT.match(rest, 1)
        if pid is None:
            raise _bad(name, "missing pipe id")
        spec.name += rest[0] + pid.group(0)
        rest = rest[pid.end() :]
    elif rest[:1] == "-":
        num = re.match(r"\d*", rest[1:])
        assert num is not None
        spec.mode = NR_REG_ONE_NIC
        spec.ringid = _number(name, num.group(0), "ring id")
        rest = rest[1 + num.end() :]
    elif rest[:1] == "^":
        num = re.match(r"\d*", rest[1:])
        assert num is not None
        if num.group(0):
            spec.mode, spec.ringid = NR_REG_ONE_SW, int(num.group(0))
        else:
            spec.mode = NR_REG_SW
        rest = rest[1 + num.end() :]
    elif rest[:1] == "*":
        spec.mode = NR_REG_NIC_SW
        rest = rest[1:]
    if rest[:1] == "/":
        letters = re.match(r"[^@]*", rest[1:])
        assert letters is not None
        if not letters.group(0):
            raise _bad(name, "missing flags after '/'")
        for c in letters.group(0):
            if c not in FLAG_LETTERS:
                raise _bad(name, f"unrecognized flag: '{c}'")
            spec.flags |= FLAG_LETTERS[c]
        rest = rest[1 + letters.end() :]
    while rest:
        if rest[0] != "@":
            raise _bad(name, f"unexpected '{rest}'")
        opt = re.match(r"[^@]*", rest[1:])
        assert opt is not None
        _option(name, spec, opt.group(0))
        rest = rest[1 + opt.end() :]
    return spec


def _option(name: str, spec: NmportSpec, opt: str) -> None:
    if opt.isdigit():
        spec.mem_id = int(opt)
        return
    key, _, args = opt.partition(":")
    if key != "conf":
        raise _bad(name, f"option '{key}' not supported")
    if not args:
        raise _bad(name, "@conf: missing arguments")
    for kv in args.split(","):
        k, eq, v = kv.partition("=")
        if k not in CONF_KEYS or not eq:
            raise _bad(name, f"@conf: unknown key '{k}'")
        n = _number(name, v, k)
        if k in ("rings", "tx-rings"):
            spec.tx_rings = n
        if k in ("rings", "rx-rings"):
            spec.rx_rings = n
        if k == "host-rings":
            spec.host_rings = n
        if k in ("slots", "tx-slots"):
            spec.tx_slots = n
        if k in ("slots", "rx-slots"):
            spec.rx_slots = n


def nmreq_register_msg(spec: NmportSpec, extra_bufs: int = 0) -> bytes:
    """NIOCCTRL(NETMAP_REQ_REGISTER): header at 0, nmreq_register after it."""
    body = NMREQ_REGISTER.pack(
        0, 0, spec.tx_slots, spec.rx_slots, spec.tx_rings, spec.rx_rings,
        spec.host_rings, spec.host_rings, spec.mem_id, spec.ringid, spec.mode,
        extra_bufs, spec.flags,
    )  # fmt: skip
    return nmreq_msg(NETMAP_REQ_REGISTER, spec.name, body)


def nmreq_msg(reqtype: int, name: str, body: bytes = b"", options: bytes = b"") -> bytes:
    """A NIOCCTRL message: header, body, then at most one option (offsets in the message)."""
    hsz = NMREQ_HEADER.size
    opt_off = hsz + len(body) if options else 0
    hdr = NMREQ_HEADER.pack(NETMAP_API, reqtype, 0, name.encode(), opt_off, hsz if body else 0)
    return hdr + body + options


@dataclass
class NmRing:
    """One ring of a registered port, through the process's mapping."""

    view: memoryview
    ofs: int  # region offset of the netmap_ring
    tx: bool
    num_slots: int
    buf_size: int
    slots: Any  # NumPy structured array (SLOT_DTYPE), a view of the region
    bufs: Any  # NumPy uint8 array (buffers x buf_size), a view of the region
    csb: tuple[int, int] | None = None  # region offsets of this ring's atok, ktoa
    csb_tail: int = -1  # kernel-loop mode: the tail last read from ktoa
    csb_hwcur: int = -1  # ... and the kernel's cur (what it has taken)
    words: Any = None  # kernel-loop mode: the region as 4-byte items (the CSB's fields)

    @property
    def head(self) -> int:
        return int(U32.unpack_from(self.view, self.ofs + HEAD_OFF)[0])

    @property
    def cur(self) -> int:
        return int(U32.unpack_from(self.view, self.ofs + CUR_OFF)[0])

    @property
    def tail(self) -> int:
        """The kernel's tail: the ring's, or in kernel-loop mode ktoa's hwtail as
        last read (the ring's own field is the kernel's to write at any time)."""
        if self.csb is not None:
            return self.csb_tail
        return int(U32.unpack_from(self.view, self.ofs + TAIL_OFF)[0])

    def advance(self, head: int, cur: int | None = None) -> None:
        """Publish head and cur (cur = head by default), cur first."""
        c = head if cur is None else cur
        U32.pack_into(self.view, self.ofs + CUR_OFF, c)
        U32.pack_into(self.view, self.ofs + HEAD_OFF, head)

    def space(self) -> int:
        """nm_ring_space: slots the user owns."""
        h, _c, t = PTRS.unpack_from(self.view, self.ofs + HEAD_OFF)
        return nm_ring_space(
            self.num_slots, int(h), self.csb_tail if self.csb is not None else int(t)
        )

    def next(self, i: int) -> int:
        return nm_ring_next(self.num_slots, i)

    def span(self, start: int, n: int) -> list[tuple[int, int]]:
        """The slot ranges [a, b) of n slots from `start` (two when they wrap)."""
        end = start + n
        if end <= self.num_slots:
            return [(start, end)]
        return [(start, self.num_slots), (0, end - self.num_slots)]

    # -- kernel-loop mode: the CSB instead of the ring's pointers -----------

    def csb_write(self) -> None:
        """nm_sync_kloop_appl_write: the ring's cur, then head, into atok."""
        assert self.csb is not None
        atok = self.csb[0] // WORD
        h, c, _t = PTRS.unpack_from(self.view, self.ofs + HEAD_OFF)
        w = self.words
        w[atok + 1] = c  # one 4-byte store each (not struct.pack_into: it
        w[atok] = h  # clears the field first, and the loop would read 0)

    def csb_read(self) -> None:
        """nm_sync_kloop_appl_read: hwtail, then hwcur, from ktoa; the tail is
        the ring's from now on (`tail`)."""
        assert self.csb is not None
        ktoa = self.csb[1] // WORD
        w = self.words
        self.csb_tail = int(w[ktoa + 1])
        self.csb_hwcur = int(w[ktoa])  # read after hwtail


@dataclass
class NmPort:
    """struct nmport_d: an open, registered port (see the module head)."""

    dev: DevFile
    spec: NmportSpec
    reg: dict[str, int]
    mapping: mmap.mmap
    view: memoryview
    nifp: int
    tx_rings: list[NmRing] = field(default_factory=list)
    rx_rings: list[NmRing] = field(default_factory=list)
    kloop: bool = False
    kloop_thread: threading.Thread | None = None
    kloop_error: OSError | None = None
    words: Any = None  # kernel-loop mode: view.cast("I") (the CSB's fields)
    _arrays: list[Any] = field(default_factory=list)

    @property
    def mem_id(self) -> int:
        return self.reg["nr_mem_id"]

    def txsync(self) -> None:
        """NIOCTXSYNC; in kernel-loop mode, publish to the CSB (no system call)."""
        if self.kloop:
            for r in self.tx_rings:
                r.csb_write()
                r.csb_read()
            return
        self.dev.ioctl(NIOCTXSYNC)

    def rxsync(self) -> None:
        """NIOCRXSYNC; in kernel-loop mode, through the CSB."""
        if self.kloop:
            for r in self.rx_rings:
                r.csb_write()
                r.csb_read()
            return
        self.dev.ioctl(NIOCRXSYNC)

    def poll(self, events: int = POLLIN, timeout: float | None = None) -> int:
        """poll(2) on the port: the ready bits, 0 after a wakeup or the timeout."""
        return self.dev.poll_events(events, timeout)

    # -- the kernel loop -------------------------------------------------------

    def kloop_start(self, sleep_us: int = KLOOP_SLEEP_US) -> None:
        """A thread enters SYNC_KLOOP_START and stays there until kloop_stop()."""
        if not self.kloop or self.kloop_thread is not None:
            raise OSError(errno.EINVAL, "kloop_start: not a kernel-loop port, or started")
        body = NMREQ_SYNC_KLOOP_START.pack(sleep_us, 0)
        req = dev_req(DEVOP_IOCTL, NIOCCTRL, payload=nmreq_msg(
            NETMAP_REQ_SYNC_KLOOP_START, self.spec.name, body))  # fmt: skip
        self.dev.send_request(req)

        def blocked_in_ioctl() -> None:
            try:
                self.dev.read_reply()
            except OSError as e:
                self.kloop_error = e

        self.kloop_thread = threading.Thread(target=blocked_in_ioctl, daemon=True)
        self.kloop_thread.start()

    def kloop_stop(self) -> None:
        """SYNC_KLOOP_STOP: the loop's thread returns (its reply comes first)."""
        t = self.kloop_thread
        if t is None:
            return
        self.kloop_thread = None
        req = dev_req(DEVOP_IOCTL, NIOCCTRL, payload=nmreq_msg(
            NETMAP_REQ_SYNC_KLOOP_STOP, self.spec.name))  # fmt: skip
        self.dev.send_request(req)
        t.join()
        self.dev.read_reply()
        if self.kloop_error is not None:
            raise self.kloop_error

    def close(self) -> None:
        """nmport_close: the loop stopped, the file closed (the kernel frees the
        port), the mapping unmapped."""
        try:
            if self.kloop_thread is not None and self.dev.sock.fileno() >= 0:
                self.kloop_stop()
        finally:
            self.dev.close()
            if self.kloop_thread is not None:
                self.kloop_thread.join()
            for r in self.tx_rings + self.rx_rings:
                r.slots = r.bufs = r.words = None
            if self.words is not None:
                self.words.release()
            self.tx_rings = []
            self.rx_rings = []
            self._arrays = []
            self.view.release()
            self.mapping.close()

    def __enter__(self) -> NmPort:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def netmap_device(server: str | None = None, worker: int = 0) -> str:
    """The path of worker `worker`'s /dev/netmap of the instance (LookupError)."""
    paths = device_paths(find_instance(server), "netmap")
    if worker >= len(paths):
        raise LookupError(f"no /dev/netmap for worker {worker} ({len(paths)} found)")
    return str(paths[worker])


def nmport_open(
    name: str,
    *,
    server: str | None = None,
    path: str | None = None,
    worker: int = 0,
    extra_bufs: int = 0,
    kloop: bool = False,
) -> NmPort:
    """Parse, open, register and map the port `name` (module head). OSError
    carries the kernel's errno; a bad name is EINVAL before any open."""
    spec = nmport_parse(name)
    if kloop:
        spec.flags |= NR_EXCLUSIVE
        extra_bufs = max(extra_bufs, 1)
    dev = DevFile.open(path or netmap_device(server, worker))
    try:
        out = dev.ioctl(NIOCCTRL, nmreq_register_msg(spec, extra_bufs))
        fds, dev.received_fds = dev.received_fds, []
        if len(fds) != 1:
            for fd in fds:
                os.close(fd)
            raise OSError(errno.EIO, f"{name}: the kernel passed {len(fds)} regions")
        reg = dict(
            zip(
                ("nr_offset", "nr_memsize", "nr_tx_slots", "nr_rx_slots", "nr_tx_rings",
                 "nr_rx_rings", "nr_host_tx_rings", "nr_host_rx_rings", "nr_mem_id",
                 "nr_ringid", "nr_mode", "nr_extra_bufs", "nr_flags"),
                NMREQ_REGISTER.unpack_from(out, NMREQ_HEADER.size),
                strict=True,
            )
        )  # fmt: skip
        try:
            mapping = mmap.mmap(
                fds[0], int(reg["nr_memsize"]), mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE
            )
        finally:
            os.close(fds[0])
    except BaseException:
        dev.close()
        raise
    port = NmPort(dev, spec, reg, mapping, memoryview(mapping), int(reg["nr_offset"]))
    try:
        _find_rings(port)
        if kloop:
            _csb_enable(port)
    except BaseException:
        port.close()
        raise
    return port


def _find_rings(port: NmPort) -> None:
    """The bound rings from the netmap_if (NETMAP_TXRING / NETMAP_RXRING)."""
    view, nifp = port.view, port.nifp
    f = NETMAP_IF.unpack_from(view, nifp)
    ntx, nrx = int(f[3]), int(f[4])
    nhtx = int(f[6])
    ofs = [int(RING_OFS.unpack_from(view, nifp + NETMAP_IF.size + 8 * i)[0]) for i in
           range(ntx + nrx)]  # fmt: skip
    first, last = _bound(port, ntx, nrx)
    for tx, count, base in ((True, ntx, 0), (False, nrx, ntx + nhtx)):
        rings = port.tx_rings if tx else port.rx_rings
        for i in range(first[0 if tx else 1], last[0 if tx else 1]):
            if i >= count:
                break
            r = nifp + ofs[base + i]
            buf_ofs, num_slots, buf_size = NETMAP_RING.unpack_from(view, r)[:3]
            slots = np.frombuffer(
                view, dtype=SLOT_DTYPE, count=int(num_slots), offset=r + NETMAP_RING.size
            )
            start = r + int(buf_ofs)
            nbufs = (len(view) - start) // int(buf_size)
            bufs = np.frombuffer(view, dtype=np.uint8, count=nbufs * int(buf_size), offset=start)
            rings.append(
                NmRing(view, r, tx, int(num_slots), int(buf_size), slots,
                       bufs.reshape(nbufs, int(buf_size)))
            )  # fmt: skip


def _bound(port: NmPort, ntx: int, nrx: int) -> tuple[list[int], list[int]]:
    """The rings the registration binds (netmap_interp_ringid's user view)."""
    spec = port.spec
    if spec.mode == NR_REG_ONE_NIC:
        first = [spec.ringid, spec.ringid]
        last = [spec.ringid + 1, spec.ringid + 1]
    else:
        first, last = [0, 0], [ntx, nrx]
    if spec.flags & NR_TX_RINGS_ONLY:
        last[1] = first[1]
    if spec.flags & NR_RX_RINGS_ONLY:
        last[0] = first[0]
    return first, last


def _csb_enable(port: NmPort) -> None:
    """The CSB in the first extra buffer (after its list link), then CSB_ENABLE."""
    head = int(U32.unpack_from(port.view, port.nifp + NETMAP_IF_OFF["ni_bufs_head"])[0])
    if not head:
        raise OSError(errno.ENOMEM, f"{port.spec.name}: no extra buffer for the CSB")
    rings = port.tx_rings + port.rx_rings
    ring0 = rings[0]
    buf = ring0.ofs + int(NETMAP_RING.unpack_from(port.view, ring0.ofs)[0]) + head * ring0.buf_size
    atok = buf + CSB_SKIP
    ktoa = atok + len(rings) * CSB_ENTRY
    opt = NMREQ_OPT_CSB.pack(0, NETMAP_REQ_OPT_CSB, 0, NMREQ_OPT_CSB.size, atok, ktoa)
    port.dev.ioctl(NIOCCTRL, nmreq_msg(NETMAP_REQ_CSB_ENABLE, port.spec.name, b"", opt))
    port.words = port.view.cast("I")
    for i, r in enumerate(rings):
        r.words = port.words
        r.csb = (atok + i * CSB_ENTRY, ktoa + i * CSB_ENTRY)
        r.csb_read()
    port.kloop = True
