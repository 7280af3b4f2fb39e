"""netmap pipes: two ports with crossed rings over shared buffers.

Theory of operation. `x{id` (master) and `x}id` (slave) are the two ends of
pipe `id` of parent port `x`. Opening either end creates both; each end has one
TX and one RX ring, and A's TX ring feeds B's RX ring (and B's TX feeds A's RX)
slot for slot: the two rings of a link have the same size and the slot at index
k of one is the slot at index k of the other. Only the TX rings get buffers;
the RX ring of a link starts as a copy of its TX ring's slot descriptors and
then shares them. txsync copies the new TX slot descriptors into the peer RX
ring (16 bytes each, one slice assignment per run: no payload byte moves) and
publishes the peer's tail after the last complete packet (a slot without
NS_MOREFRAG); rxsync copies released RX slots back into the TX ring (so a
buffer the reader swapped in returns to the writer) and gives the writer its
space back. NS_BUF_CHANGED is cleared on the side the kernel read.

The parent is found by name or, when none exists, created as an ephemeral
port with a private region (netmap creates a persistent VALE port with
autodelete); it lives while it has pipes. Up to NM_MAXPIPES pipes per parent.

Models: sys/dev/netmap/netmap_pipe.c (netmap_get_pipe_na, netmap_pipe_txsync,
netmap_pipe_rxsync, nm_pipe_alloc's limit) after r332423 (shared buffers).

Deliberate differences: the parent is never a NIC (nm0 stays the server's);
only a pipe parent or a fresh ephemeral name. An end binds one file at a time
(EBUSY for a second), where netmap lets several files share rings. The number
of slots is `nr_tx_slots` of the first open (1024 when 0), at most
NM_PIPE_MAXSLOTS and what a ring object holds.
"""

from __future__ import annotations

import errno
from typing import Final

from netmap.netmap_h import NM_MAXPIPES, NM_PIPE_MAXSLOTS, NR_RX, NR_TX, NS_BUF_CHANGED, NS_MOREFRAG
from netmap.netmap_kern import (
    Netmap,
    NetmapAdapter,
    NetmapKring,
    netmap_mem_get,
    netmap_mem_new,
    netmap_mem_put,
)
from netmap.netmap_mem2 import NetmapMem
from netmap.netmap_sync import (
    clear_flag,
    copy_slots,
    nm_ring_publish,
    slot_flags_lo,
    slots_between,
)

NM_PIPE_DEFAULT_SLOTS: Final = 1024


class PipeParent:
    """The parent port of pipes: its region and its pipes by id."""

    __slots__ = ("mem", "name", "pipes")

    def __init__(self, name: str, mem: NetmapMem) -> None:
        self.name = name
        self.mem = mem
        self.pipes: dict[str, NetmapPipeAdapter] = {}  # the master end of each pipe


class NetmapPipeAdapter(NetmapAdapter):
    """struct netmap_pipe_adapter: one end of a pipe."""

    __slots__ = ("parent", "peer", "pipe_id", "role")

    def __init__(self, nm: Netmap, parent: PipeParent, pipe_id: str, role: str) -> None:
        super().__init__(nm, f"{parent.name}{role}{pipe_id}", parent.mem)
        self.parent = parent
        self.pipe_id = pipe_id
        self.role = role  # "{" master, "}" slave
        self.peer: NetmapPipeAdapter | None = None

    def nm_txsync(self, kring: NetmapKring) -> None:
        """netmap_pipe_txsync: new slots [nr_hwcur, rhead) go to the peer RX ring."""
        rx = kring.pipe
        assert rx is not None
        m = pipe_move(kring, rx)
        if not m:
            return
        n = kring.nkr_num_slots
        k = kring.nr_hwcur
        # Publish only complete packets: up to the last slot without NS_MOREFRAG.
        last = k - 1 if k else n - 1
        nk = -1
        for _j in range(m):  # almost always ends at the first
            if not slot_flags_lo(kring, last) & NS_MOREFRAG:
                nk = last + 1 if last + 1 < n else 0
                break
            last = last - 1 if last else n - 1
        if nk >= 0:
            rx.pipe_tail = nk
            nm_ring_publish(rx)

    def nm_rxsync(self, kring: NetmapKring) -> None:
        """netmap_pipe_rxsync: released slots [nr_hwcur, rhead) return to the peer TX."""
        tx = kring.pipe
        assert tx is not None
        if pipe_move(kring, tx):
            k = kring.nr_hwcur
            tx.pipe_tail = k - 1 if k else kring.nkr_num_slots - 1
            nm_ring_publish(tx)

    def nm_unbind(self) -> None:
        """An end closed: when the other end is closed too, the pipe goes, its
        buffers (those the TX slots name now) and rings with it, and the parent
        when it was its last pipe."""
        peer = self.peer
        assert peer is not None
        if peer.na_users:
            return
        parent = self.parent
        master = self if self.role == "{" else peer
        slave = peer if master is self else self
        del parent.pipes[self.pipe_id]
        master.free_rings(master.tx_rings)
        slave.free_rings(slave.tx_rings)
        self.nm.stats.ports_in_use -= 2
        del self.nm.ports[master.name]
        del self.nm.ports[slave.name]
        if not parent.pipes:
            del self.nm.pipe_parents[parent.name]
            netmap_mem_put(self.nm, parent.mem)


