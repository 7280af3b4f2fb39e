"""Kernel counters: plain integers bumped on the hot path, exported as a snapshot.

Theory of operation. Each group mirrors a FreeBSD statistics structure or
sysctl tree: `mbstat` and the UMA zones behind `netstat -m`, `struct sfstat`,
`vm.stats`, `ipstat`, `if_data` and `kern.ipc.tls.stats`. Nothing here is ever
recomputed by walking objects: the code that allocates or frees bumps the
counter, and tests check that the counters return to zero.

Models: the counters usr.bin/netstat/mbuf.c prints (`netstat -m`), and the
statistics of sys/kern/uipc_ktls.c (`kern.ipc.tls.stats`).
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from types import MappingProxyType
from typing import Any


class _Group:
    def items(self) -> list[tuple[str, int]]:
        prefix = PREFIXES[type(self)]
        return [(f"{prefix}.{f.name}", getattr(self, f.name)) for f in fields(self)]  # type: ignore[arg-type]


@dataclass(slots=True)
class MbStat(_Group):
    """mbuf zones (`netstat -m`, `vmstat -z`): current and cumulative allocations."""

    mbufs_in_use: int = 0
    mbufs_total: int = 0
    mbufs_peak: int = 0
    clusters_in_use: int = 0  # 2 KiB clusters (zone mbuf_cluster)
    clusters_total: int = 0
    jumbop_in_use: int = 0  # page-sized clusters (zone mbuf_jumbo_page)
    jumbop_total: int = 0
    ext_pgs_in_use: int = 0  # zone mbuf_extpgs
    ext_pgs_total: int = 0
    ext_pgs_peak: int = 0
    sfbuf_mbufs_in_use: int = 0  # EXT_SFBUF mbufs: E0 sendfile and conversions
    # netstat -m's "requests for mbufs denied/delayed": shown for its shape, always 0,
    # because an mbuf header is a Python object and its allocation cannot fail here.
    requests_denied: int = 0
    requests_delayed: int = 0
    compressed: int = 0  # mb_unmapped_compress successes


@dataclass(slots=True)
class SfStat(_Group):
    """struct sfstat (sys/sys/sf_buf.h), each bumped where kern_sendfile.c bumps it,
    less the two the model has no cause for, and three more.

    Not kept: sf_busy (a page vm_page_grab_pages could not busy, only with
    SF_NODISKIO, which nomapd never passes) and sf_pages_bogus (valid pages in the
    middle of a read, given to the pager as bogus_page: the model ends a read at a
    valid page and starts another after it, see `busy_waits`)."""

    syscalls: int = 0  # sf_syscalls: sendfile calls (a job resumed after a wait is one call)
    noiocnt: int = 0  # sf_noiocnt: batches (sendfile_swapin passes) that started no read
    iocnt: int = 0  # sf_iocnt: reads started (vm_pager_get_pages_async calls)
    pages_read: int = 0  # sf_pages_read: pages in those reads (readahead not included)
    pages_valid: int = 0  # sf_pages_valid: pages valid when the batch looked
    # sf_rhpages_requested: readahead the application asked for in its flags,
    # SF_READAHEAD(flags) per call (nomapd's --readahead N: SF_USER_READAHEAD)
    rhpages_requested: int = 0
    rhpages_read: int = 0  # sf_rhpages_read: readahead pages the reads were extended by
    allocfail: int = 0  # sf_allocfail: sf_buf allocations that failed (SFB_NOWAIT)
    allocwait: int = 0  # sf_allocwait: sf_buf allocations that had to wait
    # Beyond struct sfstat:
    # pages another read was already bringing in: waited for (vm_page_grab_pages
    # sleeps on a busy page; the kernel counts nothing there)
    busy_waits: int = 0
    io_errors: int = 0  # page-ins that failed; their connection was aborted (EIO)
    file_changed: int = 0  # ... because the file changed under the response


@dataclass(slots=True)
class SfBufStat(_Group):
    """sf_buf mappings: kern.ipc.nsfbufs{,used,peak} plus denials and waits."""

    in_use: int = 0
    peak: int = 0
    total: int = 0
    max: int = 0  # 0: direct map, unlimited
    denied: int = 0
    delayed: int = 0


@dataclass(slots=True)
class VmStat(_Group):
    pages_total: int = 0
    pages_free: int = 0
    pages_wired: int = 0  # wired file pages plus anonymous pages (v_wire_count)
    pages_cached: int = 0  # valid, unwired file pages (evictable)
    pages_anon: int = 0
    pages_reserved: int = 0  # frames set aside for KTLS ciphertext of wired file pages
    waits: int = 0  # vm_wait: an allocation found no free page
    evictions: int = 0
    vnodein: int = 0  # v_vnodein: vnode pager reads (counted at completion)
    vnodepgsin: int = 0  # v_vnodepgsin: file pages they read, readahead included


@dataclass(slots=True)
class IpStat(_Group):
    output_packets: int = 0
    output_bytes: int = 0
    unmapped_converted: int = 0  # chains converted by mb_unmapped_to_ext in ip_output
    unmapped_mbufs_converted: int = 0  # unmapped mbufs replaced
    unmapped_pages_mapped: int = 0  # pages mapped through sf_bufs by conversions
    sw_csum_packets: int = 0  # TCP checksums computed in software (in_delayed_cksum)
    sw_csum_bytes: int = 0
    sw_hdr_csum: int = 0  # IP header checksums computed in software (in_cksum_hdr)
    odropped: int = 0  # ips_odropped: ENOBUFS on conversion failure
    # The receive side (ip_input):
    total: int = 0  # ips_total: packets received
    badsum: int = 0  # ips_badsum: header checksum wrong
    tooshort: int = 0  # ips_tooshort: ip_len shorter than the header, or a short header
    toosmall: int = 0  # ips_toosmall: the packet is shorter than ip_len
    badhlen: int = 0  # ips_badhlen: ip_hl below 5
    badvers: int = 0  # ips_badvers: not version 4
    delivered: int = 0  # ips_delivered: handed to the transport (tcp_input)


@dataclass(slots=True)
class Ip6Stat(_Group):
    """struct ip6stat (sys/netinet6/ip6_var.h): the counters of ip6_output and ip6_input."""

    localout: int = 0  # ip6s_localout: packets sent (TSO bursts count one)
    output_bytes: int = 0
    odropped: int = 0  # ip6s_odropped: ENOBUFS on conversion failure
    total: int = 0  # ip6s_total: packets received
    tooshort: int = 0  # ip6s_tooshort: shorter than the header or its payload length
    badvers: int = 0  # ip6s_badvers: not version 6
    delivered: int = 0  # ip6s_delivered: handed to the transport (tcp_input)


@dataclass(slots=True)
class IfStat(_Group):
    tx_packets: int = 0  # packets (TSO bursts) handed to the NIC
    tx_segments: int = 0  # wire segments after TSO
    tx_bytes: int = 0  # bytes on the wire, including a 40-byte (IPv6: 60) header per segment
    # busdma segments loaded: physically adjacent pieces merged (sf_buf or unmapped
    # pages alike), each at most if_hw_tsomaxsegsize bytes, plus one for the header
    tx_dma_segments: int = 0
    tx_defrag: int = 0  # packets over if_hw_tsomaxsegcount segments (a driver's m_defrag)
    tx_unmapped_mbufs: int = 0  # unmapped mbufs gathered by physical address
    tx_writes: int = 0  # sendmsg calls on host sockets
    tx_lost: int = 0  # packets the lossy wire lost (--loss)
    rx_packets: int = 0  # frames received (each in a cluster)
    rx_bytes: int = 0  # their bytes, headers included
    rx_errors: int = 0  # frames too short for an Ethernet header
    rx_noproto: int = 0  # frames of an ether type nobody takes


@dataclass(slots=True)
class KtlsStat(_Group):
    sessions_active: int = 0
    sessions_total: int = 0
    records_framed: int = 0
    records_encrypted: int = 0
    bytes_encrypted: int = 0
    tasks_active: int = 0  # batches queued to or running on workers
    failed_crypto: int = 0
    enqueued_pages: int = 0
    rx_records: int = 0  # client records decrypted (KTLS RX)
    rx_bytes: int = 0  # their plaintext bytes
    rx_failures: int = 0  # client records refused (bad tag, too long, bad type)
    alerts_sent: int = 0  # alerts sent by the record layer (not close_notify)
    alerts_received: int = 0
    key_updates_rx: int = 0  # TLS 1.3 KeyUpdates received
    key_updates_tx: int = 0  # KeyUpdates sent (and new send sessions installed)


@dataclass(slots=True)
class SbStat(_Group):
    mbufs_peak: int = 0  # most mbufs ever held by one send buffer (sb_mcnt)
    mbcnt_peak: int = 0  # most storage ever charged to one send buffer (sb_mbcnt)
    ccc_peak: int = 0
    sbspace_waits: int = 0


@dataclass(slots=True)
class SbRcvStat(SbStat):
    """The same peaks for receive buffers (so_rcv): the most one connection held
    between tcp_input and the reader's soreceive."""


