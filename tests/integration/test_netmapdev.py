"""/dev/netmap end to end: a real server, `nomapd pkt-gen` processes over pipes,
monitors of nm0 beside BPF during a curl fetch, bad input through the device.

The server runs with --http (a capture shows the GET) and larger ring and
netmap_if pools (--netmap-ring-num, --netmap-if-num) so that NM_MAXPIPES pipes
fit in one region. Every test ends with the leak assertion, whose keys include
netmap's open files, ports, regions, rings and buffers, running kernel loops,
and the device layer's shared mappings.
"""

from __future__ import annotations

import errno
import fcntl
import os
import pathlib
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest

from mbuf.sys_devio import DEVOP_IOCTL, dev_req
from netmap.netmap_h import (
    NETMAP_REQ_REGISTER,
    NETMAP_REQ_SYNC_KLOOP_START,
    NETMAP_REQ_SYNC_KLOOP_STOP,
    NIOCCTRL,
    NM_MAXPIPES,
    NMREQ_REGISTER,
    NMREQ_SYNC_KLOOP_START,
    NR_REG_NULL,
    POLLERR,
    POLLIN,
)
from tests.integration.conftest import ServerProcess
from tests.integration.test_bpfdev import devices_dir, fetch, wait_closed
from tests.integration.test_capture import Capture
from tests.privdrop import as_unprivileged
from userland.bpfdev import BpfCapture
from userland.dev import DevFile
from userland.netmap_user import NmPort, nmport_open, nmreq_msg
from userland.pcap_file import pcap_read
from userland.pktgen import SEQ_OFF, build_frame

COUNT = 5000
BATCHES = [1, 8, 64, 512, 2048]


@pytest.fixture(scope="module")
def server(corpus: pathlib.Path, state_dir: pathlib.Path) -> Iterator[ServerProcess]:
    args = ["--http", "--netmap-ring-num", "300", "--netmap-if-num", "160"]
    srv = ServerProcess(corpus, args, state_dir)
    yield srv
    srv.stop()
    assert srv.proc.returncode == 0, srv.stderr
    assert "Traceback" not in srv.stderr, srv.stderr


def netmap_path(srv: ServerProcess) -> pathlib.Path:
    return devices_dir(srv) / "w0" / "netmap"


def open_port(srv: ServerProcess, name: str, **kw: bool) -> NmPort:
    return nmport_open(name, path=str(netmap_path(srv)), **kw)  # type: ignore[arg-type]


