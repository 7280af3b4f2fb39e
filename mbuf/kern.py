"""One modeled machine: physical memory, page cache, sf_bufs, the interface, counters.

Theory of operation. Everything the FreeBSD kernel keeps in globals lives in a
`Kernel` instance, so tests can build as many independent machines as they
like. Tunables:

  phys_mem         bytes of physical memory for the page cache and buffers
  nsfbufs          0 = direct map (sf_bufs never fail); N = bounded pool
  mb_use_ext_pgs   kern.ipc.mb_use_ext_pgs: sendfile builds unmapped mbufs
  readahead        sendfile readahead pages (None: rest of the request, up to MAXPHYS)
  capenable        the interface's enabled capabilities (IFCAP_*)
  loss, loss_seed  the probability that the wire loses a packet, and its seed
  ktls_enable      kern.ipc.tls.enable: the server may enable KTLS on new sockets
  sendspace        net.inet.tcp.sendspace: a new connection's send buffer
  recvspace        net.inet.tcp.recvspace: ... and receive buffer

Each is also a node of the kernel's sysctl tree (`Kernel.sysctl`,
mbuf/kern_sysctl.py), which `sysctl_init` fills; the command line sets the
initial values, `sysctl NAME=VALUE` changes them at run time.
"""

from __future__ import annotations

from collections.abc import Callable
from types import MappingProxyType
from typing import Any, Final

from mbuf.counters import Counters
from mbuf.ifnet import (
    IFCAP_NOMAP,
    IFCAP_TSO4,
    IFCAP_TSO6,
    IFCAP_TXCSUM,
    IFCAP_TXCSUM_IPV6,
    Ifnet,
    IfTxQueue,
)
from mbuf.kern_sysctl import Sysctl, counters_sysctl_init
from mbuf.param import PAGE_SIZE, SB_MAX, SB_RCVBUF_DEFAULT, SB_SNDBUF_DEFAULT
from mbuf.sf_buf import SfBufPool
from mbuf.vm_object import PageCache
from mbuf.vm_page import PhysMem

DEFAULT_PHYS_MEM: Final = 256 * 1024 * 1024
DEFAULT_CAPENABLE: Final = IFCAP_NOMAP | IFCAP_TXCSUM | IFCAP_TSO4 | IFCAP_TXCSUM_IPV6 | IFCAP_TSO6


class Kernel:
    __slots__ = (
        "cluster_cache",
        "ifnet",
        "jumbop_cache",
        "ktls_enable",
        "mb_use_ext_pgs",
        "pagecache",
        "phys",
        "readahead",
        "recvspace",
        "sendspace",
        "sfbufs",
        "stats",
        "sysctl",
    )

    def __init__(
        self,
        phys_mem: int = DEFAULT_PHYS_MEM,
        *,
        capenable: int = DEFAULT_CAPENABLE,
        mb_use_ext_pgs: bool = True,
        nsfbufs: int = 0,
        readahead: int | None = None,
        loss: float = 0.0,
        loss_seed: int = 0,
        ktls_enable: bool = True,
        sendspace: int = SB_SNDBUF_DEFAULT,
        recvspace: int = SB_RCVBUF_DEFAULT,
    ) -> None:
        self.stats = Counters()
        self.phys = PhysMem(phys_mem, self.stats.vm)
        self.pagecache = PageCache(self.phys)
        self.sfbufs = SfBufPool(self.phys, self.stats.sfbuf, self.stats.sf, nsfbufs)
        self.ifnet = Ifnet(capenable, self.stats.ifnet, loss=loss, loss_seed=loss_seed)
        self.mb_use_ext_pgs = mb_use_ext_pgs
        # sendfile readahead in pages: None = the kernel's default (the rest of the
        # request, up to MAXPHYS); N = SF_USER_READAHEAD with SF_READAHEAD(flags) = N.
        if readahead is not None and readahead < 0:
            raise ValueError(f"readahead must be >= 0 pages, not {readahead}")
        self.readahead = readahead
        # UMA per-zone caches of cluster storage, so steady state allocates nothing.
        self.cluster_cache: list[memoryview] = []
        self.jumbop_cache: list[memoryview] = []
        self.ktls_enable = ktls_enable
        self.sendspace = sendspace
        self.recvspace = recvspace
        self.sysctl = Sysctl()
        sysctl_init(self)

    def set_wakeup(self, wakeup: Callable[[], None]) -> None:
        """Who to call when page frames or sf_bufs are freed while someone waits."""
        self.phys.vm_wakeup = wakeup
        self.sfbufs.wakeup = wakeup

    def new_txq(self) -> IfTxQueue:
        return IfTxQueue(self.ifnet, self.phys.dmap)

    def statistics(self) -> MappingProxyType[str, Any]:
        """An immutable snapshot of every counter, keyed `group.name`."""
        snap = dict(self.stats.snapshot())
        snap["ifnet.capenable"] = self.ifnet.capenable_names()
        snap["ifnet.name"] = self.ifnet.if_xname
        snap["kern.ipc.mb_use_ext_pgs"] = int(self.mb_use_ext_pgs)
        return MappingProxyType(snap)

    def leaks(self) -> dict[str, int]:
        """Counters that must be zero once every connection has closed."""
        s = self.stats
        vals = {
            "mbuf.mbufs_in_use": s.mb.mbufs_in_use,
            "mbuf.clusters_in_use": s.mb.clusters_in_use,
            "mbuf.jumbop_in_use": s.mb.jumbop_in_use,
            "mbuf.ext_pgs_in_use": s.mb.ext_pgs_in_use,
            "mbuf.sfbuf_mbufs_in_use": s.mb.sfbuf_mbufs_in_use,
            "sfbuf.in_use": s.sfbuf.in_use,
            "vm.pages_wired": s.vm.pages_wired,
            "vm.pages_anon": s.vm.pages_anon,
            "vm.pages_reserved": s.vm.pages_reserved,
            "ktls.tasks_active": s.ktls.tasks_active,
        }
        return {k: v for k, v in vals.items() if v}


