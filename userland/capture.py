"""`nomapd capture`: a tcpdump for the modeled interface.

Theory of operation. `main(argv)` parses tcpdump's options (`-i`, `-w`, `-c`,
`-s`, `-B`, `-U`, `-Q`, `-d`/`-dd`/`-ddd`, `-q`, and a filter expression in
the remaining arguments) plus nomapd's (`--mode zbuf|buffer`, `--immediate`,
`--server`), then:

  1. compiles the expression with libpcap's `pcap_compile` for the snap
     length (userland/pcap_compile.py; -d/-dd/-ddd print it and exit);
  2. opens the capture sources for `-i`: `nm0` is every worker's /dev/bpf of
     the chosen instance (userland/devdir.py), each a `BpfCapture` set up as
     pcap_activate_bpf does (userland/bpfdev.py); `netmap:nm0/t` (`/r`,
     `/tr`) is a netmap copy monitor of nm0 on every worker's /dev/netmap
     (userland/netmap_capture.py, through `PREFIX_SOURCES`). `SOURCES` maps an
     interface name to its opener, so another kind of source (netmap) plugs
     in beside it without touching the loop;
  3. runs one reader thread per source (`_Reader`): it calls `next_batch()`
     (libpcap's loop: zero-copy buffers, or read(2) in buffered mode; the
     read timeout and BIOCROTZBUF bring a quiet link's last packets out) and
     queues the batch with a watermark: no later packet of this source can be
     older than it (the last packet's time, or, for an empty batch, the time
     the call began: the store buffer was empty then);
  4. the main thread merges the batches by timestamp (ties in worker order,
     as userland/pktmerge.py does offline): a packet is released once every
     source's watermark has passed it, so a quiet worker holds nothing back
     for longer than one read timeout. Released packets go to the writer
     (pcap or pcapng by the file's suffix, `-` for pcap on stdout) or, without
     `-w`, to tcpdump's line printer (userland/pktprint.py).

With `--keys` (pcapng only, announced on stderr) each source is asked for
TLS secrets (BIOCSKEYLOG, nomapd's own ioctl: bpf/bpf_keylog.py); a reader
fetches them (BIOCGKEYLOG) right after each batch, and the main thread writes
them as a Decryption Secrets Block before that batch's packets: a secret is
handed over before the packets it decrypts are tapped, so it is in the file
before them, and Wireshark or tshark decrypt the file with no other input.

SIGINT and SIGTERM set a flag (no exception in the middle of a device call);
so does reaching `-c`. Each reader then drains its source (calls until an
empty batch: whatever the store buffer holds is rotated out) and stops; the
main thread writes what is left in order, the pcapng Interface Statistics
Blocks (BIOCGSTATS per worker), and prints tcpdump's three lines on stderr:
"N packets captured", "N packets received by filter", "N packets dropped by
kernel".

Errors at start (a bad expression, a bad `-i` or snap length, no running
server, an errno from an ioctl) print one line and exit with code 2. A
source that fails mid-capture (the server stopped, a worker died) ends the
capture as tcpdump's loop ends when its interface goes: the packets read so
far are written, the file is closed valid (pcapng: an ISB for each source
still there), one line says why, then the three lines; exit 1. An output
that fails (a full disk) is one line and exit 1; a reader of stdout that
goes away (`| head`) ends the capture quietly, exit 0 (tcpdump dies of
SIGPIPE).

Models: tcpdump.c (options, the statistics at exit) over libpcap
(pcap-bpf.c). Differences: the capture device is the modeled kernel's
/dev/bpf, one per worker, merged here; `-q` only silences the "listening on"
line; `-s 0` is refused rather than meaning 262144.
"""

from __future__ import annotations

import argparse
import errno
import heapq
import queue
import signal
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from types import FrameType
from typing import BinaryIO, Protocol, TextIO

from bpf import bpf_h as h
from userland.bpfdev import DEFAULT_BUFSIZE, DEFAULT_SNAPLEN, BpfCapture, Packet
from userland.devdir import device_paths, find_instance
from userland.netmap_capture import open_monitors
from userland.pcap_compile import PcapCompileError, bpf_dump, pcap_compile_expr
from userland.pcap_file import PcapWriter
from userland.pcapng_file import PcapngInterface, PcapngWriter
from userland.pktprint import PacketPrinter
from userland.sigpipe import stdout_gone

