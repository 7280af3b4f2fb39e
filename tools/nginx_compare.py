"""Compare nomapd's HTTP behaviour with nginx's static module, request by request.

Method
------
The tool builds one document root in a temporary directory and serves it twice
on 127.0.0.1, over TLS with the same generated self-signed certificate:

* by nginx (the distribution's binary, ``apt-get install nginx``), started as a
  child process with ``nginx -c CONF -p PREFIX -e ERRLOG -g 'daemon off;'``
  and the configuration in ``NGINX_CONF`` below, written out for the run
  (1 worker, ``sendfile on``, TLS 1.2/1.3, HTTP/2 off, ``gzip_static on``,
  ``autoindex on`` for /listing/ only, ``etag on``, ``if_modified_since exact``,
  ``add_header Cache-Control "max-age=3600"``, ``keepalive_timeout 75s``,
  ``client_header_timeout 10s``, ``large_client_header_buffers 4 16k``,
  ``max_ranges`` unset, MIME types from the package's /etc/nginx/mime.types);
* by nomapd (``.venv/bin/nomapd serve ROOT --port P --admin 127.0.0.1:Q
  --cert C --key K``), plus ``--autoindex`` and ``--cache-control
  max-age=3600`` when ``nomapd serve --help`` lists them, plus whatever
  ``--nomapd-args`` adds.

Every case in ``CASES`` is a raw HTTP/1.1 request (or a few, for keep-alive and
pipelining) written byte for byte on a fresh TLS connection made with Python's
``ssl`` (SNI and Host "localhost", ALPN "http/1.1", no certificate check), sent
to both servers at the same time. Request templates may name per-server
validators ({etag_text}, {etag_bin}, ...): they are read first from each
server with a plain GET, because nginx's ETag ("mtime-size" in hex) and
nomapd's (inode, size, mtime in ns) differ by design. All files of the root
get one fixed mtime, so Last-Modified is the same on both and dates in the
requests are reproducible.

Responses are parsed by their framing (RFC 9112 section 6.3: HEAD, 1xx, 204 and
304 have no body; chunked; Content-Length; else until close). For each response
the tool records the status, the headers Content-Type, Content-Length,
Content-Range, Content-Encoding, Accept-Ranges, ETag (strong, weak or absent),
Last-Modified ("=mtime" when it is the file's mtime), Cache-Control, Vary,
Location (the server's port replaced by PORT), Allow, Connection, a body
fingerprint (length and SHA-256 prefix, "=NAME" when it is a whole file of the
root; for multipart/byteranges the part count and each part's Content-Range
and the hash of the parts' bytes, since boundaries differ) and what the
connection did afterwards (closed, still open, reset).

Comparison rules for the table (the JSON keeps everything): when the statuses
differ only the status and the connection state are shown, the rest follows
from the status; when both are >= 300 (except 304) Content-Type,
Content-Length and the body are error pages and are not compared; the Date and
Server headers are never compared; a multipart boundary is shown as "B" and a
multipart Content-Length as "=body" when it frames the body it came with.
A difference found in many cases (``--systematic``, 8) is listed once under a
label (S1, S2, ...) that the rows refer to. The markdown also counts the
Python tracebacks in nomapd's log, by their last line. The exit status is 0
whatever differs: this is a report, not a test. It is 2 when a server cannot
be started.

Usage::

    python tools/nginx_compare.py [--nomapd-args="..."] [--out report.md] [--json report.json]

(`--nomapd-args` takes one string; write it with "=" because it starts with "--".)
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import datetime
import email.utils
import gzip
import hashlib
import ipaddress
import json
import os
import pathlib
import random
import re
import shlex
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

REPO = pathlib.Path(__file__).resolve().parents[1]
HOST = "127.0.0.1"
SNI = "localhost"
STEP_TIMEOUT = 10.0  # seconds: server start-up, stop, one request/response exchange
PROBE = 0.3  # seconds to wait, after the last expected response, for the server to close
FIXED_MTIME = 1_704_164_645  # 2024-01-02 03:04:05 UTC, the mtime of every file of the root
DAY = 86_400
BIN_SIZE = 1 << 20

# nginx's configuration, complete. {placeholders} are filled in by `nginx_conf()`.
NGINX_CONF = """\
{user_line}worker_processes 1;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log info;

events {{
    worker_connections 256;
}}

