"""The sysctl tree (mbuf/kern_sysctl.py) and knobs changed while data is in flight.

Writes: 0, or ENOENT / EPERM / EINVAL with nothing changed. Every counter is
a read-only node whose value is the counter's. Flipping kern.ipc.mb_use_ext_pgs,
nm0's IFCAP_NOMAP and TXCSUM between every step of a sendfile leaves every byte
in place, the conversions counted only while nomap was off, and nothing leaked.
"""

from __future__ import annotations

import errno
import random
from collections.abc import Callable
from typing import Any

from bpf import Bpf
from bpf.bpf_sysctl import bpf_sysctl_init
from mbuf.counters import SYSCTL_PREFIXES, is_level
from mbuf.ifnet import IFCAP_NOMAP, IFCAP_TXCSUM
from mbuf.kern import Kernel
from mbuf.kern_sysctl import sysctl_write
from mbuf.sendfile import SendfileStatus
from tests.mbuf.builders import SMALL_MEM, DiskFile
from tests.support.pair import ConnectionPair, new_socket

MakeFile = Callable[[bytes], DiskFile]


def test_write_checks_and_changes_nothing_on_error() -> None:
    kern = Kernel(SMALL_MEM)
    tree = kern.sysctl
    assert sysctl_write(tree, "kern.ipc.no_such", "1") == errno.ENOENT
    assert sysctl_write(tree, "kern.ipc.maxsockbuf", "1") == errno.EPERM
    assert sysctl_write(tree, "kern.ipc.tls.stats.records_framed", "5") == errno.EPERM
    for bad in ("2", "-1", "yes", "", "1.0", " "):
        assert sysctl_write(tree, "kern.ipc.mb_use_ext_pgs", bad) == errno.EINVAL, bad
    assert kern.mb_use_ext_pgs is True
    assert sysctl_write(tree, "net.inet.tcp.sendspace", "100") == errno.EINVAL  # < PAGE_SIZE
    assert sysctl_write(tree, "net.inet.tcp.sendspace", str(SMALL_MEM)) == errno.EINVAL  # > 1/8
    assert kern.sendspace == 256 * 1024
    assert sysctl_write(tree, "kern.ipc.mb_use_ext_pgs", "0") == 0
    assert kern.mb_use_ext_pgs is False
    assert tree.snapshot()["kern.ipc.mb_use_ext_pgs"]["value"] == 0
    assert sysctl_write(tree, "kern.ipc.sendfile.readahead", "-1") == 0
    assert kern.readahead is None
    assert sysctl_write(tree, "kern.ipc.sendfile.readahead", "8") == 0
    assert kern.readahead == 8
    assert sysctl_write(tree, "dev.nm.0.loss_ppm", "20000") == 0
    assert kern.ifnet.if_loss == 0.02
    assert sysctl_write(tree, "dev.nm.0.loss_ppm", "500001") == errno.EINVAL
    assert kern.ifnet.if_loss == 0.02


def test_every_counter_is_a_read_only_node() -> None:
    kern = Kernel(SMALL_MEM)
    bpf = Bpf()
    bpf_sysctl_init(kern.sysctl, bpf)
    groups: list[Any] = [*kern.stats.groups(), bpf.stats]
    for i, group in enumerate(groups):  # distinct values, to catch a crossed wire
        for j, (key, _) in enumerate(group.items()):
            setattr(group, key.partition(".")[2], 1000 * i + j + 1)
    snap = kern.sysctl.snapshot()
    keys = [key for g in groups for key, _ in g.items()]
    assert len(keys) > 130
    for key in keys:
        group, _, field = key.partition(".")
        node = snap[f"{SYSCTL_PREFIXES[group]}.{field}"]
        assert node["value"] == dict(kern.stats.snapshot()).get(
            key, dict(bpf.stats.items()).get(key)
        )
        assert node["writable"] is False
        assert node["type"] == ("gauge" if is_level(key) else "counter")
    assert snap["kern.ipc.tls.stats.sessions_active"]["type"] == "gauge"
    assert snap["net.inet.tcp.stats.sndbyte"]["type"] == "counter"
    assert sysctl_write(kern.sysctl, "net.bpf.zerocopy_enable", "1") == 0
    assert bpf.sysctl.zerocopy_enable is True
    assert (
        sysctl_write(kern.sysctl, "net.bpf.bufsize", str(bpf.sysctl.maxbufsize + 1)) == errno.EINVAL
    )


