"""Self-signed certificates for the tests: one builder, written to PEM files.

`make_cert(directory, kind)` is what a test server needs: a certificate for
"localhost" and 127.0.0.1 that verifies as its own trust anchor (CA, key usage,
server-auth EKU, subject and authority key identifiers), so curl, gnutls-cli,
OpenSSL and the stdlib all accept it given the file as their CA. Tests of the
server's own certificate code build odd ones (expired, another name) from
`private_key` and `self_signed` and write them with `write_pem`.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import pathlib
from dataclasses import dataclass
from typing import Final

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

HOSTNAME: Final = "localhost"
LOOPBACK: Final = ipaddress.IPv4Address("127.0.0.1")
PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey


@dataclass(frozen=True, slots=True)
class CertFiles:
    cert: str
    key: str


def private_key(kind: str) -> PrivateKey:
    """kind "ec" (ECDSA P-256) or "rsa" (2048 bits)."""
    if kind == "ec":
        return ec.generate_private_key(ec.SECP256R1())
    if kind == "rsa":
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)
    raise ValueError(f"unknown key kind {kind!r}")


def self_signed(
    key: PrivateKey,
    *,
    common_name: str = HOSTNAME,
    not_before: datetime.timedelta = datetime.timedelta(hours=-1),
    not_after: datetime.timedelta = datetime.timedelta(days=2),
) -> x509.Certificate:
    """A certificate for HOSTNAME and 127.0.0.1 signed by `key` itself, valid from
    now + not_before to now + not_after."""
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    now = datetime.datetime.now(datetime.UTC)
    usage = x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=isinstance(key, rsa.RSAPrivateKey),
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=True,
        crl_sign=False,
        encipher_only=False,
        decipher_only=False,
    )
    san = x509.SubjectAlternativeName([x509.DNSName(HOSTNAME), x509.IPAddress(LOOPBACK)])
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now + not_before)
        .not_valid_after(now + not_after)
        .add_extension(san, critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(usage, critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(ski, critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False
        )
        .sign(key, hashes.SHA256())
    )


def write_pem(
    cert: x509.Certificate,
    key: PrivateKey,
    cert_path: pathlib.Path,
    key_path: pathlib.Path,
    *,
    key_format: serialization.PrivateFormat = serialization.PrivateFormat.PKCS8,
) -> CertFiles:
    """The certificate, and the key in a file created 0600 (it must not exist yet)."""
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    fd = os.open(key_path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(
            key.private_bytes(serialization.Encoding.PEM, key_format, serialization.NoEncryption())
        )
    return CertFiles(str(cert_path), str(key_path))


def make_cert(directory: pathlib.Path, kind: str) -> CertFiles:
    """`{kind}-cert.pem` and `{kind}-key.pem` in `directory`: see the module head."""
    key = private_key(kind)
    return write_pem(
        self_signed(key), key, directory / f"{kind}-cert.pem", directory / f"{kind}-key.pem"
    )