http {{
    include {mime_types};
    default_type application/octet-stream;
    access_log {prefix}/access.log;
    client_body_temp_path {prefix}/client_body;
    proxy_temp_path {prefix}/proxy;
    fastcgi_temp_path {prefix}/fastcgi;
    uwsgi_temp_path {prefix}/uwsgi;
    scgi_temp_path {prefix}/scgi;

    sendfile on;
    keepalive_timeout 75s;
    client_header_timeout 10s;
    large_client_header_buffers 4 16k;
    etag on;
    if_modified_since exact;
    gzip_static on;   # ngx_http_gzip_static_module; there is no brotli_static in stock nginx
    gzip_vary on;     # without it gzip_static sends no "Vary: Accept-Encoding"
    # max_ranges unset: any number of ranges

    server {{
        listen {host}:{port} ssl;   # no "http2" parameter: HTTP/2 off
        {http2_line}server_name localhost;
        ssl_certificate {cert};
        ssl_certificate_key {key};
        ssl_protocols TLSv1.2 TLSv1.3;
        root {root};
        autoindex off;
        add_header Cache-Control "max-age=3600";

        location /listing/ {{
            autoindex on;
        }}
    }}
}}
"""

# nomapd flags to add when its `serve --help` lists them, so that it is configured like nginx.
NOMAPD_MATCHING_FLAGS: tuple[tuple[str, ...], ...] = (
    ("--autoindex",),
    ("--cache-control", "max-age=3600"),
)

NOTES = (
    "nginx: HTTP/2 is off because the listen directive has no `http2` parameter (the `http2` "
    "directive exists only from nginx 1.25.1 and is added only on such versions).",
    "nginx: `gzip_vary on` is added to the brief's configuration; without it gzip_static "
    "sends no `Vary: Accept-Encoding`.",
    "nginx has no brotli_static in its stock build (ngx_brotli is a third-party module), so "
    "text.txt.br is never chosen by nginx.",
    "nginx: `autoindex on` only for /listing/; nomapd's `--autoindex` is server-wide. The root "
    "has no other directory without index.html, so the cases see the same configuration.",
    "nginx follows symlinks out of the root (`disable_symlinks off` is its default) and serves "
    "dotfiles (it has no dotfile rule); nomapd refuses both unless --follow-symlinks / "
    "--serve-dotfiles.",
    "nginx adds `charset` to Content-Type only with a `charset` directive, which this "
    "configuration leaves unset; nomapd adds `charset=utf-8` to text types.",
    "nginx's `add_header` (without `always`) applies to 200, 201, 204, 206, 301, 302, 303, "
    "304, 307 and 308 only.",
)


# --------------------------------------------------------------------------- docroot


def brotli_stored(data: bytes) -> bytes:
    """`data` as a valid brotli stream made of uncompressed meta-blocks (RFC 7932 section 9.2).

    No brotli library is needed: the sidecar only has to be a correct stream.
    """
    out = bytearray()
    acc = 0
    nbits = 0

    def put(value: int, n: int) -> None:
        nonlocal acc, nbits
        acc |= value << nbits
        nbits += n
        while nbits >= 8:
            out.append(acc & 0xFF)
            acc >>= 8
            nbits -= 8

    def pad() -> None:
        nonlocal acc, nbits
        if nbits:
            out.append(acc & 0xFF)
            acc = 0
            nbits = 0

    put(0, 1)  # WBITS = 16
    for pos in range(0, len(data), 1 << 16):
        chunk = data[pos : pos + (1 << 16)]
        put(0, 1)  # ISLAST = 0
        put(0, 2)  # MNIBBLES = 4
        put(len(chunk) - 1, 16)  # MLEN - 1
        put(1, 1)  # ISUNCOMPRESSED
        pad()
        out += chunk
    put(1, 1)  # ISLAST
    put(1, 1)  # ISLASTEMPTY
    pad()
    return bytes(out)


TEXT = "".join(
    f"line {i:03d}: the quick brown fox jumps over the lazy dog — ünïcödé {i * 7919 % 1000:03d}\n"
    for i in range(64)
).encode()
UTF8_NAME = "spaced name ü.txt"


def build_docroot(base: pathlib.Path) -> tuple[pathlib.Path, dict[str, bytes]]:
    """Write the document root under `base`; return it and {url path: content} of its files."""
    root = base / "root"
    outside = base / "outside"
    files: dict[str, bytes] = {
        "index.html": b"<!doctype html>\n<title>root</title>\n<p>nomapd/nginx comparison</p>\n",
        "bin.dat": random.Random(5).randbytes(BIN_SIZE),
        "text.txt": TEXT,
        "text.txt.gz": gzip.compress(TEXT, mtime=0),
        "text.txt.br": brotli_stored(TEXT),
        "dir/index.html": b"<!doctype html>\n<title>dir</title>\n<p>dir index</p>\n",
        "listing/a.txt": b"a\n",
        "listing/b <&> é.txt": b"b\n",
        "listing/sub/c.txt": b"c\n",
        ".hidden": b"dotfile\n",
        ".dotdir/file.txt": b"in a dot-directory\n",
        UTF8_NAME: b"spaces and utf-8 in the name\n",
        "empty.txt": b"",
        "app.mjs": b"export const x = 1;\n",
        "mod.wasm": b"\x00asm\x01\x00\x00\x00",
    }
    for rel, content in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(content)
    outside.mkdir()
    (outside / "secret.txt").write_bytes(b"outside the root\n")
    os.symlink("../outside/secret.txt", root / "escape.txt")
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            os.utime(
                pathlib.Path(dirpath) / name, (FIXED_MTIME, FIXED_MTIME), follow_symlinks=False
            )
    os.utime(root, (FIXED_MTIME, FIXED_MTIME))
    os.utime(outside / "secret.txt", (FIXED_MTIME, FIXED_MTIME))
    files["escape.txt (target)"] = b"outside the root\n"
    return root, files


def make_cert(directory: pathlib.Path) -> tuple[pathlib.Path, pathlib.Path]:
    """A self-signed P-256 certificate for localhost and 127.0.0.1; return (cert, key) paths."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, SNI)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName(SNI), x509.IPAddress(ipaddress.IPv4Address(HOST))]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path = directory / "cert.pem"
    key_path = directory / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    key_path.chmod(0o600)
    return cert_path, key_path


# --------------------------------------------------------------------------- cases


@dataclass(frozen=True)
class Case:
    """One comparison: requests written on one connection.

    mode: "single" (one request), "pipeline" (all requests in one write, then read
    all responses), "sequential" (request, response, request, response on one
    connection), "plain" (no TLS: plain HTTP to the TLS port).
    """

    name: str
    group: str
    requests: tuple[bytes, ...]
    expect: str = ""
    mode: str = "single"

    def summary(self) -> str:
        lines = [r.split(b"\r\n", 1)[0] for r in self.requests]
        text = " ; ".join(ln.decode("utf-8", "backslashreplace") for ln in lines)
        extra = [
            h.decode("utf-8", "backslashreplace")
            for r in self.requests[:1]
            for h in r.split(b"\r\n\r\n", 1)[0].split(b"\r\n")[1:]
            if h.lower() != b"host: localhost"
        ]
        if extra:
            text += " [" + ", ".join(extra) + "]"
        return text


def req(
    method: str,
    target: str | bytes,
    *headers: str,
    version: str = "HTTP/1.1",
    host: bool = True,
    body: bytes = b"",
) -> bytes:
    t = target.encode() if isinstance(target, str) else target
    lines = [method.encode() + b" " + t + b" " + version.encode()]
    if host:
        lines.append(b"Host: localhost")
    lines += [h.encode() for h in headers]
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


