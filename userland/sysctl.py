"""`nomapd sysctl`: get or set the kernel state of a running server, as sysctl(8) does.

    nomapd sysctl -a                     every node, "name: value"
    nomapd sysctl kern.ipc.tls           a node, or every node under a prefix
    nomapd sysctl kern.ipc.mb_use_ext_pgs=0   "name: old -> new"
    -n  values only     -d  descriptions instead of values
    --server DIR|PORT   the instance (default: the only one running)

It talks to the instance's control device (userland/ctl.py): a change is
answered once every worker took it. Errors as sysctl(8) words them, exit 1:
"unknown oid 'NAME'", "NAME=VALUE: Invalid argument" (nothing changed),
"oid 'NAME' is read only", "oid too long: 'NAME'" (1024 bytes or more, as
sysctl(8)'s buffer); a server that is not running is one line and exit
1 as well (sysctl(8) has no such case; tcpdump exits 1 when its device cannot
be opened). A bad command line: one line, exit 2.

Models: sbin/sysctl/sysctl.c (parse, show_var, the -a/-n/-d flags and its
messages). Differences: values are printed as the kernel formats them (no
-h, -x, -t, -b); one `name=value` changes one node; the whole `-a` comes in
one request (mbuf/sys_ctlio.py).
"""

from __future__ import annotations

import errno
import sys
from collections.abc import Sequence

from userland.ctl import CtlDev, ProgParser, open_ctl

USAGE = "usage: nomapd sysctl [-adn] [--server DIR|PORT] name[=value] ..."
BUFSIZ = 1024  # sysctl(8)'s parse(): a name[=value] that fills its buffer is "oid too long"


def _parser() -> ProgParser:
    p = ProgParser(prog="nomapd sysctl", usage=USAGE)
    p.add_argument("-a", dest="all", action="store_true", help="every node")
    p.add_argument("-n", dest="nflag", action="store_true", help="values only")
    p.add_argument("-d", dest="dflag", action="store_true", help="descriptions")
    p.add_server()
    p.add_argument("names", nargs="*", metavar="name[=value]")
    return p


def _show(ctl: CtlDev, name: str, nflag: bool, dflag: bool) -> None:
    for node in ctl.sysctl_get(name):
        text = node.descr if dflag else node.value
        print(text if nflag else f"{node.name}: {text}")


def _set(ctl: CtlDev, name: str, value: str, nflag: bool) -> None:
    old, new = ctl.sysctl_set(name, value)
    print(f"{old} -> {new}" if nflag else f"{name}: {old} -> {new}")


def _message(e: OSError, name: str, arg: str) -> str:
    if e.errno == errno.ENOENT:
        return f"unknown oid '{name}'"
    if e.errno == errno.EPERM:
        return f"oid '{name}' is read only"
    if e.errno == errno.EINVAL:
        return f"{arg}: Invalid argument"
    return f"{arg}: {e.strerror or e}"


def main(argv: Sequence[str]) -> int:
    ns = _parser().parse_args(list(argv))
    if not ns.all and not ns.names:
        print(USAGE, file=sys.stderr)
        return 2
    if ns.all and ns.names:
        print("sysctl: -a takes no names", file=sys.stderr)
        return 2
    ctl = open_ctl("sysctl", ns.server)
    if ctl is None:
        return 1
    status = 0
    with ctl:
        for arg in [""] if ns.all else ns.names:
            name, eq, value = arg.partition("=")
            if len(arg.encode()) >= BUFSIZ:
                print(f"sysctl: oid too long: '{arg}'", file=sys.stderr)
                status = 1
                continue
            try:
                if eq:
                    _set(ctl, name, value, ns.nflag)
                else:
                    _show(ctl, name, ns.nflag, ns.dflag)
            except OSError as e:
                if e.errno is None:  # the server went away mid-call
                    print(f"sysctl: {e}", file=sys.stderr)
                    return 1
                print(f"sysctl: {_message(e, name, arg)}", file=sys.stderr)
                status = 1
    return status
