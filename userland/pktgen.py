"""`nomapd pkt-gen`: netmap's pkt-gen on the modeled kernel's ports (a pipe end, usually).

Theory of operation. `main(argv)` parses `-i NAME -f tx|rx [-b BATCH]
[-l LEN] [-n COUNT] [--kloop] [--check] [--server PORT] [--worker N]`,
opens the port with `nmport_open` (userland/netmap_user.py) and runs one
function, as pkt-gen's sender_body / receiver_body do:

  tx  fills up to BATCH free slots of the TX ring from head (never more than
      the ring's space), each with one LEN-byte UDP/IPv4 frame (pkt-gen's
      10.0.0.1:1234 -> 10.1.0.1:4321 with its payload text) whose first four
      payload bytes are the packet's sequence number (little-endian), then
      advances head and cur and syncs: NIOCTXSYNC, or, with --kloop, the CSB
      (no system call: the kernel loop's thread syncs). With no space it
      waits: poll(POLLOUT), or with --kloop a short sleep and a look at the
      CSB. It stops after COUNT packets.
  rx  takes the slots [head, tail) of the RX ring after NIOCRXSYNC (or the
      CSB), counts them, returns them (head = tail), and waits with
      poll(POLLIN) (or sleeps, with --kloop) when none came. With --check it
      verifies every packet: its length, its sequence number (the next one
      expected) and every other byte against the frame tx builds. It stops
      after COUNT packets (0: until SIGINT / SIGTERM).

The buffers of a batch are filled and checked as NumPy arrays (the buffer
area is a 2-D array of the mapping, indexed by the slots' buf_idx), never a
Python loop per byte. Once a second it prints pkt-gen's line (packets and
Mpps in the last interval, the average batch), and at the end the summary:
"Sent|Received N packets ... Speed: X Mpps". Exit status 0 only if exactly
COUNT packets moved (and, with --check, every one was intact); bad command
lines print one line and exit 2; an errno at open exits 1.

Models: netmap's apps/pkt-gen/pkt-gen.c (sender_body, receiver_body,
initialize_packet, the per-second line and the summary). Differences: only
the pipe / port data path (no ARP, no IP range, no -R rate, no -z / -Z
random addresses); one TX / RX ring per port (pkt-gen takes -p threads);
the check mode is nomapd's.
"""

from __future__ import annotations

import argparse
import contextlib
import signal
import struct
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from types import FrameType
from typing import Any, Final

import numpy as np

from netmap.netmap_h import POLLIN, POLLOUT
from userland.netmap_user import NmPort, NmportError, NmRing, nmport_open

PROG: Final = "nomapd pkt-gen"
ETH_HLEN: Final = 14
HDRS_LEN: Final = 14 + 20 + 8  # Ethernet, IPv4, UDP
SEQ_OFF: Final = HDRS_LEN  # the sequence number: the first payload bytes
MIN_LEN: Final = HDRS_LEN + 4
PAYLOAD: Final = b"netmap pkt-gen DIRECT payload\n"  # pkt-gen's default payload
KLOOP_IDLE: Final = 20e-6  # seconds between looks at the CSB when nothing moved
DEFAULT_BATCH: Final = 512


def in_cksum(data: bytes) -> int:
    """The Internet checksum of `data` (the IPv4 header, once per run)."""
    if len(data) % 2:
        data += b"\0"
    s = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return int(~s & 0xFFFF)