def pipe_move(kring: NetmapKring, peer: NetmapKring) -> int:
    """The common part of both pipe syncs: take the tail the peer left, copy the
    descriptors of [nr_hwcur, rhead) into the peer ring (NS_BUF_CHANGED cleared
    here), advance nr_hwcur to rhead; the number of slots moved."""
    kring.nr_hwtail = kring.pipe_tail
    a = kring.nr_hwcur
    m = slots_between(kring.nkr_num_slots, a, kring.rhead)
    if m:
        copy_slots(peer, kring, a, m)
        clear_flag(kring, a, m, NS_BUF_CHANGED)
        kring.nr_hwcur = kring.rhead
        kring.kr_slots += m
        kring.na.nm.stats.slots_moved += m
    return m


def nm_pipe_split(name: str) -> tuple[str, str, str] | None:
    """(parent, role, id) of a pipe name, None for a name without { or }.
    EINVAL when the parent or the id is missing."""
    i = max(name.rfind("{"), name.rfind("}"))
    if i < 0:
        return None
    if i == 0 or i == len(name) - 1:
        raise OSError(errno.EINVAL, f"pipe name {name!r}: parent or id missing")
    return name[:i], name[i], name[i + 1 :]


def netmap_get_pipe_na(
    nm: Netmap, name: str, mem: NetmapMem | None, slots: int
) -> NetmapPipeAdapter:
    """The end `name` names, creating the pipe (and the parent) if needed.
    `mem`: the region asked for (nr_mem_id), used only by a new parent, and
    referenced by it; None: a new private region."""
    split = nm_pipe_split(name)
    assert split is not None
    pname, role, pid = split
    parent: PipeParent | None = nm.pipe_parents.get(pname)
    if parent is not None:
        master = parent.pipes.get(pid)
        if master is not None:
            end = master if role == "{" else master.peer
            assert end is not None
            return end
        if len(parent.pipes) >= NM_MAXPIPES:
            raise OSError(errno.EINVAL, f"{pname}: more than {NM_MAXPIPES} pipes")
    if pname in nm.ports or pname in nm.ifnets:
        raise OSError(errno.EBUSY, f"{pname}: not a port pipes can hang on")
    n = slots or NM_PIPE_DEFAULT_SLOTS
    n = max(2, min(n, NM_PIPE_MAXSLOTS, nm.sysctl.max_slots()))
    new_parent = parent is None
    if parent is None:
        region = netmap_mem_get(mem) if mem is not None else netmap_mem_new(nm)
        parent = PipeParent(pname, region)
    mna = NetmapPipeAdapter(nm, parent, pid, "{")
    sna = NetmapPipeAdapter(nm, parent, pid, "}")
    mna.peer = sna
    sna.peer = mna
    try:
        for a, b in ((mna, sna), (sna, mna)):
            tx = a.make_ring(NR_TX, 0, n, with_bufs=True)
            rx = b.make_ring(NR_RX, 0, n, with_bufs=False)
            rx.slots[:] = tx.slots  # the link's buffers, shared
            tx.pipe = rx
            rx.pipe = tx
    except OSError:
        mna.free_rings(mna.tx_rings)
        sna.free_rings(sna.tx_rings)
        nm.stats.ports_in_use -= 2
        if new_parent:
            netmap_mem_put(nm, parent.mem)
        raise
    parent.pipes[pid] = mna
    nm.pipe_parents[pname] = parent
    nm.ports[mna.name] = mna
    nm.ports[sna.name] = sna
    nm.stats.pipes_created += 1
    return mna if role == "{" else sna
