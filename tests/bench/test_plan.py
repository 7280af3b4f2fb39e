"""The order of runs (rows alternated), --only, --quick and the command-line helpers."""

from __future__ import annotations

import pytest

from bench.cli import parse_size, phys_mem_of
from bench.plan import groups, make_plan
from bench.rows import BY_NAME, ROWS, peer_of
from bench.workloads import MIB, sweep_names, workloads


def test_rows_alternate_within_each_repetition() -> None:
    rows = [BY_NAME["nomapd-default"], BY_NAME["nginx"]]
    steps = make_plan(workloads(False)[:1], rows, ["wrk"], 2, 1.0)
    assert [(s.row.name, s.rep) for s in steps] == [
        ("nomapd-default", 0),
        ("nginx", 0),
        ("nomapd-default", 1),
        ("nginx", 1),
    ]


def test_only_matches_workload_row_and_tool() -> None:
    rows = list(ROWS)
    plan = make_plan(workloads(False), rows, ["wrk", "h2load"], 1, 1.0, ":nomapd-default:")
    assert {s.row.name for s in plan} == {"nomapd-default"}
    assert len(plan) == len(workloads(False)) * 2
    plan = make_plan(workloads(False), rows, ["wrk", "h2load"], 1, 1.0, "^16k:.*:wrk$")
    assert {s.workload.name for s in plan} == {"16k"}
    assert len(plan) == len([r for r in ROWS if r.capture is None])  # capture rows: 1 MiB only
    assert make_plan(workloads(False), rows, ["wrk"], 1, 1.0, "nothing") == []


def test_quick_covers_every_row_with_fewer_runs() -> None:
    full = make_plan(workloads(False), list(ROWS), ["wrk", "h2load"], 1, 1.0)
    quick = make_plan(workloads(True), list(ROWS), ["wrk", "h2load"], 1, 1.0, quick=True)
    assert {s.row for s in quick} == set(ROWS)
    assert len(quick) < len(full)
    assert {s.workload.name for s in quick if s.tool == "h2load"} == {"1m", "16k", "handshake"}
    assert {s.workload.name for s in quick} == {
        "1m",
        "sweep-1",
        "sweep-256",
        "16k",
        "handshake",
        "100m",
    }


def test_groups_are_consecutive_and_sweep_shares_1m() -> None:
    plan = make_plan(workloads(False), list(ROWS), ["wrk"], 1, 1.0)
    assert [g for g, _ in groups(plan)] == ["1m", "16k", "handshake", "100m"]
    assert sweep_names(workloads(False)) == [
        (1, "sweep-1"),
        (8, "1m"),
        (64, "sweep-64"),
        (256, "sweep-256"),
    ]


def test_peer_of() -> None:
    assert peer_of(BY_NAME["nomapd-http-no-sendfile-nomap"], "nginx").name == "nginx-http"
    assert peer_of(BY_NAME["nomapd-no-ktls"], "hypercorn").name == "hypercorn"


def test_sizes_and_phys_mem() -> None:
    assert parse_size("256M") == 256 * MIB
    assert parse_size("64k") == 64 << 10
    assert phys_mem_of([]) == 256 * MIB
    assert phys_mem_of(["--phys-mem", "1G"]) == 1 << 30
    assert phys_mem_of(["--sndbuf", "64K", "--phys-mem=512M"]) == 512 * MIB
    with pytest.raises(ValueError):
        parse_size("lots")
