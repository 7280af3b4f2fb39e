"""server.certs: the demo server's self-signed certificate."""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import ipaddress
import os
import pathlib
import re
import shutil
import ssl
import stat
import subprocess
from collections.abc import Callable

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from server.certs import (
    VALIDITY_DAYS,
    CertificateError,
    CertificateFiles,
    ensure_self_signed,
    fingerprint,
    load_check,
    state_dir,
)
from tests.privdrop import as_unprivileged
from tests.support.certs import private_key, self_signed, write_pem
from tests.support.clients import client_context

FINGERPRINT = re.compile(r"[0-9A-F]{2}(:[0-9A-F]{2}){31}")


@pytest.fixture
def generated(tmp_path: pathlib.Path) -> CertificateFiles:
    return ensure_self_signed(tmp_path / "state")


def _cert(files: CertificateFiles) -> x509.Certificate:
    return x509.load_pem_x509_certificate(files.cert.read_bytes())


# state_dir


def test_state_dir_explicit(monkeypatch: pytest.MonkeyPatch, tmp_path: pathlib.Path) -> None:
    monkeypatch.setenv("NOMAPD_STATE_DIR", str(tmp_path / "explicit"))
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "xdg"))
    assert state_dir() == tmp_path / "explicit"


def test_state_dir_xdg(monkeypatch: pytest.MonkeyPatch, tmp_path: pathlib.Path) -> None:
    monkeypatch.delenv("NOMAPD_STATE_DIR", raising=False)
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "xdg"))
    assert state_dir() == tmp_path / "xdg" / "nomapd"


@pytest.mark.parametrize("xdg", [None, "", "relative/dir"])
def test_state_dir_home(
    monkeypatch: pytest.MonkeyPatch, tmp_path: pathlib.Path, xdg: str | None
) -> None:
    monkeypatch.setenv("NOMAPD_STATE_DIR", "")
    if xdg is None:
        monkeypatch.delenv("XDG_STATE_HOME", raising=False)
    else:
        monkeypatch.setenv("XDG_STATE_HOME", xdg)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert state_dir() == tmp_path / "home" / ".local" / "state" / "nomapd"


def test_default_directory_is_state_dir(
    monkeypatch: pytest.MonkeyPatch, tmp_path: pathlib.Path
) -> None:
    monkeypatch.setenv("NOMAPD_STATE_DIR", str(tmp_path / "a" / "b"))
    files = ensure_self_signed()
    assert files.cert == tmp_path / "a" / "b" / "localhost.crt"
    assert files.key == tmp_path / "a" / "b" / "localhost.key"


# Generation


def test_generation_files_and_modes(tmp_path: pathlib.Path) -> None:
    directory = tmp_path / "new" / "state"
    old_umask = os.umask(0o077)  # promised modes hold whatever the umask
    try:
        files = ensure_self_signed(directory)
    finally:
        os.umask(old_umask)
    assert files.cert == directory / "localhost.crt"
    assert files.key == directory / "localhost.key"
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    assert stat.S_IMODE(files.key.stat().st_mode) == 0o600
    assert stat.S_IMODE(files.cert.stat().st_mode) == 0o644
    assert FINGERPRINT.fullmatch(files.fingerprint_sha256)
    assert not [p for p in directory.iterdir() if p.name.endswith(".tmp")]
    assert files.key.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----\n")  # PKCS#8
    assert files.cert.read_bytes().startswith(b"-----BEGIN CERTIFICATE-----\n")


def test_existing_directory_mode_is_left_alone(tmp_path: pathlib.Path) -> None:
    tmp_path.chmod(0o755)
    ensure_self_signed(tmp_path)
    assert stat.S_IMODE(tmp_path.stat().st_mode) == 0o755


