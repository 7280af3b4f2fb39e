"""The document root both servers serve, with one fixed mtime on every file.

The files cover what the cases ask for: an index, a 1 MiB binary, a text file
with gzip and brotli sidecars (made by the `gzip` and `brotli` libraries), a
directory index, a listing, dotfiles, a UTF-8 name, an empty file, MIME
oddities, and a symlink out of the root.
"""

from __future__ import annotations

import gzip
import os
import pathlib
import random

import brotli

FIXED_MTIME = 1_704_164_645  # 2024-01-02 03:04:05 UTC, the mtime of every file of the root
DAY = 86_400
BIN_SIZE = 1 << 20

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
        "text.txt.br": bytes(brotli.compress(TEXT)),
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
