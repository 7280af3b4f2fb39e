"""--tls-profile against a TLS scanner: sslyze checks the real server with
Mozilla's configuration checker (the profile version sslyze ships, 5.7).

sslyze caps cryptography below 47 and nomapd needs 47 or later (the binding
for SSL_CTX_set1_groups_list), so sslyze lives in its own venv,
.venv/sslyze-venv, made on first use from the `tlsscan` extra of
pyproject.toml (as the bench's peers live in bench/.peers-venv), and
tests/integration/sslyze_scan.py runs there and prints its findings as JSON.

The server's certificate is self-signed (and the generated one valid for 825
days), so the certificate checks fail and only they may: each case names the
exact set of failures it expects.
"""

from __future__ import annotations

import json
import pathlib
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from typing import Any

import pytest

from tests.integration.conftest import ServerProcess
from tests.server.test_cli import _nomapd, _one_line_error
from tests.support.certs import make_cert

REPO = pathlib.Path(__file__).resolve().parents[2]
VENV = REPO / ".venv" / "sslyze-venv"
SCAN = pathlib.Path(__file__).with_name("sslyze_scan.py")

# What the checker reports about the certificate rather than the TLS configuration.
CERTIFICATE_CHECKS = {
    "certificate_path_validation",
    "certificate_curves",
    "certificate_types",
    "certificate_signatures",
    "rsa_key_size",
    "maximum_certificate_lifespan",
}
SELF_SIGNED = {"certificate_path_validation"}  # no trust store has it
GENERATED = SELF_SIGNED | {"maximum_certificate_lifespan"}  # 825 days > 366 (modern: 90)
GROUPS = ["X25519", "secp256r1", "secp384r1"]
TLS13 = ["TLS_AES_128_GCM_SHA256", "TLS_AES_256_GCM_SHA384", "TLS_CHACHA20_POLY1305_SHA256"]


def _tls12(auth: str) -> list[str]:
    return [
        f"TLS_ECDHE_{auth}_WITH_AES_128_GCM_SHA256",
        f"TLS_ECDHE_{auth}_WITH_AES_256_GCM_SHA384",
        f"TLS_ECDHE_{auth}_WITH_CHACHA20_POLY1305_SHA256",
    ]


@pytest.fixture(scope="session")
def sslyze_python() -> pathlib.Path:
    reqs: list[str] = tomllib.loads((REPO / "pyproject.toml").read_text())["project"][
        "optional-dependencies"
    ]["tlsscan"]
    want = "\n".join(reqs) + "\n"
    python = VENV / "bin" / "python"
    marker = VENV / ".tlsscan-requirements"
    if python.exists() and marker.exists() and marker.read_text() == want:
        return python
    for cmd in (
        [sys.executable, "-m", "venv", "--clear", str(VENV)],
        [str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check", *reqs],
    ):
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=600, check=False)
        assert res.returncode == 0, f"{' '.join(cmd)}: {res.stderr[-2000:]}"
    marker.write_text(want)
    return python


def scan(python: pathlib.Path, srv: ServerProcess, profile: str) -> dict[str, Any]:
    res = subprocess.run(
        [str(python), str(SCAN), "127.0.0.1", str(srv.port), profile],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    found: dict[str, Any] = json.loads(res.stdout)
    assert "error" not in found, found
    return found


@pytest.fixture(scope="module")
def rsa_cert(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    files = make_cert(tmp_path_factory.mktemp("rsa"), "rsa")  # 2048 bits, 2 days
    return ["--cert", files.cert, "--key", files.key]


CASES = [
    # (profile checked, server flags, certificate failures, TLS 1.2 suites)
    ("intermediate", [], GENERATED, _tls12("ECDSA")),
    ("intermediate", ["--tls-profile", "intermediate", "--no-ktls"], GENERATED, _tls12("ECDSA")),
    ("intermediate", ["--workers", "2"], GENERATED, _tls12("ECDSA")),
    ("intermediate", ["RSA"], SELF_SIGNED, _tls12("RSA")),
    ("modern", ["--tls-profile", "modern"], GENERATED, None),
    ("modern", ["--tls-profile", "modern", "--no-ktls"], GENERATED, None),
    ("modern", ["--tls-profile", "modern", "--workers", "2"], GENERATED, None),
]


@pytest.fixture(params=CASES, ids=lambda c: f"{c[0]}:{' '.join(c[1]) or 'defaults'}")
def profile_server(
    request: pytest.FixtureRequest,
    corpus: pathlib.Path,
    state_dir: pathlib.Path,
    rsa_cert: list[str],
) -> Iterator[tuple[ServerProcess, str, set[str], list[str] | None]]:
    profile, flags, cert_failures, tls12 = request.param
    args = rsa_cert if flags == ["RSA"] else flags
    srv = ServerProcess(corpus, args, state_dir)
    try:
        yield srv, profile, cert_failures, tls12
    finally:
        srv.stop()
    assert srv.proc.returncode == 0, srv.stderr
    assert "Traceback" not in srv.stderr, srv.stderr


def test_mozilla_profile(
    sslyze_python: pathlib.Path,
    profile_server: tuple[ServerProcess, str, set[str], list[str] | None],
) -> None:
    srv, profile, cert_failures, tls12 = profile_server
    assert f"nomapd: TLS profile {profile} (Mozilla server-side TLS)\n" in srv.stdout
    found = scan(sslyze_python, srv, profile)
    assert found["mozilla_profile_version"] == 5.7
    assert set(found["issues"]) == cert_failures, found["issues"]
    assert cert_failures <= CERTIFICATE_CHECKS
    expected_suites = {"TLSv1.3": TLS13}
    if tls12 is not None:
        expected_suites["TLSv1.2"] = tls12
    assert found["suites"] == expected_suites
    assert found["groups"] == GROUPS
    assert {"X448", "secp521r1"} <= set(found["rejected_groups"])
    assert found["compression"] is False
    srv.assert_no_leaks()


@pytest.mark.parametrize("value", ["old", "Modern", ""])
def test_bad_tls_profile(value: str) -> None:
    _one_line_error(_nomapd("serve", "--tls-profile", value), "--tls-profile")
