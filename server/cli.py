"""The command line: `nomapd serve [ROOT] ...`, `nomapd stat`, `nomapd top`, `nomapd capture`,
`nomapd pkt-gen`, `nomapd sysctl` and `nomapd ifconfig` (userland programs on the devices:
their own flags).

`nomapd capture` (a tcpdump for nm0) is userland/capture.py and `nomapd
pkt-gen` (netmap's) userland/pktgen.py; this file only adds their
subcommands. Bad flags and bad configuration print one line to stderr and
exit with code 2, as argparse does for syntax errors.
"""

from __future__ import annotations

import argparse
import pathlib
import re
import sys
from collections.abc import Sequence

from netmap.netmap_mem2 import NETMAP_BUF_NUM, NETMAP_BUF_SIZE, NETMAP_IF_NUM, NETMAP_RING_NUM
from server.config import (
    DEFAULT_ADMIN,
    DEFAULT_PORT,
    DEMO_SITE,
    ConfigError,
    ServerConfig,
    parse_hostport,
    parse_size,
    parse_workers,
)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: {message}\n")


def _bool(p: argparse.ArgumentParser, name: str, default: bool, help_: str) -> None:
    p.add_argument(f"--{name}", action=argparse.BooleanOptionalAction, default=default, help=help_)


def build_parser() -> argparse.ArgumentParser:
    top = _Parser(prog="nomapd", description=__doc__.splitlines()[0] if __doc__ else None)
    sub = top.add_subparsers(dest="command", required=True, parser_class=_Parser)
    s = sub.add_parser("serve", help="serve a directory over HTTPS through the modeled kernel")
    s.add_argument("root", nargs="?", default=None, help="document root (default: demo site)")
    s.add_argument("--host", default="127.0.0.1", help="address to listen on")
    s.add_argument("--port", default=str(DEFAULT_PORT), help="port (0 picks a free one)")
    s.add_argument("--cert", help="certificate chain (PEM); default: a generated self-signed one")
    s.add_argument("--key", help="private key (PEM) for --cert")
    s.add_argument("--http", action="store_true", help="plain HTTP, no TLS")
    _bool(s, "ktls", True, "KTLS: the modeled kernel frames and encrypts (kern.ipc.tls.enable)")
    _bool(s, "nomap", True, "NIC has IFCAP_NOMAP (ifconfig nomap/-nomap)")
    _bool(s, "txcsum", True, "NIC checksum offload (IFCAP_TXCSUM{,_IPV6}); off turns TSO off")
    _bool(s, "tso", True, "NIC TCP segmentation offload (IFCAP_TSO4, TSO6)")
    _bool(s, "sendfile-nomap", True, "sendfile builds unmapped mbufs (kern.ipc.mb_use_ext_pgs)")
    _bool(s, "bpf-zerocopy", True, "/dev/bpf accepts zero-copy buffers (net.bpf.zerocopy_enable)")
    for knob, default, what in (  # the dev.netmap.* sysctls of each worker's regions
        ("buf_num", NETMAP_BUF_NUM, "buffers of each netmap region"),
        ("buf_size", NETMAP_BUF_SIZE, "netmap buffer size"),
        ("ring_num", NETMAP_RING_NUM, "ring objects of each netmap region"),
        ("if_num", NETMAP_IF_NUM, "netmap_if objects of each netmap region"),
    ):
        s.add_argument(
            f"--netmap-{knob.replace('_', '-')}", type=int, default=default,
            help=f"{what} (dev.netmap.{knob}, {default})",
        )  # fmt: skip
    s.add_argument("--phys-mem", default="256M", help="physical memory of the model (256M)")
    s.add_argument(
        "--sndbuf", default="256K", help="send buffer sb_hiwat (net.inet.tcp.sendspace; 256K)"
    )
    s.add_argument("--nsfbufs", type=int, default=0, help="sf_buf pool size; 0 = direct map")
    s.add_argument(
        "--readahead",
        default="auto",
        help="sendfile readahead in pages, or 'auto' (rest of the request up to 128K)",
    )
    s.add_argument(
        "--ktls-workers", type=int, default=None, help="encryption threads (0: encrypt inline)"
    )
    s.add_argument(
        "--loss", default="0", help="probability the wire loses a packet (dev.nm.0.loss_ppm; 0)"
    )
    s.add_argument("--loss-seed", type=int, default=0, help="seed of --loss, for repeatable runs")
    s.add_argument(
        "--admin",
        default=f"{DEFAULT_ADMIN[0]}:{DEFAULT_ADMIN[1]}",
        help="admin listener HOST:PORT for /stats, or 'off'",
    )
    s.add_argument("--admin-public", action="store_true", help="allow a non-loopback --admin")
    s.add_argument(
        "--admin-control", action="store_true",
        help="admin accepts POST /sysctl and /ifconfig with a token printed at start",
    )  # fmt: skip
    s.add_argument("--keylog", help="WRITE TLS SECRETS to this file (for Wireshark); off")
    s.add_argument(
        "--tls-profile",
        default="intermediate",
        help="Mozilla TLS profile: intermediate (TLS 1.2 and 1.3, default) or modern (1.3 only)",
    )
    s.add_argument(
        "--max-connections", type=int, default=1024, help="connections served at once (1024)"
    )
    s.add_argument(
        "--send-timeout", type=float, default=60.0, help="drop a client taking no bytes (60s)"
    )
    s.add_argument(
        "--header-timeout", type=float, default=10.0, help="whole request head within (10s)"
    )
    s.add_argument(
        "--keepalive-timeout", type=float, default=75.0, help="idle between requests (75s)"
    )
    s.add_argument(
        "--handshake-timeout", type=float, default=10.0, help="TLS handshake within (10s)"
    )
    s.add_argument("--max-header-size", default="16K", help="request head limit; more: 431")
    s.add_argument(
        "--max-requests-per-connection",
        type=int,
        default=1000,
        help="then the connection closes (1000)",
    )
    s.add_argument("--follow-symlinks", action="store_true", help="allow symlinks out of ROOT")
    s.add_argument("--serve-dotfiles", action="store_true", help="serve names starting with '.'")
    s.add_argument("--autoindex", action="store_true", help="list directories without index.html")
    s.add_argument("--cache-control", help="Cache-Control value for files, e.g. max-age=3600")
    s.add_argument(
        "--default-type",
        default="application/octet-stream",
        help="Content-Type for unknown extensions (application/octet-stream)",
    )
    s.add_argument(
        "--max-ranges", type=int, default=32, help="more ranges than this: whole file (32)"
    )
    _operations_flags(s)
    t = sub.add_parser("stat", help="print the server's kernel counters, netstat -m style")
    t.add_argument("--admin", default=f"{DEFAULT_ADMIN[0]}:{DEFAULT_ADMIN[1]}", help="HOST:PORT")
    t.add_argument("--json", action="store_true", help="print the raw JSON")
    t.add_argument(
        "-B", dest="bpf", action="store_true", help="the bpf descriptors, netstat -B style"
    )
    t.add_argument("-w", dest="wait", type=float, help="a line of deltas every WAIT seconds")
    t.add_argument("-c", dest="count", type=int, help="with -w: stop after COUNT lines")
    p = sub.add_parser("top", help="the data path's rates per worker, live (q quits)")
    p.add_argument("--admin", default=f"{DEFAULT_ADMIN[0]}:{DEFAULT_ADMIN[1]}", help="HOST:PORT")
    p.add_argument("-s", dest="delay", type=float, default=1.0, help="seconds between updates")
    c = sub.add_parser("capture", help="capture nm0's packets, tcpdump style (pcap, pcapng)")
    from userland.capture import add_arguments

    add_arguments(c)
    g = sub.add_parser("pkt-gen", help="netmap's pkt-gen on a port of the server's /dev/netmap")
    from userland.pktgen import add_arguments as pktgen_arguments

    pktgen_arguments(g)
    # Userland programs with their own command lines (userland/sysctl.py, ifconfig.py):
    # main() hands them the rest of argv; listed here for `nomapd --help`.
    sub.add_parser("sysctl", help="get or set kernel state: -a, NAME, NAME=VALUE", add_help=False)
    sub.add_parser("ifconfig", help="print nm0 or change its options: nm0 -nomap", add_help=False)
    return top


