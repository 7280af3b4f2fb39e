"""make_server_context's TLS profiles: which versions and key-exchange groups it takes.

Real handshakes over memory BIOs against a stdlib client (a different OpenSSL
build from pyOpenSSL's) restricted to one group with `set_ecdh_curve` (which,
on OpenSSL 3, sets the client's supported_groups to that one group) and to one
protocol version. Mozilla's profiles (5.7) allow X25519, prime256v1 and
secp384r1; OpenSSL's defaults would also take X448, secp521r1 and FFDHE.
"""

from __future__ import annotations

import ssl

import pytest

from ktls.handshake import TLS_PROFILES, make_server_context
from ktls.suites import TlsVersion
from tests.ktls.harness import TlsPair
from tests.ktls.test_handshake import refused
from tests.support.certs import CertFiles

ALLOWED = {"X25519": "x25519", "prime256v1": "secp256r1", "secp384r1": "secp384r1"}
REFUSED = ["X448", "secp521r1", "ffdhe2048", "ffdhe3072"]
ALERT_HANDSHAKE_FAILURE = bytes((2, 40))  # fatal, handshake_failure (RFC 8446 6)
ALERT_PROTOCOL_VERSION = bytes((2, 70))  # fatal, protocol_version
VERSIONS = {"TLSv1.2": ssl.TLSVersion.TLSv1_2, "TLSv1.3": ssl.TLSVersion.TLSv1_3}
WIRE_VERSIONS = {"TLSv1.2": TlsVersion.TLS12, "TLSv1.3": TlsVersion.TLS13}


def _client(files: CertFiles, version: str, group: str | None = None) -> ssl.SSLContext:
    cctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    cctx.load_verify_locations(files.cert)
    cctx.minimum_version = cctx.maximum_version = VERSIONS[version]
    if group is not None:
        cctx.set_ecdh_curve(group)
    return cctx


def _pair(files: CertFiles, profile: str, client: ssl.SSLContext) -> TlsPair:
    return TlsPair(make_server_context(files.cert, files.key, profile=profile), client)


def _refused(files: CertFiles, profile: str, client: ssl.SSLContext) -> tuple[bytes, TlsPair]:
    """The server's alert for a handshake it must refuse (test_handshake.refused)."""
    _, alert, pair = refused(make_server_context(files.cert, files.key, profile=profile), client)
    return alert, pair


def test_profiles() -> None:
    assert set(TLS_PROFILES) == {"intermediate", "modern"}


# TLS 1.2 with the RSA certificate: with ECDSA, the client's one group would
# also be the only curve it accepts for the certificate's P-256 signature.
# (modern has no TLS 1.2: test_modern_refuses_tls12)
@pytest.mark.parametrize(
    ("profile", "version"),
    [("intermediate", "TLSv1.2"), ("intermediate", "TLSv1.3"), ("modern", "TLSv1.3")],
)
@pytest.mark.parametrize("group", list(ALLOWED))
def test_allowed_groups(
    certs: dict[str, CertFiles], profile: str, version: str, group: str
) -> None:
    pair = _pair(certs["rsa"], profile, _client(certs["rsa"], version, group))
    pair.handshake()
    assert pair.hs.conn.get_group_name() == ALLOWED[group]
    assert pair.client.version() == version
    assert pair.hs.established().version is WIRE_VERSIONS[version]


@pytest.mark.parametrize("profile", ["intermediate", "modern"])
@pytest.mark.parametrize("group", REFUSED)
def test_refused_groups_tls13(certs: dict[str, CertFiles], profile: str, group: str) -> None:
    alert, _ = _refused(certs["ec"], profile, _client(certs["ec"], "TLSv1.3", group))
    assert alert == ALERT_HANDSHAKE_FAILURE


@pytest.mark.parametrize("group", REFUSED)
def test_refused_groups_tls12(certs: dict[str, CertFiles], group: str) -> None:
    """No ECDHE over these groups, and no DHE suite at all: nothing is left."""
    alert, _ = _refused(certs["rsa"], "intermediate", _client(certs["rsa"], "TLSv1.2", group))
    assert alert == ALERT_HANDSHAKE_FAILURE


@pytest.mark.parametrize("kind", ["ec", "rsa"])
def test_modern_refuses_tls12(certs: dict[str, CertFiles], kind: str) -> None:
    alert, pair = _refused(certs[kind], "modern", _client(certs[kind], "TLSv1.2"))
    assert alert == ALERT_PROTOCOL_VERSION
    with pytest.raises(ssl.SSLError, match="PROTOCOL_VERSION"):
        pair.client.do_handshake()


@pytest.mark.parametrize("kind", ["ec", "rsa"])
def test_default_client_gets_x25519(certs: dict[str, CertFiles], kind: str) -> None:
    """The default profile is intermediate; a client offering everything gets
    TLS 1.3 over X25519, whatever order OpenSSL would prefer."""
    cctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    cctx.load_verify_locations(certs[kind].cert)
    pair = TlsPair(make_server_context(certs[kind].cert, certs[kind].key), cctx)
    pair.handshake()
    assert pair.client.version() == "TLSv1.3"
    assert pair.hs.conn.get_group_name() == "x25519"


def test_client_order_of_suites(certs: dict[str, CertFiles]) -> None:
    """Mozilla's profiles leave the choice of suite to the client."""
    for first in ("ECDHE-RSA-CHACHA20-POLY1305", "ECDHE-RSA-AES128-GCM-SHA256"):
        cctx = _client(certs["rsa"], "TLSv1.2")
        cctx.set_ciphers(f"{first}:ECDHE-RSA-AES256-GCM-SHA384")
        pair = _pair(certs["rsa"], "intermediate", cctx)
        pair.handshake()
        assert pair.hs.conn.get_cipher_name() == first
