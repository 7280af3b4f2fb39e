"""/dev/bpf end to end: a real server, real curl traffic, userland's capture library.

The server runs with --http so that the captured payload can be recognised
(the GET line); captures use snap length 128 and 512 KiB buffers, so that a
fetch of a few MiB is captured without drops. Every test ends with the leak
assertion, whose keys include the bpf descriptors and the device layer's open
files and shared mappings.
"""

from __future__ import annotations

import errno
import mmap
import os
import pathlib
import signal
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest

from bpf.bpf_h import (
    BIOCGETZMAX,
    BIOCSETBUFMODE,
    BIOCSETF,
    BIOCSETIF,
    BIOCSETZBUF,
    BPF_BUFMODE_ZBUF,
    BPF_D_IN,
    BPF_ZBUF,
    SIZE_T,
    U_INT,
)
from server.devices.bpfdev import BPF_MAXREQUEST, SHM_MAX
from tests.integration.conftest import ServerProcess
from tests.privdrop import as_unprivileged
from userland.bpfdev import BpfCapture, Packet, bpf_program, ifreq, shm_create
from userland.dev import DevFile
from userland.devdir import device_paths

SNAP = 128
BIG = "/f3145745.bin"  # 3 MiB + 17 (the corpus)


@pytest.fixture(scope="module")
def server(corpus: pathlib.Path, state_dir: pathlib.Path) -> Iterator[ServerProcess]:
    srv = ServerProcess(corpus, ["--http"], state_dir)
    yield srv
    devices = devices_dir(srv)
    srv.stop()
    assert srv.proc.returncode == 0, srv.stderr
    assert "Traceback" not in srv.stderr, srv.stderr
    assert not devices.exists()  # removed at a clean shutdown (and the root if empty)