USERLAND_COMMANDS = ("sysctl", "ifconfig")


def _operations_flags(s: argparse.ArgumentParser) -> None:
    s.add_argument("--workers", default="1", help="processes sharing the port, or 'auto' (1)")
    s.add_argument(
        "--shutdown-timeout", type=float, default=10.0,
        help="SIGTERM/SIGINT: responses in flight may finish this long (10s)",
    )  # fmt: skip
    s.add_argument("--access-log", default="-", help="FILE, '-' (stdout, default) or 'off'")
    s.add_argument(
        "--log-level", default="warning", help="stderr: debug, info, warning (default), error"
    )
    s.add_argument("--worker-index", type=int, help=argparse.SUPPRESS)  # set by the supervisor
    s.add_argument("--worker-fds", help=argparse.SUPPRESS)  # CONTROL,LISTEN[,LISTEN...]


def _operations_config(cfg: ServerConfig, ns: argparse.Namespace) -> None:
    from server.errorlog import parse_level

    cfg.workers = parse_workers(ns.workers)
    cfg.shutdown_timeout = ns.shutdown_timeout
    cfg.access_log = ns.access_log
    cfg.log_level = parse_level(ns.log_level)
    if ns.worker_index is not None:
        cfg.worker_index = ns.worker_index
        fds = (ns.worker_fds or "").split(",")
        if len(fds) < 2 or not all(fd.isdigit() for fd in fds):
            raise ConfigError("--worker-index needs --worker-fds CONTROL,LISTEN[,LISTEN...]")
        cfg.worker_fds = tuple(int(fd) for fd in fds)


