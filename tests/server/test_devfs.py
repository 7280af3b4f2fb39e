"""The device framework in-process: a toy device served by DevFs, opened with userland/dev.py.

The client's calls are blocking; they run in worker threads while the
framework serves on the test's trio loop.
"""

from __future__ import annotations

import errno
import functools
import os
import pathlib
import resource
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from typing import TypeVar

import pytest
import trio

from mbuf.sys_devio import (
    DEV_MSG,
    DEV_REQ,
    DEVMSG_REPLY,
    DEVMSG_WAKEUP,
    DEVOP_READ,
    dev_reply,
    dev_req,
    dev_wakeup,
    errno_text,
)
from server.config import ConfigError
from server.devices.devfs import (
    DEV_MAXREQUEST,
    DevFile,
    DevFs,
    Device,
    DevStat,
    OpenFile,
    open_instance,
    remove_instance,
)
from tests.privdrop import NOBODY, as_unprivileged, world_tmp  # noqa: F401 (a fixture)
from userland.dev import DevFile as UserFile
from userland.devdir import device_paths, find_instance, runtime_root

T = TypeVar("T")


class Toy(DevFile):
    """ioctl 1 reverses its argument, 2 fails with EINVAL, 3 reads the passed file,
    4 wakes itself twice, 5 wakes every toy file; read(n) sleeps n ms."""

    def __init__(self, world: World, of: OpenFile) -> None:
        self.world, self.of = world, of
        world.files.append(self)

    async def ioctl(self, cmd: int, arg: bytes, fds: list[int]) -> bytes:
        if cmd == 1:
            return arg[::-1]
        if cmd == 2:
            raise OSError(errno.EINVAL, "toy: bad argument")
        if cmd == 3:
            return os.pread(fds[0], 16, 0)
        if cmd == 4:
            self.of.wakeup()
            self.of.wakeup()
            return b"woke"
        if cmd == 5:
            for f in self.world.files:
                f.of.wakeup()
            return b""
        return await super().ioctl(cmd, arg, fds)

    async def read(self, count: int, nonblock: bool) -> bytes:
        if nonblock:
            raise BlockingIOError(errno.EAGAIN, "toy: nothing yet")
        self.world.sleeping.set()
        return b"woken" if await self.of.sleep(count / 1000) else b"timeout"

    def close(self) -> None:
        self.world.files.remove(self)
        self.world.closed += 1
        self.world.closed_ev.set()


class World:
    def __init__(self, path: pathlib.Path) -> None:
        self.path = path
        self.files: list[Toy] = []
        self.closed = 0
        self.closed_ev = trio.Event()
        self.sleeping = trio.Event()
        self.stats = DevStat()
        self.fs: DevFs | None = None


@pytest.fixture
async def world(world_tmp: str) -> AsyncIterator[World]:  # noqa: F811
    w = World(pathlib.Path(world_tmp) / "inst" / "w0")
    fs = w.fs = DevFs(w.path, [Device("toy", lambda of: Toy(w, of))], w.stats)
    async with trio.open_nursery() as n:
        await n.start(fs.serve)
        yield w
        n.cancel_scope.cancel()
    assert not w.path.exists()  # the worker's directory goes with its DevFs


async def call(fn: Callable[[], T]) -> T:
    return await trio.to_thread.run_sync(fn)


def test_wire_format() -> None:
    req = dev_req(DEVOP_READ, 0, 1, 4096, b"xy")
    assert DEV_REQ.unpack_from(req) == (DEVOP_READ, 0, 1, 4096, 2) and req[DEV_REQ.size :] == b"xy"
    assert DEV_MSG.unpack_from(dev_reply(errno.EINVAL, b"m")) == (DEVMSG_REPLY, errno.EINVAL, 1)
    assert DEV_MSG.unpack(dev_wakeup()) == (DEVMSG_WAKEUP, 0, 0)
    assert errno_text(errno.EINVAL) == "EINVAL" and errno_text(99999) == "99999"


