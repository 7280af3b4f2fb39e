"""The control device's ABI: sysctl(3) and the interface ioctls, as messages.

Theory of operation. A FreeBSD program reads and sets kernel variables with
`__sysctl(name, namelen, oldp, oldlenp, newp, newlen)` and an interface's
options with ioctl(2) on a socket: SIOCGIFCAP / SIOCSIFCAP (struct ifreq's
ifr_reqcap, ifr_curcap), SIOCGIFFLAGS, SIOCGIFMTU. nomapd's `ctl` device
(server/devices/ctldev.py; the instance's own, beside the workers' w<N>)
takes the same calls as ioctls on the device framework (mbuf/sys_devio.py);
this header is what the server and userland's sysctl and ifconfig include.

  CTLIOC_SYSCTL  arg: SYSCTL_REQ (namelen, flags, newlen), the name, the new value
                 (UTF-8 text). Without SYSCTL_NEW: a read of the node NAME, or of
                 every node under the prefix NAME (the whole tree for ""), as
                 SYSCTL_NODE records sorted by name. With SYSCTL_NEW: a write;
                 the reply is SYSCTL_OLDNEW and the old and new values' text.
                 Errors: ENOENT (no such node), EPERM (read-only), EINVAL (a
                 value the node refuses; nothing changed).
  SIOCGIFCAP     arg: IFREQ_CAP with the name; reply: ifr_reqcap = the
                 capabilities the NIC has, ifr_curcap = those enabled.
  SIOCSIFCAP     arg: IFREQ_CAP with the name and ifr_reqcap = the capabilities to
                 enable. EINVAL if it asks for one the NIC lacks (if.c's check).
  SIOCGIFFLAGS   arg / reply: IFREQ_INT (name, if_flags)
  SIOCGIFMTU     arg / reply: IFREQ_INT (name, if_mtu)
  CTLIOC_IFLIST  reply: the interfaces' names, IFNAMSIZ bytes each (getifaddrs)
  An unknown interface is ENXIO.

Models: sys/kern/kern_sysctl.c (sysctl_root: ENOENT, EPERM, EINVAL; the
"sysctl.next" walk), sys/sys/sockio.h and net/if.c (ifhwioctl's SIOCSIFCAP).
Deliberate differences: names are strings, not integer MIBs; values travel as
text the kernel parses for the node's type (sysctl(8) parses them in
userland); a read of a prefix returns the whole subtree in one reply (sysctl(8)
walks it with one "sysctl.next" call per node), with each node's type, access
and description (what sysctl -d and the oidfmt node give).
"""

from __future__ import annotations

import struct
from typing import Final

from mbuf.ifnet import IfCap

IFNAMSIZ: Final = 16

CTLIOC_SYSCTL: Final = 0xC0106301  # _IOWR('c', 1, ...)
CTLIOC_IFLIST: Final = 0x40006302  # _IOR('c', 2, ...)
SIOCGIFFLAGS: Final = 0xC0206911  # sys/sockio.h
SIOCGIFMTU: Final = 0xC0206933
SIOCSIFCAP: Final = 0x8020691E
SIOCGIFCAP: Final = 0xC020691F

SYSCTL_REQ: Final = struct.Struct("<HHI")  # namelen, flags, newlen
SYSCTL_NEW: Final = 0x1  # a new value follows the name: a write
SYSCTL_NODE: Final = struct.Struct("<BBHII")  # kind, writable, namelen, valuelen, descrlen
SYSCTL_OLDNEW: Final = struct.Struct("<II")  # oldlen, newlen
IFREQ_CAP: Final = struct.Struct(f"<{IFNAMSIZ}sII")  # ifr_name, ifr_reqcap, ifr_curcap
IFREQ_INT: Final = struct.Struct(f"<{IFNAMSIZ}sI")  # ifr_name, ifr_flags / ifr_mtu

# SYSCTL_NODE's kind: mbuf/kern_sysctl.py's CTLTYPE_* by number.
SYSCTL_KINDS: Final = ("int", "bool", "string", "counter", "gauge")


# net/if.h's interface flags (the model's nm0 is always up: IF_FLAGS).
IFF_UP: Final = 0x1
IFF_BROADCAST: Final = 0x2
IFF_RUNNING: Final = 0x40
IFF_SIMPLEX: Final = 0x800
IFF_MULTICAST: Final = 0x8000
IF_FLAGS: Final = IFF_UP | IFF_BROADCAST | IFF_RUNNING | IFF_SIMPLEX | IFF_MULTICAST  # 8843
IFFBITS: Final = (
    (IFF_UP, "UP"), (IFF_BROADCAST, "BROADCAST"), (IFF_RUNNING, "RUNNING"),
    (IFF_SIMPLEX, "SIMPLEX"), (IFF_MULTICAST, "MULTICAST"),
)  # fmt: skip
# IFCAPBITS: the names ifconfig prints in options=<...> and capabilities=<...>.
IFCAPBITS: Final = tuple((int(f.value), (f.name or "").removeprefix("IFCAP_")) for f in IfCap)

