"""Per-connection transmit counters, and the record of finished responses a page may ask about.

Theory of operation. The kernel's counters (mbuf/counters.py) are per
kernel, not per socket. But a connection's transmit work is synchronous on
the event loop: everything `sendfile_step` and `sosend` do (framing TLS
records, building EXT_PGS or EXT_SFBUF mbufs) and everything `tcp_output`
does for that socket (ip_output's conversions, sf_bufs, software checksums,
the NIC's packets and wire bytes) happens inside one call made by that
connection's `KernelTx`, with no other connection running in between. So
`KernelTx` reads the few global counters below before and after each such
call and adds the difference to the connection's own `ConnTxStat`: exact,
and nothing is added to the kernel's hot path. It does so only while a
page's response is being sent (about 3.5 us a call, a few per cent of a
1 MiB response's CPU if every response paid it). (KTLS worker threads, with
`--ktls-workers N`, encrypt later and elsewhere, which is why a record is
counted when it is framed, at socket-buffer append, not when it is encrypted.)

A response to a page (`text/html`, status 200) carries a request id in a
`Server-Timing` header, the one header a page's script may read about its
own navigation (`PerformanceNavigationTiming.serverTiming`). When the
response is on the wire, its figures (a `ConnTxStat` the connection's
`KernelTx` filled while it sent the response) are kept under that id in the worker's
`RequestRecords`: a bounded map (the last RECORDS_KEPT responses), so memory
does not grow with traffic. The page asks for them at
`/.well-known/nomapd/request/ID` on the main listener. The id is 128 random
bits behind the worker's index: only whoever received the response knows it,
and the record holds that response's own figures and nothing else (no path,
no peer, nothing of other connections).

With `--workers N`, the record is kept by the worker that served the page;
the id names it (`w2-...`). A follow-up that reaches another worker (the
browser opened a new connection and SO_REUSEPORT hashed it elsewhere) is
answered 404 with `{"error": "elsewhere", "worker": 2}`: that worker does not
ask its siblings. Browsers send the page's follow-up on the page's own
kept-alive connection when it is idle, which is the same worker.
"""

from __future__ import annotations

import re
import secrets
from collections import OrderedDict
from dataclasses import dataclass
from typing import Final

from mbuf.kern import Kernel

RECORDS_KEPT = 512  # finished responses remembered per worker (about 600 bytes each: 300 KiB)
WELL_KNOWN = b"/.well-known/nomapd/request/"


@dataclass(slots=True)
class ConnTxStat:
    """One connection's share of the kernel's transmit counters."""

    records: int = 0  # TLS records framed into the send buffer (ktls.records_framed)
    ext_pgs: int = 0  # unmapped EXT_PGS mbufs built (mbuf.ext_pgs_total)
    mbufs: int = 0  # mbufs of every kind allocated (mbuf.mbufs_total)
    conversions: int = 0  # chains ip_output converted (ip.unmapped_converted)
    sf_bufs: int = 0  # sf_bufs allocated: conversions and EXT_SFBUF sendfile (sfbuf.total)
    csum_bytes: int = 0  # bytes checksummed in software (ip.sw_csum_bytes)
    packets: int = 0  # packets (TSO bursts) handed to the NIC (ifnet.tx_packets)
    wire_bytes: int = 0  # bytes on the wire, model headers included (ifnet.tx_bytes)

    def figures(self) -> dict[str, int]:
        return {
            "records": self.records, "ext_pgs": self.ext_pgs, "mbufs": self.mbufs,
            "conversions": self.conversions, "sf_bufs": self.sf_bufs,
            "csum_bytes": self.csum_bytes, "packets": self.packets, "wire_bytes": self.wire_bytes,
        }  # fmt: skip


def tx_sample(kern: Kernel) -> tuple[int, int, int, int, int, int, int, int]:
    """The global counters ConnTxStat shares out, in its field order."""
    st = kern.stats
    return (
        st.ktls.records_framed, st.mb.ext_pgs_total, st.mb.mbufs_total,
        st.ip.unmapped_converted, st.sfbuf.total, st.ip.sw_csum_bytes,
        st.ifnet.tx_packets, st.ifnet.tx_bytes,
    )  # fmt: skip


def tx_account(stat: ConnTxStat, kern: Kernel, before: tuple[int, ...]) -> None:
    """Add to `stat` what the kernel counted since `before` (a tx_sample)."""
    now = tx_sample(kern)
    stat.records += now[0] - before[0]
    stat.ext_pgs += now[1] - before[1]
    stat.mbufs += now[2] - before[2]
    stat.conversions += now[3] - before[3]
    stat.sf_bufs += now[4] - before[4]
    stat.csum_bytes += now[5] - before[5]
    stat.packets += now[6] - before[6]
    stat.wire_bytes += now[7] - before[7]


# What an id can be: a worker's index and a token (new_id's, or any a client made up).
RID_FORM: Final = re.compile(r"w(\d{1,6})-[A-Za-z0-9_-]{1,64}")


class RequestRecords:
    """The last RECORDS_KEPT finished responses of one worker, by request id."""

    def __init__(self, worker: int, kept: int = RECORDS_KEPT) -> None:
        self.worker = worker
        self.kept = kept
        self._records: OrderedDict[str, dict[str, object]] = OrderedDict()

    def new_id(self) -> str:
        """An unguessable id naming this worker: `w<index>-<22 url-safe characters>`."""
        return f"w{self.worker}-{secrets.token_urlsafe(16)}"

    def add(self, rid: str, record: dict[str, object]) -> None:
        self._records[rid] = record
        while len(self._records) > self.kept:
            self._records.popitem(last=False)

    def __len__(self) -> int:
        return len(self._records)

    def lookup(self, rid: str) -> tuple[int, dict[str, object]]:
        """(status, JSON body) for a follow-up asking about `rid`."""
        record = self._records.get(rid)
        if record is not None:
            return 200, record
        m = RID_FORM.fullmatch(rid)  # bounded before int(): a long id is anyone's
        if m is not None and int(m.group(1)) != self.worker:
            return 404, {"error": "elsewhere", "worker": int(m.group(1))}
        return 404, {"error": "unknown"}  # never issued, or forgotten (older than `kept`)
