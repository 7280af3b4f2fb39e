"""KeyLog (ktls/keylog.py): NSS key log lines as OpenSSL's keylog callback emits them.

Lines are fed whole, with "\\n" and "\\r\\n" terminators, and with
trailing garbage; every known label is parsed; malformed lines are
parametrized.  The secrets are the RFC 8448 section 3 values so a parsed
secret can go straight into ktls.keys.
"""

from __future__ import annotations

from typing import Any

import pytest

from ktls.keylog import KEYLOG_LABELS, KeyLog, KeyLogLabel
from ktls.keys import tls13_traffic_keys
from ktls.suites import SUITES

# RFC 8448 section 3: ClientHello.random and the server application traffic secret.
CLIENT_RANDOM_HEX = "cb34ecb1e78163ba1c38c6dacb196a6dffa21a8d9912ec18a2ef6283024dece7"
S_AP_HEX = "a11af9f05531f856ad47116b45a950328204b4f44bfb6b3a4b4f1f3fcb631643"
SECRET32_HEX = "00112233445566778899aabbccddeeff" * 2
SECRET48_HEX = "0123456789abcdef" * 6
OTHER_RANDOM_HEX = "ff" * 32


def line(label: str, secret_hex: str, random_hex: str = CLIENT_RANDOM_HEX) -> bytes:
    return f"{label} {random_hex} {secret_hex}".encode()


def test_labels_are_the_openssl_set() -> None:
    assert {
        "CLIENT_RANDOM",
        "CLIENT_HANDSHAKE_TRAFFIC_SECRET",
        "SERVER_HANDSHAKE_TRAFFIC_SECRET",
        "CLIENT_TRAFFIC_SECRET_0",
        "SERVER_TRAFFIC_SECRET_0",
        "EXPORTER_SECRET",
        "EARLY_EXPORTER_SECRET",
        "CLIENT_EARLY_TRAFFIC_SECRET",
    } == KEYLOG_LABELS
    assert all(KeyLogLabel(label) == label for label in KEYLOG_LABELS)


TLS13_LABELS = sorted(KEYLOG_LABELS - {"CLIENT_RANDOM"})


@pytest.mark.parametrize("label", TLS13_LABELS)
@pytest.mark.parametrize("secret_hex", [SECRET32_HEX, SECRET48_HEX], ids=["sha256", "sha384"])
@pytest.mark.parametrize("ending", [b"", b"\n", b"\r\n"], ids=["bare", "lf", "crlf"])
def test_parse_tls13_label(label: str, secret_hex: str, ending: bytes) -> None:
    log = KeyLog()
    assert not log.has(label)
    log.feed(line(label, secret_hex) + ending)
    assert log.has(label)
    assert log.secret(label) == bytes.fromhex(secret_hex)
    assert isinstance(log.secret(label), bytes)
    assert log.client_random == bytes.fromhex(CLIENT_RANDOM_HEX)
    assert log.lines() == [line(label, secret_hex)]
    others = KEYLOG_LABELS - {label}
    assert not any(log.has(other) for other in others)


@pytest.mark.parametrize("ending", [b"", b"\n", b"\r\n"], ids=["bare", "lf", "crlf"])
def test_parse_client_random_master_secret(ending: bytes) -> None:
    log = KeyLog()
    log.feed(line("CLIENT_RANDOM", SECRET48_HEX) + ending)
    assert log.secret(KeyLogLabel.CLIENT_RANDOM) == bytes.fromhex(SECRET48_HEX)
    assert log.client_random == bytes.fromhex(CLIENT_RANDOM_HEX)


def test_upper_case_hex_accepted() -> None:
    log = KeyLog()
    log.feed(line("SERVER_TRAFFIC_SECRET_0", S_AP_HEX.upper(), CLIENT_RANDOM_HEX.upper()))
    assert log.secret("SERVER_TRAFFIC_SECRET_0") == bytes.fromhex(S_AP_HEX)


