"""Server configuration: what the command line sets, validated once.

Every knob maps to a kernel analogue (DESIGN.md "Modes and knobs"). Sizes take
the suffixes K, M and G (powers of 1024), as FreeBSD's loader tunables do.
"""

from __future__ import annotations

import ipaddress
import os
import pathlib
import re
from dataclasses import dataclass

from ktls.handshake import TLS_PROFILES
from mbuf.ifnet import IFCAP_NOMAP, IFCAP_TSO4, IFCAP_TSO6, IFCAP_TXCSUM, IFCAP_TXCSUM_IPV6
from mbuf.param import IP_MAXPACKET, PAGE_SIZE, SB_MAX, SB_SNDBUF_DEFAULT, howmany
from netmap.netmap_mem2 import (
    NETMAP_BUF_MAX_NUM,
    NETMAP_BUF_NUM,
    NETMAP_BUF_SIZE,
    NETMAP_IF_NUM,
    NETMAP_RING_NUM,
)

DEMO_SITE = pathlib.Path(__file__).resolve().parent / "demo_site"
DEFAULT_PORT = 8443
DEFAULT_ADMIN = ("127.0.0.1", 8444)

# Pages one TSO burst can touch (64 KiB, not page aligned) plus its header: the
# fewest sf_bufs with which ip_output can ever convert a packet.
MIN_NSFBUFS = howmany(IP_MAXPACKET, PAGE_SIZE) + 2
MAX_WORKERS = 256

_FIELD_VALUE = re.compile(r"[\x21-\x7e]([\x20-\x7e\t]*[\x21-\x7e])?")  # RFC 9110 5.5
_TOKEN = r"[!#$%&'*+.^_`|~0-9A-Za-z-]+"
_MEDIA_TYPE = re.compile(rf"{_TOKEN}/{_TOKEN}(\s*;[\x20-\x7e]*)?")
_SIZE = re.compile(r"^\s*(\d+)\s*([kKmMgG]?)[iI]?[bB]?\s*$")


class ConfigError(ValueError):
    """A bad command line or configuration: one line, exit code 2."""


def parse_size(text: str, what: str) -> int:
    m = _SIZE.match(text)
    if not m:
        raise ConfigError(f"{what}: {text!r} is not a size (examples: 256M, 1G, 65536)")
    n = int(m.group(1)) * {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30}[m.group(2).lower()]
    return n


