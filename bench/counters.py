"""nomapd's modeled-kernel counters over one run, per GB served.

Theory of operation. nomapd's admin listener serves `/stats` (a flat JSON
object of counters). The bench reads it just before a run and again once the
run's connections have all closed (teardown is asynchronous: the last mbufs
are freed after the client goes), and reports the deltas of the counters below
per GB (10^9 bytes) the client received:

| key | counter | what it counts |
|---|---|---|
| mbufs | mbuf.mbufs_total | mbufs allocated, of every kind |
| ext_pgs | mbuf.ext_pgs_total | unmapped EXT_PGS mbufs (M_NOMAP) allocated |
| sf_bufs | sfbuf.total | sf_bufs mapped (a page each: NIC without NOMAP, mapped sendfile) |
| converted | ip.unmapped_converted | unmapped chains ip_output converted for a NIC without NOMAP |
| sw_csum_bytes | ip.sw_csum_bytes | bytes checksummed in software (NIC without TXCSUM) |
| ktls_records | ktls.records_encrypted | TLS records encrypted by KTLS |
| walked | tcp.sndptr_walked | mbufs tcp_output walked from its cached pointer to snd_nxt |
| rexmit_bytes | tcp.sndrexmitbyte | bytes TCP sent again after the wire lost them (`--loss`) |

the capture rows' BPF counters (`CAPTURE_PER_GB`, shown in the report's
capture section only):

| key | counter | what it counts |
|---|---|---|
| bpf_captured | bpf.packets_captured | records stored in a descriptor's buffer |
| bpf_dropped | bpf.packets_dropped | packets dropped (no free buffer) |
| bpf_bytes | bpf.bytes_captured | packet bytes copied into BPF buffers |
| bpf_unmapped_mbufs | bpf.unmapped_mbufs_copied | unmapped mbufs copied by m_copydata's page walk |
| bpf_handovers | bpf.zbuf_handovers | zero-copy buffers handed to the process |
| bpf_reads | bpf.reads | buffered-mode reads that copied a hold buffer out |
| bpf_read_bytes | bpf.read_bytes | bytes those reads copied out |

and, as a level rather than a delta, `sockbuf.mbufs_peak`: the most mbufs
any one socket buffer held since the server started (the servers are started
fresh for each workload group, see `bench.workloads`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any

PER_GB: dict[str, str] = {
    "mbufs": "mbuf.mbufs_total",
    "ext_pgs": "mbuf.ext_pgs_total",
    "sf_bufs": "sfbuf.total",
    "converted": "ip.unmapped_converted",
    "sw_csum_bytes": "ip.sw_csum_bytes",
    "ktls_records": "ktls.records_encrypted",
    "walked": "tcp.sndptr_walked",
    "rexmit_bytes": "tcp.sndrexmitbyte",
}
CAPTURE_PER_GB: dict[str, str] = {
    "bpf_captured": "bpf.packets_captured",
    "bpf_dropped": "bpf.packets_dropped",
    "bpf_bytes": "bpf.bytes_captured",
    "bpf_unmapped_mbufs": "bpf.unmapped_mbufs_copied",
    "bpf_handovers": "bpf.zbuf_handovers",
    "bpf_reads": "bpf.reads",
    "bpf_read_bytes": "bpf.read_bytes",
}
LEVELS: dict[str, str] = {"sockbuf_mbufs_peak": "sockbuf.mbufs_peak"}

GB = 1e9


def per_gb(before: Mapping[str, Any], after: Mapping[str, Any], nbytes: int) -> dict[str, float]:
    """The PER_GB and CAPTURE_PER_GB deltas divided by the GB received, and the
    LEVELS as they are after."""
    out: dict[str, float] = {}
    gb = nbytes / GB
    for key, counter in {**PER_GB, **CAPTURE_PER_GB}.items():
        if counter in after and counter in before and gb > 0:
            out[key] = (float(after[counter]) - float(before[counter])) / gb
    for key, counter in LEVELS.items():
        if counter in after:
            out[key] = float(after[counter])
    return out


def wait_idle(fetch: Callable[[], Mapping[str, Any]], timeout: float = 3.0) -> Mapping[str, Any]:
    """The counters once `server.connections_active` is 0, or as they are after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        s = fetch()
        if not s.get("server.connections_active") or time.monotonic() > deadline:
            return s
        time.sleep(0.05)
