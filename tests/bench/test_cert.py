"""bench.cert: the run's self-signed certificate, usable by an OpenSSL server."""

from __future__ import annotations

import pathlib
import ssl

from cryptography import x509

from bench.cert import make_cert
from bench.loopback import HOST, SNI, free_port


def test_the_certificate_names_the_loopback_and_loads(tmp_path: pathlib.Path) -> None:
    cert, key = make_cert(tmp_path)
    assert key.stat().st_mode & 0o777 == 0o600
    san = x509.load_pem_x509_certificate(cert.read_bytes()).extensions.get_extension_for_class(
        x509.SubjectAlternativeName
    )
    assert san.value.get_values_for_type(x509.DNSName) == [SNI]
    assert [str(a) for a in san.value.get_values_for_type(x509.IPAddress)] == [HOST]
    ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_cert_chain(cert, key)


def test_free_port_is_a_port() -> None:
    assert 0 < free_port() < 65536
