"""The rows of the benchmark: each server in each mode it is measured in.

Theory of operation. A row is one server process configuration. nomapd has
sixteen rows, one per mode measured, four of them capture rows (the flags are
passed to `nomapd serve` as they are); nginx and hypercorn have two each,
HTTPS and plain HTTP, so that every nomapd row has a peer speaking the same
protocol: the HTTPS rows of nomapd are compared with `nginx` and
`hypercorn`, the `--http` rows with `nginx-http` and `hypercorn-http`
(`peer_of`).

A capture row (`capture` set) is nomapd's default mode with `nomapd capture`
running beside it during each run (`bench.capture`): zero-copy or buffered
BPF, at snap length 96 or full. It runs on the 1 MiB workloads only, with
wrk; `nomapd-default` is its no-capture baseline.

Row names are what `--only` matches (with the workload and the tool, see
`bench.plan`), so they are short and stable: renaming one changes the command
lines people have written down.
"""

from __future__ import annotations

from dataclasses import dataclass

from bench.capture import BUFFER, SNAP_FULL, SNAP_HEADERS, ZBUF, Capture

NOMAPD = "nomapd"
NGINX = "nginx"
HYPERCORN = "hypercorn"
SERVERS = (NOMAPD, NGINX, HYPERCORN)


@dataclass(frozen=True)
class Row:
    """One server in one mode."""

    name: str
    server: str
    tls: bool
    flags: tuple[str, ...] = ()
    title: str = ""
    env: tuple[tuple[str, str], ...] = ()  # added to the server's environment
    capture: Capture | None = None  # a capture beside the server during each run

    @property
    def scheme(self) -> str:
        return "https" if self.tls else "http"


ROWS: tuple[Row, ...] = (
    Row("nomapd-default", NOMAPD, True, (), "KTLS, NIC with IFCAP_NOMAP"),
    # The same server on the interpreted core: the compiler's share, side by side.
    Row(
        "nomapd-default-pure",
        NOMAPD,
        True,
        (),
        "KTLS, NIC with IFCAP_NOMAP, pure core (NOMAPD_PURE=1)",
        env=(("NOMAPD_PURE", "1"),),
    ),
    Row("nomapd-no-nomap", NOMAPD, True, ("--no-nomap",), "KTLS, NIC without NOMAP"),
    Row(
        "nomapd-no-nomap-no-txcsum",
        NOMAPD,
        True,
        ("--no-nomap", "--no-txcsum"),
        "KTLS, old NIC: no NOMAP, no TXCSUM (so no TSO)",
    ),
    # What loss costs: the same two NICs on a wire that loses 2% of segments
    # (TCP resends from the socket buffer; without NOMAP every resend converts again).
    Row("nomapd-loss", NOMAPD, True, ("--loss", "0.02"), "KTLS, NOMAP, 2% of segments lost"),
    Row(
        "nomapd-no-nomap-loss",
        NOMAPD,
        True,
        ("--no-nomap", "--loss", "0.02"),
        "KTLS, NIC without NOMAP, 2% of segments lost",
    ),
    Row("nomapd-no-ktls", NOMAPD, True, ("--no-ktls",), "user-space TLS (OpenSSL)"),
    Row("nomapd-http", NOMAPD, False, ("--http",), "plain HTTP, unmapped sendfile"),
    Row(
        "nomapd-http-no-sendfile-nomap",
        NOMAPD,
        False,
        ("--http", "--no-sendfile-nomap"),
        "plain HTTP, one sf_buf mbuf per page",
    ),
    # The two pairs of the README's "what the unmapped path saves" again on the
    # interpreted core, so that the interpreter's share of each can be told apart.
    Row(
        "nomapd-no-nomap-pure",
        NOMAPD,
        True,
        ("--no-nomap",),
        "KTLS, NIC without NOMAP, pure core (NOMAPD_PURE=1)",
        env=(("NOMAPD_PURE", "1"),),
    ),
    Row(
        "nomapd-http-pure",
        NOMAPD,
        False,
        ("--http",),
        "plain HTTP, unmapped sendfile, pure core (NOMAPD_PURE=1)",
        env=(("NOMAPD_PURE", "1"),),
    ),
    Row(
        "nomapd-http-no-sendfile-nomap-pure",
        NOMAPD,
        False,
        ("--http", "--no-sendfile-nomap"),
        "plain HTTP, one sf_buf mbuf per page, pure core (NOMAPD_PURE=1)",
        env=(("NOMAPD_PURE", "1"),),
    ),
    # What capture costs (bench.capture): the default mode with a capture on nm0.
    *(
        Row(
            f"nomapd-capture-{mode}-{cap.snap_label}",
            NOMAPD,
            True,
            (),
            f"KTLS, NOMAP, {'zero-copy' if mode == ZBUF else 'buffered'} capture, "
            f"snap length {cap.snaplen}",
            capture=cap,
        )
        for snaplen in (SNAP_HEADERS, SNAP_FULL)
        for mode in (ZBUF, BUFFER)
        for cap in (Capture(mode, snaplen),)
    ),
    Row(NGINX, NGINX, True, (), "nginx, 1 worker, sendfile on, HTTPS"),
    Row(f"{NGINX}-http", NGINX, False, (), "nginx, 1 worker, sendfile on, plain HTTP"),
    Row(HYPERCORN, HYPERCORN, True, (), "hypercorn -k trio, Starlette StaticFiles, HTTPS"),
    Row(
        f"{HYPERCORN}-http",
        HYPERCORN,
        False,
        (),
        "hypercorn -k trio, Starlette StaticFiles, plain HTTP",
    ),
)

CAPTURE_BASELINE = "nomapd-default"  # the capture rows without the capture

BY_NAME: dict[str, Row] = {r.name: r for r in ROWS}


def peer_of(row: Row, server: str) -> Row:
    """The row of `server` that speaks the same protocol as `row` (HTTPS or plain HTTP)."""
    for r in ROWS:
        if r.server == server and r.tls == row.tls:
            return r
    raise KeyError(f"no {server} row with tls={row.tls}")
