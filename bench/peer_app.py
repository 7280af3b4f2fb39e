"""The Python peer: Starlette's StaticFiles, served by hypercorn's trio worker.

Theory of operation. The bench compares nomapd with the closest Python peer on
the same libraries: hypercorn (h11 for HTTP/1.1, like nomapd) on trio (like
nomapd), with the most common ASGI static-file handler, Starlette's
`StaticFiles`, mounted at "/" over the benchmark's document root
(`$BENCH_DOCROOT`). StaticFiles streams a file in 64 KiB chunks read in a
worker thread (anyio, which runs on trio here) and answers with ETag and
Last-Modified, as the others do.

This module runs only in the peers venv (`bench/.peers-venv`, made by
`bench.install`): the project's own environment does not have starlette,
which is why mypy is told to ignore its absence (pyproject.toml).
"""

from __future__ import annotations

import os

from starlette.applications import Starlette
from starlette.routing import Mount
from starlette.staticfiles import StaticFiles

app = Starlette(
    routes=[Mount("/", app=StaticFiles(directory=os.environ.get("BENCH_DOCROOT", ".")))]
)
