"""CPU and RSS of a process tree from /proc, and the document root."""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys
import time

from bench import docroot, procfs


def test_tree_cpu_and_rss_of_a_child_tree() -> None:
    code = (
        "import subprocess, sys, time\n"
        "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(30)'])\n"
        "x = bytearray(32 << 20)\n"
        "t = time.process_time()\n"
        "while time.process_time() - t < 0.3: pass\n"
        "print('ready', flush=True)\n"
        "time.sleep(30)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        deadline = time.monotonic() + 10
        pids = procfs.tree(proc.pid)
        while len(pids) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
            pids = procfs.tree(proc.pid)
        assert pids[0] == proc.pid and len(pids) == 2
        assert procfs.cpu_seconds(pids) >= 0.2
        assert procfs.rss_bytes(pids) >= 32 << 20
        assert procfs.hwm_bytes(pids) >= procfs.rss_bytes(pids) - (1 << 20)
        with procfs.RssSampler(proc.pid, interval=0.01) as sampler:
            time.sleep(0.1)
        assert sampler.peak >= 32 << 20
    finally:
        for pid in reversed(procfs.tree(proc.pid)):
            os.kill(pid, 9)
        proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()


def test_reset_hwm_of_own_child() -> None:
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        time.sleep(0.2)
        assert procfs.reset_hwm([proc.pid]) is True
    finally:
        proc.kill()
        proc.wait()
    assert procfs.reset_hwm([proc.pid]) is False  # gone


def test_docroot_is_deterministic(tmp_path: pathlib.Path) -> None:
    a = docroot.build(tmp_path / "a", ["1k.bin", "16k.bin"])
    b = docroot.build(tmp_path / "b", ["16k.bin"])
    assert a == {"1k.bin": 1024, "16k.bin": 16384}
    assert (tmp_path / "a" / "16k.bin").read_bytes() == (tmp_path / "b" / "16k.bin").read_bytes()
    assert (tmp_path / "a" / "1k.bin").stat().st_size == 1024
    assert b == {"16k.bin": 16384}