def parse_hostport(text: str, what: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not host:
        raise ConfigError(f"{what}: {text!r} is not HOST:PORT")
    host = host.strip("[]")
    return host, parse_port(port, what)


def parse_workers(text: str) -> int:
    """--workers: a count, or 'auto' for one per CPU (nginx's worker_processes auto)."""
    if text == "auto":
        return os.cpu_count() or 1
    if not text.isdigit():
        raise ConfigError(f"--workers: {text!r} is not a number of processes or 'auto'")
    return int(text)


def parse_port(text: str, what: str) -> int:
    if not text.isdigit() or not 0 <= int(text) <= 65535:
        raise ConfigError(f"{what}: {text!r} is not a port number (0-65535)")
    return int(text)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass(slots=True)
class ServerConfig:
    root: pathlib.Path = DEMO_SITE
    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    cert: pathlib.Path | None = None
    key: pathlib.Path | None = None
    http: bool = False  # plain HTTP, no TLS
    ktls: bool = True
    nomap: bool = True
    txcsum: bool = True
    tso: bool = True
    sendfile_nomap: bool = True
    bpf_zerocopy: bool = True  # net.bpf.zerocopy_enable (FreeBSD's default is 0)
    netmap_buf_num: int = NETMAP_BUF_NUM  # dev.netmap.buf_num: buffers of each region
    netmap_buf_size: int = NETMAP_BUF_SIZE  # dev.netmap.buf_size
    netmap_ring_num: int = NETMAP_RING_NUM  # dev.netmap.ring_num
    netmap_if_num: int = NETMAP_IF_NUM  # dev.netmap.if_num
    phys_mem: int = 256 << 20
    sndbuf: int = SB_SNDBUF_DEFAULT
    nsfbufs: int = 0
    readahead: int | None = None  # pages; None: the rest of the request up to MAXPHYS
    loss: float = 0.0  # probability that the model's wire loses a packet (--loss)
    loss_seed: int = 0  # ... its generator's seed (each worker adds its index)
    # 0: ktls_encrypt runs on the sending thread. Worker threads overlap only the
    # C crypto (a few % of the work) and hand every batch across the GIL twice:
    # measured 0.6x the throughput on 2 cores (`make bench`), so they are opt-in.
    ktls_workers: int = 0
    admin: tuple[str, int] | None = DEFAULT_ADMIN
    admin_public: bool = False
    admin_control: bool = False  # POST /sysctl and /ifconfig with a one-time token
    keylog: pathlib.Path | None = None
    tls_profile: str = "intermediate"  # Mozilla's: intermediate or modern (TLS 1.3 only)
    follow_symlinks: bool = False
    serve_dotfiles: bool = False
    autoindex: bool = False
    cache_control: str | None = None
    default_type: str = "application/octet-stream"
    max_ranges: int = 32
    handshake_timeout: float = 10.0
    header_timeout: float = 10.0  # the whole request head (nginx client_header_timeout 60s)
    keepalive_timeout: float = 75.0  # idle between requests (nginx keepalive_timeout 75s)
    send_timeout: float = 60.0  # no progress writing to a client
    max_header_size: int = 16 * 1024  # request head: larger -> 431
    max_requests: int = 1000  # per connection (nginx keepalive_requests)
    max_connections: int = 1024
    # Operations: worker processes, shutdown, logs (server/supervisor.py, shutdown.py,
    # accesslog.py, errorlog.py).
    workers: int = 1  # processes sharing the port with SO_REUSEPORT; 1: no supervisor
    shutdown_timeout: float = 10.0  # SIGTERM: responses in flight may finish this long
    access_log: str = "-"  # a file, "-" (stdout) or "off"
    log_level: str = "warning"  # stderr: debug, info, warning, error
    worker_index: int | None = None  # set (hidden flags) in a worker by its supervisor
    worker_fds: tuple[int, ...] = ()  # ... its control channel, then its listening sockets
    argv: tuple[str, ...] = ()  # the command line, which the supervisor runs for each worker

    def capenable(self) -> int:
        caps = 0
        if self.nomap:
            caps |= IFCAP_NOMAP
        if self.txcsum:  # ifconfig txcsum txcsum6
            caps |= IFCAP_TXCSUM | IFCAP_TXCSUM_IPV6
        if self.tso:  # ifconfig tso (tso4 tso6)
            caps |= IFCAP_TSO4 | IFCAP_TSO6
        return caps

    def validate(self) -> None:
        """Raise ConfigError with a one-line message for anything unusable."""
        if not 64 <= self.netmap_buf_num <= NETMAP_BUF_MAX_NUM:
            raise ConfigError(
                f"--netmap-buf-num {self.netmap_buf_num}: 64 to {NETMAP_BUF_MAX_NUM} buffers"
            )
        for flag, v in (("ring", self.netmap_ring_num), ("if", self.netmap_if_num)):
            if not 1 <= v <= 4096:
                raise ConfigError(f"--netmap-{flag}-num {v}: 1 to 4096")
        if not 64 <= self.netmap_buf_size <= 65536 or self.netmap_buf_size % 64:
            raise ConfigError(
                f"--netmap-buf-size {self.netmap_buf_size}: a multiple of 64 from 64 to 65536"
            )
        if not self.root.exists():
            raise ConfigError(f"document root {self.root} does not exist")
        if not self.root.is_dir():
            raise ConfigError(f"document root {self.root} is not a directory")
        if not os.access(self.root, os.R_OK | os.X_OK):
            raise ConfigError(f"document root {self.root} is not readable")
        if self.phys_mem < 1 << 20:
            raise ConfigError(f"--phys-mem {self.phys_mem} is below the 1M minimum")
        if self.phys_mem > 64 << 30:
            raise ConfigError(f"--phys-mem {self.phys_mem} is above the 64G maximum")
        if not PAGE_SIZE <= self.sndbuf <= SB_MAX:
            raise ConfigError(f"--sndbuf must be between {PAGE_SIZE} and {SB_MAX}")
        if self.phys_mem < 8 * self.sndbuf:
            raise ConfigError("--phys-mem must be at least 8 times --sndbuf")
        if self.ktls_workers < 0 or self.ktls_workers > 256:
            raise ConfigError("--ktls-workers must be between 0 and 256")
        if self.nsfbufs < 0 or 0 < self.nsfbufs < MIN_NSFBUFS:
            # A conversion maps every page of a TSO burst at once (SFB_NOWAIT): a
            # smaller pool could never send one, and every packet would be dropped.
            raise ConfigError(f"--nsfbufs must be 0 (direct map) or at least {MIN_NSFBUFS}")
        if not 0.0 <= self.loss <= 0.5:  # beyond: mostly retransmissions; NaN fails too
            raise ConfigError(f"--loss must be a probability between 0 and 0.5, not {self.loss}")
        if self.readahead is not None and not 0 <= self.readahead <= 1024:
            raise ConfigError("--readahead must be 'auto' or 0..1024 pages")
        for name, value in (("--send-timeout", self.send_timeout),
                            ("--header-timeout", self.header_timeout),
                            ("--keepalive-timeout", self.keepalive_timeout),
                            ("--handshake-timeout", self.handshake_timeout)):  # fmt: skip
            if not 0 < value <= 3600:
                raise ConfigError(f"{name} must be between 0 and 3600 seconds")
        if not 1024 <= self.max_header_size <= 1 << 20:
            raise ConfigError("--max-header-size must be between 1K and 1M")
        if self.max_requests < 1:
            raise ConfigError("--max-requests-per-connection must be at least 1")
        if self.max_connections < 1:
            raise ConfigError("--max-connections must be at least 1")
        if (self.cert is None) != (self.key is None):
            raise ConfigError("--cert and --key go together")
        for p in (self.cert, self.key):
            if p is not None and not p.is_file():
                raise ConfigError(f"{p}: no such file")
        if self.admin is not None and not self.admin_public and not is_loopback(self.admin[0]):
            raise ConfigError(
                f"--admin {self.admin[0]} is not a loopback address (add --admin-public to allow)"
            )
        if self.admin_control and self.admin is None:
            raise ConfigError("--admin-control needs the admin listener (not --admin off)")
        if not 0 <= self.max_ranges <= 1024:
            raise ConfigError("--max-ranges must be between 0 and 1024")
        if self.cache_control is not None and not _FIELD_VALUE.fullmatch(self.cache_control):
            raise ConfigError(f"--cache-control: {self.cache_control!r} is not a field value")
        if not _MEDIA_TYPE.fullmatch(self.default_type):
            raise ConfigError(f"--default-type: {self.default_type!r} is not a media type")
        if self.http and self.keylog is not None:
            raise ConfigError("--keylog makes no sense with --http")
        if not self.http and self.ktls and not self.sendfile_nomap:
            # ktls_enable_tx refuses a socket when kern.ipc.mb_use_ext_pgs is 0.
            raise ConfigError(
                "--ktls with --no-sendfile-nomap: KTLS needs unmapped mbufs "
                "(ktls_enable_tx fails with ENXIO); add --no-ktls or drop --no-sendfile-nomap"
            )
        if self.tls_profile not in TLS_PROFILES:
            names = " or ".join(TLS_PROFILES)
            raise ConfigError(f"--tls-profile: {self.tls_profile!r} is not {names}")
        self._validate_operations()

    def _validate_operations(self) -> None:
        if not 1 <= self.workers <= MAX_WORKERS:
            raise ConfigError(f"--workers must be between 1 and {MAX_WORKERS}, or 'auto'")
        if not 0 <= self.shutdown_timeout <= 3600:
            raise ConfigError("--shutdown-timeout must be between 0 and 3600 seconds")
        if self.access_log not in ("-", "off"):
            try:  # now, so that a bad path is one line from one process, not one per worker
                os.close(os.open(self.access_log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644))
            except OSError as e:
                raise ConfigError(f"--access-log {self.access_log}: {e.strerror}") from e