def test_full_tls13_server_handshake_and_keys() -> None:
    log = KeyLog()
    labels = [
        "SERVER_HANDSHAKE_TRAFFIC_SECRET",
        "CLIENT_HANDSHAKE_TRAFFIC_SECRET",
        "EXPORTER_SECRET",
        "SERVER_TRAFFIC_SECRET_0",
        "CLIENT_TRAFFIC_SECRET_0",
    ]
    for n, label in enumerate(labels):
        secret = S_AP_HEX if label == "SERVER_TRAFFIC_SECRET_0" else f"{n:02x}" * 32
        log.feed(line(label, secret) + b"\n")
    assert [ln.split(b" ")[0].decode() for ln in log.lines()] == labels
    keys = tls13_traffic_keys(
        SUITES["TLS_AES_128_GCM_SHA256"], log.secret(KeyLogLabel.SERVER_TRAFFIC_SECRET_0)
    )
    # RFC 8448 section 3, {server} derive write traffic keys for application data.
    assert keys.key == bytes.fromhex("9f02283b6c9c07efc26bb9f2ac92e356")
    assert keys.iv == bytes.fromhex("cf782b88dd83549aadf1e984")


@pytest.mark.pure_only
def test_feed_bytearray() -> None:
    log = KeyLog()
    log.feed(bytearray(line("EXPORTER_SECRET", SECRET32_HEX)))  # type: ignore[arg-type]
    assert log.has("EXPORTER_SECRET")


def test_same_line_twice_is_harmless() -> None:
    log = KeyLog()
    log.feed(line("CLIENT_TRAFFIC_SECRET_0", SECRET32_HEX))
    log.feed(line("CLIENT_TRAFFIC_SECRET_0", SECRET32_HEX) + b"\n")
    assert log.lines() == [line("CLIENT_TRAFFIC_SECRET_0", SECRET32_HEX)]


def test_conflicting_secret_rejected() -> None:
    log = KeyLog()
    log.feed(line("CLIENT_TRAFFIC_SECRET_0", SECRET32_HEX))
    with pytest.raises(ValueError, match="conflicting CLIENT_TRAFFIC_SECRET_0"):
        log.feed(line("CLIENT_TRAFFIC_SECRET_0", S_AP_HEX))
    assert log.secret("CLIENT_TRAFFIC_SECRET_0") == bytes.fromhex(SECRET32_HEX)


def test_other_connection_rejected() -> None:
    log = KeyLog()
    log.feed(line("SERVER_HANDSHAKE_TRAFFIC_SECRET", SECRET32_HEX))
    with pytest.raises(ValueError, match="different connection"):
        log.feed(line("SERVER_TRAFFIC_SECRET_0", SECRET32_HEX, OTHER_RANDOM_HEX))
    assert not log.has("SERVER_TRAFFIC_SECRET_0")
    assert log.client_random == bytes.fromhex(CLIENT_RANDOM_HEX)


def test_comment_skipped() -> None:
    log = KeyLog()
    log.feed(b"# SSL/TLS secrets log file, generated by OpenSSL\n")
    assert log.lines() == []
    assert log.client_random is None


def test_unknown_wellformed_label_kept_for_keylog_file_only() -> None:
    log = KeyLog()
    ech = line("ECH_SECRET", SECRET32_HEX)
    log.feed(ech + b"\n")
    assert log.lines() == [ech]
    assert log.client_random is None  # not trusted for anything else
    with pytest.raises(ValueError, match="unknown key log label 'ECH_SECRET'"):
        log.has("ECH_SECRET")


