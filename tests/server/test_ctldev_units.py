"""The control device's calls without sockets: mbuf/sys_ctlio.py's messages both ways,
and CtlFile's ioctls on a real (single-process) Server's kernel."""

from __future__ import annotations

import errno

import pytest
import trio

from mbuf.ifnet import IFCAP_NOMAP, IfCap
from mbuf.sys_ctlio import (
    CTLIOC_IFLIST,
    CTLIOC_SYSCTL,
    IFCAPBITS,
    IFREQ_CAP,
    IFREQ_INT,
    SIOCGIFCAP,
    SIOCGIFFLAGS,
    SIOCGIFMTU,
    SIOCSIFCAP,
    SysctlNode,
    printb,
    sysctl_nodes_pack,
    sysctl_nodes_unpack,
    sysctl_oldnew_unpack,
    sysctl_req,
    sysctl_req_parse,
)
from server.app import Server
from server.config import ServerConfig
from server.devices.ctldev import CtlFile


def test_messages_round_trip() -> None:
    assert sysctl_req_parse(sysctl_req("kern.ipc")) == ("kern.ipc", None)
    assert sysctl_req_parse(sysctl_req("a.b", "")) == ("a.b", "")  # an empty value is a write
    assert sysctl_req_parse(sysctl_req("ké", "vä")) == ("ké", "vä")
    for bad in (b"", sysctl_req("a.b", "1")[:-1], sysctl_req("a.b") + b"x"):
        with pytest.raises(ValueError):
            sysctl_req_parse(bad)
    nodes = [
        SysctlNode("a.b", "int", True, "12", "twelve"),
        SysctlNode("a.c", "gauge", False, "0", ""),
    ]
    back = sysctl_nodes_unpack(sysctl_nodes_pack(nodes))
    assert [(n.name, n.kind, n.writable, n.value, n.descr) for n in back] == [
        ("a.b", "int", True, "12", "twelve"), ("a.c", "gauge", False, "0", ""),
    ]  # fmt: skip
    assert printb(0x4000002, IFCAPBITS) == "4000002<TXCSUM,NOMAP>"


def _ioctl(f: CtlFile, cmd: int, arg: bytes = b"") -> bytes:
    async def call() -> bytes:
        return await f.ioctl(cmd, arg, [])

    return trio.run(call)


def _errno(f: CtlFile, cmd: int, arg: bytes = b"") -> int | None:
    with pytest.raises(OSError) as e:
        _ioctl(f, cmd, arg)
    return e.value.errno


def test_ctl_ioctls_on_a_kernel() -> None:
    server = Server(ServerConfig())
    f = CtlFile(server)
    ifp = server.kern.ifnet
    nodes = sysctl_nodes_unpack(_ioctl(f, CTLIOC_SYSCTL, sysctl_req("kern.ipc.mb_use_ext_pgs")))
    assert [(n.name, n.value, n.writable) for n in nodes] == [
        ("kern.ipc.mb_use_ext_pgs", "1", True)
    ]
    assert len(sysctl_nodes_unpack(_ioctl(f, CTLIOC_SYSCTL, sysctl_req("")))) == len(
        server.kern.sysctl.oids
    )
    out = _ioctl(f, CTLIOC_SYSCTL, sysctl_req("kern.ipc.mb_use_ext_pgs", "0"))
    assert sysctl_oldnew_unpack(out) == ("1", "0") and not server.kern.mb_use_ext_pgs
    assert _errno(f, CTLIOC_SYSCTL, sysctl_req("kern.ipc.mb_use_ext_pgs", "2")) == errno.EINVAL
    assert _errno(f, CTLIOC_SYSCTL, sysctl_req("kern.ipc.maxsockbuf", "1")) == errno.EPERM
    assert _errno(f, CTLIOC_SYSCTL, sysctl_req("kern.nothing")) == errno.ENOENT
    assert _errno(f, CTLIOC_SYSCTL, b"\x01") == errno.EINVAL
    assert not server.kern.mb_use_ext_pgs  # the refusals changed nothing

    assert _ioctl(f, CTLIOC_IFLIST) == b"nm0".ljust(16, b"\0")
    nm0 = b"nm0"
    _, caps, cur = IFREQ_CAP.unpack(_ioctl(f, SIOCGIFCAP, IFREQ_CAP.pack(nm0, 0, 0)))
    assert (caps, cur) == (ifp.if_capabilities, ifp.if_capenable) and cur & IFCAP_NOMAP
    _, cur = IFREQ_CAP.unpack(_ioctl(f, SIOCSIFCAP, IFREQ_CAP.pack(nm0, cur & ~IFCAP_NOMAP, 0)))[1:]
    assert not cur & IFCAP_NOMAP and not ifp.if_capenable & IFCAP_NOMAP
    lro = cur | int(IfCap.IFCAP_LRO)  # nm0 has no LRO: if.c's EINVAL, nothing changed
    assert _errno(f, SIOCSIFCAP, IFREQ_CAP.pack(nm0, lro, 0)) == errno.EINVAL
    assert ifp.if_capenable == cur
    assert _errno(f, SIOCGIFCAP, IFREQ_CAP.pack(b"nm1", 0, 0)) == errno.ENXIO
    assert _errno(f, SIOCGIFCAP, b"nm0") == errno.EINVAL  # a short struct ifreq
    assert IFREQ_INT.unpack(_ioctl(f, SIOCGIFFLAGS, IFREQ_INT.pack(nm0, 0)))[1] == 0x8843
    assert IFREQ_INT.unpack(_ioctl(f, SIOCGIFMTU, IFREQ_INT.pack(nm0, 0)))[1] == ifp.if_mtu
    assert _errno(f, 0x1234) == errno.ENOTTY


def test_command_lines(capsys: pytest.CaptureFixture[str]) -> None:
    from server.cli import build_parser, main

    helptext = build_parser().format_help()
    assert "sysctl" in helptext and "ifconfig" in helptext
    assert main(["sysctl"]) == 2  # no name and no -a: the usage line, before any device
    assert capsys.readouterr().err == (
        "usage: nomapd sysctl [-adn] [--server DIR|PORT] name[=value] ...\n"
    )
    with pytest.raises(SystemExit) as e:
        main(["ifconfig", "-z"])
    assert e.value.code == 2
    assert capsys.readouterr().err == "ifconfig: unrecognized arguments: -z\n"