def devices_dir(srv: ServerProcess) -> pathlib.Path:
    """The instance directory the server announced (after its ports; wait for the line)."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        for line in list(srv.stdout):
            if line.startswith("nomapd: devices in "):
                return pathlib.Path(line.removeprefix("nomapd: devices in ").split(" (")[0])
        time.sleep(0.05)
    raise AssertionError(f"no devices line: {srv.stdout}")


def bpf_path(srv: ServerProcess) -> pathlib.Path:
    return devices_dir(srv) / "w0" / "bpf"


def fetch(srv: ServerProcess, path: str) -> bytes:
    out = subprocess.run(["curl", "-sS", "--max-time", "60", srv.url(path)], capture_output=True)
    assert out.returncode == 0, out.stderr
    return out.stdout


def wait_closed(srv: ServerProcess) -> None:
    deadline = time.monotonic() + 30
    while srv.stats()["server.connections_active"] and time.monotonic() < deadline:
        time.sleep(0.05)


def drain(cap: BpfCapture) -> list[Packet]:
    """Every packet captured so far: batches until one read timeout passes empty."""
    got: list[Packet] = []
    while batch := cap.next_batch():
        got += batch
    return got


def test_devices_directory_is_private(server: ServerProcess) -> None:
    inst = devices_dir(server)
    assert inst.name == str(server.port)  # keyed by the port: instances do not collide
    for p in (inst.parent, inst, inst / "w0"):
        assert p.stat().st_mode & 0o777 == 0o700, p
    assert (inst / "w0" / "bpf").is_socket()
    server.assert_no_leaks()


def test_both_modes_see_the_same_packets(server: ServerProcess, corpus: pathlib.Path) -> None:
    kw = {"snaplen": SNAP, "bufsize": 1 << 19, "timeout": 0.2}
    with (
        BpfCapture.open(bpf_path(server), mode="buffer", **kw) as buf,  # type: ignore[arg-type]
        BpfCapture.open(bpf_path(server), mode="zbuf", **kw) as zb,  # type: ignore[arg-type]
    ):
        assert zb.reader is not None and buf.reader is None
        body = fetch(server, BIG)
        assert body == (corpus / BIG[1:]).read_bytes()
        wait_closed(server)  # every frame of the connection has been tapped
        a, b = drain(buf), drain(zb)
        assert [(p.data, p.caplen, p.wirelen) for p in a] == [
            (p.data, p.caplen, p.wirelen) for p in b
        ]
        assert any(b"GET " + BIG.encode() in p.data for p in a)
        assert all(p.caplen == min(SNAP, p.wirelen) == len(p.data) for p in a)
        # The payload's bytes on the wire, from the frames' lengths: at least the file.
        assert sum(p.wirelen for p in a) > len(body)
        assert buf.stats() == zb.stats() == (len(a), 0)
        desc = server.stats()["bpf.descriptors"]
        assert {d["bd_pid"] for d in desc} == {os.getpid()}  # SO_PEERCRED's pid
        assert server.stats()["devfs.shm_mapped"] == 1
    server.assert_no_leaks()


def test_bad_requests_answer_einval(server: ServerProcess) -> None:
    path = bpf_path(server)
    page = mmap.PAGESIZE
    fd, shm, base = shm_create(4 * page)
    try:
        with DevFile.open(path) as f:
            f.ioctl(BIOCSETBUFMODE, U_INT.pack(BPF_BUFMODE_ZBUF))
            (zmax,) = SIZE_T.unpack(f.ioctl(BIOCGETZMAX))
            cases = {
                "not page-aligned": BPF_ZBUF.pack(base + 64, base + 2 * page, page),
                "overlapping": BPF_ZBUF.pack(base, base + page, 2 * page),
                "over zmax": BPF_ZBUF.pack(base, base + zmax + page, zmax + page),
            }
            for why, arg in cases.items():
                with pytest.raises(OSError) as e:
                    f.ioctl_shm(BIOCSETZBUF, arg, fd, base)
                assert e.value.errno == errno.EINVAL, why
            big, big_shm, big_base = shm_create(SHM_MAX + page)  # more than two buffers of zmax
            try:
                arg = BPF_ZBUF.pack(big_base, big_base + page, page)
                with pytest.raises(OSError) as e:
                    f.ioctl_shm(BIOCSETZBUF, arg, big, big_base)
                assert e.value.errno == errno.EINVAL
            finally:
                big_shm.close()
                os.close(big)
            with pytest.raises(OSError) as e:  # zero-copy mode: buffers before the interface
                f.ioctl(BIOCSETIF, ifreq("nm0"))
            assert e.value.errno == errno.EINVAL
            f.ioctl_shm(BIOCSETZBUF, BPF_ZBUF.pack(base, base + 2 * page, 2 * page), fd, base)
            with pytest.raises(OSError) as e:  # a second BIOCSETZBUF
                f.ioctl_shm(BIOCSETZBUF, BPF_ZBUF.pack(base, base + 2 * page, 2 * page), fd, base)
            assert e.value.errno == errno.EINVAL and "already" in str(e.value)
            f.ioctl(BIOCSETIF, ifreq("nm0"))
            for prog in (
                [(0x28, 0, 0, 12)],
                [(0x15, 5, 0, 0x800), (0x06, 0, 0, SNAP)],
            ):  # no ret; out
                with pytest.raises(OSError) as e:
                    f.ioctl(BIOCSETF, bpf_program(prog))
                assert e.value.errno == errno.EINVAL
            assert server.stats()["devfs.shm_mapped"] == 1  # the refused calls mapped nothing
        with DevFile.open(path) as f, pytest.raises(OSError) as e:
            f.ioctl(BIOCSETF, b"\0" * (BPF_MAXREQUEST + 8))  # answered, not a silent close
        assert e.value.errno == errno.EINVAL and f"takes {BPF_MAXREQUEST} at most" in str(e.value)
    finally:
        shm.close()
        os.close(fd)
    server.assert_no_leaks()


def test_zbuf_file_must_be_sealed_against_shrinking(server: ServerProcess) -> None:
    """A process that could shrink its shared file after BIOCSETZBUF would make the
    server's next store into it fault (SIGBUS): only a sealed memfd is mapped."""
    path = bpf_path(server)
    page = mmap.PAGESIZE
    unsealed = os.memfd_create("unsealed", os.MFD_CLOEXEC)
    os.ftruncate(unsealed, 2 * page)
    rfd, wfd = os.pipe()
    fd, shm, base = shm_create(2 * page)
    try:
        with DevFile.open(path) as f:
            f.ioctl(BIOCSETBUFMODE, U_INT.pack(BPF_BUFMODE_ZBUF))
            arg = BPF_ZBUF.pack(base, base + page, page)
            for bad, why in ((unsealed, "F_SEAL_SHRINK"), (rfd, "regular file")):
                with pytest.raises(OSError) as e:
                    f.ioctl_shm(BIOCSETZBUF, arg, bad, base)
                assert e.value.errno == errno.EINVAL and why in str(e.value), e.value
            assert server.stats()["devfs.shm_mapped"] == 0
            f.ioctl_shm(BIOCSETZBUF, arg, fd, base)  # shm_create seals its memfd
            with pytest.raises(PermissionError):
                os.ftruncate(fd, 0)  # the seal holds for the process too
            f.ioctl(BIOCSETIF, ifreq("nm0"))
            fetch(server, "/")  # the server stores into the buffers: still alive
            assert server.proc.poll() is None
    finally:
        shm.close()
        for x in (fd, unsealed, rfd, wfd):
            os.close(x)
    server.assert_no_leaks()


def test_reader_that_never_acknowledges(server: ServerProcess, corpus: pathlib.Path) -> None:
    with BpfCapture.open(bpf_path(server), mode="zbuf", bufsize=2 * mmap.PAGESIZE) as cap:
        for _ in range(3):  # the server keeps serving while the descriptor drops
            assert fetch(server, BIG) == (corpus / BIG[1:]).read_bytes()
        recv, drop = cap.stats()
        assert drop > 0 and recv > drop
        assert server.stats()["bpf.packets_dropped"] >= drop
    server.assert_no_leaks()


CAPTURER = """
import sys
from userland.bpfdev import BpfCapture
cap = BpfCapture.open(sys.argv[1], mode="zbuf", timeout=0.2)
print("ready", flush=True)
while True:
    cap.next_batch()
"""


