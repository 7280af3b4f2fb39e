"""The self-signed certificate that lets nomapd serve HTTPS with no setup.

Theory of operation. The certificate lets `nomapd serve` speak HTTPS on a
fresh machine with no setup, in the manner of mkcert or Caddy's internal
issuer, minus the local CA: one ECDSA P-256 key and one self-signed leaf for
"localhost", 127.0.0.1 and ::1, kept in the state directory
($NOMAPD_STATE_DIR, else $XDG_STATE_HOME/nomapd, else ~/.local/state/nomapd)
and reused on every later start, so a browser exception or a `curl --cacert`
keeps working.

Files already present are never overwritten: if they are unreadable,
corrupt, mismatched, expired, or only one of the pair exists,
`ensure_self_signed()` raises `CertificateError` naming the file and leaves
the decision (delete it, or pass --cert/--key) to the user.

Generation is crash- and race-safe.  An flock on "<host>.lock" serialises
concurrent starts; the key is written into a fresh O_CREAT|O_EXCL file
created with mode 0600 (it is never readable by others, not even for an
instant), fsynced, and renamed into place with os.replace(); then the
certificate the same way with mode 0644.  A crash can leave a stray temp
file but never a half-written key or certificate.

The certificate: CN and SAN DNS name = hostname, SAN IP 127.0.0.1 and ::1,
valid from one day ago (clock skew) for 825 days (the longest lifetime
Apple platforms accept for a TLS server certificate), CA:FALSE (critical),
keyUsage digitalSignature (critical), extendedKeyUsage serverAuth,
subjectKeyIdentifier, signed with ECDSA-SHA256.  Fingerprints are the
SHA-256 of the DER certificate in the "AB:CD:..." form that
`openssl x509 -noout -fingerprint -sha256` prints.
"""

from __future__ import annotations

import datetime
import fcntl
import ipaddress
import os
import pathlib
import re
import secrets
from dataclasses import dataclass
from typing import Final

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from userland.devdir import state_dir  # shared with userland (the devices' runtime root)

__all__ = [
    "CertificateError",
    "CertificateFiles",
    "ensure_self_signed",
    "fingerprint",
    "load_check",
    "state_dir",
]

VALIDITY_DAYS: Final = 825
BACKDATE: Final = datetime.timedelta(days=1)

# RFC 1123 host name: dot-separated LDH labels of 1..63 characters.
_HOSTNAME: Final = re.compile(
    r"(?=.{1,253}\Z)[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
    r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*"
)


class CertificateError(Exception):
    """A certificate or key file is missing, unreadable, malformed or mismatched."""


@dataclass(frozen=True, slots=True)
class CertificateFiles:
    cert: pathlib.Path
    key: pathlib.Path
    fingerprint_sha256: str


def _q(path: pathlib.Path) -> str:
    return repr(str(path))  # quoted, and escapes a newline in a name: one-line messages