@dataclass(slots=True)
class TcpStat(_Group):
    connections: int = 0
    sndtotal: int = 0  # tcps_sndtotal: packets handed to ip_output (a TSO burst is one)
    sndpack: int = 0  # tcps_sndpack: data packets (all of the model's packets carry data)
    sndbyte: int = 0  # tcps_sndbyte: data bytes in them
    # tcp_m_copym stopped a TSO burst short at if_hw_tsomaxsegcount (model only: the
    # kernel keeps no such counter)
    tso_segcount_cut: int = 0
    sndptr_walked: int = 0  # mbufs walked to find snd_nxt in send buffers
    drops: int = 0  # packets ip_output refused (resent later)
    # The receive side (tcp_input), tcpstat's names:
    rcvtotal: int = 0  # tcps_rcvtotal: segments received
    rcvpack: int = 0  # tcps_rcvpack: in-sequence data packets
    rcvbyte: int = 0  # tcps_rcvbyte: their bytes
    rcvackpack: int = 0  # tcps_rcvackpack: segments acknowledging new data of ours
    rcvackbyte: int = 0  # tcps_rcvackbyte: bytes they acknowledged
    rcvbadsum: int = 0  # tcps_rcvbadsum: checksum wrong
    rcvbadoff: int = 0  # tcps_rcvbadoff: data offset wrong
    rcvshort: int = 0  # tcps_rcvshort: shorter than a TCP header
    rcvoopack: int = 0  # tcps_rcvoopack: out-of-order packets (dropped: the wire is in order)
    rcvduppack: int = 0  # tcps_rcvduppack: duplicate data (dropped)
    rcvpackafterwin: int = 0  # tcps_rcvpackafterwin: data beyond the window (dropped)
    # Retransmission (a lossy wire):
    rexmttimeo: int = 0  # tcps_rexmttimeo: retransmit timeouts (go back to snd_una)
    sndrexmitpack: int = 0  # tcps_sndrexmitpack: packets (bursts) that resent data
    sndrexmitbyte: int = 0  # tcps_sndrexmitbyte: bytes sent again


