"""`nomapd capture` end to end: a real server, real curl, tshark and tcpdump reading the files.

Each capture is the real command (`python -m server capture ...`) run beside a
server of this module; it is started before the fetch (its "listening on" line
says every descriptor is attached) and stopped with SIGINT (or SIGTERM, or
`-c`) after it, so a test also checks that a stopped capture has all the
fetch's packets. The fetched file is 300 KiB + 7 bytes. Every server ends
with the leak assertion, whose keys include the bpf descriptors, the device
layer's files and mappings, and the TLS key export (descriptors asking, lines
pending in a descriptor or in the worker).

Needs (CI: .ci/run): curl, tshark (capinfos, editcap: wireshark-common), tcpdump, libpcap0.8.
"""

from __future__ import annotations

import contextlib
import os
import pathlib
import re
import signal
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Iterator

import pytest

from tests.integration.conftest import ServerProcess
from tests.support.files import file_bytes
from userland.pcap_file import pcap_read
from userland.pcapng_file import BT_DSB, BT_EPB, BT_IDB, BT_ISB

SIZE = 300 * 1024 + 7
NAME = f"f{SIZE}.bin"
TSHARK = ["tshark", "-n", "-o", "tcp.desegment_tcp_streams:TRUE"]


@pytest.fixture(scope="module")
def docroot(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    root = tmp_path_factory.mktemp("capture-root")
    (root / NAME).write_bytes(file_bytes(SIZE))
    (root / "small.txt").write_bytes(b"small\n")
    return root


@contextlib.contextmanager
def running(docroot: pathlib.Path, state: pathlib.Path, args: list[str]) -> Iterator[ServerProcess]:
    """A server for captures; at the end, the leak assertion and a clean stop."""
    srv = ServerProcess(docroot, [*args, "--access-log", "off"], state)
    try:
        yield srv
        srv.assert_no_leaks()
    finally:
        srv.stop()
    assert srv.proc.returncode == 0, srv.stderr
    assert "Traceback" not in srv.stderr, srv.stderr


@pytest.fixture(scope="module")
def tls(docroot: pathlib.Path, state_dir: pathlib.Path) -> Iterator[ServerProcess]:
    with running(docroot, state_dir, []) as srv:
        yield srv


@pytest.fixture(scope="module")
def tls_nonomap(docroot: pathlib.Path, state_dir: pathlib.Path) -> Iterator[ServerProcess]:
    with running(docroot, state_dir, ["--no-nomap"]) as srv:
        yield srv


@pytest.fixture(scope="module")
def http(docroot: pathlib.Path, state_dir: pathlib.Path) -> Iterator[ServerProcess]:
    with running(docroot, state_dir, ["--http"]) as srv:
        yield srv


class Capture:
    """One `nomapd capture` process on a server, started and waited for."""

    def __init__(self, srv: ServerProcess, args: list[str], ready: bool = True) -> None:
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        cmd = [sys.executable, "-m", "server", "capture", "--server", devices(srv), *args]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
        self.err: list[str] = []
        self.out = b""
        assert self.proc.stderr is not None and self.proc.stdout is not None
        self._t_err = threading.Thread(target=self._pump_err, daemon=True)
        self._t_out = threading.Thread(target=self._pump_out, daemon=True)
        self._t_err.start()
        self._t_out.start()
        if ready:
            self.wait_for("listening on")

    def _pump_err(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.err.append(line.decode())

    def _pump_out(self) -> None:
        assert self.proc.stdout is not None
        self.out = self.proc.stdout.read()

    def wait_for(self, text: str) -> None:
        deadline = time.monotonic() + 30
        while not any(text in line for line in self.err):
            assert self.proc.poll() is None, f"capture exited: {''.join(self.err)}"
            assert time.monotonic() < deadline, f"no {text!r}: {''.join(self.err)}"
            time.sleep(0.02)

    def stop(self, sig: int = signal.SIGINT) -> tuple[int, int, int]:
        """Signal it, wait, and return its statistics (captured, received, dropped)."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        return self.wait()

    def wait(self) -> tuple[int, int, int]:
        rc, err = self.finish()
        assert rc == 0, err
        assert "Traceback" not in err, err
        m = re.search(
            r"^(\d+) packets captured\n(\d+) packets received by filter\n"
            r"(\d+) packets dropped by kernel\n\Z",
            err,
            re.M,
        )
        assert m, err
        return int(m[1]), int(m[2]), int(m[3])

    def finish(self) -> tuple[int, str]:
        """Wait for it to exit by itself: its exit code and stderr."""
        try:
            rc = self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise
        self._t_err.join(timeout=10)
        self._t_out.join(timeout=10)
        assert self.proc.stdout is not None and self.proc.stderr is not None
        self.proc.stdout.close()
        self.proc.stderr.close()
        return rc, "".join(self.err)


def devices(srv: ServerProcess) -> str:
    """The instance directory the server announced (`--server DIR` chooses it)."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        for line in list(srv.stdout):
            if line.startswith("nomapd: devices in "):
                return line.removeprefix("nomapd: devices in ").split(" (")[0]
        time.sleep(0.05)
    raise AssertionError(f"no devices line: {srv.stdout}")


def curl(srv: ServerProcess, path: str, *args: str) -> bytes:
    out = subprocess.run(
        ["curl", "-sS", "-k", "--max-time", "60", *args, srv.url(path)], capture_output=True
    )
    assert out.returncode == 0, out.stderr
    return out.stdout


def tshark(*args: str) -> str:
    out = subprocess.run([*TSHARK, *args], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return out.stdout


def exported(f: pathlib.Path, out: pathlib.Path) -> dict[str, bytes]:
    tshark("-r", str(f), "-q", "--export-objects", f"http,{out}")
    return {p.name: p.read_bytes() for p in out.iterdir()}


def frames(f: pathlib.Path) -> list[tuple[int, bytes, int]]:
    """A savefile's (ts_ns, bytes, wirelen) records: pcap directly, pcapng via editcap."""
    if f.suffix == ".pcapng":
        pcap = f.with_suffix(".conv.pcap")
        subprocess.run(["editcap", "-F", "pcap", str(f), str(pcap)], check=True)
        f = pcap
    _, _, recs = pcap_read(f.read_bytes())
    return recs


# -- TLS with --keys: Wireshark decrypts with no other input ---------------------------------


@pytest.mark.parametrize("server", ["tls", "tls_nonomap"])
@pytest.mark.parametrize("version", ["1.3", "1.2"])
def test_keys_decrypt_http_and_export_the_file(
    request: pytest.FixtureRequest, server: str, version: str, tmp_path: pathlib.Path
) -> None:
    srv: ServerProcess = request.getfixturevalue(server)
    f = tmp_path / "f.pcapng"
    cap = Capture(srv, ["-w", str(f), "--keys"])
    assert cap.err[0] == f"nomapd capture: WARNING: writing TLS secrets into {f} (--keys)\n"
    tls = ["--tlsv1.3"] if version == "1.3" else ["--tlsv1.2", "--tls-max", "1.2"]
    body = curl(srv, f"/{NAME}", *tls)
    assert body == file_bytes(SIZE)
    captured, received, dropped = cap.stop()
    assert captured == len(frames(f)) and captured <= received and dropped == 0
    assert any("capture asks for TLS secrets (--keys)" in x for x in srv.stderr_lines)
    lines = tshark("-r", str(f), "-Y", "http").splitlines()
    assert sum(f"GET /{NAME} HTTP/1.1" in x for x in lines) == 1, lines
    assert sum("HTTP/1.1 200 OK" in x for x in lines) == 1, lines
    hello = ["-Y", "tls.handshake.type == 2", "-T", "fields"]
    shown = tshark("-r", str(f), *hello, "-e", "tls.handshake.extensions.supported_version")
    assert ("0x0304" in shown) == (version == "1.3"), shown
    assert exported(f, tmp_path / "objects") == {NAME: file_bytes(SIZE)}
    # The file's layout: the secrets come before the session's HTTP records, and
    # the capture closed with one statistics block per interface.
    blocks = block_types(f)
    before_dsb = blocks[: blocks.index(BT_DSB)].count(BT_EPB)
    http_frames = tshark("-r", str(f), "-Y", "http", "-T", "fields", "-e", "frame.number")
    assert min(int(n) for n in http_frames.split()) > before_dsb
    assert blocks.count(BT_ISB) == blocks.count(BT_IDB) == 1 and blocks[-1] == BT_ISB


def block_types(f: pathlib.Path) -> list[int]:
    """The pcapng file's block types in order (host byte order, as it was written)."""
    data, off, out = f.read_bytes(), 0, []
    while off < len(data):
        btype, length = struct.unpack_from("=II", data, off)
        out.append(btype)
        off += length
    return out


def test_without_keys_nothing_decrypts(tls: ServerProcess, tmp_path: pathlib.Path) -> None:
    f = tmp_path / "f.pcapng"
    cap = Capture(tls, ["-w", str(f)])
    curl(tls, f"/{NAME}")
    captured, _, _ = cap.stop(signal.SIGTERM)
    assert captured > 0
    assert not any("WARNING" in x for x in cap.err)
    assert tshark("-r", str(f), "-Y", "http") == ""
    assert tshark("-r", str(f), "-Y", "tls.app_data") != ""


# -- plain HTTP: both buffer modes, every output, -c ---------------------------------------


def test_http_modes_outputs_and_count(http: ServerProcess, tmp_path: pathlib.Path) -> None:
    """Five captures of one fetch: zero-copy and buffered give identical packets; the
    pcap on stdout is the same file; the lines without -w are tcpdump -nn -r's of the
    written file; -c 5 stops by itself after exactly 5."""
    zf, bf, ng = tmp_path / "z.pcap", tmp_path / "b.pcap", tmp_path / "n.pcapng"
    caps = [
        Capture(http, ["--mode", "zbuf", "-w", str(zf)]),
        Capture(http, ["--mode", "buffer", "-B", "256", "-w", str(bf)]),
        Capture(http, ["-w", "-", "-U"]),
        Capture(http, ["-w", str(ng), "--immediate"]),
        Capture(http, []),
    ]
    counted = Capture(http, ["-c", "5", "-w", str(tmp_path / "c.pcap")])
    assert curl(http, f"/{NAME}") == file_bytes(SIZE)
    stats = [c.stop() for c in caps]
    assert counted.wait()[0] == 5 and len(frames(tmp_path / "c.pcap")) == 5
    zero_copy = frames(zf)
    assert len(zero_copy) > 5 and all(s[0] == len(zero_copy) and s[2] == 0 for s in stats)
    assert frames(bf) == zero_copy
    stdout = tmp_path / "stdout.pcap"
    stdout.write_bytes(caps[2].out)
    assert frames(stdout) == zero_copy
    assert frames(ng) == zero_copy
    assert exported(ng, tmp_path / "objects") == {NAME: file_bytes(SIZE)}
    lines = tshark("-r", str(ng), "-Y", "http").splitlines()
    assert any(f"GET /{NAME}" in x for x in lines) and any("200 OK" in x for x in lines)
    env = dict(os.environ, TZ="UTC")  # pktprint prints the time of day in UTC
    tcpdump = subprocess.run(
        ["tcpdump", "-nn", "-r", str(zf)], capture_output=True, text=True, env=env
    )
    assert tcpdump.returncode == 0, tcpdump.stderr
    assert caps[4].out.decode() == tcpdump.stdout


# -- filters: the kernel keeps what tshark's display filter keeps ---------------------------


def test_filter_expressions_match_tshark(http: ServerProcess, tmp_path: pathlib.Path) -> None:
    port = 40000 + os.getpid() % 20000
    filters = [
        ("tcp port {p}", "tcp.port == {p}"),
        ("greater 1000", "frame.len >= 1000"),
        ("tcp[tcpflags] & tcp-push != 0", "ip && tcp.flags.push == 1"),
    ]
    whole = tmp_path / "all.pcap"
    caps = [Capture(http, ["-w", str(whole)])]
    for i, (expr, _) in enumerate(filters):
        caps.append(Capture(http, ["-w", str(tmp_path / f"{i}.pcap"), expr.format(p=port)]))
    curl(http, f"/{NAME}", "--local-port", str(port))
    curl(http, "/small.txt")  # another client port, small packets
    for c in caps:
        c.stop()
    everything = frames(whole)
    for i, (_, display) in enumerate(filters):
        kept = tmp_path / f"tshark{i}.pcap"
        tshark("-r", str(whole), "-Y", display.format(p=port), "-F", "pcap", "-w", str(kept))
        mine = frames(tmp_path / f"{i}.pcap")
        assert 0 < len(mine) < len(everything), display
        assert mine == frames(kept), display


# -- the TCP checksum field as a capture shows it --------------------------------------------


def pseudo_sum(ip: bytes, tcplen: int) -> int:
    """The pseudo-header sum (not complemented) of an IPv4 or IPv6 (RFC 8200 8.1)
    packet's TCP segment over `tcplen`, folded."""
    addrs = ip[12:20] if ip[0] >> 4 == 4 else ip[8:40]
    s: int = sum(struct.unpack(f"!{len(addrs) // 2}H", addrs)) + 6 + tcplen
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return s


def server_checksums(f: pathlib.Path, server_port: int) -> list[tuple[int, int, int]]:
    """(th_sum, pseudo-header sum with the length, without) of the server's frames."""
    out = []
    for _, data, _ in frames(f):
        ip = data[14:]
        if ip[0] >> 4 == 4:
            iphlen, tcplen = 20, struct.unpack_from("!H", ip, 2)[0] - 20
        else:
            iphlen, tcplen = 40, struct.unpack_from("!H", ip, 4)[0]
        (sport,) = struct.unpack_from("!H", ip, iphlen)
        if sport == server_port:
            th_sum = struct.unpack_from("!H", ip, iphlen + 16)[0]
            out.append((th_sum, pseudo_sum(ip, tcplen), pseudo_sum(ip, 0)))
    return out


def test_checksums_offloaded_and_not(
    http: ServerProcess, docroot: pathlib.Path, state_dir: pathlib.Path, tmp_path: pathlib.Path
) -> None:
    """With --txcsum (the default) a TSO burst shows the pseudo-header sum without the
    length and a single segment with it (what FreeBSD's tap after iflib_encap shows);
    with --no-txcsum tshark finds every checksum right."""
    f = tmp_path / "offload.pcap"
    cap = Capture(http, ["-w", str(f)])
    curl(http, f"/{NAME}")  # TSO bursts
    curl(http, "/small.txt")  # one segment
    cap.stop()
    sums = server_checksums(f, http.port)
    tso = [s for s in sums if s[0] == s[2]]
    single = [s for s in sums if s[0] == s[1]]
    assert tso and single and len(tso) + len(single) == len(sums), sums
    with running(docroot, state_dir, ["--http", "--no-txcsum"]) as soft:
        g = tmp_path / "soft.pcap"
        cap = Capture(soft, ["-w", str(g)])
        curl(soft, f"/{NAME}")
        n, _, _ = cap.stop()
    good = tshark("-r", str(g), "-o", "tcp.check_checksum:TRUE", "-Y", "tcp.checksum.status == 1")
    assert n > 5 and len(good.splitlines()) == n


# -- several workers: every worker's device, merged by time ----------------------------------


def test_two_workers_merged(
    docroot: pathlib.Path, state_dir: pathlib.Path, tmp_path: pathlib.Path
) -> None:
    f = tmp_path / "w.pcapng"
    with running(docroot, state_dir, ["--http", "--workers", "2"]) as srv:
        cap = Capture(srv, ["-w", str(f)])
        assert "(2 worker(s))" in "".join(cap.err)
        for _ in range(6):
            assert curl(srv, f"/{NAME}") == file_bytes(SIZE)
        cap.stop()
    fields = tshark(
        "-r", str(f), "-T", "fields", "-e", "frame.interface_id", "-e", "frame.time_epoch"
    )
    rows = [line.split("\t") for line in fields.splitlines()]
    times = [float(t) for _, t in rows]
    assert times == sorted(times)
    assert {i for i, _ in rows} <= {"0", "1"}
    gets = tshark("-r", str(f), "-Y", "http.request").splitlines()
    assert len(gets) == 6


# -- bad input: one line, exit 2 -----------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["tcp[["], "bad filter expression"),
        (["-i", "eth0"], "-i eth0: no such interface"),
        (["-s", "0"], "-s 0: must be 1..262144"),
        (["-s", "-5"], "-s -5: must be 1..262144"),
        (["--mode", "mmap"], "--mode mmap: zbuf or buffer"),
        (["-w", "x.pcap", "--keys"], "--keys needs a pcapng file"),
        (["-Q", "sideways"], "-Q sideways: in, out or inout"),
        (["-c", "0"], "-c 0: must be positive"),  # tcpdump: invalid packet count
        (["-c", "-3"], "-c -3: must be positive"),
    ],
)
def test_bad_command_lines(http: ServerProcess, args: list[str], message: str) -> None:
    out = _run_capture(["--server", devices(http), *args])
    assert out.returncode == 2 and out.stdout == ""
    assert out.stderr.startswith(f"nomapd capture: {message}") and out.stderr.count("\n") == 1


def _run_capture(args: list[str], state: str | None = None) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    if state is not None:  # and no XDG runtime directory: nothing runs there
        env["NOMAPD_STATE_DIR"] = state
        env.pop("XDG_RUNTIME_DIR", None)
    return subprocess.run(
        [sys.executable, "-m", "server", "capture", *args],
        capture_output=True, text=True, env=env, timeout=60,
    )  # fmt: skip


@pytest.mark.parametrize("iface,suffix", [("nm0", ".pcapng"), ("nm0", ".pcap"),
                                          ("netmap:nm0/tr", ".pcap")])  # fmt: skip
def test_a_worker_that_dies_mid_capture_ends_it_cleanly(
    docroot: pathlib.Path, state_dir: pathlib.Path, tmp_path: pathlib.Path, iface: str,
    suffix: str,
) -> None:  # fmt: skip
    """A worker's kernel goes away under a capture (SIGKILL; the supervisor starts
    another): the capture ends by itself, as tcpdump does when its interface goes,
    with one line saying why, tcpdump's three lines and exit 1, no traceback; the
    file is complete and valid (capinfos counts what the capture says it wrote)."""
    out = tmp_path / f"gone{suffix}"
    with running(docroot, state_dir, ["--http", "--workers", "2"]) as srv:
        cap = Capture(srv, ["-i", iface, "-w", str(out), "-U", "--immediate"])
        empty = out.stat().st_size  # the file's header(s)
        for _ in range(3):
            assert curl(srv, "/small.txt") == b"small\n"
        # The fetches' packets reach the file (-U) before the kill: those still in the
        # dying kernel's buffers would go with it, as a real kernel's would.
        deadline = time.monotonic() + 30
        while out.stat().st_size == empty:
            assert time.monotonic() < deadline, "no packet written"
            time.sleep(0.05)
        os.kill(srv.stats()["workers"][1]["worker.pid"], signal.SIGKILL)
        rc, err = cap.finish()
        assert rc == 1 and "Traceback" not in err, err
        m = re.search(r"^nomapd capture: \S+/w1/(bpf|netmap): .*\(the server stopped\?\)\n"
                      r"(\d+) packets captured\n\d+ packets received by filter\n"
                      r"\d+ packets dropped by kernel\n\Z", err, re.M)  # fmt: skip
        assert m, err
        info = subprocess.run(["capinfos", "-c", "-M", str(out)], capture_output=True, text=True)
        assert info.returncode == 0, info.stderr
        assert re.search(rf"Number of packets:\s+{m[2]}\n", info.stdout), (info.stdout, err)
        assert int(m[2]) >= 1
        _wait_up(srv, 2)  # the restarted worker, before the leak assertion


@pytest.mark.parametrize("args", [[], ["-w", "-"]])
def test_a_reader_that_goes_away_ends_the_capture(http: ServerProcess, args: list[str]) -> None:
    """`nomapd capture | head`: once the reader of stdout is gone (EPIPE), the
    capture ends quietly, as tcpdump does on SIGPIPE: no traceback, exit 0."""
    cmd = [sys.executable, "-m", "server", "capture", "--server", devices(http), *args]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None and proc.stderr is not None
    try:
        assert b"listening on" in proc.stderr.readline()
        curl(http, "/small.txt")
        assert proc.stdout.read(20)  # head -c 20
        proc.stdout.close()
        deadline = time.monotonic() + 60
        while proc.poll() is None:  # each fetch makes it write: it meets the closed pipe
            assert time.monotonic() < deadline, "the capture did not end"
            curl(http, "/small.txt")
        err = proc.stderr.read().decode()
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        proc.stderr.close()
    assert proc.returncode == 0 and "Traceback" not in err and "Error" not in err, err


def _wait_up(srv: ServerProcess, workers: int) -> None:
    deadline = time.monotonic() + 60
    while srv.stats().get("server.workers_up") != workers:
        assert time.monotonic() < deadline, "a worker did not come back"
        time.sleep(0.1)


def test_no_running_server(tmp_path: pathlib.Path) -> None:
    out = _run_capture([], state=str(tmp_path))
    assert out.returncode == 2 and out.stderr.count("\n") == 1
    assert out.stderr.startswith("nomapd capture: no running nomapd server under ")


def test_kernel_errno_is_one_line(docroot: pathlib.Path, state_dir: pathlib.Path) -> None:
    """net.bpf.zerocopy_enable off: BIOCSETBUFMODE(ZBUF) answers EINVAL; buffered works."""
    with running(docroot, state_dir, ["--http", "--no-bpf-zerocopy"]) as srv:
        out = _run_capture(["--server", devices(srv), "--mode", "zbuf"])
        assert out.returncode == 2 and out.stderr.count("\n") == 1, out.stderr
        assert re.fullmatch(r"nomapd capture: \S+/w0/bpf: .* \(EINVAL\)\n", out.stderr), out.stderr
        cap = Capture(srv, ["--mode", "buffer", "-c", "2"])
        curl(srv, "/small.txt")
        assert cap.wait()[0] == 2