PROG = "nomapd capture"
READ_TIMEOUT = 0.1  # seconds; tcpdump uses 1 s, shorter here so that Ctrl-C answers at once
DIRECTIONS = {"in": h.BPF_D_IN, "out": h.BPF_D_OUT, "inout": h.BPF_D_INOUT}


class CaptureError(Exception):
    """A one-line reason to stop before capturing (exit code 2)."""


class SourceFailed(Exception):
    """A source failed mid-capture (its device closed: the server stopped, or the
    worker died): which one, why, and how many packets were written before."""

    def __init__(self, label: str, error: BaseException, written: int) -> None:
        super().__init__(f"{error}")
        self.label = label
        self.error = error
        self.written = written


class Source(Protocol):
    """What the loop needs from a capture source (a BpfCapture, later a netmap ring)."""

    def next_batch(self) -> list[Packet]: ...

    def stats(self) -> tuple[int, int]: ...

    def keylog_enable(self) -> None: ...

    def keylog(self) -> bytes: ...

    def close(self) -> None: ...


@dataclass(frozen=True)
class SourceSpec:
    """How to open the sources: everything from the command line they need."""

    server: str | None
    mode: str
    bufsize: int
    snaplen: int
    program: list[h.BpfInsn] | None
    immediate: bool
    direction: int
    keys: bool = False


def open_bpf(ifname: str, spec: SourceSpec) -> list[tuple[str, Source]]:
    """Every worker's /dev/bpf of the instance, attached to `ifname`: (label, source)."""
    try:
        paths = device_paths(find_instance(spec.server), "bpf")
    except (LookupError, ValueError) as e:
        raise CaptureError(str(e)) from None
    if not paths:
        raise CaptureError("the server has no /dev/bpf")
    opened: list[tuple[str, Source]] = []
    prog = spec.program
    insns = None if prog is None else [(i.code, i.jt, i.jf, i.k) for i in prog]
    try:
        for p in paths:
            cap = BpfCapture.open(
                p, ifname, mode=spec.mode, bufsize=spec.bufsize, snaplen=spec.snaplen,
                program=insns, immediate=spec.immediate, direction=spec.direction,
                timeout=READ_TIMEOUT,
            )  # fmt: skip
            opened.append((p.parent.name, cap))
            if spec.keys:
                cap.keylog_enable()
    except OSError as e:
        for _, s in opened:
            s.close()
        name = errno.errorcode.get(e.errno or 0, "error")
        raise CaptureError(f"{p}: {e.strerror or e} ({name})") from None
    return opened


# Interface name -> opener. "nm0" is the modeled NIC seen through /dev/bpf.
SOURCES: dict[str, Callable[[str, SourceSpec], list[tuple[str, Source]]]] = {"nm0": open_bpf}


def open_netmap(name: str, spec: SourceSpec) -> list[tuple[str, Source]]:
    """A copy monitor of nm0 (`netmap:nm0/t`, `/r`, `/tr`) on every worker's
    /dev/netmap (userland/netmap_capture.py)."""
    if spec.program is not None:
        raise CaptureError(f"-i {name}: a filter expression needs /dev/bpf (use -i nm0)")
    if spec.keys:
        raise CaptureError(f"-i {name}: --keys needs /dev/bpf (use -i nm0)")
    try:
        found = open_monitors(name, spec.server, spec.snaplen, READ_TIMEOUT)
    except (ValueError, LookupError) as e:
        raise CaptureError(str(e)) from None
    except OSError as e:
        raise CaptureError(f"-i {name}: {e.strerror or e}") from None
    return [(label, src) for label, src in found]


# Name prefix -> opener, for names that are not interfaces: netmap ports.
PREFIX_SOURCES: dict[str, Callable[[str, SourceSpec], list[tuple[str, Source]]]] = {
    "netmap:": open_netmap
}