# ifconfig's capability words (the 2019 name nomap for IFCAP_NOMAP, later mextpg).
CAP_WORDS: Final[dict[str, int]] = {
    "rxcsum": IfCap.IFCAP_RXCSUM,
    "txcsum": IfCap.IFCAP_TXCSUM,
    "rxcsum6": IfCap.IFCAP_RXCSUM_IPV6,
    "txcsum6": IfCap.IFCAP_TXCSUM_IPV6,
    "tso": IfCap.IFCAP_TSO4 | IfCap.IFCAP_TSO6,
    "tso4": IfCap.IFCAP_TSO4,
    "tso6": IfCap.IFCAP_TSO6,
    "lro": IfCap.IFCAP_LRO,
    "vlanmtu": IfCap.IFCAP_VLAN_MTU,
    "nomap": IfCap.IFCAP_NOMAP,
    "mextpg": IfCap.IFCAP_NOMAP,
    "txtls": IfCap.IFCAP_TXTLS4 | IfCap.IFCAP_TXTLS6,
}


def printb(value: int, bits: tuple[tuple[int, str], ...]) -> str:
    """ifconfig's printb: "8843<UP,BROADCAST,...>" (hex, then the set bits' names)."""
    return f"{value:x}<" + ",".join(n for bit, n in bits if value & bit) + ">"


class SysctlNode:
    """One node as a read returns it."""

    __slots__ = ("descr", "kind", "name", "value", "writable")

    def __init__(self, name: str, kind: str, writable: bool, value: str, descr: str) -> None:
        self.name = name
        self.kind = kind
        self.writable = writable
        self.value = value
        self.descr = descr


def sysctl_req(name: str, new: str | None = None) -> bytes:
    """CTLIOC_SYSCTL's argument: a read of `name` (None) or a write of `new`."""
    nb = name.encode()
    vb = b"" if new is None else new.encode()
    flags = 0 if new is None else SYSCTL_NEW
    return SYSCTL_REQ.pack(len(nb), flags, len(vb)) + nb + vb


def sysctl_req_parse(arg: bytes) -> tuple[str, str | None]:
    """(name, new value or None); ValueError for a malformed argument."""
    if len(arg) < SYSCTL_REQ.size:
        raise ValueError("short CTLIOC_SYSCTL argument")
    namelen, flags, newlen = SYSCTL_REQ.unpack_from(arg)
    if SYSCTL_REQ.size + namelen + newlen != len(arg):
        raise ValueError("CTLIOC_SYSCTL: lengths do not match the argument")
    name = arg[SYSCTL_REQ.size : SYSCTL_REQ.size + namelen].decode()
    if not flags & SYSCTL_NEW:
        return name, None
    return name, arg[SYSCTL_REQ.size + namelen :].decode()


def sysctl_nodes_pack(nodes: list[SysctlNode]) -> bytes:
    out = bytearray()
    for n in nodes:
        nb, vb, db = n.name.encode(), n.value.encode(), n.descr.encode()
        kind = SYSCTL_KINDS.index(n.kind)
        out += SYSCTL_NODE.pack(kind, int(n.writable), len(nb), len(vb), len(db)) + nb + vb + db
    return bytes(out)


def sysctl_nodes_unpack(data: bytes) -> list[SysctlNode]:
    out: list[SysctlNode] = []
    off = 0
    while off < len(data):
        kind, writable, nl, vl, dl = SYSCTL_NODE.unpack_from(data, off)
        off += SYSCTL_NODE.size
        name = data[off : off + nl].decode()
        value = data[off + nl : off + nl + vl].decode()
        descr = data[off + nl + vl : off + nl + vl + dl].decode()
        off += nl + vl + dl
        out.append(SysctlNode(name, SYSCTL_KINDS[kind], bool(writable), value, descr))
    return out


def sysctl_oldnew_pack(old: str, new: str) -> bytes:
    ob, nb = old.encode(), new.encode()
    return SYSCTL_OLDNEW.pack(len(ob), len(nb)) + ob + nb


def sysctl_oldnew_unpack(data: bytes) -> tuple[str, str]:
    ol, nl = SYSCTL_OLDNEW.unpack_from(data)
    base = SYSCTL_OLDNEW.size
    return data[base : base + ol].decode(), data[base + ol : base + ol + nl].decode()


def ifname_pack(name: str) -> bytes:
    """ifr_name: NUL-padded; ValueError if it does not fit (with its NUL)."""
    b = name.encode()
    if len(b) >= IFNAMSIZ:
        raise ValueError(f"interface name {name!r} is too long")
    return b


def ifname_unpack(raw: bytes) -> str:
    return raw.split(b"\0", 1)[0].decode(errors="replace")