async def test_calls_errors_and_descriptors(world: World) -> None:
    path = world.path / "toy"
    assert path.stat().st_mode & 0o777 == 0o600 and world.path.stat().st_mode & 0o777 == 0o700
    f = await call(lambda: UserFile.open(path))
    assert world.files[0].of.pid == os.getpid() and world.stats.open_files == 1
    assert await call(lambda: f.ioctl(1, b"abc")) == b"cba"
    with pytest.raises(OSError) as e:
        await call(lambda: f.ioctl(2))
    assert e.value.errno == errno.EINVAL and "toy: bad argument" in str(e.value)
    with pytest.raises(OSError) as e:
        await call(lambda: f.ioctl(77))
    assert e.value.errno == errno.ENOTTY
    with pytest.raises(OSError) as e:
        await call(lambda: f.read(10, nonblock=True))
    assert e.value.errno == errno.EAGAIN
    memfd = os.memfd_create("toy")
    try:
        os.write(memfd, b"shared bytes")
        assert await call(lambda: f.ioctl_shm(3, b"", memfd, 0)) == b"shared bytes"
    finally:
        os.close(memfd)
    await call(f.close)
    assert world.closed == 1 and world.stats.open_files == 0 and world.stats.opens_total == 1


async def test_a_request_larger_than_the_device_takes_is_einval(world: World) -> None:
    f = await call(lambda: UserFile.open(world.path / "toy"))
    most = DEV_MAXREQUEST
    assert await call(lambda: f.ioctl(1, b"ab" * (most // 2))) == b"ba" * (most // 2)
    with pytest.raises(OSError) as e:
        await call(lambda: f.ioctl(1, b"x" * (most + 1)))  # fits the socket's buffer: replied
    assert e.value.errno == errno.EINVAL
    assert f"a request of {most + 1} bytes; this device takes {most} at most" in str(e.value)
    await world.closed_ev.wait()  # and the file closed: nothing of it was read
    assert world.closed == 1 and world.stats.open_files == 0
    f.sock.close()


async def test_wakeups_are_not_replies(world: World) -> None:
    f = await call(lambda: UserFile.open(world.path / "toy"))
    assert await call(lambda: f.ioctl(4)) == b"woke"  # two wakeups, one frame, one reply
    assert await call(lambda: f.poll(None)) is True
    assert await call(lambda: f.poll(0)) is False  # the second wakeup sent no second frame
    assert await call(lambda: f.read(1)) == b"timeout"
    await call(f.close)


async def test_blocking_read_woken_by_another_file(world: World) -> None:
    a = await call(lambda: UserFile.open(world.path / "toy"))
    b = await call(lambda: UserFile.open(world.path / "toy"))
    got: list[bytes] = []
    async with trio.open_nursery() as n:
        n.start_soon(lambda: call(lambda: got.append(a.read(600_000))))
        await world.sleeping.wait()
        await call(lambda: b.ioctl(5))
    assert got == [b"woken"]
    await call(a.close)
    await call(b.close)


def _blocked_read(f: UserFile, failed: list[BaseException]) -> None:
    """A read that sleeps until the process's end goes (its error kept in `failed`)."""
    try:
        f.read(600_000)
    except OSError as e:
        failed.append(e)


async def test_process_gone_while_sleeping_releases_its_file(world: World) -> None:
    f = await call(lambda: UserFile.open(world.path / "toy"))
    failed: list[BaseException] = []
    blocked_read = functools.partial(_blocked_read, f, failed)

    async with trio.open_nursery() as n:
        n.start_soon(call, blocked_read)
        await world.sleeping.wait()
        f.sock.shutdown(socket.SHUT_RDWR)  # as the process's exit closes it
        await world.closed_ev.wait()
    f.sock.close()
    assert world.closed == 1 and world.files == [] and len(failed) == 1


async def test_out_of_descriptors_at_accept_waits(
    world: World, caplog: pytest.LogCaptureFixture
) -> None:
    """EMFILE from accept(2) is the process's state, not the listener's: logged, waited
    out, and the opens that queued meanwhile are served once descriptors are free."""
    queued = [socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) for _ in range(3)]
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        for s in queued:
            s.connect(str(world.path / "toy"))  # in the backlog; the server has not run yet
        lowest = os.dup(0)
        os.close(lowest)
        resource.setrlimit(resource.RLIMIT_NOFILE, (lowest, hard))  # no new descriptor
        try:
            with trio.fail_after(30):
                while "accept returned EMFILE" not in caplog.text:
                    await trio.sleep(0.01)
        finally:
            resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
        for s in queued:  # each gets its open's reply: errno 0
            head = await call(functools.partial(s.recv, DEV_MSG.size, socket.MSG_WAITALL))
            assert DEV_MSG.unpack(head) == (DEVMSG_REPLY, 0, 0)
    finally:
        for s in queued:
            s.close()
    with trio.fail_after(30):
        while world.closed < 3:
            await world.closed_ev.wait()
            world.closed_ev = trio.Event()
    assert world.stats.open_files == 0 and world.stats.opens_total == 3


async def test_refused_open_of_a_process_already_gone(world_tmp: str) -> None:  # noqa: F811
    """The reply to a failed open may meet a closed connection (EPIPE): the device
    keeps serving."""

    def refuse(of: OpenFile) -> DevFile:
        raise OSError(errno.ENXIO, "refuser: no such unit")

    path = pathlib.Path(world_tmp) / "inst" / "w0"
    fs = DevFs(path, [Device("refuser", refuse)], DevStat())
    async with trio.open_nursery() as n:
        await n.start(fs.serve)
        for _ in range(3):
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.connect(str(path / "refuser"))
            s.close()  # before the server answers: its reply gets EPIPE
        with pytest.raises(OSError) as e:
            await call(lambda: UserFile.open(path / "refuser"))
        assert e.value.errno == errno.ENXIO and "no such unit" in str(e.value)
        n.cancel_scope.cancel()


async def test_process_gone_after_a_stray_byte_releases_its_file(world: World) -> None:
    """A byte sent while a call sleeps keeps the socket readable; the process's exit
    must still end the call and close its file."""
    f = await call(lambda: UserFile.open(world.path / "toy"))
    failed: list[BaseException] = []
    blocked_read = functools.partial(_blocked_read, f, failed)

    with trio.fail_after(30):  # a file kept open forever would hang here
        async with trio.open_nursery() as n:
            n.start_soon(call, blocked_read)
            await world.sleeping.wait()
            f.sock.send(b"x")  # ahead of any request
            f.sock.shutdown(socket.SHUT_RDWR)  # as the process's exit closes it
            await world.closed_ev.wait()
    f.sock.close()
    assert world.closed == 1 and world.files == [] and len(failed) == 1


async def test_another_uid_gets_eperm(world: World) -> None:
    # Open the modes the framework set, so that the credential check is what refuses.
    for p, mode in ((world.path.parent, 0o755), (world.path, 0o755), (world.path / "toy", 0o777)):
        os.chmod(p, mode)
    if os.geteuid() != 0:  # no other uid to become: the server's user becomes another one
        assert world.fs is not None
        world.fs.uid = os.getuid() + 1

    def check() -> None:
        with pytest.raises(OSError) as e:
            UserFile.open(world.path / "toy")
        assert e.value.errno == errno.EPERM, e.value

    await trio.to_thread.run_sync(as_unprivileged, check)
    assert world.stats.refused == 1 and world.stats.opens_total == 0


def test_runtime_directory_and_discovery(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NOMAPD_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path / "missing"))
    assert runtime_root() == tmp_path / "state" / "run"  # unusable XDG_RUNTIME_DIR
    (tmp_path / "xdg").mkdir()
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path / "xdg"))
    assert runtime_root() == tmp_path / "xdg" / "nomapd"
    with pytest.raises(LookupError, match="no running nomapd server"):
        find_instance()
    killed = (  # a server killed while it served port 8443: its directory stays, its lock goes
        "import os, signal\n"
        "from server.devices.devfs import open_instance\n"
        "d = open_instance(8443)\n"
        "(d / 'w0').mkdir()\n"
        "(d / 'w0' / 'stale').write_text('left by a killed server')\n"
        "os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    subprocess.run([sys.executable, "-c", killed], cwd=pathlib.Path(__file__).parents[2])
    assert (runtime_root() / "8443" / "w0" / "stale").exists()
    a = open_instance(8443)  # the stale instance is emptied and taken over
    assert [p.name for p in a.iterdir()] == ["lock"] and a.stat().st_mode & 0o777 == 0o700
    assert (a / "lock").read_text() == f"{os.getpid()}\n"
    (a / "w0").mkdir()
    with pytest.raises(ConfigError) as e:  # a second server on the port: refused, nothing touched
        open_instance(8443)
    assert str(e.value) == f"devices for port 8443 are in use by pid {os.getpid()} ({a})"
    assert (a / "w0").is_dir()
    (a / "w0").rmdir()
    (a / "w0").mkdir()
    (a / "w1").mkdir()
    (a / "w1" / "bpf").touch()
    assert find_instance() == a and find_instance("8443") == a and find_instance(str(a)) == a
    assert device_paths(a, "bpf") == [a / "w1" / "bpf"]
    b = open_instance(9443)
    (b / "w0").mkdir()
    with pytest.raises(LookupError, match="ports 8443, 9443"):
        find_instance()
    with pytest.raises(LookupError, match="is the server running"):
        find_instance("7443")
    remove_instance(a)
    assert find_instance() == b and runtime_root().exists()
    remove_instance(b)
    assert not runtime_root().exists()  # the last instance takes the empty root with it


def test_discovery_skips_a_killed_server_s_directory(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A server killed with SIGKILL (or by the OOM killer) leaves its instance
    directory, workers and all, until a server takes its port again. A program
    without --server must still find the one server running, not refuse with
    "several nomapd servers" naming the dead one; with --server it is its own."""
    monkeypatch.setenv("NOMAPD_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.setenv("XDG_RUNTIME_DIR", "")
    killed = (
        "import os, signal\n"
        "from server.devices.devfs import open_instance\n"
        "d = open_instance(7443)\n"
        "(d / 'w0').mkdir()\n"
        "os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    subprocess.run([sys.executable, "-c", killed], cwd=pathlib.Path(__file__).parents[2])
    stale = runtime_root() / "7443"
    assert (stale / "w0").is_dir()
    with pytest.raises(LookupError, match="no running nomapd server"):
        find_instance()
    live = open_instance(9443)
    try:
        (live / "w0").mkdir()
        assert find_instance() == live
        assert find_instance("7443") == stale  # asked for by name: the caller's to try
    finally:
        remove_instance(live)


def test_runtime_root_must_be_this_user_s_own_directory(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The fallback root sits in a state directory that may be shared: a symlink or
    someone else's directory there is refused, not chmod'ed or filled with sockets."""
    monkeypatch.setenv("XDG_RUNTIME_DIR", "")
    victim = tmp_path / "victim"
    victim.mkdir(mode=0o755)
    (tmp_path / "state").mkdir()
    monkeypatch.setenv("NOMAPD_STATE_DIR", str(tmp_path / "state"))
    (tmp_path / "state" / "run").symlink_to(victim)
    with pytest.raises(ConfigError, match="is not a directory"):
        open_instance(8443)
    assert victim.stat().st_mode & 0o777 == 0o755 and list(victim.iterdir()) == []
    (tmp_path / "state" / "run").unlink()
    (tmp_path / "state" / "run").mkdir()
    (tmp_path / "state" / "run" / "8443").symlink_to(victim)  # the instance itself
    with pytest.raises(ConfigError, match="is not a directory"):
        open_instance(8443)
    assert list(victim.iterdir()) == []
    if os.geteuid() == 0:  # someone else's directory: made so here
        (tmp_path / "state" / "run" / "8443").unlink()
        os.chown(tmp_path / "state" / "run", NOBODY, NOBODY)
    else:  # one this user cannot own: / holds root's run
        monkeypatch.setenv("NOMAPD_STATE_DIR", "/")
    with pytest.raises(ConfigError, match="belongs to uid"):
        open_instance(8443)
