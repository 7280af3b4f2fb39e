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

Usage, from the top of the checkout (after ``make .venv/.installed``)::

    .venv/bin/python -m tools.nginx_compare [--nomapd-args="..."] [--out MD] [--json JSON]

(`--nomapd-args` takes one string; write it with "=" because it starts with "--".)

Modules: `docroot` (the files both servers serve), `cases` (the requests),
`client` (one case on one connection, and the response parser), `diff` (what
is compared, and the differences), `servers` (nginx's configuration, starting
and stopping both servers), `report` (markdown and JSON), `cli` (one run).
The certificate, the address and free ports are the bench's (`bench.cert`,
`bench.loopback`): both tools run servers side by side the same way.
"""
