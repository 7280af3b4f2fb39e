"""The sysctl tree: named kernel variables, read by anyone, some written at run time.

Theory of operation. Each node (an OID) has a dotted name, a type, a
description, a flag saying whether it may be written, a handler that reads
the variable where the kernel keeps it, and for writable nodes a setter that
validates a new value and stores it. Each kernel package adds its own nodes,
one call per node, with FreeBSD's name wherever the kernel has one:

    tree.add_bool("kern.ipc.mb_use_ext_pgs", "Use unmapped mbufs ...", get, set)

`sysctl_write(tree, name, text)` is what `sysctl NAME=VALUE` does: it parses
the text for the node's type, asks the setter, and returns 0 or an errno --
ENOENT for an unknown name ("unknown oid"), EPERM for a read-only node, EINVAL
for a value the node refuses (nothing is changed then). Every counter of
`mbuf.counters` is a read-only node too (`add_counters`), named by the
`SYSCTL_PREFIXES` table of mbuf/counters.py.

A setter only stores the value; where the kernel reads it decides when a
change takes effect (per packet in ip_output, per sendfile call, per new
connection), and each reader says so in a comment.

Models: sys/kern/kern_sysctl.c (sysctl_root, the handlers' EPERM/EINVAL) and
sys/sys/sysctl.h (CTLTYPE_INT, CTLTYPE_STRING, CTLTYPE_U64, CTLFLAG_RD/RW).

Deliberate differences: the tree is one dict keyed by the whole name, not
nested nodes with numeric OIDs (no sysctl(3) MIB arrays); a node's value is
read through a getter rather than a pointer; booleans are their own type
("bool", an int that takes 0 or 1), where the kernel declares them int and
checks in the handler; an integer is read as sysctl(8) reads it (strtol(3)
in base 0: 0x hexadecimal, 0 octal) but here in the kernel, which is handed
text (mbuf/sys_ctlio.py); read-only counters come as two types, "counter"
(counts events, only grows: counter(9)'s U64) and "gauge" (a level, a peak
or a size), so that exporters can tell them apart.
"""

from __future__ import annotations

import errno
import re
from collections.abc import Callable
from typing import Final

from mbuf.counters import SYSCTL_PREFIXES, Counters, is_level

CTLTYPE_INT: Final = "int"
CTLTYPE_BOOL: Final = "bool"
CTLTYPE_STRING: Final = "string"
CTLTYPE_COUNTER: Final = "counter"
CTLTYPE_GAUGE: Final = "gauge"

SysctlValue = int | str


class SysctlOid:
    """One node: its name, type, description, and how to read and write it."""

    __slots__ = ("descr", "get", "hi", "kind", "lo", "name", "set")

    def __init__(
        self,
        name: str,
        kind: str,
        descr: str,
        get: Callable[[], SysctlValue],
        set: Callable[[SysctlValue], None] | None = None,
        lo: int = 0,
        hi: int = 0,
    ) -> None:
        self.name = name
        self.kind = kind
        self.descr = descr
        self.get = get
        self.set = set  # None: read-only (CTLFLAG_RD)
        self.lo = lo
        self.hi = hi

    @property
    def writable(self) -> bool:
        return self.set is not None

    def parse(self, text: str) -> SysctlValue:
        """The value `text` means for this node; ValueError if it is none."""
        if self.kind == CTLTYPE_STRING:
            return text
        v = strtol(text)
        if not self.lo <= v <= self.hi:
            raise ValueError(f"{v} is outside {self.lo}..{self.hi}")
        return v

    def describe(self) -> dict[str, object]:
        """The node as `GET /sysctl` shows it."""
        return {
            "value": self.get(),
            "type": self.kind,
            "writable": self.writable,
            "description": self.descr,
        }