def open_sources(iface: str, spec: SourceSpec) -> list[tuple[str, Source]]:
    opener = SOURCES.get(iface)
    for prefix, fn in PREFIX_SOURCES.items():
        if opener is None and iface.startswith(prefix):
            opener = fn
    if opener is None:
        known = ", ".join(sorted(SOURCES))
        raise CaptureError(f"-i {iface}: no such interface (the model has {known})")
    return opener(iface, spec)


class _Reader(threading.Thread):
    """One source's loop: batches (with their watermark) into the shared queue."""

    def __init__(
        self, index: int, src: Source, keys: bool, out: queue.Queue[_Item], stop: threading.Event
    ) -> None:
        super().__init__(name=f"capture-{index}", daemon=True)
        self.index = index
        self.src = src
        self.keys = keys
        self.out = out
        self.stop = stop
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            stopped_at = 0  # when this reader saw the stop; then it drains up to that time
            while True:
                began = time.time_ns()
                batch = self.src.next_batch()
                keys = self.src.keylog() if self.keys else b""  # after the batch: see the head
                mark = _ts_ns(batch[-1]) if batch else began
                self.out.put((self.index, batch, mark, keys))
                if stopped_at and (not batch or mark >= stopped_at):
                    break
                if not stopped_at and self.stop.is_set():
                    stopped_at = time.time_ns()
        except BaseException as e:  # reported by the main thread
            self.error = e
        finally:
            self.out.put((self.index, None, 0, b""))


_Item = tuple[int, list[Packet] | None, int, bytes]


def _ts_ns(p: Packet) -> int:
    return p.ts_sec * 1_000_000_000 + p.ts_usec * 1000


class _Sink:
    """Where released packets go: a savefile writer or tcpdump's lines."""

    def __init__(self, path: str | None, labels: list[str], snaplen: int, flush_each: bool):
        self.f: BinaryIO | None = None
        self.pcap: PcapWriter | None = None
        self.pcapng: PcapngWriter | None = None
        self.printer: PacketPrinter | None = None
        self.text: TextIO = sys.stdout
        if path is None:
            self.printer = PacketPrinter()
        elif path == "-":
            self.pcap = PcapWriter(sys.stdout.buffer, snaplen, flush_each=flush_each)
        else:
            self.f = open(path, "wb")  # noqa: SIM115 (closed in close())
            if path.endswith(".pcapng"):
                self.pcapng = PcapngWriter(self.f, flush_each=flush_each)
                for label in labels:
                    desc = f"nomapd {label} nm0" if len(labels) > 1 else "nomapd nm0"
                    self.pcapng.add_interface(PcapngInterface("nm0", desc, snaplen))
            else:
                self.pcap = PcapWriter(self.f, snaplen, flush_each=flush_each)

    def write(self, ifid: int, p: Packet) -> None:
        ts = _ts_ns(p)
        if self.pcapng is not None:
            self.pcapng.write(ts, p.data, p.wirelen, ifid)
        elif self.pcap is not None:
            self.pcap.write(ts, p.data, p.wirelen)
        elif self.printer is not None:
            self.text.write(self.printer.line(ts, p.data, p.wirelen) + "\n")

    def secrets(self, keylog: bytes) -> None:
        if self.pcapng is not None:
            self.pcapng.write_secrets(keylog)

    def batch_done(self) -> None:
        if self.printer is not None:
            self.text.flush()

    def close(self, stats: list[tuple[int, int] | None]) -> None:
        if self.pcapng is not None:
            self.pcapng.close(time.time_ns(), stats)
        elif self.pcap is not None:
            self.pcap.flush()
        else:
            self.text.flush()
        if self.f is not None:
            self.f.close()


