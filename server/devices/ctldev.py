"""The control device `ctl`: sysctl(3) and the interface ioctls for `nomapd sysctl` / `ifconfig`.

Theory of operation. One `ctl` per server instance, in the instance's 0700
directory beside the workers' w<N> (`<instance>/ctl`), on the device
framework (devfs.py: the same SO_PEERCRED owner check as /dev/bpf, EPERM for
anyone else). Its ioctls (mbuf/sys_ctlio.py) go to a `CtlSource`: the
single-process `Server`, or, with several workers, the `Supervisor`, which
serves the one `ctl` of the instance. We chose one device over a device per
worker with the command fanning out: a change must reach every worker at once
and be answered only when all took it, and must be replayed to a worker
restarted later; the supervisor already does both for the admin POSTs
(`apply_all` and its `applied` list), so the device is one more caller of that
code, and a program makes one call, not one per worker, whose partial failure
it would have to undo. Reads go the same way (`admin_sysctl`: every worker's
tree, settings from the first, counters summed).

Where a change takes effect is the reader's business (mbuf/kern.py and each
package's sysctl module say it per node; the NIC's options per packet in
ip_output and tcp_output): the device only stores.

Models: sys/kern/kern_sysctl.c's sysctl_root and net/if.c's ifhwioctl as
seen from a process. Differences: README "Devices" and mbuf/sys_ctlio.py.
"""

from __future__ import annotations

import errno
from typing import Protocol

from mbuf.sys_ctlio import (
    CTLIOC_IFLIST,
    CTLIOC_SYSCTL,
    IFNAMSIZ,
    IFREQ_CAP,
    IFREQ_INT,
    SIOCGIFCAP,
    SIOCGIFFLAGS,
    SIOCGIFMTU,
    SIOCSIFCAP,
    SysctlNode,
    ifname_pack,
    ifname_unpack,
    sysctl_nodes_pack,
    sysctl_oldnew_pack,
    sysctl_req_parse,
)
from server.control import Result
from server.devices.devfs import DevFile, Device, OpenFile


class CtlSource(Protocol):
    """What the device asks: the process serving the instance (Server or Supervisor)."""

    async def admin_sysctl(self) -> dict[str, dict[str, object]]: ...

    async def admin_sysctl_set(self, name: str, value: str) -> Result: ...

    async def admin_ifconfig(self) -> dict[str, dict[str, object]]: ...

    async def admin_ifcap_set(self, ifname: str, reqcap: int) -> Result: ...


def _text(v: object) -> str:
    return "" if v is None else str(v)


def _int(v: object) -> int:
    return v if isinstance(v, int) else 0


def _raise(r: Result) -> None:
    if r.errno:
        raise OSError(r.errno, r.message or "error")


class CtlFile(DevFile):
    """One open `ctl`: no state of its own; every call is one request."""

    def __init__(self, src: CtlSource) -> None:
        self.src = src

    async def ioctl(self, cmd: int, arg: bytes, fds: list[int]) -> bytes:
        if fds:
            raise OSError(errno.EINVAL, "ctl: no ioctl takes a descriptor")
        if cmd == CTLIOC_SYSCTL:
            return await self._sysctl(arg)
        if cmd == CTLIOC_IFLIST:
            names = await self.src.admin_ifconfig()
            return b"".join(ifname_pack(n).ljust(IFNAMSIZ, b"\0") for n in names)
        if cmd in (SIOCGIFCAP, SIOCSIFCAP):
            if len(arg) != IFREQ_CAP.size:
                raise OSError(errno.EINVAL, "struct ifreq of the wrong size")
            raw, reqcap, _cur = IFREQ_CAP.unpack(arg)
            name = ifname_unpack(raw)
            if cmd == SIOCSIFCAP:
                _raise(await self.src.admin_ifcap_set(name, reqcap))
            info = await self._ifinfo(name)
            return IFREQ_CAP.pack(raw, _int(info["capabilities"]), _int(info["capenable"]))
        if cmd in (SIOCGIFFLAGS, SIOCGIFMTU):
            if len(arg) != IFREQ_INT.size:
                raise OSError(errno.EINVAL, "struct ifreq of the wrong size")
            raw, _ = IFREQ_INT.unpack(arg)
            info = await self._ifinfo(ifname_unpack(raw))
            v = info["flags"] if cmd == SIOCGIFFLAGS else info["mtu"]
            return IFREQ_INT.pack(raw, _int(v))
        return await super().ioctl(cmd, arg, fds)

    async def _ifinfo(self, name: str) -> dict[str, object]:
        info = (await self.src.admin_ifconfig()).get(name)
        if info is None:
            raise OSError(errno.ENXIO, f"interface {name} does not exist")
        return info

    async def _sysctl(self, arg: bytes) -> bytes:
        try:
            name, new = sysctl_req_parse(arg)
        except (ValueError, UnicodeDecodeError) as e:
            raise OSError(errno.EINVAL, str(e)) from None
        if new is not None:
            r = await self.src.admin_sysctl_set(name, new)
            _raise(r)
            return sysctl_oldnew_pack(_text(r.old), _text(r.new))
        tree = await self.src.admin_sysctl()
        under = name + "." if name else ""
        nodes = [
            SysctlNode(n, str(d["type"]), bool(d["writable"]), _text(d["value"]),
                       str(d["description"]))
            for n, d in tree.items() if n == name or n.startswith(under)
        ]  # fmt: skip
        if not nodes:
            raise OSError(errno.ENOENT, "unknown oid")
        return sysctl_nodes_pack(nodes)


def ctl_device(src: CtlSource) -> Device:
    """The instance's `ctl`."""
    return Device("ctl", lambda of: _open(src, of))


def _open(src: CtlSource, of: OpenFile) -> CtlFile:
    return CtlFile(src)