def test_capture_killed_releases_everything(server: ServerProcess, corpus: pathlib.Path) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-c", CAPTURER, str(bpf_path(server))], stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline() == "ready\n"
        fetch(server, "/f16385.bin")
        s = server.stats()
        assert s["devfs.shm_mapped"] == 1 and s["bpf.descriptors_in_use"] == 1
        assert [d["bd_pid"] for d in s["bpf.descriptors"]] == [proc.pid]
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        assert proc.stdout is not None
        proc.stdout.close()
    s = server.assert_no_leaks()  # descriptor closed, buffers unmapped, counters zero
    assert s["bpf.descriptors"] == []


def test_another_user_is_refused(server: ServerProcess) -> None:
    assert os.geteuid() == 0, (
        "this test needs root (CI runs as root): it becomes nobody to be another user; "
        "tests/server/test_devfs.py checks the credentials without root"
    )
    path = bpf_path(server)

    def check() -> None:
        with pytest.raises(PermissionError):
            DevFile.open(path)  # the 0700 directory; past it, SO_PEERCRED (tests/server)

    as_unprivileged(check)
    server.assert_no_leaks()


@pytest.mark.parametrize("workers", ["1", "2"])
def test_a_second_server_on_the_port_leaves_the_devices_alone(
    corpus: pathlib.Path, state_dir: pathlib.Path, workers: str
) -> None:
    """Devices are keyed by the port; a second server on it (another address, or the
    same one through the workers' SO_REUSEPORT) must neither take them over nor
    remove them: it refuses to start."""
    srv = ServerProcess(corpus, ["--http", "--workers", workers], state_dir)
    try:
        inst = devices_dir(srv)
        bpf = inst / "w0" / "bpf"
        ino = bpf.stat().st_ino
        host = "127.0.0.2" if workers == "1" else "127.0.0.1"  # both bind: only the devices clash
        second = subprocess.run(
            [sys.executable, "-m", "server", "serve", str(corpus), "--http", "--workers", workers,
             "--host", host, "--port", str(srv.port), "--admin", "127.0.0.1:0"],
            env=dict(os.environ, NOMAPD_STATE_DIR=str(state_dir)), capture_output=True, text=True,
            timeout=60,
        )  # fmt: skip
        assert second.returncode == 2, second.stderr
        assert second.stderr.splitlines() == [
            f"nomapd: devices for port {srv.port} are in use by pid {srv.proc.pid} ({inst})"
        ]
        assert bpf.stat().st_ino == ino  # the running server's device, untouched
        caps = [BpfCapture.open(p, mode="zbuf", timeout=0.2) for p in device_paths(inst, "bpf")]
        try:  # the running server's devices still capture (whichever worker serves)
            fetch(srv, "/")
            assert any([drain(cap) for cap in caps])
        finally:
            for cap in caps:
                cap.close()
        srv.assert_no_leaks()
    finally:
        srv.stop()
    assert srv.proc.returncode == 0, srv.stderr
    assert not inst.exists()


def test_every_worker_has_its_device(corpus: pathlib.Path, state_dir: pathlib.Path) -> None:
    srv = ServerProcess(corpus, ["--http", "--workers", "2"], state_dir)
    try:
        inst = devices_dir(srv)
        paths = [inst / "w0" / "bpf", inst / "w1" / "bpf"]
        caps = [BpfCapture.open(p, mode="zbuf", timeout=0.2) for p in paths]
        try:
            for _ in range(4):  # SO_REUSEPORT spreads the connections; each worker taps its own
                fetch(srv, "/f4097.bin")
            s = srv.stats()
            assert s["bpf.descriptors_in_use"] == 2 and s["devfs.shm_mapped"] == 2
            assert sorted(d["bd_pid"] for d in s["bpf.descriptors"]) == [os.getpid()] * 2
        finally:
            for cap in caps:
                cap.close()
        srv.assert_no_leaks()
    finally:
        srv.stop()
    assert srv.proc.returncode == 0, srv.stderr
    assert not inst.exists()


@pytest.mark.parametrize("mode", ["buffer", "zbuf"])
def test_direction_immediate_and_read_timeout(server: ServerProcess, mode: str) -> None:
    port = server.port.to_bytes(2, "big")
    path = bpf_path(server)
    with (
        BpfCapture.open(
            path, mode=mode, snaplen=SNAP, timeout=0.1, direction=BPF_D_IN, immediate=True
        ) as cin,
        BpfCapture.open(path, mode=mode, timeout=0.1, program=[(0x06, 0, 0, 0)]) as none,
    ):
        assert none.next_batch() == []  # the read timeout passed with nothing captured
        fetch(server, "/f4097.bin")
        wait_closed(server)
        got = drain(cin)
        # Ethernet 14 + IPv4 20: the TCP destination port of every inbound frame is the server's.
        assert got and all(p.data[36:38] == port for p in got)
        assert any(b"GET /f4097.bin" in p.data for p in got)
        assert none.next_batch() == []  # offered every frame, kept none
        assert cin.stats() == (len(got), 0)
        recv, drop = none.stats()
        assert recv > len(got) and drop == 0  # both directions reached it
    server.assert_no_leaks()
