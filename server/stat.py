"""`nomapd stat`: the counters of a running server, printed the way netstat -m is.

Theory of operation. The first block is FreeBSD's `netstat -m` (mbufs,
clusters, the mbuf_extpgs zone, K-bytes allocated to network, denied/delayed
requests, sf_bufs and the sfstat counters); the following blocks are the KTLS
(`kern.ipc.tls.stats`), ip_output conversion, interface, socket-buffer and VM
counters.

`nomapd stat -w 1` prints one line of deltas per interval as `netstat -w 1`
does (usr.bin/netstat/if.c, sidewaysintpr): a header, then a line per
interval, the header again every HEADER_EVERY lines; the first line counts
from the server's start (netstat's first line counts from boot). Columns: the
stages of the data path (`WATCH_COLUMNS`). A restarted worker's counters
start again at zero; a delta never shows below zero.

Models: usr.bin/netstat/mbuf.c (the `netstat -m` report), usr.bin/netstat/if.c.
"""

from __future__ import annotations

import http.client
import json
import sys
import time
from collections.abc import Callable
from typing import Any, TextIO

from bpf.bpfdesc import Xbpfd
from server.config import ConfigError
from userland.sigpipe import stdout_gone


def fetch(admin: tuple[str, int], timeout: float = 5.0, path: str = "/stats") -> Any:
    host, port = admin
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        if resp.status != 200:
            raise ConfigError(f"admin {host}:{port} answered {resp.status}")
        return json.loads(resp.read())
    except OSError as e:
        raise ConfigError(f"cannot reach admin {host}:{port}: {e.strerror or e}") from e
    finally:
        conn.close()


def format_stat(s: dict[str, Any]) -> str:
    g = s.get
    kbytes = (
        g("mbuf.mbufs_in_use", 0) * 256
        + g("mbuf.clusters_in_use", 0) * 2048
        + g("mbuf.jumbop_in_use", 0) * 4096
        + g("mbuf.ext_pgs_in_use", 0) * 256
    ) // 1024
    lines = [
        f"{g('mbuf.mbufs_in_use')}/{g('mbuf.mbufs_peak')}/{g('mbuf.mbufs_total')} "
        "mbufs in use (current/peak/total)",
        f"{g('mbuf.clusters_in_use')}/{g('mbuf.clusters_total')} "
        "mbuf clusters in use (current/total)",
        f"{g('mbuf.jumbop_in_use')}/{g('mbuf.jumbop_total')} "
        "4k (page size) jumbo clusters in use (current/total)",
        f"{g('mbuf.ext_pgs_in_use')}/{g('mbuf.ext_pgs_peak')}/{g('mbuf.ext_pgs_total')} "
        "mbuf_extpgs (unmapped M_NOMAP) in use (current/peak/total)",
        f"{g('mbuf.sfbuf_mbufs_in_use')} EXT_SFBUF mbufs in use",
        f"{kbytes}K bytes allocated to network (current)",
        f"{g('mbuf.requests_denied')}/{g('mbuf.requests_delayed')} "
        "requests for mbufs denied/delayed",
        f"{g('sfbuf.in_use')}/{g('sfbuf.peak')}/{g('sfbuf.max') or 'unlimited'} "
        "sfbufs in use (current/peak/max)",
        f"{g('sfbuf.total')} sfbufs allocated in all",
        f"{g('sfbuf.denied')}/{g('sfbuf.delayed')} requests for sfbufs denied/delayed",
        f"{g('sendfile.syscalls')} sendfile syscalls",
        f"{g('sendfile.noiocnt')} sendfile batches completed without I/O request",
        f"{g('sendfile.iocnt')} requests for I/O initiated by sendfile",
        f"{g('sendfile.pages_read')} pages read by sendfile as part of a request",
        f"{g('sendfile.pages_valid')} pages were valid at time of a sendfile request",
        f"{g('sendfile.rhpages_requested')} pages were requested for read ahead by applications",
        f"{g('sendfile.rhpages_read')} pages were read ahead by sendfile",
        f"{g('sendfile.busy_waits')} pages sendfile waited for while another read brought them in",
        f"{g('sendfile.allocfail')} requests for sfbufs denied",
        f"{g('sendfile.allocwait')} requests for sfbufs delayed",
        f"{g('sendfile.io_errors')} sendfile reads failed (connection aborted)",
        f"{g('sendfile.file_changed')} of them because the file changed under the response",
        "",
        "kern.ipc.tls:",
    ]
    for key in sorted(k for k in s if k.startswith("ktls.")):
        lines.append(f"  {key.removeprefix('ktls.')}: {s[key]}")
    for title, prefix in (("ip:", "ip."), ("ip6:", "ip6.")):
        lines.append(title)
        for key in sorted(k for k in s if k.startswith(prefix)):
            lines.append(f"  {key.removeprefix(prefix)}: {s[key]}")
    caps = ",".join(c.removeprefix("IFCAP_") for c in g("ifnet.capenable", []))
    lines.append(f"{g('ifnet.name', 'nm0')}: options=<{caps}>")
    for key in sorted(k for k in s if k.startswith("ifnet.") and k != "ifnet.capenable"):
        if key != "ifnet.name":
            lines.append(f"  {key.removeprefix('ifnet.')}: {s[key]}")
    for prefix in ("sockbuf.", "sockbuf_rcv.", "tcp.", "vm.", "netmap.", "server."):
        lines.append(prefix.rstrip(".") + ":")
        for key in sorted(k for k in s if k.startswith(prefix)):
            if not isinstance(s[key], list):  # netmap.ports: the rows, in --json
                lines.append(f"  {key.removeprefix(prefix)}: {s[key]}")
    return "\n".join(lines) + "\n"


