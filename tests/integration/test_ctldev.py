"""The control device through `nomapd sysctl` and `nomapd ifconfig`, against real servers.

One process (plain HTTP) and two workers (KTLS), on 127.0.0.1. The flips
under load are the issue's "done when" through the two commands: under wrk,
`nomapd ifconfig nm0 -nomap` makes ip_output convert (`ip.unmapped_converted`
rises) and `nm0 nomap` stops it, every byte of a curl fetch made while
flipping intact; `nomapd sysctl kern.ipc.mb_use_ext_pgs=0` stops the
conversions at their source (sendfile makes no unmapped mbuf), `=1` starts
them again. With two workers each worker's own counters show the change as
soon as the command returns. Bad input, no server and another user are
refused with one line. Every test ends with the leak assertion.
"""

from __future__ import annotations

import hashlib
import os
import pathlib
import re
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest

from tests.integration.conftest import ServerProcess
from tests.integration.test_bpfdev import devices_dir
from tests.integration.test_observe import _curl_sha, _json, _stopped, _under_wrk, _wait_until
from tests.privdrop import as_unprivileged
from tests.support.files import file_bytes
from userland import ifconfig as ifconfig_prog
from userland import sysctl as sysctl_prog
from userland.ctl import CtlDev

BIG = 3 * 1024 * 1024 + 17  # f{BIG}.bin of the corpus
WANT = hashlib.sha256(file_bytes(BIG)).hexdigest()
TOP = pathlib.Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def one(corpus: pathlib.Path, state_dir: pathlib.Path) -> Iterator[ServerProcess]:
    srv = ServerProcess(corpus, ["--http", "--access-log", "off"], state_dir)
    yield srv
    inst = devices_dir(srv)
    _stopped(srv)
    assert not (inst / "ctl").exists()


@pytest.fixture(scope="module")
def two(corpus: pathlib.Path, state_dir: pathlib.Path) -> Iterator[ServerProcess]:
    srv = ServerProcess(corpus, ["--workers", "2", "--access-log", "off"], state_dir)
    yield srv
    inst = devices_dir(srv)
    _stopped(srv)
    assert not (inst / "ctl").exists()


@pytest.fixture(params=["one", "two"])
def srv(request: pytest.FixtureRequest) -> ServerProcess:
    s: ServerProcess = request.getfixturevalue(request.param)
    return s


def nomapd(srv: ServerProcess, *args: str) -> subprocess.CompletedProcess[str]:
    """`nomapd CMD --server INSTANCE ARGS...` as a user types it."""
    cmd, *rest = args
    return subprocess.run(
        [sys.executable, "-m", "server", cmd, "--server", str(devices_dir(srv)), *rest],
        capture_output=True, text=True, timeout=60, cwd=TOP,
    )  # fmt: skip


def ok(srv: ServerProcess, *args: str) -> str:
    r = nomapd(srv, *args)
    assert (r.returncode, r.stderr) == (0, ""), r
    return r.stdout


def refused(srv: ServerProcess, prog: str, code: int, line: str, *args: str) -> None:
    r = nomapd(srv, prog, *args)
    assert (r.returncode, r.stdout, r.stderr) == (code, "", line + "\n"), (args, r)


def worker_snaps(srv: ServerProcess) -> list[dict[str, Any]]:
    s = srv.stats()
    return list(s["workers"]) if "workers" in s else [s]


def conv(srv: ServerProcess) -> int:
    return int(srv.stats()["ip.unmapped_converted"])


def background_fetch(srv: ServerProcess) -> subprocess.Popen[bytes]:
    """A curl fetch of f{BIG}.bin slow enough (1 MB/s) to span the flips around it."""
    return subprocess.Popen(
        ["curl", "-sSk", "--max-time", "60", "--limit-rate", "1M", srv.url(f"/f{BIG}.bin")],
        stdout=subprocess.PIPE,
    )


def finished_sha(curl: subprocess.Popen[bytes]) -> str:
    out, _ = curl.communicate(timeout=90)
    assert curl.returncode == 0
    return hashlib.sha256(out).hexdigest()


# -- printing ---------------------------------------------------------------------------