def pktgen(srv: ServerProcess, *args: str) -> subprocess.Popen[str]:
    cmd = [sys.executable, "-m", "server", "pkt-gen", "--server", str(devices_dir(srv)), "-q"]
    return subprocess.Popen(
        [*cmd, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def wait_bound(srv: ServerProcess, pid: int, port: str) -> None:
    """Until the server shows `port` bound by process `pid` (its rings' rows)."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if any(r["pid"] == pid and r["port"] == port for r in srv.stats()["netmap.ports"]):
            return
        time.sleep(0.05)
    raise AssertionError(f"{port} not bound by {pid}")


def finish(proc: subprocess.Popen[str]) -> str:
    _out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    return err


@pytest.mark.parametrize("kloop", [False, True], ids=["sync", "kloop"])
@pytest.mark.parametrize("batch", BATCHES)
def test_pktgen_moves_every_packet_intact(server: ServerProcess, batch: int, kloop: bool) -> None:
    flag = ["--kloop"] if kloop else []
    pipe = f"pg{batch}{'k' if kloop else ''}"
    before = server.stats()
    rx = pktgen(
        server,
        "-i",
        f"netmap:{pipe}{{0",
        "-f",
        "rx",
        "-n",
        str(COUNT),
        "-l",
        "64",
        "--check",
        *flag,
    )
    try:
        wait_bound(server, rx.pid, f"{pipe}{{0")
        tx = pktgen(server, "-i", f"netmap:{pipe}}}0", "-f", "tx", "-n", str(COUNT), "-b",
                    str(batch), "-l", "64", *flag)  # fmt: skip
        tx_err = finish(tx)
        rx_err = finish(rx)
    finally:
        rx.kill()
        rx.wait()
    assert f"Sent {COUNT} packets {COUNT * 64} bytes" in tx_err
    assert f"Received {COUNT} packets {COUNT * 64} bytes" in rx_err
    assert f"Check: {COUNT} intact, 0 bad" in rx_err
    after = server.assert_no_leaks()
    assert after["netmap.slots_moved"] - before["netmap.slots_moved"] >= 2 * COUNT
    assert after["netmap.ring_reinits"] == before["netmap.ring_reinits"]
    syncs = ("netmap.txsync_ioctl", "netmap.rxsync_ioctl")
    if kloop:  # the loop did every sync: the programs made no sync call
        assert all(after[k] == before[k] for k in syncs)
        assert after["netmap.txsync_kloop"] > before["netmap.txsync_kloop"]
    else:
        assert all(after[k] > before[k] for k in syncs)
        if batch > 1:  # a batch per sync: far fewer TX syncs than packets
            assert after["netmap.txsync_ioctl"] - before["netmap.txsync_ioctl"] < COUNT


def test_pktgen_rx_check_catches_a_wrong_packet(server: ServerProcess) -> None:
    """--check is not a formality: a packet with a wrong sequence number fails rx."""
    rx = pktgen(server, "-i", "netmap:bad{0", "-f", "rx", "-n", "3", "--check", "-l", "64")
    try:
        wait_bound(server, rx.pid, "bad{0")
        with open_port(server, "netmap:bad}0") as tx:
            ring = tx.tx_rings[0]
            frame = build_frame(64)
            for k, seq in enumerate([0, 1, 7]):
                i = (ring.head + k) % ring.num_slots
                idx = int(ring.slots["buf_idx"][i])
                ring.bufs[idx, :64] = list(frame)
                ring.bufs[idx, SEQ_OFF : SEQ_OFF + 4] = list(seq.to_bytes(4, "little"))
                ring.slots["len"][i] = 64
            ring.advance((ring.head + 3) % ring.num_slots)
            tx.txsync()
            _out, err = rx.communicate(timeout=60)
    finally:
        rx.kill()
        rx.wait()
    assert rx.returncode == 1, err
    assert "Check: 2 intact, 1 bad" in err and "packet 2: len 64, seq 7" in err
    server.assert_no_leaks()


def test_monitor_sees_the_frames_bpf_sees(server: ServerProcess, corpus: pathlib.Path) -> None:
    """netmap:nm0/tr and a BPF descriptor during one curl fetch: the same frames
    (both cut at the monitor's buffer size, 2048)."""
    bpf = BpfCapture.open(devices_dir(server) / "w0" / "bpf", mode="buffer", snaplen=2048,
                          bufsize=1 << 19, timeout=0.2)  # fmt: skip
    mon = open_port(server, "netmap:nm0/tr")
    try:
        assert server.stats()["netmap.ports"][0]["port"] == "nm0"
        body = fetch(server, "/f16385.bin")
        assert body == (corpus / "f16385.bin").read_bytes()
        wait_closed(server)
        frames: list[bytes] = []
        ring = mon.rx_rings[0]
        mon.rxsync()
        while ring.head != ring.tail:
            i = ring.head
            idx = int(ring.slots["buf_idx"][i])
            frames.append(bytes(ring.bufs[idx, : int(ring.slots["len"][i])]))
            ring.advance(ring.next(i))
            mon.rxsync()
        seen: list[bytes] = []
        while batch := bpf.next_batch():
            seen += [p.data for p in batch]
    finally:
        mon.close()
        bpf.close()
    assert frames and frames == seen
    assert any(b"GET /f16385.bin" in f for f in frames)
    s = server.assert_no_leaks()
    assert s["netmap.monitor_drops"] == 0


def _raw_register(dev: DevFile, name: str, mode: int = 1, mem_id: int = 0, ringid: int = 0) -> None:
    body = NMREQ_REGISTER.pack(0, 0, 0, 0, 0, 0, 0, 0, mem_id, ringid, mode, 0, 0)
    dev.ioctl(NIOCCTRL, nmreq_msg(NETMAP_REQ_REGISTER, name, body))


def _errno(fn: object, *args: object) -> int:
    with pytest.raises(OSError) as ei:
        fn(*args)  # type: ignore[operator]
    return int(ei.value.errno or 0)


def test_region_passed_to_the_process_cannot_shrink(server: ServerProcess) -> None:
    """The process gets the region's memfd; truncating it would make the server's
    next store into its own mapping fault (SIGBUS): the server sealed it first."""
    with DevFile.open(netmap_path(server)) as dev:
        _raw_register(dev, "sl{0")
        (fd,) = dev.received_fds
        dev.received_fds = []
        try:
            with pytest.raises(PermissionError):
                os.ftruncate(fd, 0)
            assert fcntl.fcntl(fd, fcntl.F_GET_SEALS) & fcntl.F_SEAL_SHRINK
        finally:
            os.close(fd)
    server.assert_no_leaks()


def test_bad_input_fails_that_port_only(server: ServerProcess) -> None:
    path = netmap_path(server)
    a = open_port(server, "netmap:ok{0")  # a healthy pipe beside the bad requests
    b = open_port(server, "netmap:ok}0")
    try:
        with DevFile.open(path) as dev:
            assert _errno(dev.ioctl, NIOCCTRL, nmreq_msg(99, "x")) == errno.EINVAL  # unknown type
            assert _errno(dev.ioctl, 0xC0DE) == errno.ENOTTY  # unknown ioctl
            assert _errno(_raw_register, dev, "x", NR_REG_NULL) == errno.EINVAL  # null, no region
            assert _errno(_raw_register, dev, "r{0", 4, 0, 5) == errno.EINVAL  # ring 5 of 1
        # An RX ring whose head the program put beyond the tail: that ring is reset.
        c = open_port(server, "netmap:hb{0")
        ring = c.rx_rings[0]
        r0 = server.stats()["netmap.ring_reinits"]
        ring.advance(5)  # nothing received: tail is 0
        c.rxsync()  # the kernel answers 0 and resets the ring
        assert ring.head == 0 and server.stats()["netmap.ring_reinits"] == r0 + 1
        ring.advance(ring.num_slots + 7)  # an index out of the ring
        assert c.poll(POLLIN, 0) & POLLERR
        assert ring.head == 0 and server.stats()["netmap.ring_reinits"] == r0 + 2
        c.close()
        # NM_MAXPIPES pipes on one parent, then one more: EINVAL.
        ends = [open_port(server, f"netmap:mp{{{i}@conf:slots=2") for i in range(NM_MAXPIPES)]
        try:
            assert _errno(open_port, server, "netmap:mp{64@conf:slots=2") == errno.EINVAL
        finally:
            for e in ends:
                e.close()
        # SYNC_KLOOP_START without a CSB: EINVAL; twice: EBUSY (the first answers at STOP).
        with DevFile.open(path) as dev:
            _raw_register(dev, "kl{0")
            start = nmreq_msg(
                NETMAP_REQ_SYNC_KLOOP_START, "kl{0", NMREQ_SYNC_KLOOP_START.pack(100, 0)
            )
            assert _errno(dev.ioctl, NIOCCTRL, start) == errno.EINVAL
        k = open_port(server, "netmap:kb{0", kloop=True)
        start = nmreq_msg(NETMAP_REQ_SYNC_KLOOP_START, "kb{0", NMREQ_SYNC_KLOOP_START.pack(100, 0))
        k.dev.send_request(dev_req(DEVOP_IOCTL, NIOCCTRL, payload=start))  # the loop runs
        assert _errno(k.dev.ioctl, NIOCCTRL, start) == errno.EBUSY
        assert server.stats()["netmap.kloops_running"] == 1
        stop = nmreq_msg(NETMAP_REQ_SYNC_KLOOP_STOP, "kb{0")
        k.dev.send_request(dev_req(DEVOP_IOCTL, NIOCCTRL, payload=stop))
        k.dev.read_reply()  # the loop's START, answered when it stopped
        k.dev.read_reply()  # STOP's
        k.close()
        # The healthy pipe still moves a packet; the server still serves.
        t = a.tx_rings[0]
        t.slots["len"][t.head] = 60
        t.advance(t.next(t.head))
        a.txsync()
        b.rxsync()
        assert b.rx_rings[0].tail == 1
        assert fetch(server, "/dir/") == b"dir index\n"
    finally:
        a.close()
        b.close()
    s = server.assert_no_leaks()
    assert s["netmap.kloops_running"] == 0


@pytest.mark.parametrize("kloop", [False, True], ids=["sync", "kloop"])
def test_killed_pktgen_leaves_nothing(server: ServerProcess, kloop: bool) -> None:
    rx = pktgen(server, "-i", "netmap:kill{0", "-f", "rx", *(["--kloop"] if kloop else []))
    try:
        wait_bound(server, rx.pid, "kill{0")
        deadline = time.monotonic() + 30
        while kloop and not server.stats()["netmap.kloops_running"]:
            assert time.monotonic() < deadline, "the kernel loop never started"
            time.sleep(0.05)
        s = server.stats()
        assert s["netmap.privs_in_use"] == 1 and s["devfs.shm_mapped"] == 1
        assert s["netmap.kloops_running"] == (1 if kloop else 0)
    finally:
        rx.send_signal(signal.SIGKILL)
        rx.communicate()
    s = server.assert_no_leaks()  # the file closed: loop stopped, pipe, region, memfd gone
    assert s["netmap.ports"] == []


def test_another_user_is_refused(server: ServerProcess) -> None:
    path = netmap_path(server)

    def check() -> None:
        with pytest.raises(PermissionError):
            DevFile.open(path)

    as_unprivileged(check)
    server.assert_no_leaks()


def test_bad_port_names_exit_2(server: ServerProcess) -> None:
    for name in ("nm0", "netmap:", "netmap:p{", "netmap:x-a", "netmap:x/q", "netmap:x@conf:foo=1"):
        p = pktgen(server, "-i", name, "-f", "rx")
        _out, err = p.communicate(timeout=60)
        assert p.returncode == 2, (name, err)
        assert err.count("\n") == 1 and err.startswith("nomapd pkt-gen: -i "), err
    assert os.path.exists(netmap_path(server))
    server.assert_no_leaks()


def test_bad_worker_numbers_exit_2(server: ServerProcess) -> None:
    """--worker -1 is a bad command line, not the last worker (a Python index)."""
    for worker in ("-1", "-2"):
        p = pktgen(server, "-i", "netmap:w{0", "-f", "rx", "--worker", worker)
        _out, err = p.communicate(timeout=60)
        assert p.returncode == 2, (worker, err)
        assert err == f"nomapd pkt-gen: --worker {worker}: a worker's index is 0 or more\n", err
    server.assert_no_leaks()


def test_a_worker_that_dies_under_pktgen(corpus: pathlib.Path, state_dir: pathlib.Path) -> None:
    """The worker whose /dev/netmap pkt-gen uses dies (SIGKILL; the supervisor
    starts another): pkt-gen ends with one line saying so and exit 1, no traceback."""
    srv = ServerProcess(corpus, ["--http", "--workers", "2"], state_dir)
    try:
        rx = pktgen(srv, "-i", "netmap:gone}0", "-f", "rx", "--worker", "1")
        assert rx.stderr is not None
        deadline = time.monotonic() + 30  # bound: its rings on worker 1
        while not any(r["pid"] == rx.pid for r in srv.stats()["workers"][1]["netmap.ports"]):
            assert time.monotonic() < deadline, "pkt-gen did not bind gone}0"
            time.sleep(0.05)
        os.kill(srv.stats()["workers"][1]["worker.pid"], signal.SIGKILL)
        _out, err = rx.communicate(timeout=60)
        assert rx.returncode == 1 and "Traceback" not in err, err
        assert re.fullmatch(r"nomapd pkt-gen: netmap:gone\}0: \S+/w1/netmap: the kernel "
                            r"closed the file \(the server stopped\?\)\n", err), err  # fmt: skip
        deadline = time.monotonic() + 60
        while srv.stats().get("server.workers_up") != 2:
            assert time.monotonic() < deadline, "the worker did not come back"
            time.sleep(0.1)
        srv.assert_no_leaks()
    finally:
        srv.stop()


@pytest.mark.parametrize(("suffix", "direction"), [("/tr", "inout"), ("/t", "out"), ("/r", "in")])
def test_capture_from_a_monitor_writes_bpfs_frames(
    server: ServerProcess, corpus: pathlib.Path, tmp_path: pathlib.Path, suffix: str, direction: str
) -> None:
    """`nomapd capture -i netmap:nm0/t` (/r, /tr) beside `-i nm0 -Q out` (in,
    inout) during one curl fetch: pcap files holding the same frames (both cut
    at 2048 bytes, the monitor's buffer size)."""
    mon_file, bpf_file = tmp_path / "mon.pcap", tmp_path / "bpf.pcap"
    mon = Capture(server, ["-i", f"netmap:nm0{suffix}", "-s", "2048", "-w", str(mon_file)])
    bpf = Capture(server, ["-i", "nm0", "-Q", direction, "-s", "2048", "-w", str(bpf_file)])
    try:
        assert fetch(server, "/f16385.bin") == (corpus / "f16385.bin").read_bytes()
        wait_closed(server)
    finally:
        got_mon = mon.stop()
        got_bpf = bpf.stop()
    _lt, _snap, mon_recs = pcap_read(mon_file.read_bytes())
    _lt, _snap, bpf_recs = pcap_read(bpf_file.read_bytes())
    frames = [data for _ts, data, _wl in mon_recs]
    assert frames and frames == [data for _ts, data, _wl in bpf_recs]
    assert got_mon[0] == got_bpf[0] == len(frames)
    if direction != "in":
        assert any(b"HTTP/1.1 200" in f for f in frames)
    if direction != "out":
        assert any(b"GET /f16385.bin" in f for f in frames)
    server.assert_no_leaks()


def test_capture_from_a_monitor_refuses_what_it_cannot_do(server: ServerProcess) -> None:
    for args in (["-i", "netmap:nm0"], ["-i", "netmap:nm0/t", "tcp"], ["-i", "netmap:zz/t"]):
        cap = Capture(server, args, ready=False)
        rc = cap.proc.wait(timeout=30)
        cap._t_err.join(timeout=10)
        assert rc == 2, (args, cap.err)
        assert len(cap.err) == 1 and cap.err[0].startswith("nomapd capture: "), cap.err
        cap.proc.stdout.close()  # type: ignore[union-attr]
        cap.proc.stderr.close()  # type: ignore[union-attr]
    server.assert_no_leaks()


def test_knobs_are_sysctl_nodes(server: ServerProcess) -> None:
    """--netmap-ring-num / --netmap-if-num set dev.netmap.* (`nomapd sysctl`)."""
    cmd = [sys.executable, "-m", "server", "sysctl", "-n", "--server", str(devices_dir(server))]
    out = subprocess.run(
        [*cmd, "dev.netmap.ring_num", "dev.netmap.if_num", "dev.netmap.buf_size"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["300", "160", "2048"]
    server.assert_no_leaks()
