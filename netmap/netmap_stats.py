"""The ports as a netstat-like table: one row per bound ring of each open file.

Theory of operation. netmap has no netstat view; its per-ring counters are
debug printouts. The model keeps, per kring, the syncs, the slots it moved, the
refused syncs (reinitialisations) and the syncs a kernel loop ran, and this
module turns them into rows the server can print beside `netstat -B`'s, one per
(file, ring), as immutable snapshots.

Models: nothing in netmap directly (the counters of struct netmap_kring it
would need are the model's).
"""

from __future__ import annotations

from dataclasses import dataclass

from netmap.netmap_h import NR_RX, NR_TX
from netmap.netmap_kern import NetmapPrivD


@dataclass(frozen=True, slots=True)
class Xnetmap:
    """One bound ring of one open file."""

    pid: int
    port: str
    mem_id: int
    ring: str  # "TX0", "RX0", ...
    num_slots: int
    syncs: int
    slots: int
    reinits: int
    kloop_syncs: int


def netmap_ports(privs: list[NetmapPrivD]) -> list[Xnetmap]:
    """The rows of the files `privs` (the device keeps the list of open files)."""
    out: list[Xnetmap] = []
    for priv in privs:
        na = priv.np_na
        if na is None:
            continue
        for t in (NR_TX, NR_RX):
            for i in range(priv.np_qfirst[t], priv.np_qlast[t]):
                k = na.krings(t)[i]
                out.append(
                    Xnetmap(
                        priv.np_pid, na.name, na.mem.nm_id,
                        ("TX" if t == NR_TX else "RX") + str(i), k.nkr_num_slots,
                        k.kr_syncs, k.kr_slots, k.kr_reinits, k.kr_kloop_syncs,
                    )
                )  # fmt: skip
    return out