def test_ifconfig_prints_as_freebsd(srv: ServerProcess) -> None:
    text = ok(srv, "ifconfig")
    assert ok(srv, "ifconfig", "-a") == text == ok(srv, "ifconfig", "nm0")
    lines = text.splitlines()
    assert lines[0] == "nm0: flags=8843<UP,BROADCAST,RUNNING,SIMPLEX,MULTICAST> metric 0 mtu 1500"
    m = re.fullmatch(r"\toptions=([0-9a-f]+)<([A-Z0-9_,]*)>", lines[1])
    assert m, lines
    for w in worker_snaps(srv):  # what every worker's nm0 has enabled
        assert int(m.group(1), 16) == sum(_capbit(n) for n in w["ifnet.capenable"])
        assert m.group(2).split(",") == [n.removeprefix("IFCAP_") for n in w["ifnet.capenable"]]
    assert re.fullmatch(r"\tcapabilities=[0-9a-f]+<[A-Z0-9_,]*NOMAP[A-Z0-9_,]*>", lines[2])
    assert len(lines) == 3
    srv.assert_no_leaks()


def _capbit(name: str) -> int:
    from mbuf.ifnet import IfCap

    return int(IfCap[name])


def test_sysctl_prints_as_freebsd(srv: ServerProcess) -> None:
    srv.assert_no_leaks()  # idle: the counters stand still while we compare
    tree = _json(srv, "/sysctl")
    lines = ok(srv, "sysctl", "-a").splitlines()
    assert lines == [f"{n}: {d['value']}" for n, d in tree.items()]
    assert "kern.ipc.mb_use_ext_pgs: 1" in lines and "net.bpf.zerocopy_enable: 1" in lines
    sub = ok(srv, "sysctl", "kern.ipc.tls").splitlines()  # a prefix: its subtree
    assert sub == [ln for ln in lines if ln.startswith("kern.ipc.tls.")] and len(sub) > 10
    tls = tree["kern.ipc.tls.enable"]["value"]  # 0 with --http
    assert ok(srv, "sysctl", "-n", "kern.ipc.tls.enable") == f"{tls}\n"
    assert ok(srv, "sysctl", "-d", "kern.ipc.mb_use_ext_pgs") == (
        "kern.ipc.mb_use_ext_pgs: Use unmapped mbufs for sendfile (and KTLS)\n"
    )
    desc = ok(srv, "sysctl", "-d", "kern.ipc.tls.stats.rx_records")  # the counter's comment
    assert desc == "kern.ipc.tls.stats.rx_records: client records decrypted (KTLS RX)\n"
    both = ok(srv, "sysctl", "-n", "kern.ipc.tls.enable", "net.inet.tcp.sendspace")
    assert both == f"{tls}\n{tree['net.inet.tcp.sendspace']['value']}\n"
    srv.assert_no_leaks()


# -- the flips under load ---------------------------------------------------------------


def test_ifconfig_nomap_flip_under_load(srv: ServerProcess) -> None:
    with _under_wrk(srv):
        _wait_until("traffic", lambda: srv.stats()["ifnet.tx_bytes"] > 1 << 20)
        before = conv(srv)
        curl = background_fetch(srv)  # in flight across both flips
        assert ok(srv, "ifconfig", "nm0", "-nomap") == ""  # ifconfig prints nothing
        for w in worker_snaps(srv):  # every worker took it before the command returned
            assert "IFCAP_NOMAP" not in w["ifnet.capenable"], w["ifnet.capenable"]
        assert "NOMAP" not in ok(srv, "ifconfig", "nm0").splitlines()[1]
        _wait_until("conversions under -nomap", lambda: conv(srv) > before)
        assert ok(srv, "ifconfig", "nm0", "nomap") == ""
        stopped = conv(srv)  # ip_output decides per packet: none converts from here on
        for w in worker_snaps(srv):
            assert "IFCAP_NOMAP" in w["ifnet.capenable"]
        sent = srv.stats()["ifnet.tx_bytes"]
        assert _curl_sha(srv, f"/f{BIG}.bin") == WANT
        assert srv.stats()["ifnet.tx_bytes"] > sent + BIG
        assert conv(srv) == stopped
        assert finished_sha(curl) == WANT  # the fetch that was flipped under
    srv.assert_no_leaks()


