"""The pieces of run-time control and watching, without a server: ifconfig's words,
the workers' sysctl trees combined, /metrics' families, stat -w's lines, top's screen."""

from __future__ import annotations

import errno

from prometheus_client.parser import text_string_to_metric_families

from mbuf.ifnet import IFCAP_NOMAP, IFCAP_TSO4, IFCAP_TXCSUM
from mbuf.kern import Kernel
from mbuf.param import PAGE_SIZE
from server.admin import _authorized
from server.control import combine_sysctl, counter_descriptions
from server.ifconfig import ifconfig_apply, ifconfig_info
from server.metrics import render_metrics
from server.stat import watch_header, watch_line
from server.top import render

MEM = 64 * PAGE_SIZE


def test_ifconfig_words() -> None:
    ifp = Kernel(MEM).ifnet
    start = ifp.if_capenable
    assert ifconfig_apply(ifp, ["nm0", "-nomap", "bogus"]) == (errno.EINVAL, "bogus: bad value")
    assert ifconfig_apply(ifp, ["ix0", "-nomap"])[0] == errno.ENXIO
    assert ifconfig_apply(ifp, [])[0] == errno.EINVAL
    assert ifp.if_capenable == start  # nothing changed
    assert ifconfig_apply(ifp, ["nm0", "-nomap", "-tso", "lro"]) == (0, "")
    assert ifp.if_capenable == start & ~(IFCAP_NOMAP | IFCAP_TSO4 | 0x200)  # lro: unsupported
    assert ifconfig_info(ifp)["text"] == (
        "nm0: flags=8843<UP,BROADCAST,RUNNING,SIMPLEX,MULTICAST> metric 0 mtu 1500\n"
        "\toptions=200002<TXCSUM,TXCSUM_IPV6>\n"
    )
    assert ifconfig_apply(ifp, ["nm0", "-txcsum", "tso"]) == (0, "")
    assert not ifp.if_capenable & (IFCAP_TXCSUM | IFCAP_TSO4)  # TSO4 needs TXCSUM
    assert ifconfig_apply(ifp, ["nm0", "txcsum", "tso", "nomap"]) == (0, "")
    assert ifp.if_capenable == start


def test_combine_sysctl() -> None:
    a, b = Kernel(MEM), Kernel(MEM)
    a.stats.tcp.sndbyte, b.stats.tcp.sndbyte = 10, 32
    a.stats.mb.mbufs_peak, b.stats.mb.mbufs_peak = 7, 5
    b.mb_use_ext_pgs = False  # settings: the first worker's
    both = combine_sysctl([a.sysctl.snapshot(), b.sysctl.snapshot()])
    assert both["net.inet.tcp.stats.sndbyte"]["value"] == 42
    assert both["kern.ipc.mbstat.mbufs_peak"]["value"] == 7
    assert both["kern.ipc.mb_use_ext_pgs"]["value"] == 1
    assert both["vm.stats.pages_total"]["value"] == 128


def test_metrics_families() -> None:
    a, b = Kernel(MEM), Kernel(MEM)
    a.stats.ktls.records_encrypted, b.stats.ktls.records_encrypted = 3, 4
    snaps = [("0", dict(a.statistics())), ("1", dict(b.statistics()))]
    text, ctype = render_metrics(snaps)
    assert ctype.startswith("text/plain; version=")
    fams = {f.name: f for f in text_string_to_metric_families(text.decode())}
    rec = fams["nomapd_kern_ipc_tls_stats_records_encrypted"]
    assert rec.type == "counter"
    assert [(s.name, s.labels, s.value) for s in rec.samples] == [
        ("nomapd_kern_ipc_tls_stats_records_encrypted_total", {"worker": "0"}, 3.0),
        ("nomapd_kern_ipc_tls_stats_records_encrypted_total", {"worker": "1"}, 4.0),
    ]
    assert fams["nomapd_kern_ipc_sfbuf_in_use"].type == "gauge"
    assert (
        fams["nomapd_net_inet_tcp_stats_rcvoopack"].documentation
        == counter_descriptions()["tcp.rcvoopack"]
    )
    assert "tcps_rcvoopack" in fams["nomapd_net_inet_tcp_stats_rcvoopack"].documentation


def test_watch_line_and_top_screen() -> None:
    prev = {"ifnet.tx_bytes": 1000, "mbuf.mbufs_total": 10, "mbuf.ext_pgs_total": 4}
    cur = {"ifnet.tx_bytes": 4000, "mbuf.mbufs_total": 30, "mbuf.ext_pgs_total": 9,
           "ip.unmapped_converted": 2}  # fmt: skip
    cols = watch_header().split()
    row = dict(zip(cols, watch_line(prev, cur).split(), strict=True))
    want = {"records": "0", "extpgs": "5", "mapped": "15", "conv": "2", "sfbufs": "0",
            "csum-bytes": "0", "packets": "0", "wire-bytes": "3000", "drops": "0"}  # fmt: skip
    assert row == want
    assert watch_line(cur, prev).split()[7] == "0"  # a restarted worker: never negative
    conns = [{"peer": "127.0.0.1:5", "bytes_written": 9000, "requests": 2, "worker": 1}]
    screen = render({"workers": [prev]}, {"workers": [cur]}, conns, {"1 127.0.0.1:5": 1000}, 2.0)
    nm0 = next(ln for ln in screen if ln.startswith("nm0") and "wire bytes/s" in ln)
    assert nm0.split()[-1] == "1.5k"  # 3000 bytes in 2 s
    assert screen[-1].split() == ["127.0.0.1:5", "1", "2", "4.0k"]
    first = render({}, {"workers": [cur]}, [], {}, 0.0)
    assert next(ln for ln in first if "wire bytes/s" in ln).split()[-1] == "-"
    assert first[-1] == "(none open)"


def test_admin_authorization_scheme_is_case_insensitive() -> None:
    """RFC 9110 11.1: the auth-scheme is case-insensitive ("bearer", "BEARER");
    the token itself is compared exactly; a token elsewhere (a query string, Basic)
    never counts."""
    token = "s3cret-Token"
    for scheme in (b"Bearer", b"bearer", b"BEARER", b"bEaReR"):
        assert _authorized(token, [(b"authorization", scheme + b" s3cret-Token")]) == (0, b"")
    assert _authorized(token, [(b"authorization", b"Bearer s3cret-token")])[0] == 403
    assert _authorized(token, [(b"authorization", b"Basic s3cret-Token")])[0] == 401
    assert _authorized(token, [(b"authorization", b"Bearers3cret-Token")])[0] == 401
    assert _authorized(token, [])[0] == 401
    assert _authorized(None, [(b"authorization", b"Bearer s3cret-Token")])[0] == 403