def config_from_args(ns: argparse.Namespace) -> ServerConfig:
    from server.config import parse_port

    cfg = ServerConfig()
    cfg.root = pathlib.Path(ns.root).resolve() if ns.root is not None else DEMO_SITE
    cfg.host = ns.host
    cfg.port = parse_port(ns.port, "--port")
    cfg.cert = pathlib.Path(ns.cert) if ns.cert else None
    cfg.key = pathlib.Path(ns.key) if ns.key else None
    cfg.http = ns.http
    cfg.ktls = ns.ktls
    cfg.nomap = ns.nomap
    cfg.txcsum = ns.txcsum
    cfg.tso = ns.tso
    cfg.sendfile_nomap = ns.sendfile_nomap
    cfg.bpf_zerocopy = ns.bpf_zerocopy
    cfg.netmap_buf_num = ns.netmap_buf_num
    cfg.netmap_buf_size = ns.netmap_buf_size
    cfg.netmap_ring_num = ns.netmap_ring_num
    cfg.netmap_if_num = ns.netmap_if_num
    cfg.phys_mem = parse_size(ns.phys_mem, "--phys-mem")
    cfg.sndbuf = parse_size(ns.sndbuf, "--sndbuf")
    cfg.nsfbufs = ns.nsfbufs
    if ns.readahead != "auto":
        if not re.fullmatch(r"[0-9]+", ns.readahead):
            raise ConfigError(f"--readahead: {ns.readahead!r} is not a page count or 'auto'")
        cfg.readahead = int(ns.readahead)
    if ns.ktls_workers is not None:
        cfg.ktls_workers = ns.ktls_workers
    try:
        cfg.loss = float(ns.loss)
    except ValueError:
        raise ConfigError(f"--loss: {ns.loss!r} is not a probability") from None
    cfg.loss_seed = ns.loss_seed
    cfg.admin = None if ns.admin == "off" else parse_hostport(ns.admin, "--admin")
    cfg.admin_public = ns.admin_public
    cfg.admin_control = ns.admin_control
    cfg.keylog = pathlib.Path(ns.keylog) if ns.keylog else None
    cfg.tls_profile = ns.tls_profile
    cfg.max_connections = ns.max_connections
    cfg.send_timeout = ns.send_timeout
    cfg.header_timeout = ns.header_timeout
    cfg.keepalive_timeout = ns.keepalive_timeout
    cfg.handshake_timeout = ns.handshake_timeout
    cfg.max_header_size = parse_size(ns.max_header_size, "--max-header-size")
    cfg.max_requests = ns.max_requests_per_connection
    cfg.follow_symlinks = ns.follow_symlinks
    cfg.serve_dotfiles = ns.serve_dotfiles
    cfg.autoindex = ns.autoindex
    cfg.cache_control = ns.cache_control
    cfg.default_type = ns.default_type
    cfg.max_ranges = ns.max_ranges
    _operations_config(cfg, ns)
    cfg.validate()
    return cfg


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in USERLAND_COMMANDS:
        if argv[0] == "sysctl":
            from userland.sysctl import main as sysctl_main

            return sysctl_main(argv[1:])
        from userland.ifconfig import main as ifconfig_main

        return ifconfig_main(argv[1:])
    ns = build_parser().parse_args(argv)
    try:
        if ns.command == "pkt-gen":
            from userland.pktgen import run as run_pktgen

            return run_pktgen(ns)
        if ns.command == "stat":
            from server.stat import run_stat, run_watch

            admin = parse_hostport(ns.admin, "--admin")
            if ns.wait is not None:
                if not 0 < ns.wait <= 3600 or (ns.count is not None and ns.count < 1):
                    raise ConfigError("-w takes 0 < WAIT <= 3600 seconds, -c a count >= 1")
                return run_watch(admin, ns.wait, ns.count)
            if ns.count is not None:
                raise ConfigError("-c goes with -w")
            return run_stat(admin, as_json=ns.json, bpf=ns.bpf)
        if ns.command == "top":
            from server.top import run_top

            if not 0.1 <= ns.delay <= 3600:
                raise ConfigError("-s takes 0.1 to 3600 seconds")
            return run_top(parse_hostport(ns.admin, "--admin"), ns.delay)
        if ns.command == "capture":
            from userland.capture import run

            return run(ns)
        cfg = config_from_args(ns)
        cfg.argv = tuple(argv)  # --workers: the supervisor runs it again for each worker
        if cfg.workers > 1 and cfg.worker_index is None:
            from server.supervisor import run_supervisor

            return run_supervisor(cfg)
        from server.app import run_server

        return run_server(cfg)
    except ConfigError as e:
        print(f"nomapd: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