def test_sysctl_mb_use_ext_pgs_stops_conversions(one: ServerProcess) -> None:
    srv = one
    assert ok(srv, "ifconfig", "nm0", "-nomap") == ""  # unmapped mbufs get converted
    try:
        with _under_wrk(srv):
            before = conv(srv)
            _wait_until("conversions", lambda: conv(srv) > before)
            curl = background_fetch(srv)
            assert (
                ok(srv, "sysctl", "kern.ipc.mb_use_ext_pgs=0")
                == "kern.ipc.mb_use_ext_pgs: 1 -> 0\n"
            )
            assert ok(srv, "sysctl", "-n", "kern.ipc.mb_use_ext_pgs") == "0\n"
            assert _curl_sha(srv, f"/f{BIG}.bin") == WANT
            assert finished_sha(curl) == WANT
        srv.assert_no_leaks()  # the mbufs made unmapped before the change are gone
        stopped, ext = conv(srv), srv.stats()["mbuf.ext_pgs_total"]
        assert _curl_sha(srv, f"/f{BIG}.bin") == WANT  # per sendfile call: mapped mbufs
        assert (conv(srv), srv.stats()["mbuf.ext_pgs_total"]) == (stopped, ext)
        assert ok(srv, "sysctl", "-n", "kern.ipc.mb_use_ext_pgs=1") == "0 -> 1\n"
        assert _curl_sha(srv, f"/f{BIG}.bin") == WANT
        assert conv(srv) > stopped
    finally:
        ok(srv, "sysctl", "kern.ipc.mb_use_ext_pgs=1")
        ok(srv, "ifconfig", "nm0", "nomap")
    srv.assert_no_leaks()


def test_sysctl_reaches_every_worker_at_once(two: ServerProcess) -> None:
    srv = two
    assert {w["server.mode"] for w in worker_snaps(srv)} == {"ktls"}
    out = ok(srv, "sysctl", "kern.ipc.mb_use_ext_pgs=0")
    assert out == "kern.ipc.mb_use_ext_pgs: 1 -> 0\n"
    # every worker's kernel changed before the command returned: new connections
    # get user-space TLS (KTLS needs unmapped mbufs)
    assert [w["server.mode"] for w in worker_snaps(srv)] == ["user-tls", "user-tls"]
    assert _curl_sha(srv, f"/f{BIG}.bin") == WANT
    assert ok(srv, "sysctl", "kern.ipc.mb_use_ext_pgs=1") == "kern.ipc.mb_use_ext_pgs: 0 -> 1\n"
    assert [w["server.mode"] for w in worker_snaps(srv)] == ["ktls", "ktls"]
    assert _curl_sha(srv, f"/f{BIG}.bin") == WANT
    srv.assert_no_leaks()


# -- bad input --------------------------------------------------------------------------


def test_sysctl_bad_input(srv: ServerProcess) -> None:
    before = ok(srv, "sysctl", "net.inet.tcp.sendspace", "kern.ipc.mb_use_ext_pgs")
    refused(srv, "sysctl", 1, "sysctl: unknown oid 'kern.ipc.sparkle'", "kern.ipc.sparkle")
    refused(srv, "sysctl", 1, "sysctl: unknown oid 'kern.ipc.sparkle'", "kern.ipc.sparkle=1")
    refused(
        srv, "sysctl", 1, "sysctl: unknown oid 'kern.ipc.tl'", "kern.ipc.tl"
    )  # not a whole word
    for bad in ("7", "-1", "yes", ""):
        arg = f"kern.ipc.mb_use_ext_pgs={bad}"
        refused(srv, "sysctl", 1, f"sysctl: {arg}: Invalid argument", arg)
    refused(srv, "sysctl", 1, "sysctl: net.inet.tcp.sendspace=12x: Invalid argument",
            "net.inet.tcp.sendspace=12x")  # fmt: skip
    refused(
        srv, "sysctl", 1, "sysctl: oid 'kern.ipc.maxsockbuf' is read only", "kern.ipc.maxsockbuf=1"
    )
    refused(srv, "sysctl", 1, "sysctl: oid 'kern.ipc.tls.stats.records_framed' is read only",
            "kern.ipc.tls.stats.records_framed=0")  # fmt: skip
    for long in ("k" * 70000, "net.inet.tcp.sendspace=" + "1" * 70000, "x" * 1024):
        refused(srv, "sysctl", 1, f"sysctl: oid too long: '{long}'", long)  # sysctl(8)'s BUFSIZ
    assert ok(srv, "sysctl", "net.inet.tcp.sendspace", "kern.ipc.mb_use_ext_pgs") == before
    usage = "usage: nomapd sysctl [-adn] [--server DIR|PORT] name[=value] ..."
    refused(srv, "sysctl", 2, usage)
    refused(srv, "sysctl", 2, "sysctl: unrecognized arguments: -z", "-z", "kern.ipc")
    refused(srv, "sysctl", 2, "sysctl: -a takes no names", "-a", "kern.ipc")
    srv.assert_no_leaks()