def _cases() -> list[Case]:
    c: list[Case] = []

    def add(
        name: str, group: str, *requests: bytes, expect: str = "", mode: str = "single"
    ) -> None:
        c.append(Case(name, group, tuple(requests), expect, mode))

    g = "resources"
    add("get-root", g, req("GET", "/"), expect="200 index.html")
    add("head-root", g, req("HEAD", "/"), expect="200, no body, same headers as GET")
    add("get-index-html", g, req("GET", "/index.html"), expect="200")
    add("get-bin", g, req("GET", "/bin.dat"), expect="200, 1 MiB, Accept-Ranges: bytes")
    add("head-bin", g, req("HEAD", "/bin.dat"), expect="200, Content-Length 1048576, no body")
    add("get-text", g, req("GET", "/text.txt"), expect="200 text/plain, no sidecar chosen")
    add("get-empty", g, req("GET", "/empty.txt"), expect="200, Content-Length 0")
    add("get-utf8-name", g, req("GET", "/spaced%20name%20%C3%BC.txt"), expect="200")
    add(
        "get-utf8-raw",
        g,
        req("GET", "/spaced%20name%20ü.txt".encode()),
        expect="400: not a valid target",
    )
    add("get-missing", g, req("GET", "/nope.html"), expect="404")
    add("get-dir-slash", g, req("GET", "/dir/"), expect="200 dir/index.html")
    add("head-dir-slash", g, req("HEAD", "/dir/"), expect="200, no body")
    add("get-dir-noslash", g, req("GET", "/dir"), expect="301 Location …/dir/")
    add("get-dir-noslash-query", g, req("GET", "/dir?a=1&b=2"), expect="301 …/dir/?a=1&b=2")
    add("get-listing", g, req("GET", "/listing/"), expect="200 listing (autoindex)")
    add("get-listing-noslash", g, req("GET", "/listing"), expect="301 …/listing/")
    add("get-file-slash", g, req("GET", "/text.txt/"), expect="404")
    add("get-file-query", g, req("GET", "/text.txt?v=1"), expect="200, query ignored")
    add("get-mjs", g, req("GET", "/app.mjs"), expect="200 text/javascript (RFC 9239)")
    add("get-wasm", g, req("GET", "/mod.wasm"), expect="200 application/wasm")

    g = "ranges"
    add("range-first-last", g, req("GET", "/bin.dat", "Range: bytes=0-99"), expect="206 0-99")
    add("range-open", g, req("GET", "/bin.dat", "Range: bytes=1048000-"), expect="206 to end")
    add("range-suffix", g, req("GET", "/bin.dat", "Range: bytes=-100"), expect="206 last 100")
    add(
        "range-beyond-end",
        g,
        req("GET", "/bin.dat", "Range: bytes=1048500-2000000"),
        expect="206 1048500-1048575",
    )
    add(
        "range-start-beyond",
        g,
        req("GET", "/bin.dat", "Range: bytes=2000000-"),
        expect="416 bytes */1048576",
    )
    add(
        "range-start-gt-end",
        g,
        req("GET", "/bin.dat", "Range: bytes=500-100"),
        expect="invalid spec: 200 (ignore) or 416, RFC 9110 14.2 allows both",
    )
    add("range-multi", g, req("GET", "/bin.dat", "Range: bytes=0-0,-1"), expect="206 2 parts")
    add(
        "range-multi-ows",
        g,
        req("GET", "/bin.dat", "Range: bytes=0-0, 5-5"),
        expect="206 2 parts (OWS after comma)",
    )
    add(
        "range-overlap",
        g,
        req("GET", "/bin.dat", "Range: bytes=0-99,50-149"),
        expect="206 (coalesced or 2 parts)",
    )
    add(
        "range-overlap-whole-twice",
        g,
        req("GET", "/bin.dat", "Range: bytes=0-1048575,0-1048575"),
        expect="not 2 MiB of parts (nginx: 200 when the ranges sum past the length)",
    )
    many = ",".join(f"{2 * i}-{2 * i}" for i in range(200))
    add(
        "range-many",
        g,
        req("GET", "/bin.dat", f"Range: bytes={many}"),
        expect="200 or 206 or 416 per --max-ranges (nginx: no limit)",
    )
    add(
        "range-malformed", g, req("GET", "/bin.dat", "Range: bytes=abc"), expect="200 or 416 (14.2)"
    )
    add(
        "range-unit",
        g,
        req("GET", "/bin.dat", "Range: items=0-1"),
        expect="200: unknown unit ignored",
    )
    add("range-suffix-zero", g, req("GET", "/bin.dat", "Range: bytes=-0"), expect="416")
    add(
        "range-empty-file", g, req("GET", "/empty.txt", "Range: bytes=0-0"), expect="416 */0 or 200"
    )
    add(
        "range-empty-suffix",
        g,
        req("GET", "/empty.txt", "Range: bytes=-5"),
        expect="416 */0 or 200 (a server may ignore Range)",
    )
    add("range-head", g, req("HEAD", "/bin.dat", "Range: bytes=0-99"), expect="206, no body")
    add(
        "range-on-dir-index",
        g,
        req("GET", "/dir/", "Range: bytes=0-9"),
        expect="206 on the index file",
    )

    g = "if-range"
    r = "Range: bytes=0-99"
    add("if-range-etag", g, req("GET", "/bin.dat", r, "If-Range: {etag_bin}"), expect="206")
    add(
        "if-range-stale-etag",
        g,
        req("GET", "/bin.dat", r, 'If-Range: "stale"'),
        expect="200 whole file",
    )
    add(
        "if-range-weak-etag",
        g,
        req("GET", "/bin.dat", r, "If-Range: W/{etag_bin}"),
        expect="200 (weak never matches If-Range)",
    )
    add("if-range-date", g, req("GET", "/bin.dat", r, "If-Range: {lastmod}"), expect="206")
    add(
        "if-range-other-date",
        g,
        req("GET", "/bin.dat", r, "If-Range: {later}"),
        expect="200 (exact match only)",
    )

    g = "conditionals"
    t = "/text.txt"
    add("inm-match", g, req("GET", t, "If-None-Match: {etag_text}"), expect="304")
    add("inm-list", g, req("GET", t, 'If-None-Match: "x", {etag_text}'), expect="304")
    add("inm-star", g, req("GET", t, "If-None-Match: *"), expect="304")
    add("inm-weak", g, req("GET", t, "If-None-Match: W/{etag_text}"), expect="304 (weak cmp)")
    add("inm-stale", g, req("GET", t, 'If-None-Match: "stale"'), expect="200")
    add("head-inm-match", g, req("HEAD", t, "If-None-Match: {etag_text}"), expect="304")
    add("ims-exact", g, req("GET", t, "If-Modified-Since: {lastmod}"), expect="304")
    add(
        "ims-later",
        g,
        req("GET", t, "If-Modified-Since: {later}"),
        expect="RFC 304 (nginx `if_modified_since exact`: 200)",
    )
    add("ims-earlier", g, req("GET", t, "If-Modified-Since: {earlier}"), expect="200")
    add("ims-garbage", g, req("GET", t, "If-Modified-Since: yesterday"), expect="200 (ignored)")
    add(
        "inm-match-ims-earlier",
        g,
        req("GET", t, "If-None-Match: {etag_text}", "If-Modified-Since: {earlier}"),
        expect="304: If-None-Match overrides IMS (RFC 9110 13.2.2)",
    )
    add(
        "inm-stale-ims-exact",
        g,
        req("GET", t, 'If-None-Match: "stale"', "If-Modified-Since: {lastmod}"),
        expect="200: If-None-Match overrides IMS",
    )
    add("if-match-stale", g, req("GET", t, 'If-Match: "stale"'), expect="412")
    add("if-match-current", g, req("GET", t, "If-Match: {etag_text}"), expect="200")
    add("if-match-star", g, req("GET", t, "If-Match: *"), expect="200")
    add(
        "if-match-weak",
        g,
        req("GET", t, "If-Match: W/{etag_text}"),
        expect="412 (strong comparison)",
    )
    add("ius-earlier", g, req("GET", t, "If-Unmodified-Since: {earlier}"), expect="412")
    add("ius-exact", g, req("GET", t, "If-Unmodified-Since: {lastmod}"), expect="200")
    add(
        "if-match-stale-range",
        g,
        req("GET", "/bin.dat", 'If-Match: "stale"', "Range: bytes=0-9"),
        expect="412 before Range",
    )

    g = "encoding"
    add("ae-gzip", g, req("GET", t, "Accept-Encoding: gzip"), expect="200 gzip, Vary")
    add("ae-gzip-q0", g, req("GET", t, "Accept-Encoding: gzip;q=0"), expect="identity")
    add(
        "ae-deflate-gzip-q05",
        g,
        req("GET", t, "Accept-Encoding: deflate, gzip;q=0.5"),
        expect="gzip",
    )
    add("ae-br", g, req("GET", t, "Accept-Encoding: br"), expect="br (nginx: no brotli_static)")
    add(
        "ae-br-gzip",
        g,
        req("GET", t, "Accept-Encoding: gzip;q=0.5, br"),
        expect="br preferred by q (nginx: gzip)",
    )
    add("ae-star", g, req("GET", t, "Accept-Encoding: *"), expect="any sidecar or identity")
    add("ae-identity", g, req("GET", t, "Accept-Encoding: identity"), expect="identity, Vary")
    add(
        "ae-gzip-range",
        g,
        req("GET", t, "Accept-Encoding: gzip", "Range: bytes=0-9"),
        expect="206 of the .gz bytes",
    )
    add("ae-gzip-head", g, req("HEAD", t, "Accept-Encoding: gzip"), expect="200 gzip, no body")
    add(
        "ae-gzip-no-sidecar",
        g,
        req("GET", "/index.html", "Accept-Encoding: gzip"),
        expect="200 identity",
    )
    add("ae-gzip-direct", g, req("GET", "/text.txt.gz"), expect="200 the .gz file itself")

    g = "methods"
    add("post", g, req("POST", "/index.html", "Content-Length: 0"), expect="405 + Allow")
    add("put", g, req("PUT", "/index.html", "Content-Length: 3", body=b"abc"), expect="405")
    add("delete", g, req("DELETE", "/index.html"), expect="405 + Allow")
    add("options", g, req("OPTIONS", "/index.html"), expect="204/200 + Allow (or 405)")
    add("options-star", g, req("OPTIONS", "*"), expect="204/200 + Allow, or 400")
    add("unknown-method", g, req("FOO", "/index.html"), expect="405 (or 501)")
    add("trace", g, req("TRACE", "/index.html"), expect="405")
    add("lowercase-method", g, req("get", "/index.html"), expect="400 or 405/501")

    g = "protocol"
    add(
        "http10-no-host",
        g,
        req("GET", "/index.html", version="HTTP/1.0", host=False),
        expect="200, close",
    )
    add("http10-host", g, req("GET", "/index.html", version="HTTP/1.0"), expect="200, close")
    add(
        "http10-keepalive",
        g,
        req("GET", "/index.html", "Connection: keep-alive", version="HTTP/1.0"),
        req("GET", "/text.txt", "Connection: keep-alive", version="HTTP/1.0"),
        expect="200, 200 on one connection",
        mode="sequential",
    )
    add("http11-no-host", g, req("GET", "/index.html", host=False), expect="400")
    add("http11-two-hosts", g, req("GET", "/index.html", "Host: other"), expect="400")
    add("http11-close", g, req("GET", "/index.html", "Connection: close"), expect="200, close")
    add("http20-version", g, req("GET", "/index.html", version="HTTP/2.0"), expect="505")
    add(
        "absolute-form",
        g,
        req("GET", "https://localhost/index.html"),
        expect="200 (RFC 9112 3.2.2)",
    )
    add(
        "huge-header-line",
        g,
        req("GET", "/index.html", "X-Big: " + "a" * 20_000),
        expect="431 (nginx: 400 Request Header Or Cookie Too Large)",
    )
    add(
        "huge-head-many-lines",
        g,
        req("GET", "/index.html", *(f"X-H{i}: {'b' * 1000}" for i in range(20))),
        expect="431 (head > 16 KiB; nginx: 4×16k buffers → 200)",
    )
    add(
        "long-target",
        g,
        req("GET", "/" + "a" * 20_000),
        expect="414",
    )
    add(
        "keepalive-two",
        g,
        req("GET", "/index.html"),
        req("GET", "/text.txt"),
        expect="200, 200, stays open",
        mode="sequential",
    )
    add(
        "pipeline-three",
        g,
        req("GET", "/index.html"),
        req("HEAD", "/text.txt"),
        req("GET", "/bin.dat", "Range: bytes=0-9"),
        expect="200, 200, 206 in order",
        mode="pipeline",
    )
    add(
        "get-body-then-get",
        g,
        req("GET", "/index.html", "Content-Length: 5", body=b"hello"),
        req("GET", "/text.txt"),
        expect="body drained: 200, 200 (or refused and closed)",
        mode="pipeline",
    )
    add(
        "get-chunked-then-get",
        g,
        req("GET", "/index.html", "Transfer-Encoding: chunked", body=b"5\r\nhello\r\n0\r\n\r\n"),
        req("GET", "/text.txt"),
        expect="200, 200 (or refused and closed)",
        mode="pipeline",
    )
    add(
        "cl-and-te",
        g,
        req(
            "GET",
            "/index.html",
            "Content-Length: 3",
            "Transfer-Encoding: chunked",
            body=b"0\r\n\r\n",
        ),
        expect="400, or TE wins; close either way (RFC 9112 6.3)",
    )
    add(
        "plain-http-on-tls-port",
        g,
        req("GET", "/index.html"),
        expect="nginx: 400 'plain HTTP request was sent to HTTPS port'",
        mode="plain",
    )

    g = "paths"
    add("dotdot", g, req("GET", "/../../etc/passwd"), expect="400 or 404, never the file")
    add("pct-dotdot", g, req("GET", "/%2e%2e/%2e%2e/etc/passwd"), expect="400 or 404")
    add("pct-slash-escape", g, req("GET", "/dir/..%2f..%2fetc%2fpasswd"), expect="400 or 404")
    add(
        "pct-slash-inside",
        g,
        req("GET", "/dir%2findex.html"),
        expect="nginx decodes %2F: 200; 404 also safe",
    )
    add("backslash", g, req("GET", b"/dir\\..\\..\\etc\\passwd"), expect="400 or 404")
    add("pct-backslash", g, req("GET", "/dir%5c..%5c..%5cetc%5cpasswd"), expect="400 or 404")
    add("nul", g, req("GET", "/index.html%00.txt"), expect="400 or 404")
    add("overlong-utf8", g, req("GET", "/%c0%ae%c0%ae/etc/passwd"), expect="400 or 404")
    add("dotdot-inside", g, req("GET", "/dir/../index.html"), expect="200 /index.html")
    add("dot-segment", g, req("GET", "/./index.html"), expect="200")
    add("double-slash", g, req("GET", "//index.html"), expect="200 (nginx merge_slashes)")
    add("dotfile", g, req("GET", "/.hidden"), expect="404 (nginx serves it)")
    add("dotdir", g, req("GET", "/.dotdir/file.txt"), expect="404 (nginx serves it)")
    add(
        "symlink-out",
        g,
        req("GET", "/escape.txt"),
        expect="404/403 (nginx: disable_symlinks off → 200)",
    )
    return c