BAD_LINES: list[Any] = [
    pytest.param(b"", "empty", id="empty"),
    pytest.param(b"\n", "empty", id="newline-only"),
    pytest.param(b"\r\n", "empty", id="crlf-only"),
    pytest.param(b"CLIENT_RANDOM", "got 1 fields", id="one-field"),
    pytest.param(f"CLIENT_RANDOM {CLIENT_RANDOM_HEX}".encode(), "got 2 fields", id="two-fields"),
    pytest.param(line("CLIENT_RANDOM", SECRET48_HEX) + b" extra", "got 4 fields", id="four"),
    pytest.param(line("CLIENT_RANDOM", SECRET48_HEX) + b" ", "got 4 fields", id="trailing-space"),
    pytest.param(
        line("CLIENT_RANDOM", SECRET48_HEX).replace(b" ", b"  ", 1), "fields", id="double-space"
    ),
    pytest.param(line("CLIENT_RANDOM", SECRET48_HEX).replace(b" ", b"\t"), "fields", id="tabs"),
    pytest.param(line("CLIENT_RANDOM", SECRET48_HEX) + b"\n\n", "secret", id="two-newlines"),
    pytest.param(line("client_random", SECRET48_HEX), "label", id="lower-label"),
    pytest.param(line("CLIENT-RANDOM", SECRET48_HEX), "label", id="dash-label"),
    pytest.param(line("CLIENT_RANDOM", "zz" * 48), "secret is not", id="bad-hex-secret"),
    pytest.param(line("CLIENT_RANDOM", SECRET48_HEX[:-1]), "secret is not", id="odd-secret"),
    pytest.param(
        line("CLIENT_RANDOM", SECRET48_HEX, "g" + CLIENT_RANDOM_HEX[1:]),
        "client random is not",
        id="bad-hex-random",
    ),
    pytest.param(
        line("CLIENT_RANDOM", SECRET48_HEX, CLIENT_RANDOM_HEX[:-2]),
        "client random must be 32 bytes, got 31",
        id="short-random",
    ),
    pytest.param(
        line("CLIENT_RANDOM", SECRET48_HEX, CLIENT_RANDOM_HEX + "00"),
        "client random must be 32 bytes, got 33",
        id="long-random",
    ),
    pytest.param(
        line("CLIENT_RANDOM", SECRET32_HEX), "must be 48 bytes, got 32", id="tls12-short-master"
    ),
    pytest.param(
        line("SERVER_TRAFFIC_SECRET_0", SECRET32_HEX[:-2]),
        "32 or 48 bytes, got 31",
        id="tls13-31",
    ),
    pytest.param(
        line("SERVER_TRAFFIC_SECRET_0", SECRET48_HEX + "00"),
        "32 or 48 bytes, got 49",
        id="tls13-49",
    ),
    pytest.param(line("ECH_SECRET", "xyz"), "secret is not", id="unknown-label-bad-hex"),
    pytest.param("é".encode() + line("CLIENT_RANDOM", SECRET48_HEX), "label", id="non-ascii"),
]


@pytest.mark.parametrize(("bad", "match"), BAD_LINES)
def test_malformed_lines_rejected(bad: bytes, match: str) -> None:
    log = KeyLog()
    with pytest.raises(ValueError, match=match):
        log.feed(bad)
    assert log.lines() == []
    assert log.client_random is None


@pytest.mark.parametrize(("bad", "match"), BAD_LINES)
def test_error_messages_never_quote_the_secret(bad: bytes, match: str) -> None:
    with pytest.raises(ValueError) as info:
        KeyLog().feed(bad)
    message = str(info.value)
    assert SECRET48_HEX[:16] not in message
    assert SECRET32_HEX[:16] not in message


@pytest.mark.pure_only
@pytest.mark.parametrize("bad", ["CLIENT_RANDOM x y", None, 42, memoryview(b"x")])
def test_feed_type_errors(bad: Any) -> None:
    with pytest.raises(TypeError, match="line must be bytes"):
        KeyLog().feed(bad)


