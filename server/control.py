"""Run-time control of a server's kernel: sysctl and ifconfig, one process or all workers.

Theory of operation. Every worker has its own modeled kernel, and so its own
sysctl tree (`Kernel.sysctl`, mbuf/kern_sysctl.py) and interface. The
functions here are the one place a change is made, and they return what
`sysctl(8)` and `ifconfig(8)` need to report it:

* `sysctl_set(server, name, value)` / `ifconfig_set(server, words)` in one
  process: a `Result` with errno 0 and the old and new values, or the errno
  (ENOENT "unknown oid", EPERM read-only, EINVAL "Invalid argument" with
  nothing changed, ENXIO no such interface).
* `ifcap_set(server, ifname, reqcap)`: SIOCSIFCAP, what the control device
  (server/devices/ctldev.py) asks for on behalf of `nomapd ifconfig`.
* `Supervisor` (server/supervisor.py) sends the same request to every
  worker over its control channel (server/worker.py) and answers once all
  did; it keeps the successful changes and replays them to a worker it
  restarts, so that a new kernel does not come back with the command line's
  values.

The admin listener (server/admin.py) calls them for POST /sysctl and POST
/ifconfig, the owner-only control device `ctl` (server/devices/ctldev.py)
for `nomapd sysctl` and `nomapd ifconfig`: one path for both.

Counter descriptions: the kernel's counters are documented by the comment on
each field (mbuf/counters.py, bpf/bpfdesc.py); `counter_descriptions()` reads
them from the source once, for the sysctl tree and /metrics' HELP.
"""

from __future__ import annotations

import ast
import errno
import functools
import io
import os
import pathlib
import tokenize
from dataclasses import dataclass
from typing import TYPE_CHECKING

from bpf.bpfdesc import BpfStat
from mbuf.counters import PREFIXES
from mbuf.kern_sysctl import sysctl_write
from server.ifconfig import ifconfig_apply, ifconfig_info

if TYPE_CHECKING:
    from server.app import Server


@dataclass(slots=True)
class Result:
    """What a change did: errno 0 and the values before and after, or an errno and why."""

    errno: int = 0
    message: str = ""
    old: object = None
    new: object = None

    def as_json(self) -> dict[str, object]:
        return {"errno": self.errno, "message": self.message, "old": self.old, "new": self.new}

    @classmethod
    def from_json(cls, d: object) -> Result:
        if not isinstance(d, dict):
            return cls(errno.EAGAIN, "a worker did not answer")
        return cls(
            int(d.get("errno", errno.EIO)), str(d.get("message", "")), d.get("old"), d.get("new")
        )


# sysctl(8)'s words for the errors.
MESSAGES = {
    errno.ENOENT: "unknown oid",
    errno.EPERM: "oid is read only",
    errno.EINVAL: "Invalid argument",
}


def sysctl_set(server: Server, name: str, value: str) -> Result:
    """`sysctl NAME=VALUE` on this process's kernel."""
    tree = server.kern.sysctl
    oid = tree.lookup(name)
    old = oid.get() if oid is not None else None
    err = sysctl_write(tree, name, value)
    if err:
        return Result(err, MESSAGES.get(err, os.strerror(err)))
    assert oid is not None
    return Result(0, "", old, oid.get())


def ifconfig_set(server: Server, words: list[str]) -> Result:
    """`ifconfig nm0 [-]nomap ...` on this process's interface."""
    ifp = server.kern.ifnet
    old = ifconfig_info(ifp)["options"]
    err, message = ifconfig_apply(ifp, words)
    if err:
        return Result(err, message)
    return Result(0, "", old, ifconfig_info(ifp)["options"])


def ifcap_set(server: Server, ifname: str, reqcap: int) -> Result:
    """SIOCSIFCAP: enable exactly `reqcap` on `ifname` (ENXIO: no such interface;
    EINVAL: a capability the NIC lacks, as if.c's ifhwioctl refuses it, nothing
    changed). The driver reads if_capenable per packet (ip_output, tcp_output):
    the change applies from the next packet on."""
    ifp = server.kern.ifnet
    if ifname != ifp.if_xname:
        return Result(errno.ENXIO, f"interface {ifname} does not exist")
    if reqcap & ~ifp.if_capabilities:
        return Result(errno.EINVAL, "Invalid argument")
    old = ifp.if_capenable
    ifp.set_capenable(reqcap)
    return Result(0, "", old, ifp.if_capenable)


def ifconfig_all(server: Server) -> dict[str, dict[str, object]]:
    ifp = server.kern.ifnet
    return {ifp.if_xname: ifconfig_info(ifp)}


def combine_sysctl(trees: list[dict[str, dict[str, object]]]) -> dict[str, dict[str, object]]:
    """Workers' `sysctl -a` as one: settings are the first worker's (all are set
    alike), counters and levels add up, peaks take the largest (as sum_stats)."""
    if not trees:
        return {}
    out = {name: dict(node) for name, node in trees[0].items()}
    for tree in trees[1:]:
        for name, node in tree.items():
            mine = out.get(name)
            if mine is None or mine["type"] not in ("counter", "gauge"):
                continue
            a, b = mine["value"], node["value"]
            if isinstance(a, int) and isinstance(b, int):
                mine["value"] = max(a, b) if name.endswith("peak") else a + b
    return out


def _field_comments(source: str) -> dict[tuple[str, str], str]:
    """(class, field) -> the field's comment: on its line, or the lines just above."""
    comments: dict[int, str] = {}
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.COMMENT:
            comments[tok.start[0]] = tok.string.lstrip("#").strip()
    out: dict[tuple[str, str], str] = {}
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.ClassDef):
            continue
        for stmt in node.body:
            if not (isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name)):
                continue
            text = comments.get(stmt.lineno)
            if text is None:
                above: list[str] = []
                line = stmt.lineno - 1
                while line in comments:
                    above.insert(0, comments[line])
                    line -= 1
                text = " ".join(above)
            if text:
                out[(node.name, stmt.target.id)] = text
    return out


@functools.cache
def counter_descriptions() -> dict[str, str]:
    """/stats key -> the counter's own comment ("ktls.rx_records" -> "client records
    decrypted (KTLS RX)"); a counter without one is described by its name."""
    import bpf.bpfdesc
    import mbuf.counters

    found: dict[tuple[str, str], str] = {}
    for mod in (mbuf.counters, bpf.bpfdesc):
        # Beside the module, compiled (counters.cpython-*.so) or not.
        src = pathlib.Path(mod.__file__ or "").with_name(mod.__name__.rpartition(".")[2] + ".py")
        try:
            found.update(_field_comments(src.read_text()))
        except (OSError, SyntaxError, ValueError):
            continue  # an installed package without sources: names only
    groups: list[tuple[str, object]] = [(p, g) for g, p in PREFIXES.items()]
    groups.append(("bpf", BpfStat))
    out: dict[str, str] = {}
    for prefix, cls in groups:
        names = [c.__name__ for c in type.mro(cls)] if isinstance(cls, type) else []
        for f in _fields(cls):
            text = next((found[(n, f)] for n in names if (n, f) in found), "")
            out[f"{prefix}.{f}"] = text or f.replace("_", " ")
    return out


def _fields(cls: object) -> list[str]:
    from dataclasses import fields

    return [f.name for f in fields(cls)]  # type: ignore[arg-type]