def build_frame(length: int) -> bytes:
    """pkt-gen's initialize_packet: an Ethernet/IPv4/UDP frame of `length` bytes,
    its payload the repeated text (the sequence number goes over its first 4)."""
    eth = bytes.fromhex("ffffffffffff") + bytes.fromhex("001122334455") + b"\x08\x00"
    ip_len = length - ETH_HLEN
    ip = struct.pack(
        "!BBHHHBBH4s4s", 0x45, 0, ip_len, 0, 0x4000, 64, 17, 0,
        bytes([10, 0, 0, 1]), bytes([10, 1, 0, 1]),
    )  # fmt: skip
    ip = ip[:10] + struct.pack("!H", in_cksum(ip)) + ip[12:]
    udp = struct.pack("!HHHH", 1234, 4321, ip_len - 20, 0)
    body_len = length - HDRS_LEN
    payload = (PAYLOAD * (body_len // len(PAYLOAD) + 1))[:body_len]
    return eth + ip + udp + payload


@dataclass
class Counts:
    packets: int = 0
    batches: int = 0
    bad: int = 0  # --check: packets whose content was wrong
    t_first: float = 0.0  # rx: when the first packets came (pkt-gen counts from there)
    first_bad: str = ""


class Stop:
    """SIGINT / SIGTERM: finish the current batch, then the summary."""

    def __init__(self) -> None:
        self.flag = False

    def __call__(self, signum: int, frame: FrameType | None) -> None:
        self.flag = True


def _wait(port: NmPort, events: int, kloop: bool) -> None:
    """No slots: poll(2) for `events` (one second at most), or, in kernel-loop
    mode, a short sleep (the loop's thread moves the ring meanwhile)."""
    if kloop:
        time.sleep(KLOOP_IDLE)
        return
    port.poll(events, 1.0)


def tx_body(
    port: NmPort, ring: NmRing, frame: bytes, batch: int, count: int, report: Reporter, stop: Stop
) -> Counts:
    c = Counts()
    length = len(frame)
    tmpl = np.frombuffer(frame, dtype=np.uint8)
    seq = 0
    while c.packets < count and not stop.flag:
        n = min(ring.space(), batch, count - c.packets)
        if n <= 0:
            port.txsync()  # reclaim completed slots (the CSB in kernel-loop mode)
            if ring.space() == 0:
                _wait(port, POLLOUT, port.kloop)
            continue
        head = ring.head
        done = 0
        for a, b in ring.span(head, n):
            idx = ring.slots["buf_idx"][a:b]
            bufs = ring.bufs
            bufs[idx, :length] = tmpl
            seqs = np.arange(seq + done, seq + done + (b - a), dtype="<u4")
            bufs[idx, SEQ_OFF : SEQ_OFF + 4] = seqs.view(np.uint8).reshape(-1, 4)
            ring.slots["len"][a:b] = length
            ring.slots["flags"][a:b] = 0
            done += b - a
        seq += n
        nh = (head + n) % ring.num_slots
        ring.advance(nh)
        port.txsync()
        c.packets += n
        c.batches += 1
        report.tick(c)
    _flush(port, ring, port.txsync, stop)
    return c


def _flush(port: NmPort, ring: NmRing, sync: Callable[[], None], stop: Stop) -> None:
    """The final sync: the kernel has taken every slot given to it (a kernel
    loop takes them in its own time: wait until ktoa's hwcur says so)."""
    sync()
    while port.kloop and ring.csb_hwcur != ring.head and not stop.flag:
        time.sleep(KLOOP_IDLE)
        sync()


def rx_body(
    port: NmPort, ring: NmRing, frame: bytes | None, count: int, report: Reporter, stop: Stop
) -> Counts:
    c = Counts()
    tmpl: Any = np.frombuffer(frame, dtype=np.uint8) if frame is not None else None
    mask: Any = None
    if tmpl is not None:
        mask = np.ones(len(tmpl), dtype=bool)
        mask[SEQ_OFF : SEQ_OFF + 4] = False
    while (count == 0 or c.packets < count) and not stop.flag:
        port.rxsync()
        head, tail = ring.head, ring.tail
        n = (tail - head) % ring.num_slots
        if n == 0:
            _wait(port, POLLIN, port.kloop)
            report.tick(c)
            continue
        if not c.packets:
            c.t_first = time.monotonic()
        if tmpl is not None:
            got = 0
            for a, b in ring.span(head, n):
                _check(ring, a, b, tmpl, mask, c.packets + got, c)
                got += b - a
        ring.advance(tail)
        c.packets += n
        c.batches += 1
        report.tick(c)
    _flush(port, ring, port.rxsync, stop)  # the last slots go back to the sender
    return c


def _check(ring: NmRing, a: int, b: int, tmpl: Any, mask: Any, first: int, c: Counts) -> None:
    """--check over slots [a, b): lengths, sequence numbers from `first`, content."""
    length = len(tmpl)
    lens = ring.slots["len"][a:b]
    idx = ring.slots["buf_idx"][a:b]
    data = ring.bufs[idx, :length]  # a copy (fancy indexing): n x length
    seqs = data[:, SEQ_OFF : SEQ_OFF + 4].copy().view("<u4").ravel()
    want = np.arange(first, first + (b - a), dtype="<u4")
    ok = (lens == length) & (seqs == want) & (data[:, mask] == tmpl[mask]).all(axis=1)
    if not ok.all():
        bad = int((~ok).sum())
        if not c.bad:
            i = int(np.argmin(ok))
            c.first_bad = (
                f"packet {first + i}: len {int(lens[i])}, seq {int(seqs[i])}"
                f"{'' if (data[i, mask] == tmpl[mask]).all() else ', content differs'}"
            )
        c.bad += bad


class Reporter:
    """pkt-gen's once-a-second line on stderr (packets and Mpps in the interval)."""

    def __init__(self, quiet: bool) -> None:
        self.quiet = quiet
        self.start = time.monotonic()
        self.last_t = self.start
        self.last_pkts = 0
        self.last_batches = 0

    def tick(self, c: Counts) -> None:
        now = time.monotonic()
        if now - self.last_t < 1.0:
            return
        dt = now - self.last_t
        pkts = c.packets - self.last_pkts
        batches = c.batches - self.last_batches
        if not self.quiet:
            avg = pkts / batches if batches else 0.0
            print(
                f"{PROG}: {pkts / dt / 1e6:.3f} Mpps ({pkts} pkts in {dt * 1e6:.0f} usec)"
                f" {avg:.2f} avg_batch",
                file=sys.stderr,
                flush=True,
            )
        self.last_t, self.last_pkts, self.last_batches = now, c.packets, c.batches


def add_arguments(p: argparse.ArgumentParser) -> None:
    """pkt-gen's options (server/cli.py adds them to `nomapd pkt-gen`)."""
    p.add_argument("-i", dest="port", required=True, help="port name, e.g. netmap:pipe{0")
    p.add_argument("-f", dest="function", required=True, choices=("tx", "rx"))
    p.add_argument("-b", dest="batch", type=int, default=DEFAULT_BATCH, help="batch (512)")
    p.add_argument("-l", dest="length", type=int, default=60, help="packet length (60)")
    p.add_argument("-n", dest="count", type=int, default=0, help="packets (tx: required)")
    p.add_argument("--kloop", action="store_true", help="sync through SYNC_KLOOP (no syscalls)")
    p.add_argument("--check", action="store_true", help="rx: verify every packet's content")
    p.add_argument("--server", help="the server's port or device directory")
    p.add_argument("--worker", type=int, default=0, help="the worker whose /dev/netmap (0)")
    p.add_argument("-q", dest="quiet", action="store_true", help="no per-second lines")


def main(argv: Sequence[str] | None = None) -> int:
    class Parser(argparse.ArgumentParser):
        def error(self, message: str) -> None:  # type: ignore[override]
            self.exit(2, f"{PROG}: {message}\n")

    p = Parser(prog=PROG, description="netmap pkt-gen on the modeled kernel's ports")
    add_arguments(p)
    return run(p.parse_args(argv))


def run(ns: argparse.Namespace) -> int:
    """pkt-gen with parsed options: the exit status."""
    if ns.batch < 1:
        return _usage(f"-b {ns.batch}: the batch is at least 1")
    if ns.count < 0 or (ns.function == "tx" and ns.count == 0):
        return _usage(f"-n {ns.count}: tx needs a packet count of at least 1")
    if ns.worker < 0:  # not a Python index from the end
        return _usage(f"--worker {ns.worker}: a worker's index is 0 or more")
    try:
        port = nmport_open(ns.port, server=ns.server, worker=ns.worker, kloop=ns.kloop)
    except NmportError as e:  # a bad name: a bad command line
        return _usage(f"-i {e.strerror}")
    except (OSError, LookupError) as e:
        print(f"{PROG}: {ns.port}: {e}", file=sys.stderr)
        return 1
    stop = Stop()
    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    try:
        return _run(ns, port, stop)
    except OSError as e:  # the device closed under us: the worker or the server is gone
        print(f"{PROG}: {ns.port}: {e} (the server stopped?)", file=sys.stderr)
        return 1
    finally:
        with contextlib.suppress(OSError):
            port.close()


def _usage(msg: str) -> int:
    print(f"{PROG}: {msg}", file=sys.stderr)
    return 2


def _run(ns: argparse.Namespace, port: NmPort, stop: Stop) -> int:
    rings = port.tx_rings if ns.function == "tx" else port.rx_rings
    if not rings:
        print(f"{PROG}: {ns.port}: no {ns.function.upper()} ring bound", file=sys.stderr)
        return 1
    ring = rings[0]
    if not MIN_LEN <= ns.length <= ring.buf_size:
        print(f"{PROG}: -l {ns.length}: from {MIN_LEN} to {ring.buf_size}", file=sys.stderr)
        return 2
    frame = build_frame(ns.length)
    if port.kloop:
        port.kloop_start()
    report = Reporter(ns.quiet)
    t0 = time.monotonic()
    if ns.function == "tx":
        c = tx_body(port, ring, frame, ns.batch, ns.count, report, stop)
    else:
        c = rx_body(port, ring, frame if ns.check else None, ns.count, report, stop)
    dt = max(time.monotonic() - (c.t_first or t0), 1e-9)
    if port.kloop:
        port.kloop_stop()
    what = "Sent" if ns.function == "tx" else "Received"
    avg = c.packets / c.batches if c.batches else 0.0
    print(
        f"{what} {c.packets} packets {c.packets * ns.length} bytes {c.batches} events"
        f" {ns.length} bytes each in {dt:.2f} seconds.",
        file=sys.stderr,
    )
    mbps = c.packets * ns.length * 8 / dt / 1e6
    print(
        f"Speed: {c.packets / dt / 1e6:.3f} Mpps Bandwidth: {mbps:.2f}"
        f" Mbps (raw {c.packets * (ns.length + 24) * 8 / dt / 1e6:.2f} Mbps)."
        f" Average batch: {avg:.2f} pkts",
        file=sys.stderr,
        flush=True,
    )
    if ns.check:
        print(f"Check: {c.packets - c.bad} intact, {c.bad} bad", file=sys.stderr)
        if c.bad:
            print(f"Check: first bad {c.first_bad}", file=sys.stderr)
    ok = c.bad == 0 and (ns.count == 0 or c.packets == ns.count)
    return 0 if ok else 1