def _read(path: pathlib.Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise CertificateError(f"{what} file {_q(path)} does not exist") from None
    except OSError as exc:
        raise CertificateError(f"cannot read {what} file {_q(path)}: {exc.strerror}") from None


def _load_cert(path: pathlib.Path) -> x509.Certificate:
    data = _read(path, "certificate")
    try:
        return x509.load_pem_x509_certificate(data)
    except ValueError:
        raise CertificateError(f"certificate file {_q(path)} is not a PEM certificate") from None


def _load_key(path: pathlib.Path) -> PrivateKeyTypes:
    data = _read(path, "key")
    try:
        return serialization.load_pem_private_key(data, password=None)
    except TypeError:
        raise CertificateError(
            f"key file {_q(path)} is encrypted; nomapd needs it unencrypted"
        ) from None
    except (ValueError, UnsupportedAlgorithm):
        raise CertificateError(f"key file {_q(path)} is not a PEM private key") from None


def _spki(key: PrivateKeyTypes | x509.Certificate) -> bytes:
    """DER SubjectPublicKeyInfo of a certificate's key or of a private key's public half."""
    public = key.public_key()
    return public.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _fingerprint_of(cert: x509.Certificate) -> str:
    return cert.fingerprint(hashes.SHA256()).hex(":").upper()


def fingerprint(cert_pem_path: pathlib.Path) -> str:
    """SHA-256 fingerprint of the (first) certificate in a PEM file, "AB:CD:..." form.

    Raises CertificateError if the file is missing, unreadable or not PEM."""
    if not isinstance(cert_pem_path, pathlib.Path):
        raise TypeError(
            f"fingerprint: cert_pem_path must be pathlib.Path, not {type(cert_pem_path).__name__}"
        )
    return _fingerprint_of(_load_cert(cert_pem_path))


def _check_pair(cert_path: pathlib.Path, key_path: pathlib.Path) -> x509.Certificate:
    cert = _load_cert(cert_path)
    key = _load_key(key_path)
    if _spki(cert) != _spki(key):
        raise CertificateError(
            f"key file {_q(key_path)} does not match certificate file {_q(cert_path)}"
        )
    return cert


def load_check(cert: pathlib.Path, key: pathlib.Path) -> None:
    """Check that `cert` holds a PEM certificate and `key` the matching unencrypted
    PEM private key; raise CertificateError (one line, naming the file) if not."""
    for name, value in (("cert", cert), ("key", key)):
        if not isinstance(value, pathlib.Path):
            raise TypeError(f"load_check: {name} must be pathlib.Path, not {type(value).__name__}")
    _check_pair(cert, key)


def _generate(hostname: str) -> tuple[bytes, bytes]:
    """A fresh (key PEM, certificate PEM) pair, as described at the top."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hostname)])
    now = datetime.datetime.now(datetime.UTC)
    san = x509.SubjectAlternativeName(
        [
            x509.DNSName(hostname),
            x509.IPAddress(ipaddress.IPv4Address("127.0.0.1")),
            x509.IPAddress(ipaddress.IPv6Address("::1")),
        ]
    )
    key_usage = x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=False,
        crl_sign=False,
        encipher_only=False,
        decipher_only=False,
    )
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(now + datetime.timedelta(days=VALIDITY_DAYS))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(key_usage, critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(san, critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return key_pem, cert.public_bytes(serialization.Encoding.PEM)


def _write_atomically(path: pathlib.Path, data: bytes, mode: int) -> None:
    """Write `data` to `path` via a new temp file that has `mode` from creation on."""
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")
    fd = os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY | os.O_CLOEXEC, mode)
    try:
        try:
            os.fchmod(fd, mode)  # the umask may have cleared bits we promise (0644)
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _make_directory(directory: pathlib.Path) -> None:
    if directory.is_dir():
        return
    try:
        directory.parent.mkdir(parents=True, exist_ok=True)
        directory.mkdir(mode=0o700)
        os.chmod(directory, 0o700)  # exactly 0700, whatever the umask
    except FileExistsError:
        if not directory.is_dir():
            raise CertificateError(f"{_q(directory)} exists and is not a directory") from None
    except OSError as exc:
        raise CertificateError(f"cannot create directory {_q(directory)}: {exc.strerror}") from None


def ensure_self_signed(
    directory: pathlib.Path | None = None, *, hostname: str = "localhost"
) -> CertificateFiles:
    """Return the self-signed certificate for `hostname` in `directory`
    (default: state_dir()), creating directory, key and certificate if absent.

    Files are "<hostname>.crt" (PEM, 0644) and "<hostname>.key" (PKCS#8 PEM,
    unencrypted, 0600).  Existing files are reused if they load, match and have
    not expired; otherwise CertificateError, and nothing is overwritten."""
    if directory is None:
        directory = state_dir()
    elif not isinstance(directory, pathlib.Path):
        raise TypeError(
            f"ensure_self_signed: directory must be pathlib.Path or None, "
            f"not {type(directory).__name__}"
        )
    if not isinstance(hostname, str):
        raise TypeError(f"ensure_self_signed: hostname must be str, not {type(hostname).__name__}")
    if not _HOSTNAME.fullmatch(hostname):
        raise ValueError(f"ensure_self_signed: hostname must be a DNS host name, got {hostname!r}")

    _make_directory(directory)
    cert_path = directory / f"{hostname}.crt"
    key_path = directory / f"{hostname}.key"
    lock_path = directory / f"{hostname}.lock"
    try:
        lock_fd = os.open(lock_path, os.O_CREAT | os.O_RDWR | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        raise CertificateError(f"cannot create lock file {_q(lock_path)}: {exc.strerror}") from None
    try:
        fcntl.flock(lock_fd, fcntl.LOCK_EX)
        have_cert, have_key = cert_path.exists(), key_path.exists()
        if have_cert and have_key:
            cert = _check_pair(cert_path, key_path)
            if cert.not_valid_after_utc <= datetime.datetime.now(datetime.UTC):
                raise CertificateError(
                    f"certificate file {_q(cert_path)} expired on "
                    f"{cert.not_valid_after_utc:%Y-%m-%d}; delete it and {_q(key_path)} "
                    f"to get a new one"
                )
            return CertificateFiles(cert_path, key_path, _fingerprint_of(cert))
        if have_cert or have_key:
            present, absent = (cert_path, key_path) if have_cert else (key_path, cert_path)
            raise CertificateError(
                f"found {_q(present)} but not {_q(absent)}; refusing to overwrite, "
                f"delete it to get a new pair"
            )
        key_pem, cert_pem = _generate(hostname)
        try:
            _write_atomically(key_path, key_pem, 0o600)
            try:
                _write_atomically(cert_path, cert_pem, 0o644)
            except BaseException:
                key_path.unlink(missing_ok=True)  # ours, made a moment ago under the lock
                raise
        except OSError as exc:
            raise CertificateError(
                f"cannot write certificate files in {_q(directory)}: {exc.strerror}"
            ) from None
        return CertificateFiles(
            cert_path, key_path, _fingerprint_of(x509.load_pem_x509_certificate(cert_pem))
        )
    finally:
        os.close(lock_fd)  # releases the flock