def test_secret_absent_is_lookup_error() -> None:
    log = KeyLog()
    with pytest.raises(LookupError, match="no SERVER_TRAFFIC_SECRET_0 in key log"):
        log.secret("SERVER_TRAFFIC_SECRET_0")
    with pytest.raises(LookupError, match="no CLIENT_RANDOM in key log"):
        log.secret(KeyLogLabel.CLIENT_RANDOM)


@pytest.mark.parametrize("bad", ["SERVER_TRAFFIC_SECRET_1", "server_traffic_secret_0", ""])
def test_unknown_label_queries_rejected(bad: str) -> None:
    log = KeyLog()
    with pytest.raises(ValueError, match="unknown key log label"):
        log.secret(bad)
    with pytest.raises(ValueError, match="unknown key log label"):
        log.has(bad)


@pytest.mark.pure_only
@pytest.mark.parametrize("bad", [b"CLIENT_RANDOM", None, 1])
def test_label_type_errors(bad: Any) -> None:
    log = KeyLog()
    with pytest.raises(TypeError, match="label must be str"):
        log.secret(bad)
    with pytest.raises(TypeError, match="label must be str"):
        log.has(bad)


def test_returned_secret_is_a_copy() -> None:
    log = KeyLog()
    log.feed(line("EXPORTER_SECRET", SECRET32_HEX))
    first = log.secret("EXPORTER_SECRET")
    log.wipe()
    assert first == bytes.fromhex(SECRET32_HEX)  # the caller's copy is untouched


def test_wipe_zeroes_and_forgets() -> None:
    log = KeyLog()
    log.feed(line("CLIENT_RANDOM", SECRET48_HEX))
    log.feed(line("ECH_CONFIG", "abcd"))
    # Reach into the stored buffers to see them zeroed (white-box on purpose).
    stored = [log._secrets["CLIENT_RANDOM"], *log._lines, log._client_random]
    assert all(isinstance(buf, bytearray) and any(buf) for buf in stored)
    log.wipe()
    assert all(buf is not None and not any(buf) for buf in stored)
    assert not log.has("CLIENT_RANDOM")
    assert log.client_random is None
    assert log.lines() == []
    with pytest.raises(LookupError):
        log.secret("CLIENT_RANDOM")


def test_reusable_after_wipe() -> None:
    log = KeyLog()
    log.feed(line("SERVER_TRAFFIC_SECRET_0", SECRET32_HEX))
    log.wipe()
    log.feed(line("SERVER_TRAFFIC_SECRET_0", S_AP_HEX, OTHER_RANDOM_HEX))
    assert log.secret("SERVER_TRAFFIC_SECRET_0") == bytes.fromhex(S_AP_HEX)
    assert log.client_random == bytes.fromhex(OTHER_RANDOM_HEX)


def test_repr_shows_labels_not_secrets() -> None:
    log = KeyLog()
    log.feed(line("SERVER_TRAFFIC_SECRET_0", S_AP_HEX))
    text = repr(log)
    assert "SERVER_TRAFFIC_SECRET_0" in text
    assert S_AP_HEX[:8] not in text
    assert CLIENT_RANDOM_HEX[:8] not in text


def test_slots() -> None:
    log = KeyLog()
    with pytest.raises(AttributeError):
        log.extra = 1  # type: ignore[attr-defined]


def test_lines_returns_fresh_list() -> None:
    log = KeyLog()
    log.feed(line("EXPORTER_SECRET", SECRET32_HEX))
    got = log.lines()
    got.clear()
    assert log.lines() == [line("EXPORTER_SECRET", SECRET32_HEX)]


def test_byte_at_a_time_prefixes_are_never_accepted_silently() -> None:
    # h11-style: feeding a prefix of a good line must fail loudly, not store
    # a truncated secret.
    good = line("SERVER_TRAFFIC_SECRET_0", SECRET32_HEX)
    for cut in range(1, len(good)):
        log = KeyLog()
        with pytest.raises(ValueError):
            log.feed(good[:cut])
        assert not log.has("SERVER_TRAFFIC_SECRET_0")
