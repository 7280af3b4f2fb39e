"""The command line: bad input is one line on stderr and exit code 2."""

from __future__ import annotations

import os
import pathlib
import socket
import stat
import subprocess
import sys

import pytest

from server.config import ConfigError, parse_size
from tests.integration.conftest import (
    ServerProcess,
)


def _nomapd(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "server", *args],
        capture_output=True, text=True, timeout=30, check=False,
        env=dict(os.environ, **(env or {})),
    )  # fmt: skip


def _one_line_error(res: subprocess.CompletedProcess[str], needle: str) -> None:
    assert res.returncode == 2, (res.stdout, res.stderr)
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1, res.stderr
    assert needle in lines[0]
    assert "Traceback" not in res.stderr


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["serve", "--bogus"], "unrecognized arguments"),
        (["serve", "/nonexistent/root/dir"], "does not exist"),
        (["serve", "--phys-mem", "lots"], "is not a size"),
        (["serve", "--phys-mem", "512K"], "below the 1M minimum"),
        (["serve", "--loss", "0.9"], "--loss must be a probability between 0 and 0.5"),
        (["serve", "--loss", "-0.1"], "--loss must be a probability"),
        (["serve", "--loss", "nan"], "--loss must be a probability"),
        (["serve", "--loss", "some"], "is not a probability"),
        (["serve", "--port", "70000"], "not a port number"),
        (["serve", "--admin", "0.0.0.0:9999"], "not a loopback address"),
        (["serve", "--cert", "/nonexistent.pem", "--key", "/nonexistent.key"], "no such file"),
        (["serve", "--cert", "/etc/hostname"], "go together"),
        (["serve", "--ktls-workers", "-1"], "--ktls-workers"),
        (["serve", "--sndbuf", "1"], "--sndbuf"),
        (["serve", "--no-sendfile-nomap"], "ENXIO"),  # --ktls is the default
        (["serve", "--ktls", "--no-sendfile-nomap"], "ENXIO"),
        (["stat", "--admin", "127.0.0.1:1"], "cannot reach admin"),
        (["stat", "--admin", "127.0.0.1:1", "-w", "1"], "cannot reach admin"),
        (["stat", "-w", "0"], "-w takes 0 < WAIT"),
        (["stat", "-w", "1", "-c", "0"], "-c a count >= 1"),
        (["stat", "-c", "3"], "-c goes with -w"),
        (["top", "--admin", "127.0.0.1:1"], "cannot reach admin"),
        (["top", "-s", "0"], "-s takes"),
        (["serve", "--admin-control", "--admin", "off"], "--admin-control needs the admin"),
        ([], "required"),
    ],
)
def test_bad_command_lines(args: list[str], needle: str) -> None:
    _one_line_error(_nomapd(*args), needle)


def test_root_is_a_file(tmp_path: pathlib.Path) -> None:
    f = tmp_path / "file"
    f.write_text("x")
    _one_line_error(_nomapd("serve", str(f)), "not a directory")


def test_unusable_certificate(tmp_path: pathlib.Path) -> None:
    cert = tmp_path / "c.pem"
    key = tmp_path / "k.pem"
    cert.write_text("not a certificate\n")
    key.write_text("not a key\n")
    _one_line_error(
        _nomapd("serve", "--cert", str(cert), "--key", str(key), "--admin", "off"), str(cert)
    )


def test_port_in_use(tmp_path: pathlib.Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        res = _nomapd(
            "serve", "--port", str(port), "--admin", "off",
            env={"NOMAPD_STATE_DIR": str(tmp_path)},
        )  # fmt: skip
    _one_line_error(res, f"cannot listen on 127.0.0.1:{port}")


@pytest.mark.parametrize(
    ("text", "value"), [("256M", 256 << 20), ("1G", 1 << 30), ("4096", 4096), ("64k", 65536)]
)
def test_parse_size(text: str, value: int) -> None:
    assert parse_size(text, "--x") == value


def test_parse_size_rejects() -> None:
    with pytest.raises(ConfigError):
        parse_size("12Q", "--x")


def test_help_and_console_script() -> None:
    res = _nomapd("serve", "--help")
    assert res.returncode == 0
    for flag in ("--no-nomap", "--no-txcsum", "--no-tso", "--no-ktls", "--http", "--phys-mem"):
        assert flag in res.stdout
    script = pathlib.Path(sys.executable).parent / "nomapd"
    assert script.exists()
    assert subprocess.run([str(script), "--help"], capture_output=True, check=False).returncode == 0


def test_no_secrets_on_disk_and_stat(tmp_path: pathlib.Path, corpus: pathlib.Path) -> None:
    """The default server writes only its certificate, key and lock; `nomapd stat` works."""
    state = tmp_path / "state"
    srv = ServerProcess(corpus, [], state)
    try:
        res = subprocess.run(
            ["curl", "-sk", srv.url("/f1.bin"), "-o", os.devnull], check=False, timeout=30
        )
        assert res.returncode == 0
        out = _nomapd("stat", "--admin", f"127.0.0.1:{srv.admin_port}")
        assert out.returncode == 0, out.stderr
        assert "mbufs in use (current/peak/total)" in out.stdout
        assert "sfbufs in use (current/peak/max)" in out.stdout
        assert "nm0: options=<TXCSUM,TSO4,TSO6,TXCSUM_IPV6,NOMAP>" in out.stdout
        assert "fingerprint" in "".join(srv.stdout)
    finally:
        srv.stop()
    names = sorted(p.name for p in state.iterdir())
    assert names == ["localhost.crt", "localhost.key", "localhost.lock"]
    assert stat.S_IMODE((state / "localhost.key").stat().st_mode) == 0o600
    for p in state.iterdir():
        assert b"TRAFFIC_SECRET" not in p.read_bytes()


def test_keylog_only_when_asked(tmp_path: pathlib.Path, corpus: pathlib.Path) -> None:
    keylog = tmp_path / "keys.log"
    srv = ServerProcess(corpus, ["--keylog", str(keylog)], tmp_path / "state")
    try:
        assert any("WARNING: writing TLS secrets" in line for line in srv.stdout)
        for v in ("--tlsv1.3", "--tls-max"):
            extra = [v] if v == "--tlsv1.3" else ["--tls-max", "1.2"]
            subprocess.run(
                ["curl", "-sk", *extra, srv.url("/f1.bin"), "-o", os.devnull],
                check=True, timeout=30,
            )  # fmt: skip
    finally:
        srv.stop()
    text = keylog.read_text()
    assert "SERVER_TRAFFIC_SECRET_0 " in text and "CLIENT_RANDOM " in text
    assert stat.S_IMODE(keylog.stat().st_mode) == 0o600