def test_flips_between_sendfile_steps_keep_every_byte(make_file: MakeFile) -> None:
    data = random.Random(7).randbytes(900_000)
    tf = make_file(data)
    kern = Kernel(SMALL_MEM)
    pair = ConnectionPair(new_socket(kern, 64 * 1024))
    rng = random.Random(1)
    held: list[int] = []  # conversions when the last flip left nomap and txcsum on

    def flip(status: SendfileStatus) -> None:
        conv = kern.stats.ip.unmapped_converted
        if held:  # the pump since the last flip ran with nomap and txcsum on
            assert conv == held.pop()
        assert sysctl_write(kern.sysctl, "kern.ipc.mb_use_ext_pgs", str(rng.randrange(2))) == 0
        caps = kern.ifnet.if_capenable ^ rng.choice([IFCAP_NOMAP, IFCAP_TXCSUM, 0])
        kern.ifnet.set_capenable(caps)  # SIOCSIFCAP (server/ifconfig.py)
        if caps & IFCAP_NOMAP and caps & IFCAP_TXCSUM:
            held.append(conv)

    got = pair.sendfile(tf.obj(kern), tf.fd, 0, len(data), on_step=flip)
    assert got == data
    st = kern.stats
    assert st.mb.ext_pgs_total > 0 and st.sfbuf.total > 0  # both kinds were made
    assert st.ip.unmapped_converted > 0 and st.ip.sw_csum_packets > 0
    pair.close()
    assert kern.leaks() == {}


def test_bpf_bufsize_never_exceeds_maxbufsize() -> None:
    """net.bpf.bufsize <= net.bpf.maxbufsize holds from both sides: lowering the
    ceiling under the default size is refused as raising the size over it is, so
    every state of the pair can be set again from the defaults (a restarted
    worker's replay) and no descriptor opens with more than the ceiling."""
    kern = Kernel(SMALL_MEM)
    bpf = Bpf()
    bpf_sysctl_init(kern.sysctl, bpf)
    assert sysctl_write(kern.sysctl, "net.bpf.maxbufsize", str(1 << 20)) == 0
    assert sysctl_write(kern.sysctl, "net.bpf.bufsize", str(1 << 20)) == 0
    assert sysctl_write(kern.sysctl, "net.bpf.maxbufsize", str(1 << 19)) == errno.EINVAL
    assert (bpf.sysctl.bufsize, bpf.sysctl.maxbufsize) == (1 << 20, 1 << 20)
    assert sysctl_write(kern.sysctl, "net.bpf.bufsize", "4096") == 0
    assert sysctl_write(kern.sysctl, "net.bpf.maxbufsize", "4096") == 0


def test_integers_are_read_as_sysctl8_reads_them() -> None:
    """sysctl(8) reads an integer with strtol(3) in base 0: ASCII digits only,
    0x for hexadecimal, a leading 0 for octal, a sign. Other Unicode digits
    (Arabic-Indic, fullwidth, superscripts) are no integer: EINVAL, nothing set."""
    kern = Kernel(SMALL_MEM)
    tree = kern.sysctl
    for bad in ("١٢٣٤٥٦", "１３１０７２", "6５536", "²", "0x", "0x1g", "09", "1_000", "--1", "+-1"):
        assert sysctl_write(tree, "net.inet.tcp.sendspace", bad) == errno.EINVAL, bad
        assert kern.sendspace == 256 * 1024, bad
    assert sysctl_write(tree, "net.inet.tcp.sendspace", "0x10000") == 0
    assert kern.sendspace == 65536
    assert sysctl_write(tree, "net.inet.tcp.sendspace", "0X20000") == 0
    assert kern.sendspace == 131072
    assert sysctl_write(tree, "net.inet.tcp.sendspace", "0200000") == 0  # octal
    assert kern.sendspace == 65536
    assert sysctl_write(tree, "net.inet.tcp.sendspace", "+65536") == 0
    assert sysctl_write(tree, "kern.ipc.sendfile.readahead", "010") == 0
    assert kern.readahead == 8
    assert sysctl_write(tree, "kern.ipc.sendfile.readahead", "-0x1") == 0
    assert kern.readahead is None