def sysctl_init(kern: Kernel) -> None:
    """The kernel's own nodes: its knobs and every counter (the bpf package adds its
    own, bpf/bpf_sysctl.py). Each knob's reader says where a change takes effect."""
    t = kern.sysctl
    ifp = kern.ifnet

    def set_ext_pgs(v: bool) -> None:
        kern.mb_use_ext_pgs = v  # read per sendfile call (mbuf/sendfile.py)

    def set_tls(v: bool) -> None:
        kern.ktls_enable = v  # read per new connection, after its handshake

    def set_sendspace(v: int) -> None:
        if 8 * v > kern.phys.npages * PAGE_SIZE:  # as --sndbuf: at most 1/8 of memory
            raise ValueError(v)
        kern.sendspace = v  # read per new connection (so_accept)

    def set_recvspace(v: int) -> None:
        kern.recvspace = v  # read per new connection (so_accept)

    def set_readahead(v: int) -> None:
        kern.readahead = None if v < 0 else v  # read per read sendfile starts

    def set_loss(v: int) -> None:
        ifp.if_loss = v / 1e6  # read per packet the NIC sends (IfTxQueue.if_transmit)

    t.add_bool(
        "kern.ipc.mb_use_ext_pgs", "Use unmapped mbufs for sendfile (and KTLS)",
        lambda: kern.mb_use_ext_pgs, set_ext_pgs,
    )  # fmt: skip
    t.add_bool(
        "kern.ipc.tls.enable", "Enable support for kernel TLS offload (new connections)",
        lambda: kern.ktls_enable, set_tls,
    )  # fmt: skip
    t.add_int("kern.ipc.maxsockbuf", "Maximum socket buffer size (fixed in the model)",
              lambda: SB_MAX)  # fmt: skip
    t.add_int(
        "net.inet.tcp.sendspace", "Initial send socket buffer size",
        lambda: kern.sendspace, set_sendspace, PAGE_SIZE, SB_MAX,
    )  # fmt: skip
    t.add_int(
        "net.inet.tcp.recvspace", "Initial receive socket buffer size",
        lambda: kern.recvspace, set_recvspace, PAGE_SIZE, SB_MAX,
    )  # fmt: skip
    t.add_int(
        "kern.ipc.sendfile.readahead",
        "nomapd: sendfile readahead in pages (SF_READAHEAD of every call); -1: the rest "
        "of the request up to MAXPHYS",
        lambda: -1 if kern.readahead is None else kern.readahead, set_readahead, -1, 1024,
    )  # fmt: skip
    t.add_int("kern.ipc.nsfbufs", "Maximum number of sendfile(2) sf_bufs (0: direct map; "
              "a boot-time tunable)", lambda: kern.sfbufs.nsfbufs)  # fmt: skip
    t.add_int("hw.physmem", "Physical memory of the model, bytes (boot time)",
              lambda: kern.phys.npages * PAGE_SIZE, hi=1 << 62)  # fmt: skip
    t.add_int(
        "dev.nm.0.loss_ppm",
        "nomapd: probability (parts per million) that nm0's wire loses a packet (--loss)",
        lambda: round(ifp.if_loss * 1e6), set_loss, 0, 500_000,
    )  # fmt: skip
    counters_sysctl_init(t, kern.stats)