CASES = _cases()


# --------------------------------------------------------------------------- HTTP client


@dataclass
class Response:
    status: int
    reason: str
    version: str
    headers: list[tuple[str, str]]
    body: bytes
    framing: str

    def header(self, name: str) -> str | None:
        values = [v for k, v in self.headers if k.lower() == name.lower()]
        return ", ".join(values) if values else None


class Incomplete(Exception):
    """More bytes are needed to parse the response."""


class NotHttp(Exception):
    """The bytes are not an HTTP/1.x response."""


def _no_body(method: bytes, status: int) -> bool:
    return method == b"HEAD" or status in (204, 304) or 100 <= status < 200


def _dechunk(buf: bytes, pos: int) -> tuple[bytes, int]:
    body = bytearray()
    while True:
        eol = buf.find(b"\r\n", pos)
        if eol < 0:
            raise Incomplete
        size_text = buf[pos:eol].split(b";", 1)[0].strip()
        try:
            size = int(size_text, 16)
        except ValueError as e:
            raise NotHttp(f"bad chunk size {size_text!r}") from e
        pos = eol + 2
        if size == 0:
            end = buf.find(b"\r\n\r\n", pos - 2)
            if end < 0:
                raise Incomplete
            return bytes(body), end + 4
        if len(buf) < pos + size + 2:
            raise Incomplete
        body += buf[pos : pos + size]
        pos += size + 2


