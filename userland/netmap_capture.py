"""A netmap monitor of nm0 as a capture source: `nomapd capture -i netmap:nm0/t` (`/r`, `/tr`).

Theory of operation. libpcap captures from netmap ports (pcap-netmap.c) by
opening the port and reading its RX rings after each poll; a copy monitor
(`/t` transmitted frames, `/r` received, both with `/tr`) is such a port.
`open_monitors(name, spec)` opens the monitor `name` on every worker's
/dev/netmap (each worker has its own nm0), with `nmport_open`
(userland/netmap_user.py). `MonitorCapture.next_batch()` is the capture
loop's call: NIOCRXSYNC, every slot of [head, tail) copied out as a `Packet`
(cut at the snap length), head moved to tail (the slots go back to the
kernel at the next sync); with nothing there, poll(POLLIN) up to the read
timeout and try once more; [] when the timeout passed empty.

Models: libpcap's pcap-netmap.c (pcap_netmap_dispatch over the RX rings).
Differences: a monitor slot has no timestamp (the model leaves the ring's ts
at 0, `dev.netmap.no_timestamp`), so a packet is stamped with the time of the
sync that brought it; a frame longer than the buffer (a TSO burst) is cut at
`dev.netmap.buf_size` and its wire length is lost (the slot's length is what
was copied); a filter expression is refused (libpcap would run it in the
process: here the kernel's BPF does filtering, use -i nm0); BIOCGSTATS has no
equivalent: the received count is the packets read, drops are 0 here (the
server counts them: netmap.monitor_drops in /stats).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from netmap.netmap_h import NR_MONITOR_RX, NR_MONITOR_TX, POLLIN
from userland.bpfdev import Packet
from userland.devdir import device_paths, find_instance
from userland.netmap_user import NmPort, nmport_open, nmport_parse


@dataclass
class MonitorCapture:
    """One worker's monitor port, read as a capture source."""

    port: NmPort
    snaplen: int
    timeout: float
    received: int = 0

    def _take(self) -> list[Packet]:
        port = self.port
        port.rxsync()
        out: list[Packet] = []
        now = time.time()
        sec, usec = int(now), int((now % 1) * 1e6)
        for ring in port.rx_rings:
            head, tail = ring.head, ring.tail
            if head == tail:
                continue
            n = (tail - head) % ring.num_slots
            for a, b in ring.span(head, n):
                lens = ring.slots["len"][a:b].tolist()
                idx = ring.slots["buf_idx"][a:b].tolist()
                for i, ln in zip(idx, lens, strict=True):
                    cap = min(int(ln), self.snaplen)
                    out.append(Packet(sec, usec, cap, int(ln), ring.bufs[i, :cap].tobytes()))
            ring.advance(tail)
        self.received += len(out)
        return out

    def next_batch(self) -> list[Packet]:
        got = self._take()
        if got:
            return got
        self.port.poll(POLLIN, self.timeout)
        return self._take()

    def stats(self) -> tuple[int, int]:
        return self.received, 0

    def keylog_enable(self) -> None:
        raise OSError("TLS key export (--keys) needs /dev/bpf: use -i nm0")

    def keylog(self) -> bytes:
        return b""

    def close(self) -> None:
        self.port.close()


def open_monitors(
    name: str, server: str | None, snaplen: int, timeout: float
) -> list[tuple[str, MonitorCapture]]:
    """The monitor `name` on every worker of the instance: (worker label, source).
    ValueError: not a monitor name; LookupError: no server; OSError: the kernel's."""
    spec = nmport_parse(name)
    if not spec.flags & (NR_MONITOR_TX | NR_MONITOR_RX):
        raise ValueError(f"{name}: not a monitor (add /t, /r or /tr)")
    paths = device_paths(find_instance(server), "netmap")
    if not paths:
        raise LookupError("the server has no /dev/netmap")
    opened: list[tuple[str, MonitorCapture]] = []
    try:
        for p in paths:
            port = nmport_open(name, path=str(p))
            opened.append((p.parent.name, MonitorCapture(port, snaplen, timeout)))
    except BaseException:
        for _, m in opened:
            m.close()
        raise
    return opened