def test_ifconfig_bad_input(srv: ServerProcess) -> None:
    before = ok(srv, "ifconfig", "nm0")
    refused(
        srv, "ifconfig", 1, "ifconfig: SIOCSIFCAP: Invalid argument", "nm0", "lro"
    )  # nm0 has no LRO
    refused(srv, "ifconfig", 1, "ifconfig: SIOCSIFCAP: Invalid argument", "nm0", "-nomap", "txtls")
    refused(srv, "ifconfig", 1, "ifconfig: interface nm1 does not exist", "nm1")
    refused(srv, "ifconfig", 1, "ifconfig: interface nm1 does not exist", "nm1", "-nomap")
    refused(
        srv,
        "ifconfig",
        1,
        "ifconfig: interface nm0123456789abcdef does not exist",
        "nm0123456789abcdef",
    )
    refused(srv, "ifconfig", 1, "ifconfig: sparkle: bad value", "nm0", "-nomap", "sparkle")
    assert ok(srv, "ifconfig", "nm0") == before  # nothing changed by any of them
    refused(srv, "ifconfig", 2, "ifconfig: -a takes no interface", "-a", "nm0")
    refused(srv, "ifconfig", 2, "ifconfig: unrecognized arguments: -z", "-z")
    refused(
        srv, "ifconfig", 2, "ifconfig: --server: options go before the interface",
        "nm0", "-nomap", "--server", str(devices_dir(srv)),
    )  # fmt: skip
    assert ok(srv, "ifconfig", "nm0") == before  # and -nomap was not applied
    srv.assert_no_leaks()


def test_no_server(tmp_path: pathlib.Path) -> None:
    for prog, args in (("sysctl", ["-a"]), ("ifconfig", [])):
        r = subprocess.run(
            [sys.executable, "-m", "server", prog, "--server", str(tmp_path), *args],
            capture_output=True, text=True, timeout=60, cwd=TOP,
        )  # fmt: skip
        line = f"{prog}: no nomapd devices in {str(tmp_path)!r} (is the server running?)\n"
        assert (r.returncode, r.stdout, r.stderr) == (1, "", line)


def test_another_user_is_refused(one: ServerProcess) -> None:
    inst = str(devices_dir(one))

    def check() -> None:
        with pytest.raises(PermissionError):
            CtlDev.open(inst)  # the 0700 directory; past it, SO_PEERCRED (tests/server)
        assert sysctl_prog.main(["--server", inst, "kern.ipc.mb_use_ext_pgs=0"]) == 1
        assert ifconfig_prog.main(["--server", inst, "nm0", "-nomap"]) == 1

    as_unprivileged(check)
    assert ok(one, "sysctl", "-n", "kern.ipc.mb_use_ext_pgs") == "1\n"
    assert os.stat(inst).st_mode & 0o777 == 0o700
    one.assert_no_leaks()


def test_an_open_ctl_is_counted_and_released(srv: ServerProcess) -> None:
    base = srv.idle_stats()["devfs.open_files"]
    ctl = CtlDev.open(str(devices_dir(srv)))
    try:
        assert srv.stats()["devfs.open_files"] == base + 1  # the supervisor's, with workers
        assert [n.value for n in ctl.sysctl_get("kern.ipc.mb_use_ext_pgs")] == ["1"]
    finally:
        ctl.close()
    srv.assert_no_leaks()  # devfs.open_files back to zero