def parse_response(buf: bytes, method: bytes, eof: bool) -> tuple[Response, int]:
    """Parse one response at the start of `buf`; return it and the bytes it used.

    Raises Incomplete when more bytes are needed, NotHttp when they are not HTTP.
    """
    if not buf:
        raise Incomplete
    n = min(5, len(buf))
    if buf[:n] != b"HTTP/"[:n]:
        raise NotHttp("not an HTTP response")
    end = buf.find(b"\r\n\r\n")
    if end < 0:
        if eof:
            raise NotHttp("truncated head")
        raise Incomplete
    lines = buf[:end].decode("latin-1").split("\r\n")
    m = re.fullmatch(r"(HTTP/\d\.\d) (\d{3})(?: (.*))?", lines[0])
    if not m:
        raise NotHttp(f"bad status line {lines[0]!r}")
    headers: list[tuple[str, str]] = []
    for line in lines[1:]:
        k, _, v = line.partition(":")
        headers.append((k.strip(), v.strip()))
    resp = Response(int(m.group(2)), m.group(3) or "", m.group(1), headers, b"", "none")
    pos = end + 4
    if _no_body(method, resp.status):
        return resp, pos
    te = resp.header("Transfer-Encoding")
    cl = resp.header("Content-Length")
    if te and "chunked" in te.lower():
        resp.framing = "chunked"
        resp.body, used = _dechunk(buf, pos)
        return resp, used
    if cl is not None:
        resp.framing = "length"
        n = int(cl.split(",")[0])
        if len(buf) < pos + n:
            if eof:
                resp.body = buf[pos:]
                resp.framing = f"length (truncated at {len(buf) - pos})"
                return resp, len(buf)
            raise Incomplete
        resp.body = buf[pos : pos + n]
        return resp, pos + n
    if not eof:
        raise Incomplete
    resp.framing = "close"
    resp.body = buf[pos:]
    return resp, len(buf)


@dataclass
class Exchange:
    """What one server did with one case."""

    responses: list[Response] = field(default_factory=list)
    connection: str = ""  # closed / open / reset / tls-failed / ...
    error: str = ""
    raw_tail: str = ""  # bytes that were not a parseable response, escaped
    tls: str = ""


def _client_context() -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.set_alpn_protocols(["http/1.1"])
    return ctx


def _method(request: bytes) -> bytes:
    return request.split(b" ", 1)[0]


class _Conn:
    def __init__(self, sock: socket.socket, deadline: float) -> None:
        self.sock = sock
        self.deadline = deadline
        self.buf = b""
        self.eof = False

    def recv_some(self, limit: float | None = None) -> bool:
        """Read once; False on timeout. Sets eof on close."""
        left = self.deadline - time.monotonic()
        if limit is not None:
            left = min(left, limit)
        if left <= 0:
            return False
        self.sock.settimeout(left)
        try:
            data = self.sock.recv(65536)
        except TimeoutError:
            return False
        except ssl.SSLWantReadError:
            return False
        if not data:
            self.eof = True
            return True
        self.buf += data
        return True

    def read_response(self, method: bytes, ex: Exchange) -> bool:
        while True:
            try:
                resp, used = parse_response(self.buf, method, self.eof)
            except Incomplete:
                if self.eof:
                    return False
                if not self.recv_some():
                    ex.error = ex.error or "timeout waiting for a response"
                    return False
                continue
            except NotHttp as e:
                ex.error = ex.error or str(e)
                while not self.eof and self.recv_some(PROBE):
                    pass
                return False
            ex.responses.append(resp)
            self.buf = self.buf[used:]
            return True


def _escape(data: bytes, limit: int = 120) -> str:
    text = data[:limit].decode("latin-1").encode("unicode_escape").decode()
    return text + (f"…(+{len(data) - limit} bytes)" if len(data) > limit else "")


def run_case(
    case: Case, port: int, subst: dict[bytes, bytes], timeout: float = STEP_TIMEOUT
) -> Exchange:
    ex = Exchange()
    requests = []
    for r in case.requests:
        for k, v in subst.items():
            r = r.replace(k, v)
        requests.append(r)
    deadline = time.monotonic() + timeout
    try:
        raw = socket.create_connection((HOST, port), timeout=timeout)
    except OSError as e:
        ex.error = f"connect: {e}"
        ex.connection = "refused"
        return ex
    sock: socket.socket = raw
    try:
        if case.mode != "plain":
            try:
                tls = _client_context().wrap_socket(raw, server_hostname=SNI)
            except (ssl.SSLError, OSError) as e:
                ex.error = f"TLS handshake: {e}"
                ex.connection = "tls-failed"
                return ex
            sock = tls
            ex.tls = f"{tls.version()} alpn={tls.selected_alpn_protocol()}"
        conn = _Conn(sock, deadline)
        try:
            if case.mode == "sequential":
                for r in requests:
                    sock.sendall(r)
                    if not conn.read_response(_method(r), ex):
                        break
            else:
                sock.sendall(b"".join(requests))
                for r in requests:
                    if not conn.read_response(_method(r), ex):
                        break
            # Has the server closed the connection after its last response?
            if not conn.eof and not conn.buf:
                conn.recv_some(PROBE)
            if conn.buf:
                ex.raw_tail = _escape(conn.buf)
            ex.connection = "closed" if conn.eof else "open"
        except ConnectionResetError:
            ex.connection = "reset"
            if conn.buf:
                ex.raw_tail = _escape(conn.buf)
        except ssl.SSLError as e:
            ex.connection = f"tls-error ({e.reason})"
            if conn.buf:
                ex.raw_tail = _escape(conn.buf)
        except (BrokenPipeError, OSError) as e:
            ex.connection = f"error ({type(e).__name__})"
        return ex
    finally:
        with contextlib.suppress(OSError):
            sock.close()


# --------------------------------------------------------------------------- fields


FIELD_HEADERS = (
    "Content-Type",
    "Content-Length",
    "Content-Range",
    "Content-Encoding",
    "Accept-Ranges",
    "ETag",
    "Last-Modified",
    "Cache-Control",
    "Vary",
    "Location",
    "Allow",
    "Connection",
)
ERROR_PAGE_FIELDS = ("Content-Type", "Content-Length", "body")


