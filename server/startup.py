"""What a server process does before it serves, alone or as the supervisor of workers.

The certificate (the self-signed pair made on first use), the admin listener
and the start-up lines are the same whether `server.app` serves alone or
`server.supervisor` starts N workers: both import them from here, and neither
imports the other. `server.cli` chooses which one runs.
"""

from __future__ import annotations

import pathlib
import secrets
import sys

import trio

from mbuf import _core
from mbuf.ifnet import IfCap
from server.certs import CertificateError, ensure_self_signed, fingerprint, load_check
from server.config import ConfigError, ServerConfig


def certificate(cfg: ServerConfig) -> tuple[pathlib.Path, pathlib.Path, str]:
    """Certificate, key and SHA-256 fingerprint (the self-signed pair, made on first use)."""
    try:
        if cfg.cert is None or cfg.key is None:
            files = ensure_self_signed()
            return files.cert, files.key, files.fingerprint_sha256
        load_check(cfg.cert, cfg.key)
        return cfg.cert, cfg.key, fingerprint(cfg.cert)
    except CertificateError as e:
        raise ConfigError(str(e)) from e


def mode_name(cfg: ServerConfig) -> str:
    if cfg.http:
        return "http"
    return "ktls" if cfg.ktls else "user-tls"


def announce(
    cfg: ServerConfig,
    fingerprint_: str,
    listening: list[tuple[str, int]],
    admin: tuple[str, int] | None,
    extra: str = "",
    devices: pathlib.Path | None = None,
    token: str | None = None,
) -> None:
    """The start-up lines (tests and the bench read the ports from them)."""
    if cfg.keylog is not None:  # first, so that nobody misses it
        print(f"nomapd: WARNING: writing TLS secrets to {cfg.keylog} (--keylog)", flush=True)
    scheme = "http" if cfg.http else "https"
    for host, port in listening:
        shown = f"[{host}]" if ":" in host else host
        print(f"nomapd: serving {cfg.root.resolve()} on {scheme}://{shown}:{port}/", flush=True)
    if fingerprint_:
        print(f"nomapd: certificate SHA-256 fingerprint {fingerprint_}", flush=True)
    if not cfg.http:
        print(f"nomapd: TLS profile {cfg.tls_profile} (Mozilla server-side TLS)", flush=True)
    if admin:
        print(f"nomapd: counters on http://{admin[0]}:{admin[1]}/stats (nomapd stat)", flush=True)
        if token is not None:
            print(f"nomapd: admin control token {token}", flush=True)
            print(f"nomapd: dashboard http://{admin[0]}:{admin[1]}/#token={token}", flush=True)
    if devices is not None:
        where = "ctl, w<N>/bpf, w<N>/netmap; README Devices"
        print(f"nomapd: devices in {devices} ({where})", flush=True)
    caps = cfg.capenable()
    names = ",".join(f.name.removeprefix("IFCAP_") for f in IfCap if f.name and caps & f.value)
    print(f"nomapd: core: {_core.CORE}", flush=True)
    if _core.CHOICE.build_failed and not _core.CHOICE.compiled:
        print(f"nomapd: WARNING: {_core.CHOICE.build_failed}; run make to retry", flush=True)
    print(
        f"nomapd: mode {mode_name(cfg)}; nm0 options=<{names or 'none'}>; "
        f"sendfile {'unmapped' if cfg.sendfile_nomap else 'sf_buf'}; "
        f"phys-mem {cfg.phys_mem >> 20}M; ktls workers {cfg.ktls_workers}{extra}",
        flush=True,
    )


def admin_token(cfg: ServerConfig) -> str | None:
    """--admin-control: a new random token for this run (None: the listener is read-only)."""
    return secrets.token_urlsafe(24) if cfg.admin_control else None


async def open_admin(cfg: ServerConfig) -> list[trio.SocketListener] | None:
    if cfg.admin is None:
        return None
    if cfg.admin_public and cfg.admin_control:
        print(
            "nomapd: warning: --admin-control with --admin-public: the token travels "
            "over plain HTTP",
            file=sys.stderr,
        )
    try:
        return await trio.open_tcp_listeners(cfg.admin[1], host=cfg.admin[0])
    except OSError as e:
        raise ConfigError(
            f"cannot listen on admin {cfg.admin[0]}:{cfg.admin[1]}: {e.strerror}"
        ) from e
