"""The cases: raw HTTP/1.1 requests, written byte for byte, and what each expects.

Request templates may name per-server validators and dates ({etag_text},
{etag_bin}, {lastmod}, {later}, {earlier}); `cli` fills them in for each
server before the case runs.
"""

from __future__ import annotations

from dataclasses import dataclass


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