# Each group's name in the snapshot ("mbuf.mbufs_in_use"). A plain table rather
# than a ClassVar on the dataclasses, which mypyc does not compile (README,
# "Compiled core").
PREFIXES: dict[type[_Group], str] = {
    MbStat: "mbuf",
    SfStat: "sendfile",
    SfBufStat: "sfbuf",
    VmStat: "vm",
    IpStat: "ip",
    IfStat: "ifnet",
    KtlsStat: "ktls",
    SbStat: "sockbuf",
    TcpStat: "tcp",
    Ip6Stat: "ip6",
    SbRcvStat: "sockbuf_rcv",
}


# Each group's sysctl node, so that every counter is a read-only sysctl
# (mbuf/kern_sysctl.py) and a Prometheus metric named after it (server/metrics.py):
# "ktls.records_framed" is kern.ipc.tls.stats.records_framed. FreeBSD's names where
# the kernel has the structure (kern.ipc.tls.stats, net.inet.ip.stats,
# net.inet.tcp.stats, vm.stats, kern.ipc.sfstat); nomapd's own below the nearest
# FreeBSD node otherwise (mbuf zones, sf_buf pool, socket-buffer peaks, nm0's
# if_data, the bpf package's BpfStat, the netmap package's NetmapStat).
SYSCTL_PREFIXES: dict[str, str] = {
    "mbuf": "kern.ipc.mbstat",
    "sendfile": "kern.ipc.sfstat",
    "sfbuf": "kern.ipc.sfbuf",
    "vm": "vm.stats",
    "ip": "net.inet.ip.stats",
    "ip6": "net.inet6.ip6.stats",
    "ifnet": "dev.nm.0.stats",
    "ktls": "kern.ipc.tls.stats",
    "sockbuf": "kern.ipc.sockbuf.snd",
    "sockbuf_rcv": "kern.ipc.sockbuf.rcv",
    "tcp": "net.inet.tcp.stats",
    "bpf": "net.bpf.counters",
    "netmap": "dev.netmap.counters",
}

# Counters that are levels (in use now, peaks, sizes), not counts of events: the
# names ending in in_use, _active or peak, and these.
_LEVELS: frozenset[str] = frozenset({
    "sfbuf.max", "vm.pages_total", "vm.pages_free", "vm.pages_wired", "vm.pages_cached",
    "vm.pages_anon", "vm.pages_reserved", "bpf.attached", "bpf.buffer_bytes",
    "netmap.region_bytes",
})  # fmt: skip


def is_level(key: str) -> bool:
    """Whether the /stats counter `key` is a level (a gauge) rather than a count."""
    field = key.rpartition(".")[2]
    return key in _LEVELS or field.endswith(("in_use", "_active", "peak"))


class Counters:
    """All counter groups of one modeled kernel."""

    __slots__ = ("ifnet", "ip", "ip6", "ktls", "mb", "sb", "sb_rcv", "sf", "sfbuf", "tcp", "vm")

    def __init__(self) -> None:
        self.mb = MbStat()
        self.sf = SfStat()
        self.sfbuf = SfBufStat()
        self.vm = VmStat()
        self.ip = IpStat()
        self.ip6 = Ip6Stat()
        self.ifnet = IfStat()
        self.ktls = KtlsStat()
        self.sb = SbStat()
        self.sb_rcv = SbRcvStat()
        self.tcp = TcpStat()

    def groups(self) -> tuple[_Group, ...]:
        """Every group, in the snapshot's order (compiled classes have no `__slots__` to walk)."""
        return (
            self.ifnet, self.mb, self.sfbuf, self.sf, self.vm,
            self.ktls, self.ip, self.ip6, self.sb, self.sb_rcv, self.tcp,
        )  # fmt: skip

    def snapshot(self) -> MappingProxyType[str, Any]:
        out: dict[str, Any] = {}
        for group in self.groups():
            out.update(group.items())
        return MappingProxyType(out)