def capture_loop(
    sources: list[tuple[str, Source]], sink: _Sink, count: int, stop: threading.Event,
    keys: bool = False,
) -> int:  # fmt: skip
    """Read every source until `stop` (or `count` packets), merging by time; returns
    the number of packets written. A source that fails stops the capture (as
    tcpdump's loop ends when its device does): what every source read before is
    written, then SourceFailed is raised for the first whose device failed
    (OSError); any other error of a reader, and an error of the sink (the
    output), is raised as it is."""
    q: queue.Queue[_Item] = queue.Queue()
    readers = [_Reader(i, s, keys, q, stop) for i, (_, s) in enumerate(sources)]
    marks = [0] * len(readers)
    live = len(readers)
    heap: list[tuple[int, int, int, Packet]] = []
    seq = 0
    written = 0
    for r in readers:
        r.start()
    try:
        while live:
            try:
                i, batch, mark, secrets = q.get(timeout=READ_TIMEOUT)
            except queue.Empty:
                continue
            if secrets:  # before any packet of the batch they came after
                sink.secrets(secrets)
            if batch is None:
                live -= 1
                marks[i] = 1 << 63  # finished: holds nothing back
                if readers[i].error is not None:
                    stop.set()  # the others drain and end
            else:
                marks[i] = max(marks[i], mark)
                for p in batch:
                    heapq.heappush(heap, (_ts_ns(p), i, seq, p))
                    seq += 1
            low = min(marks)
            while heap and heap[0][0] <= low and not (count and written >= count):
                _, ifid, _, p = heapq.heappop(heap)
                sink.write(ifid, p)
                written += 1
            sink.batch_done()
            if count and written >= count:
                stop.set()
                heap.clear()
    finally:
        stop.set()
        for r in readers:
            r.join()
    for (label, _), r in zip(sources, readers, strict=True):
        if isinstance(r.error, OSError):  # its device: closed, or an errno
            raise SourceFailed(label, r.error, written)
        if r.error is not None:  # anything else is a bug: as it is
            raise r.error
    return written


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "-i", dest="iface", default="nm0",
        help="nm0 (default: /dev/bpf) or a monitor of it: netmap:nm0/t, /r, /tr",
    )  # fmt: skip
    p.add_argument("-w", dest="file", help="write packets to FILE (.pcapng, else pcap; - stdout)")
    p.add_argument("-c", dest="count", type=int, help="stop after COUNT packets")
    p.add_argument("-s", dest="snaplen", default=str(DEFAULT_SNAPLEN),
                   help=f"snap length in bytes ({DEFAULT_SNAPLEN})")  # fmt: skip
    p.add_argument("-B", dest="bufsize", default=str(DEFAULT_BUFSIZE // 1024),
                   help=f"buffer size in KiB ({DEFAULT_BUFSIZE // 1024})")  # fmt: skip
    p.add_argument("-U", dest="packet_buffered", action="store_true",
                   help="flush the file after each packet")  # fmt: skip
    p.add_argument("-Q", dest="direction", default="inout", help="in, out or inout (default)")
    p.add_argument("-d", dest="dump", action="count", default=0,
                   help="print the filter program and exit (-dd: as C, -ddd: decimal)")  # fmt: skip
    p.add_argument("-q", dest="quiet", action="store_true", help="no 'listening on' line")
    p.add_argument("--mode", default="zbuf", help="zbuf (zero-copy buffers, default) or buffer")
    p.add_argument("--immediate", action="store_true", help="deliver packets as they arrive")
    p.add_argument("--server", help="the instance: its port or device directory")
    p.add_argument("--keys", action="store_true",
                   help="WRITE TLS SECRETS into the .pcapng (a DSB, for Wireshark)")  # fmt: skip
    p.add_argument("expression", nargs="*", help="filter expression (tcpdump's syntax)")


def _positive(text: str, opt: str, limit: int | None = None) -> int:
    try:
        n = int(text)
    except ValueError:
        raise CaptureError(f"{opt} {text}: not a number") from None
    if n <= 0 or (limit is not None and n > limit):
        bound = f"1..{limit}" if limit is not None else "positive"
        raise CaptureError(f"{opt} {text}: must be {bound}")
    return n


def run(ns: argparse.Namespace) -> int:
    """The command, from parsed arguments; returns the exit code."""
    stop = threading.Event()
    try:
        snaplen = _positive(ns.snaplen, "-s", DEFAULT_SNAPLEN)
        bufsize = _positive(ns.bufsize, "-B") * 1024
        if ns.count is not None and ns.count < 1:  # tcpdump: "invalid packet count"
            raise CaptureError(f"-c {ns.count}: must be positive")
        if ns.mode not in ("zbuf", "buffer"):
            raise CaptureError(f"--mode {ns.mode}: zbuf or buffer")
        if ns.direction not in DIRECTIONS:
            raise CaptureError(f"-Q {ns.direction}: in, out or inout")
        if ns.keys and not (ns.file or "").endswith(".pcapng"):
            raise CaptureError("--keys needs a pcapng file (-w FILE.pcapng)")
        expr = " ".join(ns.expression)
        program = None
        if expr or ns.dump:
            try:
                program = pcap_compile_expr(expr, snaplen)
            except PcapCompileError as e:
                raise CaptureError(str(e)) from None
        if ns.dump:
            sys.stdout.write(bpf_dump(program or [], min(ns.dump, 3)))
            return 0
        spec = SourceSpec(ns.server, ns.mode, bufsize, snaplen, program, ns.immediate,
                          DIRECTIONS[ns.direction], ns.keys)  # fmt: skip
        if ns.keys:  # before anything is asked of the server, so that nobody misses it
            print(f"{PROG}: WARNING: writing TLS secrets into {ns.file} (--keys)",
                  file=sys.stderr, flush=True)  # fmt: skip
        sources = open_sources(ns.iface, spec)
    except CaptureError as e:
        print(f"{PROG}: {e}", file=sys.stderr)
        return 2
    try:
        try:
            sink = _Sink(ns.file, [label for label, _ in sources], snaplen, ns.packet_buffered)
        except OSError as e:
            print(f"{PROG}: {ns.file}: {e.strerror or e}", file=sys.stderr)
            return 2
        old = _on_signals(stop)
        failed: SourceFailed | None = None
        try:
            if not ns.quiet:
                print(f"{PROG}: listening on {ns.iface} ({len(sources)} worker(s)), "
                      f"link-type EN10MB (Ethernet), snapshot length {snaplen} bytes",
                      file=sys.stderr, flush=True)  # fmt: skip
            try:
                written = capture_loop(sources, sink, ns.count or 0, stop, ns.keys)
            except SourceFailed as e:  # the server went away: keep what came, say why
                failed, written = e, e.written
            stats = [_stats(s) for _, s in sources]
            sink.close(stats)
        except BrokenPipeError:
            # The reader of stdout is gone (`| head`): the capture ends there, as
            # tcpdump's does (SIGPIPE), without a traceback.
            stdout_gone()
            return 0
        except OSError as e:  # the output file: a full disk, an I/O error
            print(f"{PROG}: {ns.file or 'stdout'}: {e.strerror or e}", file=sys.stderr)
            return 1
        finally:
            for sig, handler in old.items():
                signal.signal(sig, handler)
    finally:
        for _, s in sources:
            s.close()
    got = [st for st in stats if st is not None]
    sys.stdout.flush()
    if failed is not None:
        print(f"{PROG}: {failed} (the server stopped?)", file=sys.stderr)
    print(f"{written} packets captured", file=sys.stderr)
    print(f"{sum(r for r, _ in got)} packets received by filter", file=sys.stderr)
    print(f"{sum(d for _, d in got)} packets dropped by kernel", file=sys.stderr, flush=True)
    return 1 if failed is not None else 0


def _stats(src: Source) -> tuple[int, int] | None:
    """BIOCGSTATS (or the monitor's count); None from a source whose device is gone."""
    try:
        return src.stats()
    except OSError:
        return None


_Handler = Callable[[int, FrameType | None], object] | int | signal.Handlers | None


def _on_signals(stop: threading.Event) -> dict[signal.Signals, _Handler]:
    def handler(signum: int, frame: FrameType | None) -> None:
        stop.set()

    return {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: {message}\n")


def main(argv: Sequence[str] | None = None) -> int:
    p = _Parser(prog=PROG, description=__doc__.splitlines()[0] if __doc__ else None)
    add_arguments(p)
    return run(p.parse_args(list(sys.argv[1:] if argv is None else argv)))


if __name__ == "__main__":
    sys.exit(main())