def _multipart(resp: Response) -> str | None:
    ctype = resp.header("Content-Type") or ""
    if not ctype.lower().startswith("multipart/byteranges"):
        return None
    m = re.search(r'boundary="?([^";]+)"?', ctype)
    if not m:
        return "multipart without boundary"
    delim = b"--" + m.group(1).encode()
    body = resp.body
    ranges: list[str] = []
    data = hashlib.sha256()
    pos = body.find(delim)
    while pos >= 0:
        pos += len(delim)
        if body[pos : pos + 2] == b"--":
            break
        head_end = body.find(b"\r\n\r\n", pos)
        if head_end < 0:
            return f"multipart, bad part after {len(ranges)}"
        part_headers = body[pos:head_end].decode("latin-1").split("\r\n")
        cr = next(
            (h.split(":", 1)[1].strip() for h in part_headers if h.lower().startswith("content-r")),
            "?",
        )
        ranges.append(cr.removeprefix("bytes "))
        nxt = body.find(b"\r\n" + delim, head_end + 4)
        if nxt < 0:
            return f"multipart, unterminated part {len(ranges)}"
        data.update(body[head_end + 4 : nxt])
        pos = body.find(delim, nxt)
    shown = ranges if len(ranges) <= 4 else [*ranges[:3], "…", ranges[-1]]
    return f"multipart {len(ranges)} parts [{', '.join(shown)}] sha:{data.hexdigest()[:10]}"


def body_fingerprint(resp: Response, files: dict[str, bytes]) -> str:
    mp = _multipart(resp)
    if mp is not None:
        return mp
    n = len(resp.body)
    if n == 0:
        return "0B"
    text = f"{n}B sha:{hashlib.sha256(resp.body).hexdigest()[:10]}"
    for name, content in files.items():
        if content == resp.body:
            return f"{text} (={name})"
    return text


def fields_of(resp: Response, files: dict[str, bytes], port: int, lastmod: str) -> dict[str, str]:
    out: dict[str, str] = {"status": str(resp.status)}
    for name in FIELD_HEADERS:
        v = resp.header(name)
        if v is None:
            out[name] = "-"
        elif name == "ETag":
            out[name] = "weak" if v.startswith("W/") else "strong"
        elif name == "Last-Modified":
            out[name] = "=mtime" if v == lastmod else v
        elif name == "Location":
            out[name] = v.replace(f":{port}/", ":PORT/")
        elif name == "Content-Type" and v.lower().startswith("multipart/"):
            # Boundaries are random (nomapd) or a counter (nginx): not a difference.
            out[name] = re.sub(r"boundary=\S+", "boundary=B", v)
        elif name == "Content-Length" and out["Content-Type"].startswith("multipart/"):
            # Depends on the boundary's length; what matters is that it frames the body.
            out[name] = "=body" if v == str(len(resp.body)) else f"{v} (body {len(resp.body)})"
        else:
            out[name] = v
    out["body"] = body_fingerprint(resp, files)
    return out


def page_text(resp: Response) -> str:
    """The start of an error page's text, tags removed (not compared; for the JSON)."""
    if resp.status < 300 or not resp.body:
        return ""
    text = re.sub(r"<[^>]*>", " ", resp.body[:400].decode("utf-8", "replace"))
    return " ".join(text.split())[:100]


@dataclass
class Row:
    case: Case
    nginx: Exchange
    nomapd: Exchange
    nginx_fields: list[dict[str, str]]
    nomapd_fields: list[dict[str, str]]
    diffs: list[str]


def _status_line(ex: Exchange) -> str:
    if not ex.responses:
        return f"({ex.connection or 'no response'})"
    return ",".join(str(r.status) for r in ex.responses)


def compare(
    case: Case,
    ng: Exchange,
    nm: Exchange,
    files: dict[str, bytes],
    ports: tuple[int, int],
    lastmod: str,
) -> Row:
    nf = [fields_of(r, files, ports[0], lastmod) for r in ng.responses]
    mf = [fields_of(r, files, ports[1], lastmod) for r in nm.responses]
    diffs: list[str] = []
    if len(nf) != len(mf):
        diffs.append(f"responses: {len(nf)} vs {len(mf)}")
    for i, (a, b) in enumerate(zip(nf, mf, strict=False)):
        prefix = f"[{i + 1}] " if len(case.requests) > 1 else ""
        if a["status"] != b["status"]:
            diffs.append(f"{prefix}status: {a['status']} vs {b['status']}")
            continue
        status = int(a["status"])
        error_page = status >= 300 and status != 304
        for key in a:
            if key == "status" or (error_page and key in ERROR_PAGE_FIELDS):
                continue
            if a[key] != b[key]:
                diffs.append(f"{prefix}{key}: {a[key]} vs {b[key]}")
    if ng.connection != nm.connection:
        diffs.append(f"connection after: {ng.connection} vs {nm.connection}")
    if (ng.error or nm.error) and ng.error != nm.error:
        diffs.append(f"client saw: {ng.error or '-'} vs {nm.error or '-'}")
    if ng.raw_tail != nm.raw_tail:
        diffs.append(f"unparsed bytes: {ng.raw_tail or '-'} vs {nm.raw_tail or '-'}")
    return Row(case, ng, nm, nf, mf, diffs)


# --------------------------------------------------------------------------- servers


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


class ServerError(Exception):
    pass


@dataclass
class Child:
    name: str
    argv: list[str]
    port: int
    log: pathlib.Path
    proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float) -> None:
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        last = ""
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise ServerError(
                    f"{self.name} exited with {self.proc.returncode}:\n{self.log_tail()}"
                )
            try:
                with (
                    socket.create_connection((HOST, self.port), timeout=1.0) as s,
                    _client_context().wrap_socket(s, server_hostname=SNI),
                ):
                    return
            except (OSError, ssl.SSLError) as e:
                last = str(e)
            time.sleep(0.1)
        self.stop(timeout)
        raise ServerError(f"{self.name} not ready on port {self.port} ({last}):\n{self.log_tail()}")

    def stop(self, timeout: float) -> None:
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return
        # The child leads its own process group (start_new_session): nginx's worker goes too.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout)

    def log_tail(self, lines: int = 20) -> str:
        try:
            text = self.log.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])


def nginx_version(nginx: str, timeout: float) -> tuple[str, tuple[int, ...], str]:
    """(version line, version tuple, configure arguments) of the nginx binary."""
    out = subprocess.run(
        [nginx, "-V"], capture_output=True, text=True, timeout=timeout, check=False
    ).stderr
    m = re.search(r"nginx/(\d+)\.(\d+)\.(\d+)", out)
    if not m:
        raise ServerError(f"cannot read the version of {nginx}: {out!r}")
    version = tuple(int(x) for x in m.groups())
    line = out.splitlines()[0]
    return line, version, out


