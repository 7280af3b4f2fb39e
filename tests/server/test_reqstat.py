"""The per-worker record of finished page responses, and the dashboard's history."""

from __future__ import annotations

import re

import trio

from mbuf.kern import Kernel
from server.admin_web import HISTORY_KEYS, StatsHistory, asset
from server.reqstat import ConnTxStat, RequestRecords, tx_account, tx_sample


def test_ids_name_the_worker_and_are_unguessable() -> None:
    rr = RequestRecords(3)
    ids = {rr.new_id() for _ in range(1000)}
    assert len(ids) == 1000
    assert all(re.fullmatch(r"w3-[A-Za-z0-9_-]{22}", i) for i in ids)


def test_a_record_is_answered_by_its_id_only() -> None:
    rr = RequestRecords(0)
    rid = rr.new_id()
    rr.add(rid, {"records": 2})
    assert rr.lookup(rid) == (200, {"records": 2})
    assert rr.lookup(rid[:-1]) == (404, {"error": "unknown"})
    assert rr.lookup("") == (404, {"error": "unknown"})
    assert rr.lookup("w7-" + rid[3:]) == (404, {"error": "elsewhere", "worker": 7})
    assert rr.lookup("w0-x") == (404, {"error": "unknown"})  # ours, never issued
    for made_up in ("w" + "1" * 5000 + "-x", "w1-" + "x" * 65, "w1-a/b", "w-x", "x1-y"):
        assert rr.lookup(made_up) == (404, {"error": "unknown"})  # not an id's form


def test_records_are_bounded_oldest_first() -> None:
    rr = RequestRecords(0, kept=4)
    ids = [rr.new_id() for _ in range(6)]
    for n, rid in enumerate(ids):
        rr.add(rid, {"n": n})
    assert len(rr) == 4
    assert [rr.lookup(i)[0] for i in ids] == [404, 404, 200, 200, 200, 200]


def test_conn_tx_stat_takes_the_kernel_s_differences() -> None:
    kern = Kernel(1 << 22)
    st = ConnTxStat()
    before = tx_sample(kern)
    kern.stats.ktls.records_framed += 3
    kern.stats.ip.unmapped_converted += 2
    kern.stats.ifnet.tx_bytes += 50
    tx_account(st, kern, before)
    assert st.figures() == {
        "records": 3, "ext_pgs": 0, "mbufs": 0, "conversions": 2, "sf_bufs": 0,
        "csum_bytes": 0, "packets": 0, "wire_bytes": 50,
    }  # fmt: skip


def test_history_keeps_the_last_samples_of_its_keys() -> None:
    h = StatsHistory(samples=3)
    for t in range(5):
        h.add(float(t), {"ifnet.tx_bytes": 10 * t, "server.mode": "ktls", "bpf.descriptors": []})
    out = h.as_json()
    keys = out["keys"]
    assert isinstance(keys, list) and keys == ["time", *HISTORY_KEYS]
    rows = out["samples"]
    assert isinstance(rows, list) and len(rows) == 3
    col = keys.index("ifnet.tx_bytes")
    assert [r[0] for r in rows] == [2.0, 3.0, 4.0]
    assert [r[col] for r in rows] == [20, 30, 40]
    assert all(r[keys.index("server.requests")] == 0 for r in rows)  # absent: 0


async def test_history_samples_once_per_interval(autojump_clock: trio.abc.Clock) -> None:
    h = StatsHistory()
    calls = 0

    async def read() -> dict[str, int]:
        nonlocal calls
        calls += 1
        return {"server.requests": calls}

    with trio.move_on_after(9.5):
        await h.run(read)
    assert calls == 10  # at 0, 1, ..., 9 s
    assert len(h.as_json()["samples"]) == 10  # type: ignore[arg-type]


def test_dashboard_assets() -> None:
    page = asset(b"/", b"text/html,application/xhtml+xml")
    assert page is not None and page[1] == b"text/html; charset=utf-8"
    assert b'src="/ui/dashboard.js"' in page[0] and b"<script>" not in page[0]
    assert asset(b"/", b"*/*") is None  # curl: the text index
    js = asset(b"/ui/dashboard.js", b"*/*")
    assert js is not None and js[1] == b"text/javascript; charset=utf-8"
    assert asset(b"/ui/../admin.py", b"*/*") is None
    assert asset(b"/ui/nothing.js", b"*/*") is None
