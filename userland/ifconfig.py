"""`nomapd ifconfig`: print the modeled interface, or change its options, as ifconfig(8) does.

    nomapd ifconfig [-a] [-m]            every interface
    nomapd ifconfig nm0                  one interface
    nomapd ifconfig nm0 -nomap tso ...   change its options (IFCAP_* words)
    --server DIR|PORT                    the instance (default: the only one running)

Printing: the flags and mtu line (SIOCGIFFLAGS, SIOCGIFMTU), then
`options=` (the enabled capabilities) and `capabilities=` (what the NIC has),
from SIOCGIFCAP, in ifconfig's printb format ("4200302<TXCSUM,...>").
Changing: SIOCGIFCAP, then each word sets or clears its bits in the enabled
set, then one SIOCSIFCAP with the result (none if nothing changes); the
kernel answers once every worker took it. A word naming a capability the
NIC lacks makes the kernel refuse with EINVAL ("ifconfig: SIOCSIFCAP:
Invalid argument", nothing changed); an unknown word is "WORD: bad value";
an unknown interface "interface NAME does not exist". Those, and a server
that is not running, exit 1; a bad command line is one line and exit 2.

Models: sbin/ifconfig/ifconfig.c (status, printb, setifcap). Differences:
ifconfig's setifcap masks the request with the capabilities (ifr_reqcap), so
a word for a missing capability does nothing silently; here it reaches the
kernel, whose SIOCSIFCAP check (net/if.c) refuses it, so the user learns that
nm0 lacks it. The words of one command go in one SIOCSIFCAP, so a refused
command changes nothing. capabilities= is printed without -m (-m is taken and
changes nothing); there are no ether, inet, media or status lines: the model's
nm0 has no link-layer or IP address of its own (the server listens on the
host's sockets) and no media.
"""

from __future__ import annotations

import errno
import sys
from collections.abc import Sequence

from mbuf.sys_ctlio import (
    CAP_WORDS,
    IFCAPBITS,
    IFFBITS,
    IFNAMSIZ,
    SIOCGIFFLAGS,
    SIOCGIFMTU,
    printb,
)
from userland.ctl import CtlDev, ProgParser, open_ctl

USAGE = "usage: nomapd ifconfig [-am] [--server DIR|PORT] [interface [[-]option ...]]"


def _parser() -> ProgParser:
    p = ProgParser(prog="nomapd ifconfig", usage=USAGE)
    p.add_argument("-a", dest="all", action="store_true", help="every interface")
    p.add_argument("-m", dest="mflag", action="store_true", help="capabilities (always shown)")
    p.add_server()
    p.add_argument("interface", nargs="?")
    # The words start with '-' (-nomap): they are taken from the rest of argv.
    return p


def status(ctl: CtlDev, ifname: str) -> str:
    """The lines ifconfig prints for one interface."""
    flags = ctl.getifint(ifname, SIOCGIFFLAGS)
    mtu = ctl.getifint(ifname, SIOCGIFMTU)
    caps, enabled = ctl.getifcap(ifname)
    return (
        f"{ifname}: flags={printb(flags, IFFBITS)} metric 0 mtu {mtu}\n"
        f"\toptions={printb(enabled, IFCAPBITS)}\n"
        f"\tcapabilities={printb(caps, IFCAPBITS)}\n"
    )


def setifcap(ctl: CtlDev, ifname: str, words: list[str]) -> None:
    """The words' changes in one SIOCSIFCAP; ValueError naming an unknown word."""
    _caps, cur = ctl.getifcap(ifname)
    flags = cur
    for w in words:
        bits = CAP_WORDS.get(w.removeprefix("-"))
        if bits is None:
            raise ValueError(w)
        flags = flags & ~bits if w.startswith("-") else flags | bits
    if flags != cur:
        ctl.setifcap(ifname, flags)


def _split(argv: list[str]) -> tuple[list[str], list[str]]:
    """(the flags and the interface, the option words after the interface)."""
    for i, a in enumerate(argv):
        if a == "--server":
            continue
        if not a.startswith("-") and (i == 0 or argv[i - 1] != "--server"):
            return argv[: i + 1], argv[i + 1 :]
    return argv, []


def main(argv: Sequence[str]) -> int:
    head, words = _split(list(argv))
    ns = _parser().parse_args(head)
    late = [w for w in words if w.startswith("--")]
    if late:  # an option after the interface: a bad command line, not a word
        print(f"ifconfig: {late[0]}: options go before the interface", file=sys.stderr)
        return 2
    if ns.all and (ns.interface or words):
        print("ifconfig: -a takes no interface", file=sys.stderr)
        return 2
    if ns.interface is not None and len(ns.interface.encode()) >= IFNAMSIZ:
        print(f"ifconfig: interface {ns.interface} does not exist", file=sys.stderr)
        return 1
    ctl = open_ctl("ifconfig", ns.server)
    if ctl is None:
        return 1
    with ctl:
        try:
            if ns.interface is None:
                for name in ctl.interfaces():
                    sys.stdout.write(status(ctl, name))
                return 0
            if words:
                setifcap(ctl, ns.interface, words)
            else:
                sys.stdout.write(status(ctl, ns.interface))
        except ValueError as e:
            print(f"ifconfig: {e.args[0]}: bad value", file=sys.stderr)
            return 1
        except OSError as e:
            if e.errno == errno.ENXIO:
                print(f"ifconfig: interface {ns.interface} does not exist", file=sys.stderr)
            elif e.errno == errno.EINVAL:
                print("ifconfig: SIOCSIFCAP: Invalid argument", file=sys.stderr)
            else:
                print(f"ifconfig: {e.strerror or e}", file=sys.stderr)
            return 1
    return 0
