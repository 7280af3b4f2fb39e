"""The control device as a process opens it: sysctl(3) and the interface ioctls.

Theory of operation. `CtlDev.open(server)` finds the instance
(userland/devdir.py: a directory, a port, or the only one running) and opens
its `ctl` (one per instance; the supervisor's with several workers, which
applies a change to every worker before it answers). Each method is one
ioctl of mbuf/sys_ctlio.py; a refusal is raised as OSError with the kernel's
errno (ENOENT unknown oid, EPERM read-only, EINVAL a bad value, ENXIO no such
interface), and an instance without a running server as LookupError.

Models: sysctl(3) / sysctlbyname(3) and ioctl(2) on a socket
(SIOCGIFCAP, SIOCSIFCAP, SIOCGIFFLAGS, SIOCGIFMTU), getifaddrs(3)'s names.
"""

from __future__ import annotations

import argparse
import sys

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
    sysctl_nodes_unpack,
    sysctl_oldnew_unpack,
    sysctl_req,
)
from userland.dev import DevFile
from userland.devdir import find_instance


class CtlDev:
    """One open `ctl` (see the module head)."""

    def __init__(self, f: DevFile) -> None:
        self.f = f

    @classmethod
    def open(cls, server: str | None = None) -> CtlDev:
        """LookupError if no server runs there; OSError if the device refuses the open."""
        path = find_instance(server) / "ctl"
        if not path.exists():
            raise LookupError(f"no control device {str(path)!r} (is the server running?)")
        try:
            return cls(DevFile.open(path))
        except (ConnectionRefusedError, FileNotFoundError) as e:
            raise LookupError(f"{path}: {e.strerror} (is the server running?)") from None

    def close(self) -> None:
        self.f.close()

    def __enter__(self) -> CtlDev:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def sysctl_get(self, name: str) -> list[SysctlNode]:
        """The node `name`, or every node under the prefix `name` ("" for all)."""
        return sysctl_nodes_unpack(self.f.ioctl(CTLIOC_SYSCTL, sysctl_req(name)))

    def sysctl_set(self, name: str, value: str) -> tuple[str, str]:
        """Write `value`: (old, new) as the node prints them."""
        return sysctl_oldnew_unpack(self.f.ioctl(CTLIOC_SYSCTL, sysctl_req(name, value)))

    def interfaces(self) -> list[str]:
        data = self.f.ioctl(CTLIOC_IFLIST)
        return [ifname_unpack(data[i : i + IFNAMSIZ]) for i in range(0, len(data), IFNAMSIZ)]

    def getifcap(self, ifname: str) -> tuple[int, int]:
        """SIOCGIFCAP: (ifr_reqcap: the NIC's capabilities, ifr_curcap: those enabled)."""
        _, req, cur = IFREQ_CAP.unpack(
            self.f.ioctl(SIOCGIFCAP, IFREQ_CAP.pack(ifname_pack(ifname), 0, 0))
        )
        return req, cur

    def setifcap(self, ifname: str, reqcap: int) -> None:
        """SIOCSIFCAP: enable exactly `reqcap`."""
        self.f.ioctl(SIOCSIFCAP, IFREQ_CAP.pack(ifname_pack(ifname), reqcap, 0))

    def getifint(self, ifname: str, cmd: int) -> int:
        """SIOCGIFFLAGS or SIOCGIFMTU."""
        if cmd not in (SIOCGIFFLAGS, SIOCGIFMTU):
            raise ValueError(f"{cmd:#x} is not SIOCGIFFLAGS or SIOCGIFMTU")
        _, v = IFREQ_INT.unpack(self.f.ioctl(cmd, IFREQ_INT.pack(ifname_pack(ifname), 0)))
        return int(v)


class ProgParser(argparse.ArgumentParser):
    """A program's command line: a bad one is one line on stderr and exit 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog.split()[-1]}: {message}\n")

    def add_server(self) -> None:
        self.add_argument("--server", help="the instance: its directory or port")


def open_ctl(prog: str, server: str | None) -> CtlDev | None:
    """The instance's ctl, or None after one line on stderr (no server, or refused)."""
    try:
        return CtlDev.open(server)
    except LookupError as e:
        print(f"{prog}: {e}", file=sys.stderr)
    except OSError as e:
        print(f"{prog}: ctl: {e.strerror or e}", file=sys.stderr)
    return None