# usr.bin/netstat/bpf.c's bpf_stats: the header and one row per descriptor.
_BPF_HEADER = (
    f"{'Pid':>5} {'Netif':>6} {'Flags':>7} {'Recv':>9} {'Drop':>9} {'Match':>9}"
    f" {'Sblen':>5} {'Hblen':>5} {'Zcopy':>9} Command"
)


def format_bpf(s: dict[str, Any]) -> str:
    """`netstat -B` for the modeled interfaces: the rows of `bpf.descriptors`
    (every worker's; the header alone when no descriptor is attached)."""
    lines = [_BPF_HEADER]
    for r in s.get("bpf.descriptors", []):
        x = Xbpfd(**r)
        lines.append(
            f"{x.bd_pid:>5} {x.bd_ifname:>6} {x.flags():>7} {x.bd_rcount:>9} {x.bd_dcount:>9}"
            f" {x.bd_fcount:>9} {x.bd_slen:>5} {x.bd_hlen:>5} {x.bd_zcopy:>9} -"
        )
    return "\n".join(lines) + "\n"


def run_stat(admin: tuple[str, int], *, as_json: bool = False, bpf: bool = False) -> int:
    stats = fetch(admin)
    if bpf and not as_json:
        sys.stdout.write(format_bpf(stats))
    elif as_json:
        json.dump(stats, sys.stdout, indent=1, sort_keys=True)
        sys.stdout.write("\n")
    else:
        sys.stdout.write(format_stat(stats))
    return 0


def _sum(*keys: str) -> Callable[[dict[str, Any]], int]:
    return lambda s: sum(int(s.get(k, 0)) for k in keys)


def _mapped(s: dict[str, Any]) -> int:
    return int(s.get("mbuf.mbufs_total", 0)) - int(s.get("mbuf.ext_pgs_total", 0))


# (heading, width, what it counts): the transmit path from the page cache to the wire.
WATCH_COLUMNS: list[tuple[str, int, Callable[[dict[str, Any]], int]]] = [
    ("records", 8, _sum("ktls.records_encrypted")),  # KTLS records encrypted
    ("extpgs", 8, _sum("mbuf.ext_pgs_total")),  # unmapped (EXT_PGS) mbufs allocated
    ("mapped", 8, _mapped),  # other mbufs allocated
    ("conv", 7, _sum("ip.unmapped_converted")),  # chains ip_output converted to mapped
    ("sfbufs", 8, _sum("sfbuf.total")),  # sf_buf mappings
    ("csum-bytes", 11, _sum("ip.sw_csum_bytes")),  # bytes checksummed in software
    ("packets", 8, _sum("ifnet.tx_segments")),  # wire segments
    ("wire-bytes", 11, _sum("ifnet.tx_bytes")),  # bytes on the wire, headers included
    ("drops", 6, _sum("ip.odropped", "ip6.odropped", "ifnet.tx_lost")),
]
HEADER_EVERY = 21  # netstat -w: the header again after 21 lines


def watch_header() -> str:
    return " ".join(f"{h:>{w}}" for h, w, _ in WATCH_COLUMNS)


def watch_line(prev: dict[str, Any], cur: dict[str, Any]) -> str:
    return " ".join(f"{max(0, f(cur) - f(prev)):>{w}}" for _, w, f in WATCH_COLUMNS)


def run_watch(
    admin: tuple[str, int], interval: float, count: int | None, out: TextIO = sys.stdout
) -> int:
    """`nomapd stat -w INTERVAL [-c COUNT]`: until COUNT lines (or interrupted, or
    the reader of `out` is gone: `| head`, which ends it quietly, as netstat's
    SIGPIPE does)."""
    prev: dict[str, Any] = {}
    lines = 0
    next_at = time.monotonic()
    while count is None or lines < count:
        cur = fetch(admin)
        try:
            if lines % HEADER_EVERY == 0:
                out.write(watch_header() + "\n")
            out.write(watch_line(prev, cur) + "\n")
            out.flush()
        except BrokenPipeError:
            if out is sys.stdout:
                stdout_gone()
            return 0
        prev = cur
        lines += 1
        if count is not None and lines >= count:
            break
        next_at += interval
        time.sleep(max(0.0, next_at - time.monotonic()))
    return 0
