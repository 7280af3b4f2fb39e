"""What is compared, and the differences between nginx's responses and nomapd's.

Each response becomes a dict of fields: the status, the headers in
`FIELD_HEADERS` (normalized where the servers differ by design: ETag as strong
or weak, Last-Modified as "=mtime", the port in Location, multipart boundaries)
and a body fingerprint. When the statuses differ only the status is compared;
error pages (status >= 300 except 304) are not.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

from tools.nginx_compare.cases import Case
from tools.nginx_compare.client import Exchange, Response

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


def status_line(ex: Exchange) -> str:
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
