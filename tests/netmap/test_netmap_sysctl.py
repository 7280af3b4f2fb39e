"""dev.netmap.*: the allocator's knobs as sysctl nodes, taking effect with the next region."""

from __future__ import annotations

import errno

from mbuf.kern_sysctl import Sysctl, sysctl_write
from netmap import Netmap
from netmap.netmap_kern import netmap_mem_new, netmap_mem_put
from netmap.netmap_sysctl import netmap_sysctl_init


def test_knobs_and_counters_are_nodes() -> None:
    nm, tree = Netmap(), Sysctl()
    netmap_sysctl_init(tree, nm)
    snap = tree.snapshot()
    for knob in ("buf_num", "buf_size", "ring_num", "ring_size", "if_num", "if_size"):
        node = snap[f"dev.netmap.{knob}"]
        assert node["writable"] and node["value"] == getattr(nm.sysctl, knob)
        assert "next region" in str(node["description"])
    counters = {k for k in snap if k.startswith("dev.netmap.counters.")}
    assert counters == {f"dev.netmap.counters.{k.partition('.')[2]}" for k, _ in nm.stats.items()}
    assert snap["dev.netmap.counters.regions_in_use"]["type"] == "gauge"
    assert snap["dev.netmap.counters.region_bytes"]["type"] == "gauge"
    assert not snap["dev.netmap.counters.regions_in_use"]["writable"]


def test_bad_values_change_nothing() -> None:
    nm, tree = Netmap(), Sysctl()
    netmap_sysctl_init(tree, nm)
    before = tree.snapshot()
    for name, bad in (
        ("dev.netmap.buf_size", "100"),  # not a multiple of a cache line
        ("dev.netmap.buf_size", "0"),
        ("dev.netmap.ring_size", "1024"),  # fewer than 64 slots
        ("dev.netmap.if_num", "0"),
        ("dev.netmap.buf_num", "x"),
        ("dev.netmap.buf_num", str((1 << 20) + 1)),
    ):
        assert sysctl_write(tree, name, bad) == errno.EINVAL, (name, bad)
    assert sysctl_write(tree, "dev.netmap.counters.regions_in_use", "0") == errno.EPERM
    assert tree.snapshot() == before


def test_a_change_takes_effect_with_the_next_region() -> None:
    nm, tree = Netmap(), Sysctl()
    netmap_sysctl_init(tree, nm)
    assert sysctl_write(tree, "dev.netmap.buf_num", "1024") == 0
    first = netmap_mem_new(nm)
    assert first.buf_pool.objtotal == 1024 and first.buf_pool.objsize == 2048
    assert sysctl_write(tree, "dev.netmap.buf_size", "4096") == 0
    assert sysctl_write(tree, "dev.netmap.buf_num", "512") == 0
    assert (first.buf_pool.objtotal, first.buf_pool.objsize) == (1024, 2048)  # made already
    second = netmap_mem_new(nm)
    assert (second.buf_pool.objtotal, second.buf_pool.objsize) == (512, 4096)
    assert second.nm_memsize < first.nm_memsize + 512 * 4096
    netmap_mem_put(nm, first)
    netmap_mem_put(nm, second)
    assert nm.statistics().leaks() == {}