def nginx_conf(
    prefix: pathlib.Path,
    root: pathlib.Path,
    port: int,
    cert: pathlib.Path,
    key: pathlib.Path,
    version: tuple[int, ...],
    mime_types: pathlib.Path,
) -> str:
    return NGINX_CONF.format(
        # The master runs as root here; its workers would otherwise be "nobody", who cannot
        # read the temporary root (0700). Ignored (with a warning) when not root.
        user_line="user root;\n" if os.geteuid() == 0 else "",
        http2_line="http2 off;\n        " if version >= (1, 25, 1) else "",
        prefix=prefix,
        root=root,
        host=HOST,
        port=port,
        cert=cert,
        key=key,
        mime_types=mime_types,
    )


def nomapd_flags(cmd: list[str], timeout: float) -> tuple[list[str], list[str]]:
    """The matching flags nomapd knows (from `serve --help`) and those it does not."""
    try:
        help_text = subprocess.run(
            [*cmd, "serve", "--help"], capture_output=True, text=True, timeout=timeout, check=False
        ).stdout
    except (OSError, subprocess.TimeoutExpired) as e:
        raise ServerError(f"cannot run {shlex.join(cmd)} serve --help: {e}") from e
    known = set(re.findall(r"--[a-z][a-z0-9-]*", help_text))
    used: list[str] = []
    missing: list[str] = []
    for flag in NOMAPD_MATCHING_FLAGS:
        if flag[0] in known:
            used += flag
        else:
            missing.append(flag[0])
    return used, missing


@contextlib.contextmanager
def running(child: Child, timeout: float) -> Iterator[Child]:
    try:
        child.start(timeout)
        yield child
    finally:
        child.stop(timeout)


# --------------------------------------------------------------------------- report


def _validators(port: int) -> dict[str, str]:
    """ETags of text.txt and bin.dat as this server sends them."""
    out: dict[str, str] = {}
    for key, path in (("etag_text", "/text.txt"), ("etag_bin", "/bin.dat")):
        ex = run_case(Case("validators", "-", (req("HEAD", path),)), port, {})
        etag = ex.responses[0].header("ETag") if ex.responses else None
        out[key] = etag or '"server-sent-no-etag"'
    return out


