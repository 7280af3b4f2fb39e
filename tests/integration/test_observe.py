"""Watching and steering a live server: /sysctl, /ifconfig, /metrics, stat -w and top.

Real servers on 127.0.0.1, real clients (curl, wrk), real terminals (a
pseudo-terminal for `nomapd top`). The flips under load are the issue's
"done when": under wrk, `POST /ifconfig nm0 -nomap` makes ip_output convert
(`ip.unmapped_converted` rises) and `nm0 nomap` stops it at once, every byte
intact; `kern.ipc.mb_use_ext_pgs` does the same for sendfile's sf_bufs
through `POST /sysctl`. Every test ends with the leak assertion.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import os
import pathlib
import pty
import re
import select
import signal
import struct
import subprocess
import sys
import termios
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from mbuf.counters import SYSCTL_PREFIXES
from mbuf.kern_sysctl import stat_oid
from tests.integration.conftest import ServerProcess
from tests.support.files import file_bytes

BIG = 3 * 1024 * 1024 + 17  # f{BIG}.bin of the corpus
TOP = pathlib.Path(__file__).resolve().parents[2]


def _ints(snap: dict[str, Any]) -> set[str]:
    return {k for k, v in snap.items() if isinstance(v, int) and not isinstance(v, bool)}


def _token(srv: ServerProcess) -> str:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        for line in list(srv.stdout):
            if m := re.search(r"admin control token (\S+)", line):
                return m.group(1)
        time.sleep(0.05)
    raise AssertionError(f"no token line in {srv.stdout}")


def _admin(srv: ServerProcess, path: str, body: str | None = None,
           token: str | None = None) -> tuple[int, bytes, dict[str, str]]:  # fmt: skip
    req = urllib.request.Request(f"http://127.0.0.1:{srv.admin_port}{path}")
    if body is not None:
        req.data = body.encode()
        req.add_header("Content-Type", "application/x-www-form-urlencoded")
    if token is not None:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=15) as r:
            return r.status, r.read(), dict(r.headers)
    except urllib.error.HTTPError as e:
        return e.code, e.read(), dict(e.headers)


def _json(srv: ServerProcess, path: str) -> Any:
    status, body, _ = _admin(srv, path)
    assert status == 200, body
    return json.loads(body)


def _curl_sha(srv: ServerProcess, path: str) -> str:
    out = subprocess.run(
        ["curl", "-sSk", "--max-time", "60", srv.url(path)], capture_output=True, check=True
    ).stdout
    return hashlib.sha256(out).hexdigest()


def _wrk(srv: ServerProcess, seconds: int) -> subprocess.Popen[str]:
    return subprocess.Popen(
        ["wrk", "-t1", "-c2", f"-d{seconds}s", srv.url("/f16385.bin")],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip


@contextlib.contextmanager
def _under_wrk(srv: ServerProcess, seconds: int = 8) -> Iterator[None]:
    """wrk on the server for `seconds` around the block; every answer a 200."""
    wrk = _wrk(srv, seconds)
    try:
        yield
    finally:
        out, _ = wrk.communicate(timeout=60)
    assert wrk.returncode == 0, out
    assert "Non-2xx" not in out and "Socket errors" not in out, out


def _wait_until(what: str, cond: Any, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"never happened: {what}"
        time.sleep(0.05)


def _stopped(srv: ServerProcess) -> None:
    srv.stop()
    assert srv.proc.returncode == 0, srv.stderr
    assert "Traceback" not in srv.stderr, srv.stderr


@pytest.fixture(scope="module")
def ctl(corpus: pathlib.Path, state_dir: pathlib.Path) -> Iterator[ServerProcess]:
    """KTLS, two workers, control on."""
    srv = ServerProcess(
        corpus, ["--workers", "2", "--admin-control", "--access-log", "off"], state_dir
    )
    yield srv
    _stopped(srv)


@pytest.fixture(scope="module")
def ctl_http(corpus: pathlib.Path, state_dir: pathlib.Path) -> Iterator[ServerProcess]:
    """Plain HTTP, one process, control on."""
    srv = ServerProcess(corpus, ["--http", "--admin-control", "--access-log", "off"], state_dir)
    yield srv
    _stopped(srv)


# -- read-only: GET /sysctl, GET /ifconfig, POST refused ------------------------


def test_sysctl_and_ifconfig_read_only(default_server: ServerProcess) -> None:
    assert not any("token" in line for line in default_server.stdout)
    tree = _json(default_server, "/sysctl")
    assert tree["kern.ipc.mb_use_ext_pgs"] == {
        "value": 1, "type": "bool", "writable": True,
        "description": "Use unmapped mbufs for sendfile (and KTLS)",
    }  # fmt: skip
    knobs = ("kern.ipc.tls.enable", "net.inet.tcp.sendspace", "net.bpf.zerocopy_enable",
             "net.bpf.maxbufsize", "kern.ipc.sendfile.readahead", "dev.nm.0.loss_ppm")  # fmt: skip
    for name in knobs:
        assert tree[name]["writable"] is True, name
    assert tree["net.inet.tcp.sendspace"]["value"] == 256 * 1024  # --sndbuf's default
    assert tree["kern.ipc.maxsockbuf"]["writable"] is False
    assert tree["kern.ipc.tls.maxthreads"] == {
        "value": 0, "type": "int", "writable": False,
        "description": "KTLS worker threads (--ktls-workers; 0: encrypt inline; set at start)",
    }  # fmt: skip
    rx = tree["kern.ipc.tls.stats.rx_records"]
    assert rx["type"] == "counter" and rx["writable"] is False
    assert rx["description"] == "client records decrypted (KTLS RX)"  # the field's comment
    assert tree["kern.ipc.mbstat.mbufs_in_use"]["type"] == "gauge"
    # every counter of /stats is a node, with the same value when nothing moves
    assert _curl_sha(default_server, "/f4097.bin") == hashlib.sha256(file_bytes(4097)).hexdigest()
    for _ in range(50):
        stats = default_server.idle_stats()
        tree = _json(default_server, "/sysctl")
        if _kernel(default_server.stats()) == _kernel(stats):
            break
    else:
        raise AssertionError("the counters never stood still")
    counters = [k for k in stats if k.partition(".")[0] in SYSCTL_PREFIXES and k in _ints(stats)]
    assert len(counters) > 100
    for key in counters:
        assert tree[stat_oid(key)]["value"] == stats[key], key
    assert tree["net.inet.ip.stats.output_packets"]["value"] > 0
    nm0 = _json(default_server, "/ifconfig")["nm0"]
    assert nm0["text"].splitlines() == [
        "nm0: flags=8843<UP,BROADCAST,RUNNING,SIMPLEX,MULTICAST> metric 0 mtu 1500",
        "\toptions=4200302<TXCSUM,TSO4,TSO6,TXCSUM_IPV6,NOMAP>",
    ]
    for path, body in (("/sysctl", "kern.ipc.mb_use_ext_pgs=0"), ("/ifconfig", "nm0 -nomap")):
        status, text, _ = _admin(default_server, path, body, token="anything")
        assert (status, text) == (
            403,
            b"admin control is off (start the server with --admin-control)\n",
        )
    assert _json(default_server, "/sysctl")["kern.ipc.mb_use_ext_pgs"]["value"] == 1
    assert "NOMAP" in _json(default_server, "/ifconfig")["nm0"]["options"]
    default_server.assert_no_leaks()


# -- bad input --------------------------------------------------------------------


def _curl_host(srv: ServerProcess, host: str, path: str, *extra: str) -> str:
    """The admin's status for `path` asked with Host: `host` (curl, as a browser asks)."""
    return subprocess.run(
        ["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "15",
         "-H", f"Host: {host}", *extra, f"http://127.0.0.1:{srv.admin_port}{path}"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip


def test_admin_answers_its_own_names_only(ctl: ServerProcess) -> None:
    """DNS rebinding: a page of evil.example whose name now resolves to 127.0.0.1 asks
    with Host: evil.example; it gets 421, and changes nothing even with the token."""
    port = ctl.admin_port
    token = _token(ctl)
    for path in ("/connections", "/sysctl", "/metrics", "/stats", "/"):
        assert _curl_host(ctl, f"evil.example:{port}", path) == "421", path
        assert _curl_host(ctl, "evil.example", path) == "421", path
    post = ("-X", "POST", "-H", f"Authorization: Bearer {token}", "--data", "nm0 -nomap")
    assert _curl_host(ctl, f"evil.example:{port}", "/ifconfig", *post) == "421"
    assert "NOMAP" in _json(ctl, "/ifconfig")["nm0"]["options"]
    for host in (f"127.0.0.1:{port}", f"localhost:{port}", "localhost", f"[::1]:{port}",
                 f"127.0.0.1:{port + 1}"):  # fmt: skip
        assert _curl_host(ctl, host, "/connections") == "200", host
    ctl.assert_no_leaks()


def test_public_admin_control_warns(corpus: pathlib.Path, state_dir: pathlib.Path) -> None:
    srv = ServerProcess(corpus, ["--http", "--admin-public", "--admin-control"], state_dir)
    _stopped(srv)
    assert "nomapd: warning: --admin-control with --admin-public: the token travels over " \
        "plain HTTP\n" in srv.stderr_lines, srv.stderr  # fmt: skip


def test_control_refuses_bad_requests(ctl: ServerProcess) -> None:
    token = _token(ctl)
    assert any(f"http://127.0.0.1:{ctl.admin_port}/#token={token}" in ln for ln in ctl.stdout)
    status, text, headers = _admin(ctl, "/sysctl", "kern.ipc.mb_use_ext_pgs=0")
    assert status == 401 and headers.get("WWW-Authenticate") == "Bearer", text
    assert _admin(ctl, "/ifconfig", "nm0 -nomap", token=token + "x")[:2] == (403, b"wrong token\n")
    cases = [
        ("/sysctl", "kern.ipc.no_such_knob=1", 404, b"unknown oid\n"),
        ("/sysctl", "kern.ipc.mb_use_ext_pgs=2", 400, b"Invalid argument\n"),
        ("/sysctl", "kern.ipc.mb_use_ext_pgs=yes", 400, b"Invalid argument\n"),
        ("/sysctl", "net.inet.tcp.sendspace=100", 400, b"Invalid argument\n"),
        ("/sysctl", "kern.ipc.maxsockbuf=1", 403, b"oid is read only\n"),
        ("/sysctl", "kern.ipc.tls.stats.records_encrypted=0", 403, b"oid is read only\n"),
        ("/ifconfig", "nm0 -nomap sparkle", 400, b"sparkle: bad value\n"),
        ("/ifconfig", "em0 -nomap", 404, b"interface em0 does not exist\n"),
    ]
    before_tree, before_if = _json(ctl, "/sysctl"), _json(ctl, "/ifconfig")
    for path, req, want, message in cases:
        assert _admin(ctl, path, req, token=token)[:2] == (want, message), req
    after_tree = _json(ctl, "/sysctl")
    for name, node in before_tree.items():  # nothing changed
        if node["writable"]:
            assert after_tree[name]["value"] == node["value"], name
    assert _json(ctl, "/ifconfig") == before_if
    # A capability nm0 lacks is masked out, as ifconfig's setifcap does.
    status, body, _ = _admin(ctl, "/ifconfig", "nm0 lro", token=token)
    assert status == 200 and "LRO" not in json.loads(body)["new"]
    # -txcsum takes TSO with it (the driver's rule), and both come back.
    status, body, _ = _admin(ctl, "/ifconfig", "nm0 -txcsum", token=token)
    assert status == 200 and json.loads(body)["new"] == ["TSO6", "TXCSUM_IPV6", "NOMAP"]
    for w in _json(ctl, "/stats")["workers"]:  # applied to every worker
        assert w["ifnet.capenable"] == ["IFCAP_TSO6", "IFCAP_TXCSUM_IPV6", "IFCAP_NOMAP"]
    assert _admin(ctl, "/ifconfig", "nm0 txcsum tso", token=token)[0] == 200
    assert _json(ctl, "/ifconfig") == before_if
    ctl.assert_no_leaks()


# -- the flips under load -----------------------------------------------------------


def test_ifconfig_nomap_flip_under_load(ctl: ServerProcess) -> None:
    token = _token(ctl)
    want = hashlib.sha256(file_bytes(BIG)).hexdigest()
    with _under_wrk(ctl):

        def conv() -> int:
            return int(ctl.stats()["ip.unmapped_converted"])

        before = conv()
        status, body, _ = _admin(ctl, "/ifconfig", "nm0 -nomap", token=token)
        assert status == 200 and "NOMAP" not in json.loads(body)["new"], body
        assert _curl_sha(ctl, f"/f{BIG}.bin") == want  # converted on its way, intact
        _wait_until("conversions under -nomap", lambda: conv() > before)
        status, body, _ = _admin(ctl, "/ifconfig", "nm0 nomap", token=token)
        assert status == 200 and "NOMAP" in json.loads(body)["new"], body
        stopped = conv()  # every worker answered: no ip_output converts from here on
        sent = ctl.stats()["ifnet.tx_bytes"]
        assert _curl_sha(ctl, f"/f{BIG}.bin") == want
        assert ctl.stats()["ifnet.tx_bytes"] > sent + BIG
        assert conv() == stopped
    ctl.assert_no_leaks()


def test_sysctl_mb_use_ext_pgs_flip_under_load(ctl_http: ServerProcess) -> None:
    srv, token = ctl_http, _token(ctl_http)
    want = hashlib.sha256(file_bytes(BIG)).hexdigest()

    def sfbufs() -> int:
        return int(srv.stats()["sfbuf.total"])

    with _under_wrk(srv):
        _wait_until("traffic", lambda: srv.stats()["ifnet.tx_bytes"] > 1 << 20)
        before = sfbufs()  # unmapped sendfile with nomap: no sf_buf at all
        status, body, _ = _admin(srv, "/sysctl", "kern.ipc.mb_use_ext_pgs=0", token=token)
        assert status == 200 and json.loads(body) == {
            "errno": 0, "message": "", "old": 1, "new": 0
        }  # fmt: skip
        ext = srv.stats()["mbuf.ext_pgs_total"]  # every sendfile call from here: sf_bufs
        assert _curl_sha(srv, f"/f{BIG}.bin") == want
        _wait_until("sf_bufs under mb_use_ext_pgs=0", lambda: sfbufs() > before)
        assert srv.stats()["mbuf.ext_pgs_total"] == ext  # none made while it was 0
        assert _admin(srv, "/sysctl", "kern.ipc.mb_use_ext_pgs=1", token=token)[0] == 200
        stopped = sfbufs()
        assert _curl_sha(srv, f"/f{BIG}.bin") == want
        _wait_until("unmapped again", lambda: srv.stats()["mbuf.ext_pgs_total"] > ext)
        assert sfbufs() == stopped
    srv.assert_no_leaks()


# -- /metrics -------------------------------------------------------------------------


def _metrics(srv: ServerProcess) -> dict[str, Any]:
    status, body, headers = _admin(srv, "/metrics")
    assert status == 200 and headers["Content-Type"].startswith("text/plain; version=")
    return {f.name: f for f in text_string_to_metric_families(body.decode())}


def _kernel(snap: dict[str, Any]) -> dict[str, Any]:
    """The kernel counters of a /stats snapshot (not server.cpu_seconds, which always moves)."""
    out = {k: v for k, v in snap.items() if k.partition(".")[0] in SYSCTL_PREFIXES}
    if "workers" in snap:
        out["workers"] = [_kernel(w) for w in snap["workers"]]
    return out


def _idle_pair(srv: ServerProcess) -> tuple[dict[str, Any], dict[str, Any]]:
    """/stats and /metrics read with no kernel counter moving between them."""
    for _ in range(50):
        first = srv.idle_stats()
        fams = _metrics(srv)
        if _kernel(srv.stats()) == _kernel(first):
            return first, fams
    raise AssertionError("the counters never stood still")


def test_metrics_equal_stats_per_worker(ctl: ServerProcess) -> None:
    want = hashlib.sha256(file_bytes(BIG)).hexdigest()
    for _ in range(6):  # new connections: both workers get some
        assert _curl_sha(ctl, f"/f{BIG}.bin") == want
        assert _curl_sha(ctl, "/f16385.bin") == hashlib.sha256(file_bytes(16385)).hexdigest()
    stats, fams = _idle_pair(ctl)
    per = {str(w["worker.index"]): w for w in stats["workers"]}
    assert set(per) == {"0", "1"}
    checked = 0
    # every kernel counter (the groups of SYSCTL_PREFIXES; not the server's own, the
    # worker's identity or settings)
    for key in sorted(_ints(per["0"])):
        if key.partition(".")[0] not in SYSCTL_PREFIXES:
            continue
        oid = stat_oid(key)
        # a counter's family is named without "_total" (its samples have it), a gauge's is not
        name = "nomapd_" + oid.replace(".", "_")
        fam = fams.get(name) or fams[name.removesuffix("_total")]
        samples = {s.labels["worker"]: s for s in fam.samples}
        assert set(samples) == {"0", "1"}, key  # one series per worker, no aggregate
        for w, snap in per.items():
            assert samples[w].value == snap[key], (key, w)
        checked += 1
    assert checked > 100
    records = fams["nomapd_kern_ipc_tls_stats_records_encrypted"]
    assert records.type == "counter"
    assert records.samples[0].name == "nomapd_kern_ipc_tls_stats_records_encrypted_total"
    assert sum(s.value for s in records.samples) == stats["ktls.records_encrypted"] > 0
    assert fams["nomapd_kern_ipc_mbstat_mbufs_in_use"].type == "gauge"
    assert fams["nomapd_kern_ipc_tls_stats_rx_records"].documentation == (
        "client records decrypted (KTLS RX)"
    )
    ctl.assert_no_leaks()


def test_metrics_single_process(default_server: ServerProcess) -> None:
    assert _curl_sha(default_server, "/f4097.bin") == hashlib.sha256(file_bytes(4097)).hexdigest()
    stats, fams = _idle_pair(default_server)
    fam = fams["nomapd_dev_nm_0_stats_tx_bytes"]
    assert [(s.labels, s.value) for s in fam.samples] == [
        ({"worker": "0"}, stats["ifnet.tx_bytes"])
    ]
    default_server.assert_no_leaks()


# -- nomapd stat -w ----------------------------------------------------------------------


def _nomapd(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "server", *args],
        capture_output=True, text=True, timeout=timeout, cwd=TOP,
    )  # fmt: skip


def test_stat_w(ctl_http: ServerProcess) -> None:
    srv = ctl_http
    admin = f"127.0.0.1:{srv.admin_port}"
    assert _curl_sha(srv, f"/f{BIG}.bin") == hashlib.sha256(file_bytes(BIG)).hexdigest()
    total = srv.idle_stats()
    r = _nomapd("stat", "--admin", admin, "-w", "0.05", "-c", "23")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    header = "records   extpgs   mapped    conv   sfbufs  csum-bytes  packets  wire-bytes  drops"
    assert [i for i, ln in enumerate(lines) if ln.strip() == header] == [0, 22]  # every 21
    rows = [ln.split() for ln in lines if ln.strip() != header]
    assert len(rows) == 23 and all(len(r) == 9 for r in rows)
    # the first line counts from the start (netstat's since boot), the rest are deltas
    assert int(rows[0][7]) == total["ifnet.tx_bytes"] > BIG
    assert int(rows[0][6]) == total["ifnet.tx_segments"]
    assert all(r == ["0"] * 9 for r in rows[1:])  # idle: nothing moved
    # under traffic: the lines add up to what moved, until Ctrl-C
    watch = subprocess.Popen(
        [sys.executable, "-m", "server", "stat", "--admin", admin, "-w", "0.1"],
        stdout=subprocess.PIPE, text=True, cwd=TOP,
    )  # fmt: skip
    assert watch.stdout is not None
    assert watch.stdout.readline().strip() == header
    assert _curl_sha(srv, f"/f{BIG}.bin") == hashlib.sha256(file_bytes(BIG)).hexdigest()
    after = srv.idle_stats()
    seen = 0
    while seen != after["ifnet.tx_bytes"]:  # read lines until they caught up
        row = watch.stdout.readline().split()
        if row and row[0] != "records":
            seen += int(row[7])
        assert seen <= after["ifnet.tx_bytes"]
    watch.send_signal(signal.SIGINT)
    watch.communicate(timeout=10)
    assert watch.returncode == 130
    for bad in (["-c", "3"], ["-w", "0"], ["-w", "1", "-c", "0"]):
        r = _nomapd("stat", "--admin", admin, *bad)
        assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, (bad, r.stderr)
    srv.assert_no_leaks()


def test_stat_w_into_head(ctl_http: ServerProcess) -> None:
    """`nomapd stat -w 0.05 | head -2`: once the reader is gone (EPIPE) the watch
    ends quietly, exit 0, as netstat -w does on SIGPIPE; no traceback."""
    watch = subprocess.Popen(
        [sys.executable, "-m", "server", "stat", "--admin", f"127.0.0.1:{ctl_http.admin_port}",
         "-w", "0.05"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=TOP,
    )  # fmt: skip
    assert watch.stdout is not None and watch.stderr is not None
    assert watch.stdout.readline() and watch.stdout.readline()  # head -2
    watch.stdout.close()
    try:
        err = watch.stderr.read()
        watch.wait(timeout=30)
    finally:
        if watch.poll() is None:
            watch.kill()
            watch.wait()
        watch.stderr.close()
    assert watch.returncode == 0 and err == "", err
    ctl_http.assert_no_leaks()


# -- nomapd top ------------------------------------------------------------------------------


def _pty_read(fd: int, until: Any, timeout: float) -> str:
    """Everything the terminal shows until `until(text)` holds (or the time is up)."""
    buf = b""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 0.2)
        if ready:
            try:
                chunk = os.read(fd, 65536)
            except OSError as e:
                if e.errno == errno.EIO:  # the child is gone
                    break
                raise
            if not chunk:
                break
            buf += chunk
            if until(buf.decode(errors="replace")):
                break
    return buf.decode(errors="replace")


def test_top_in_a_terminal(ctl: ServerProcess) -> None:
    pid, fd = pty.fork()
    if pid == 0:  # the child: nomapd top on a 120x40 terminal
        fcntl.ioctl(0, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
        os.chdir(TOP)
        os.execve(sys.executable, [sys.executable, "-m", "server", "top", "--admin",
                  f"127.0.0.1:{ctl.admin_port}"], {**os.environ, "TERM": "xterm"})  # fmt: skip
    try:
        wrk = _wrk(ctl, 4)
        words = ("nomapd top: ktls", "worker 0", "worker 1", "sendfile", "KTLS", "tcp_output",
                 "ip_output", "conversions/s", "nm0", "wire bytes/s",
                 "busiest connections")  # fmt: skip
        screen = _pty_read(fd, lambda s: all(w in s for w in words), 30)  # the first paint
        for w in words:
            assert w in screen, (w, screen)
        # under load the next refresh shows rates in k or M per second (curses then
        # rewrites only the characters that change: look at everything written)
        rate = re.compile(r"\d\.\d[kM]")
        screen += _pty_read(fd, lambda s: rate.search(screen + s) is not None, 30)
        assert rate.search(screen), screen
        assert "busiest connections" in screen
        wrk.communicate(timeout=60)
        os.write(fd, b"q")
        _pty_read(fd, lambda s: False, 10)  # until the child closes the terminal
        _, status = os.waitpid(pid, 0)
        pid = 0
        assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, status
    finally:
        if pid:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        os.close(fd)
    ctl.assert_no_leaks()


# -- a restarted worker gets the changes made since the start ----------------------------------


def test_top_without_a_terminal(ctl: ServerProcess) -> None:
    """`nomapd top` with no terminal (a pipe, cron, a CI log) is one line and
    exit 2, as top(1) refuses, not a curses traceback."""
    admin = f"127.0.0.1:{ctl.admin_port}"
    r = subprocess.run([sys.executable, "-m", "server", "top", "--admin", admin],
                       stdin=subprocess.DEVNULL, capture_output=True, text=True,
                       env={**os.environ, "TERM": "xterm"}, cwd=TOP, timeout=60)  # fmt: skip
    assert r.returncode == 2 and r.stdout == "", r.stderr
    assert r.stderr == "nomapd: top: needs a terminal (nomapd stat -w 1 prints lines)\n"
    ctl.assert_no_leaks()


def test_a_restarted_worker_gets_the_changes(ctl: ServerProcess) -> None:
    token = _token(ctl)
    assert _admin(ctl, "/ifconfig", "nm0 -nomap", token=token)[0] == 200
    assert _admin(ctl, "/sysctl", "kern.ipc.mb_use_ext_pgs=0", token=token)[0] == 200
    victim = ctl.stats()["workers"][1]
    os.kill(victim["worker.pid"], signal.SIGKILL)

    def back() -> bool:
        w = ctl.stats()["workers"][1]
        return bool(w["worker.up"] and w["worker.restarts"] == 1)

    _wait_until("worker 1 restarted", back)
    w1 = ctl.stats()["workers"][1]
    assert w1["worker.pid"] != victim["worker.pid"]
    assert "IFCAP_NOMAP" not in w1["ifnet.capenable"]  # the command line said --nomap
    assert w1["kern.ipc.mb_use_ext_pgs"] == 0 and w1["server.mode"] == "user-tls"
    # KTLS needs unmapped mbufs: new connections keep TLS in user space meanwhile
    ktls = ctl.stats()["ktls.sessions_total"]
    assert _curl_sha(ctl, "/f16385.bin") == hashlib.sha256(file_bytes(16385)).hexdigest()
    assert ctl.stats()["ktls.sessions_total"] == ktls
    assert _admin(ctl, "/ifconfig", "nm0 nomap", token=token)[0] == 200
    assert _admin(ctl, "/sysctl", "kern.ipc.mb_use_ext_pgs=1", token=token)[0] == 200
    for w in ctl.stats()["workers"]:
        assert "IFCAP_NOMAP" in w["ifnet.capenable"] and w["kern.ipc.mb_use_ext_pgs"] == 1
        assert w["server.mode"] == "ktls"
    assert _curl_sha(ctl, "/f16385.bin") == hashlib.sha256(file_bytes(16385)).hexdigest()
    assert ctl.stats()["ktls.sessions_total"] > ktls
    ctl.assert_no_leaks()