class Sysctl:
    """One kernel's tree of nodes."""

    __slots__ = ("oids",)

    def __init__(self) -> None:
        self.oids: dict[str, SysctlOid] = {}

    def add(self, oid: SysctlOid) -> SysctlOid:
        if oid.name in self.oids:
            raise ValueError(f"sysctl {oid.name} registered twice")
        self.oids[oid.name] = oid
        return oid

    def add_int(
        self,
        name: str,
        descr: str,
        get: Callable[[], int],
        set: Callable[[int], None] | None = None,
        lo: int = 0,
        hi: int = (1 << 31) - 1,
    ) -> SysctlOid:
        """An integer node (CTLTYPE_INT); writable when `set` is given, within lo..hi."""
        setter = None if set is None else _int_setter(set)
        return self.add(SysctlOid(name, CTLTYPE_INT, descr, get, setter, lo, hi))

    def add_bool(
        self,
        name: str,
        descr: str,
        get: Callable[[], bool],
        set: Callable[[bool], None] | None = None,
    ) -> SysctlOid:
        """A boolean the kernel keeps as an int: reads 0 or 1, takes 0 or 1."""

        def read() -> SysctlValue:
            return int(get())

        setter = None if set is None else _bool_setter(set)
        return self.add(SysctlOid(name, CTLTYPE_BOOL, descr, read, setter, 0, 1))

    def add_string(
        self,
        name: str,
        descr: str,
        get: Callable[[], str],
        set: Callable[[str], None] | None = None,
    ) -> SysctlOid:
        """A string node; its setter raises ValueError for a value it refuses."""
        setter = None if set is None else _str_setter(set)
        return self.add(SysctlOid(name, CTLTYPE_STRING, descr, get, setter))

    def add_counters(self, group: object, keys: list[str]) -> None:
        """Every counter of a group (`keys` as /stats names them: "ktls.records_framed",
        the field after the dot) as a read-only node named by SYSCTL_PREFIXES:
        kern.ipc.tls.stats.records_framed."""
        for key in keys:
            kind = CTLTYPE_GAUGE if is_level(key) else CTLTYPE_COUNTER
            get = _field_getter(group, key.partition(".")[2])
            self.add(SysctlOid(stat_oid(key), kind, "", get))

    def describe(self, descr: dict[str, str]) -> None:
        """Set the descriptions of counters from their /stats keys (mbuf/counters.py's
        comments, read by the server: the kernel reads no files)."""
        for key, text in descr.items():
            oid = self.oids.get(stat_oid(key))
            if oid is not None and not oid.descr:
                oid.descr = text

    def lookup(self, name: str) -> SysctlOid | None:
        return self.oids.get(name)

    def snapshot(self) -> dict[str, dict[str, object]]:
        """Every node, sorted by name (`sysctl -a`, `GET /sysctl`)."""
        return {name: self.oids[name].describe() for name in sorted(self.oids)}


def sysctl_write(tree: Sysctl, name: str, text: str) -> int:
    """`sysctl NAME=VALUE`: 0, or ENOENT (unknown oid), EPERM (read-only node) or
    EINVAL (a value the node refuses; nothing changed)."""
    oid = tree.lookup(name)
    if oid is None:
        return errno.ENOENT
    if oid.set is None:
        return errno.EPERM
    try:
        oid.set(oid.parse(text))
    except ValueError:
        return errno.EINVAL
    return 0


def strtol(text: str) -> int:
    """An integer as sysctl(8) reads one, strtol(3) in base 0: an optional sign,
    then 0x and hexadecimal digits, 0 and octal digits, or decimal digits, all
    ASCII (str.isdigit and int() take any Unicode digit: "١٢" is 12 to them).
    Whitespace around it is ignored (strtol skips only the leading). ValueError
    for anything else."""
    m = _STRTOL.fullmatch(text.strip())
    if m is None:
        raise ValueError(f"{text!r} is not an integer")
    sign, digits = m.group(1), m.group(2)
    if digits[:2] in ("0x", "0X"):
        v = int(digits[2:], 16)
    elif digits[0] == "0":
        v = int(digits, 8)
    else:
        v = int(digits, 10)
    return -v if sign == "-" else v


_STRTOL: Final = re.compile(r"([+-]?)(0[xX][0-9a-fA-F]+|0[0-7]*|[1-9][0-9]*)", re.ASCII)


def stat_oid(key: str) -> str:
    """The sysctl name of a /stats counter key: "ktls.records_framed" ->
    "kern.ipc.tls.stats.records_framed" (SYSCTL_PREFIXES in mbuf/counters.py)."""
    group, _, field = key.partition(".")
    prefix = SYSCTL_PREFIXES.get(group)
    if prefix is None:
        raise KeyError(key)
    return f"{prefix}.{field}"


def counters_sysctl_init(tree: Sysctl, stats: Counters) -> None:
    """The read-only nodes of every counter group of `mbuf.counters`."""
    for group in stats.groups():
        tree.add_counters(group, [k for k, _ in group.items()])


def _field_getter(group: object, field: str) -> Callable[[], SysctlValue]:
    def get() -> SysctlValue:
        v: int = getattr(group, field)
        return v

    return get


def _int_setter(set: Callable[[int], None]) -> Callable[[SysctlValue], None]:
    def setter(v: SysctlValue) -> None:
        if not isinstance(v, int):
            raise ValueError(v)
        set(v)

    return setter


def _bool_setter(set: Callable[[bool], None]) -> Callable[[SysctlValue], None]:
    """0 or 1 (parse has held the value to lo..hi = 0..1)."""
    return _int_setter(lambda v: set(bool(v)))


def _str_setter(set: Callable[[str], None]) -> Callable[[SysctlValue], None]:
    return lambda v: set(str(v))