def test_key_is_0600_from_creation(tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No window in which the key file exists with a wider mode."""
    created: list[tuple[str, int, int]] = []
    real_open = os.open

    def spy_open(path: object, flags: int, mode: int = 0o777, **kw: object) -> int:
        fd = real_open(path, flags, mode, **kw)  # type: ignore[arg-type]
        if flags & os.O_CREAT and ".key." in str(path):
            created.append((str(path), flags, stat.S_IMODE(os.fstat(fd).st_mode)))
        return fd

    monkeypatch.setattr(os, "open", spy_open)
    ensure_self_signed(tmp_path)
    assert len(created) == 1
    path, flags, mode = created[0]
    assert flags & os.O_EXCL and mode & 0o077 == 0
    assert not os.path.exists(path)  # renamed into place


def test_certificate_contents(generated: CertificateFiles) -> None:
    cert = _cert(generated)
    assert cert.subject == cert.issuer
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "localhost"
    assert isinstance(cert.public_key(), ec.EllipticCurvePublicKey)
    assert cert.public_key().curve.name == "secp256r1"  # type: ignore[union-attr]
    assert isinstance(cert.signature_hash_algorithm, hashes.SHA256)
    cert.verify_directly_issued_by(cert)  # self-signed, signature valid

    now = datetime.datetime.now(datetime.UTC)
    before, after = cert.not_valid_before_utc, cert.not_valid_after_utc
    assert now - datetime.timedelta(days=1, minutes=5) < before < now - datetime.timedelta(hours=23)
    assert after - before == datetime.timedelta(days=VALIDITY_DAYS + 1)
    assert VALIDITY_DAYS == 825

    ext = cert.extensions
    bc = ext.get_extension_for_class(x509.BasicConstraints)
    assert bc.critical and bc.value.ca is False
    ku = ext.get_extension_for_class(x509.KeyUsage).value
    assert ku.digital_signature and not ku.key_cert_sign and not ku.key_encipherment
    eku = ext.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.SERVER_AUTH]
    san = ext.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["localhost"]
    assert san.get_values_for_type(x509.IPAddress) == [
        ipaddress.IPv4Address("127.0.0.1"),
        ipaddress.IPv6Address("::1"),
    ]


def _handshake(files: CertificateFiles, server_hostname: str) -> str | None:
    """A full TLS handshake over memory BIOs, client trusting only our cert."""
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(files.cert, files.key)
    client_ctx = client_context(cafile=str(files.cert))  # CERT_REQUIRED, check_hostname
    c_in, c_out, s_in, s_out = (ssl.MemoryBIO() for _ in range(4))
    client = client_ctx.wrap_bio(c_in, c_out, server_hostname=server_hostname)
    server = server_ctx.wrap_bio(s_in, s_out, server_side=True)
    for _ in range(8):
        for end in (client, server):
            with contextlib.suppress(ssl.SSLWantReadError):
                end.do_handshake()
        s_in.write(c_out.read())
        c_in.write(s_out.read())
    return client.version()


@pytest.mark.parametrize("name", ["localhost", "127.0.0.1", "::1"])
def test_python_ssl_accepts_it(generated: CertificateFiles, name: str) -> None:
    assert _handshake(generated, name) in ("TLSv1.2", "TLSv1.3")


@pytest.mark.parametrize("name", ["example.com", "127.0.0.2", "localhost.localdomain"])
def test_python_ssl_checks_the_name(generated: CertificateFiles, name: str) -> None:
    with pytest.raises(ssl.SSLCertVerificationError, match="mismatch"):
        _handshake(generated, name)


def test_hostname_parameter(tmp_path: pathlib.Path) -> None:
    files = ensure_self_signed(tmp_path, hostname="nomapd.test")
    assert files.cert.name == "nomapd.test.crt" and files.key.name == "nomapd.test.key"
    cert = _cert(files)
    assert cert.subject.rfc4514_string() == "CN=nomapd.test"
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["nomapd.test"]
    assert _handshake(files, "nomapd.test") in ("TLSv1.2", "TLSv1.3")


# Reuse and fingerprints


def test_reuse(generated: CertificateFiles) -> None:
    key_bytes = generated.key.read_bytes()
    cert_bytes = generated.cert.read_bytes()
    again = ensure_self_signed(generated.cert.parent)
    assert again == generated
    assert generated.key.read_bytes() == key_bytes
    assert generated.cert.read_bytes() == cert_bytes


def test_fresh_directories_get_fresh_keys(tmp_path: pathlib.Path) -> None:
    a = ensure_self_signed(tmp_path / "a")
    b = ensure_self_signed(tmp_path / "b")
    assert a.fingerprint_sha256 != b.fingerprint_sha256
    assert a.key.read_bytes() != b.key.read_bytes()


@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl CLI not installed")
def test_fingerprint_matches_openssl(generated: CertificateFiles) -> None:
    out = subprocess.run(
        ["openssl", "x509", "-noout", "-fingerprint", "-sha256", "-in", str(generated.cert)],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    label, _, value = out.partition("=")
    assert label.lower() == "sha256 fingerprint"
    assert value == generated.fingerprint_sha256 == fingerprint(generated.cert)


def test_fingerprint_is_sha256_of_der(generated: CertificateFiles) -> None:
    der = _cert(generated).public_bytes(serialization.Encoding.DER)
    digest = hashlib.sha256(der).digest()
    assert fingerprint(generated.cert) == ":".join(f"{b:02X}" for b in digest)


# Errors: never overwrite, always say which file


@pytest.mark.parametrize(
    ("which", "content", "message"),
    [
        ("crt", b"", "is not a PEM certificate"),
        ("crt", b"garbage\n", "is not a PEM certificate"),
        ("crt", b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n", "not a PEM"),
        ("key", b"", "is not a PEM private key"),
        ("key", b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n", "not a PEM"),
    ],
)
def test_corrupt_files_raise_and_survive(
    generated: CertificateFiles, which: str, content: bytes, message: str
) -> None:
    victim = generated.cert if which == "crt" else generated.key
    other = generated.key if which == "crt" else generated.cert
    victim.write_bytes(content)
    other_bytes = other.read_bytes()
    with pytest.raises(CertificateError, match=re.escape(message)) as info:
        ensure_self_signed(generated.cert.parent)
    text = str(info.value)
    assert str(victim) in text and "\n" not in text
    assert victim.read_bytes() == content  # not overwritten
    assert other.read_bytes() == other_bytes


def test_encrypted_key(generated: CertificateFiles) -> None:
    key = serialization.load_pem_private_key(generated.key.read_bytes(), password=None)
    generated.key.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"secret"),
        )
    )
    with pytest.raises(CertificateError, match="is encrypted"):
        load_check(generated.cert, generated.key)


@pytest.mark.parametrize("missing", ["crt", "key"])
def test_half_a_pair_is_not_replaced(generated: CertificateFiles, missing: str) -> None:
    gone, kept = (
        (generated.cert, generated.key) if missing == "crt" else (generated.key, generated.cert)
    )
    gone.unlink()
    kept_bytes = kept.read_bytes()
    with pytest.raises(CertificateError, match="refusing to overwrite") as info:
        ensure_self_signed(generated.cert.parent)
    assert str(kept) in str(info.value) and str(gone) in str(info.value)
    assert not gone.exists() and kept.read_bytes() == kept_bytes


def test_mismatched_key(tmp_path: pathlib.Path) -> None:
    a = ensure_self_signed(tmp_path / "a")
    b = ensure_self_signed(tmp_path / "b")
    with pytest.raises(CertificateError, match="does not match") as info:
        load_check(a.cert, b.key)
    assert str(b.key) in str(info.value) and str(a.cert) in str(info.value)
    shutil.copyfile(b.key, a.key)
    with pytest.raises(CertificateError, match="does not match"):
        ensure_self_signed(tmp_path / "a")


def test_expired_certificate_is_reported(tmp_path: pathlib.Path) -> None:
    key = private_key("ec")
    cert = self_signed(
        key, not_before=datetime.timedelta(days=-10), not_after=datetime.timedelta(days=-1)
    )
    write_pem(cert, key, tmp_path / "localhost.crt", tmp_path / "localhost.key")
    load_check(tmp_path / "localhost.crt", tmp_path / "localhost.key")  # a valid pair
    with pytest.raises(CertificateError, match="expired on"):
        ensure_self_signed(tmp_path)


def test_load_check_ok(generated: CertificateFiles) -> None:
    load_check(generated.cert, generated.key)  # raises on any problem


def test_load_check_accepts_rsa(tmp_path: pathlib.Path) -> None:
    key = private_key("rsa")
    cert = self_signed(
        key,
        common_name="rsa",
        not_before=datetime.timedelta(0),
        not_after=datetime.timedelta(days=1),
    )
    write_pem(
        cert,
        key,
        tmp_path / "c.pem",
        tmp_path / "k.pem",
        key_format=serialization.PrivateFormat.TraditionalOpenSSL,
    )
    load_check(tmp_path / "c.pem", tmp_path / "k.pem")


@pytest.mark.parametrize("which", ["cert", "key"])
def test_load_check_missing(generated: CertificateFiles, which: str) -> None:
    cert, key = generated.cert, generated.key
    missing = generated.cert.parent / "nope.pem"
    args = (missing, key) if which == "cert" else (cert, missing)
    with pytest.raises(CertificateError, match="does not exist") as info:
        load_check(*args)
    assert str(missing) in str(info.value)


def test_load_check_swapped_arguments(generated: CertificateFiles) -> None:
    with pytest.raises(CertificateError, match="is not a PEM certificate"):
        load_check(generated.key, generated.cert)


def test_unreadable_file(world_tmp: str) -> None:
    directory = pathlib.Path(world_tmp) / "state"
    files = ensure_self_signed(directory)
    directory.chmod(0o755)
    files.cert.chmod(0o644)
    files.key.chmod(0)
    (directory / "localhost.lock").chmod(0o666)  # the lock is not what this tests

    def check() -> None:
        with pytest.raises(CertificateError, match="cannot read key file"):
            ensure_self_signed(directory)

    as_unprivileged(check)


def test_directory_read_error(generated: CertificateFiles) -> None:
    with pytest.raises(CertificateError, match="cannot read certificate file"):
        load_check(generated.cert.parent, generated.key)  # EISDIR


def test_fingerprint_errors(tmp_path: pathlib.Path) -> None:
    with pytest.raises(CertificateError, match="does not exist"):
        fingerprint(tmp_path / "none.crt")
    (tmp_path / "bad.crt").write_bytes(b"nope")
    with pytest.raises(CertificateError, match="is not a PEM certificate"):
        fingerprint(tmp_path / "bad.crt")


def test_directory_path_is_a_file(tmp_path: pathlib.Path) -> None:
    (tmp_path / "file").write_bytes(b"")
    with pytest.raises(CertificateError, match="exists and is not a directory"):
        ensure_self_signed(tmp_path / "file")


@pytest.mark.parametrize(
    ("func", "args", "kwargs", "exc", "message"),
    [
        (ensure_self_signed, ("/tmp/x",), {}, TypeError, "directory must be pathlib.Path"),
        (ensure_self_signed, (), {"hostname": None}, TypeError, "hostname must be str"),
        (ensure_self_signed, (), {"hostname": ""}, ValueError, "DNS host name"),
        (ensure_self_signed, (), {"hostname": "../x"}, ValueError, "DNS host name"),
        (ensure_self_signed, (), {"hostname": "a b"}, ValueError, "DNS host name"),
        (ensure_self_signed, (), {"hostname": "-x.test"}, ValueError, "DNS host name"),
        (ensure_self_signed, (), {"hostname": "x" * 64}, ValueError, "DNS host name"),
        (fingerprint, ("cert.pem",), {}, TypeError, "cert_pem_path must be pathlib.Path"),
        (load_check, ("c", pathlib.Path("k")), {}, TypeError, "cert must be pathlib.Path"),
        (load_check, (pathlib.Path("c"), "k"), {}, TypeError, "key must be pathlib.Path"),
    ],
)
def test_misuse(
    func: Callable[..., object],
    args: tuple[object, ...],
    kwargs: dict[str, object],
    exc: type[Exception],
    message: str,
) -> None:
    with pytest.raises(exc, match=re.escape(message)):
        func(*args, **kwargs)


def test_certificate_error_is_plain_exception() -> None:
    assert issubclass(CertificateError, Exception)
    assert not issubclass(CertificateError, OSError | ValueError)