def md_escape(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ").replace("<", "&lt;").replace(">", "&gt;")


def _unprefixed(diff: str) -> str:
    return re.sub(r"^\[\d+\] ", "", diff)


def systematic_diffs(rows: Sequence[Row], threshold: int) -> list[tuple[str, int]]:
    """Differences found in at least `threshold` cases, most frequent first."""
    if threshold <= 0:
        return []
    counts: dict[str, int] = {}
    for r in rows:
        for d in {_unprefixed(d) for d in r.diffs}:
            counts[d] = counts.get(d, 0) + 1
    found = [(d, n) for d, n in counts.items() if n >= threshold]
    return sorted(found, key=lambda x: (-x[1], x[0]))


def exception_summary(log: str) -> list[tuple[str, int]]:
    """The last line of each Python traceback in a server log, counted."""
    counts: dict[str, int] = {}
    lines = log.splitlines()
    for i, line in enumerate(lines):
        if "Traceback (most recent call last)" not in line:
            continue
        last = ""
        for nxt in lines[i + 1 :]:
            text = nxt.strip(" |+-")
            if "Traceback (most recent call last)" in nxt:
                break
            if re.match(r"^[A-Za-z_][\w.]*(Error|Exception|Exit|Interrupt)\b", text):
                last = text
        if last and not last.startswith("ExceptionGroup"):
            counts[last] = counts.get(last, 0) + 1
    return sorted(counts.items(), key=lambda x: -x[1])


def render_markdown(
    rows: Sequence[Row], meta: dict[str, Any], systematic: Sequence[tuple[str, int]]
) -> str:
    same = sum(1 for r in rows if not r.diffs)
    labels = {d: f"S{i}" for i, (d, _) in enumerate(systematic, 1)}
    out = [
        "# nomapd vs nginx static module",
        "",
        f"- date: {meta['date']}",
        f"- nginx: {meta['nginx_version']} (config: NGINX_CONF in tools/nginx_compare.py)",
        f"- nomapd: `{meta['nomapd_command']}` (git {meta['git']})",
        f"- nomapd flags matching nginx's config: {meta['nomapd_matching_flags'] or 'none'}; "
        f"not (yet) known to nomapd: {meta['nomapd_missing_flags'] or 'none'}",
        f"- TLS seen by the client: nginx {meta['tls']['nginx']}, nomapd {meta['tls']['nomapd']}",
        f"- command: `{meta['command']}`",
        f"- {len(rows)} cases: {same} identical, {len(rows) - same} with differences",
    ]
    if meta["nomapd_exceptions"]:
        out.append("- nomapd logged tracebacks during the run (full log in the JSON report):")
        out += [f"  - {n}× `{md_escape(e)}`" for e, n in meta["nomapd_exceptions"]]
    out += [
        "",
        "Differences read `field: nginx vs nomapd` (`[2]` is the second response on the",
        "connection). When the statuses differ only the status and the connection state are",
        "shown; error pages (status >= 300 except 304) are not compared. `connection after` is",
        f"whether the server closed the connection within {PROBE}s of its last response.",
        "Every response's full headers are in the JSON report.",
        "",
    ]
    if systematic:
        out += [
            "## Systematic differences",
            "",
            "Found in many cases, so listed once here and referred to by label in the table.",
            "",
            "| label | difference (nginx vs nomapd) | cases |",
            "|-------|------------------------------|-------|",
        ]
        out += [f"| {labels[d]} | {md_escape(d)} | {n} |" for d, n in systematic]
        out.append("")
    out += [
        "## Cases",
        "",
        "| # | case | request | expected | nginx | nomapd | differences |",
        "|---|------|---------|----------|-------|--------|-------------|",
    ]
    for i, r in enumerate(rows, 1):
        summary = r.case.summary()
        if len(summary) > 90:
            summary = summary[:87] + "…"
        specific = [md_escape(d) for d in r.diffs if _unprefixed(d) not in labels]
        common = sorted(
            {labels[_unprefixed(d)] for d in r.diffs if _unprefixed(d) in labels},
            key=lambda x: int(x[1:]),
        )
        cell = "<br>".join(specific)
        if common:
            cell = (cell + "<br>" if cell else "") + ", ".join(common)
        out.append(
            f"| {i} | {r.case.name} | `{md_escape(summary)}` | {md_escape(r.case.expect)} "
            f"| {_status_line(r.nginx)} | {_status_line(r.nomapd)} | {cell or 'same'} |"
        )
    out += ["", "## Notes on the configuration", ""]
    out += [f"- {n}" for n in NOTES]
    out.append("")
    return "\n".join(out)


def _exchange_json(ex: Exchange, fields: list[dict[str, str]]) -> dict[str, Any]:
    return {
        "connection": ex.connection,
        "error": ex.error,
        "unparsed": ex.raw_tail,
        "tls": ex.tls,
        "responses": [
            {
                "status": r.status,
                "reason": r.reason,
                "version": r.version,
                "headers": r.headers,
                "framing": r.framing,
                "body_length": len(r.body),
                "body_sha256": hashlib.sha256(r.body).hexdigest(),
                "page": page_text(r),
                "fields": f,
            }
            for r, f in zip(ex.responses, fields, strict=True)
        ],
    }


def _git_describe(timeout: float) -> str:
    try:
        head = subprocess.run(
            ["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(REPO), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        ).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return f"{head}{' + uncommitted changes' if dirty else ''}" if head else "unknown"


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument(
        "--nomapd-args",
        default="",
        help='extra arguments for `nomapd serve`, one string: --nomapd-args="--max-ranges 4"',
    )
    ap.add_argument(
        "--nomapd-cmd",
        default=str(REPO / ".venv" / "bin" / "nomapd"),
        help="the nomapd command (default: .venv/bin/nomapd of this checkout)",
    )
    ap.add_argument("--nginx", default=shutil.which("nginx") or "/usr/sbin/nginx")
    ap.add_argument("--mime-types", default="/etc/nginx/mime.types", help="nginx's MIME table")
    ap.add_argument("--out", help="write the markdown report here too")
    ap.add_argument("--json", help="write everything as JSON here")
    ap.add_argument("--only", help="run only the cases whose name matches this regex")
    ap.add_argument("--timeout", type=float, default=STEP_TIMEOUT, help="seconds per step")
    ap.add_argument(
        "--systematic",
        type=int,
        default=8,
        help="list a difference once, with a label, when at least this many cases have it "
        "(0: never)",
    )
    ap.add_argument("--keep", action="store_true", help="keep the temporary directory")
    ns = ap.parse_args(argv)
    timeout: float = ns.timeout

    cases = [c for c in CASES if not ns.only or re.search(ns.only, c.name)]
    nomapd_cmd = shlex.split(ns.nomapd_cmd)
    tmp = pathlib.Path(tempfile.mkdtemp(prefix="nginx-compare-"))
    try:
        version_line, version, _ = nginx_version(ns.nginx, timeout)
        mime_types = pathlib.Path(ns.mime_types)
        if not mime_types.is_file():
            raise ServerError(f"{mime_types}: no such file (nginx's MIME table, --mime-types)")
        root, files = build_docroot(tmp)
        cert, key = make_cert(tmp)
        prefix = tmp / "nginx"
        prefix.mkdir()
        ng_port, nm_port, admin_port = free_port(), free_port(), free_port()
        conf = prefix / "nginx.conf"
        conf.write_text(nginx_conf(prefix, root, ng_port, cert, key, version, mime_types))
        ng_argv = [
            ns.nginx,
            "-c",
            str(conf),
            "-p",
            str(prefix),
            "-e",
            str(prefix / "error.log"),
            "-g",
            "daemon off;",
        ]
        used, missing = nomapd_flags(nomapd_cmd, timeout)
        nm_argv = [
            *nomapd_cmd,
            "serve",
            str(root),
            "--port",
            str(nm_port),
            "--admin",
            f"{HOST}:{admin_port}",
            "--cert",
            str(cert),
            "--key",
            str(key),
            *used,
            *shlex.split(ns.nomapd_args),
        ]
        nginx = Child("nginx", ng_argv, ng_port, prefix / "stdout.log")
        nomapd = Child("nomapd", nm_argv, nm_port, tmp / "nomapd.log")
        lastmod = email.utils.formatdate(FIXED_MTIME, usegmt=True)
        dates = {
            "lastmod": lastmod,
            "later": email.utils.formatdate(FIXED_MTIME + DAY, usegmt=True),
            "earlier": email.utils.formatdate(FIXED_MTIME - DAY, usegmt=True),
        }
        with running(nginx, timeout), running(nomapd, timeout):
            substs: list[dict[bytes, bytes]] = []
            validators: dict[str, dict[str, str]] = {}
            tls: dict[str, str] = {}
            for child in (nginx, nomapd):
                v = _validators(child.port)
                validators[child.name] = v
                tls[child.name] = run_case(
                    Case("tls", "-", (req("HEAD", "/"),)), child.port, {}
                ).tls
                substs.append(
                    {("{" + k + "}").encode(): val.encode() for k, val in {**dates, **v}.items()}
                )
            rows: list[Row] = []
            with concurrent.futures.ThreadPoolExecutor(2) as pool:
                for case in cases:
                    f_ng = pool.submit(run_case, case, ng_port, substs[0], timeout)
                    f_nm = pool.submit(run_case, case, nm_port, substs[1], timeout)
                    ng_ex = f_ng.result(timeout * 3)
                    nm_ex = f_nm.result(timeout * 3)
                    rows.append(compare(case, ng_ex, nm_ex, files, (ng_port, nm_port), lastmod))
                    if nomapd.proc is not None and nomapd.proc.poll() is not None:
                        print(f"nomapd died during {case.name}", file=sys.stderr)
                        break
            logs = {"nginx": nginx.log_tail(40), "nomapd": nomapd.log_tail(400)}
            nomapd_log = nomapd.log.read_text(errors="replace")
            with contextlib.suppress(OSError):
                logs["nginx_error_log"] = "\n".join(
                    (prefix / "error.log").read_text(errors="replace").splitlines()[-60:]
                )
        meta: dict[str, Any] = {
            "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "nginx_version": version_line,
            "nginx_conf": conf.read_text(),
            "nomapd_command": shlex.join(nm_argv).replace(str(tmp), "$TMP"),
            "nomapd_matching_flags": " ".join(used),
            "nomapd_missing_flags": " ".join(missing),
            "git": _git_describe(timeout),
            "tls": tls,
            "validators": validators,
            "dates": dates,
            "command": shlex.join(["python", "tools/nginx_compare.py", *(argv or sys.argv[1:])]),
            "notes": list(NOTES),
            "nomapd_exceptions": exception_summary(nomapd_log),
        }
        meta["nginx_conf"] = meta["nginx_conf"].replace(str(tmp), "$TMP")
        systematic = systematic_diffs(rows, ns.systematic)
        report = render_markdown(rows, meta, systematic)
        print(report)
        if ns.out:
            pathlib.Path(ns.out).parent.mkdir(parents=True, exist_ok=True)
            pathlib.Path(ns.out).write_text(report)
        if ns.json:
            pathlib.Path(ns.json).parent.mkdir(parents=True, exist_ok=True)
            doc = {
                "meta": meta,
                "server_logs": logs,
                "systematic_differences": systematic,
                "cases": [
                    {
                        "name": r.case.name,
                        "group": r.case.group,
                        "mode": r.case.mode,
                        "expect": r.case.expect,
                        "requests": [_escape(q, 400) for q in r.case.requests],
                        "differences": r.diffs,
                        "nginx": _exchange_json(r.nginx, r.nginx_fields),
                        "nomapd": _exchange_json(r.nomapd, r.nomapd_fields),
                    }
                    for r in rows
                ],
            }
            pathlib.Path(ns.json).write_text(json.dumps(doc, indent=1, ensure_ascii=False) + "\n")
        return 0
    except (ServerError, subprocess.TimeoutExpired, OSError) as e:
        print(f"nginx_compare: {e}", file=sys.stderr)
        return 2
    finally:
        if ns.keep:
            print(f"nginx_compare: kept {tmp}", file=sys.stderr)
        else:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
