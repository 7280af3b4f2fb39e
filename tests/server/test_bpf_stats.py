"""The bpf group in /stats, its leak keys, the supervisor's sum and `nomapd stat -B`."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

from bpf import bpf_close, bpf_stats, bpfopen
from bpf.bpf_ioctl import bpf_ioctl_setif
from server.app import Server
from server.cli import build_parser, config_from_args
from server.stat import _BPF_HEADER, format_bpf
from server.supervisor import sum_stats
from tests.support.leaks import BPF_LEAK_KEYS, leaked


def _server(root: Path) -> Server:
    ns = build_parser().parse_args(["serve", str(root), "--admin", "off"])
    return Server(config_from_args(ns))


def test_server_stats_have_the_bpf_group_and_its_leaks(tmp_path: Path) -> None:
    srv = _server(tmp_path)
    assert srv.kern.ifnet.if_bpf is srv.bif and srv.bif.bif_name == "nm0"
    snap = srv.statistics()
    assert snap["bpf.packets_tapped"] == 0 and snap["bpf.descriptors"] == []
    assert all(k in snap for k in BPF_LEAK_KEYS) and leaked(snap) == {}
    d = bpfopen(srv.bpf, pid=42)
    bpf_ioctl_setif(d, "nm0")
    snap = srv.statistics()
    assert leaked(snap)["bpf.descriptors_in_use"] == 1
    assert [r["bd_pid"] for r in snap["bpf.descriptors"]] == [42]
    table = format_bpf(snap).splitlines()
    assert table[0] == _BPF_HEADER and len(table) == 2
    assert table[1].split()[:3] == ["42", "nm0", "--fs---"]
    bpf_close(d)
    assert leaked(srv.statistics()) == {}
    srv.access.close()


def test_supervisor_sums_bpf_counters_and_joins_rows(tmp_path: Path) -> None:
    a, b = _server(tmp_path), _server(tmp_path)
    da, db = bpfopen(a.bpf, pid=1), bpfopen(b.bpf, pid=2)
    bpf_ioctl_setif(da, "nm0")
    bpf_ioctl_setif(db, "nm0")
    total = sum_stats([a.statistics(), b.statistics()])
    assert total["bpf.descriptors_in_use"] == 2 and total["bpf.attached"] == 2
    assert [r["bd_pid"] for r in total["bpf.descriptors"]] == [1, 2]
    assert total["ifnet.capenable"] == a.statistics()["ifnet.capenable"]  # lists: the first
    assert len(format_bpf(total).splitlines()) == 3
    assert [asdict(x) for x in bpf_stats(a.bpf)] == a.statistics()["bpf.descriptors"]
    bpf_close(da)
    bpf_close(db)
    a.access.close()
    b.access.close()


def test_stat_b_without_descriptors_prints_the_header_only() -> None:
    assert format_bpf({"bpf.descriptors": []}) == _BPF_HEADER + "\n"
    assert format_bpf({}) == _BPF_HEADER + "\n"
