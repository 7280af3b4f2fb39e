"""Developer tools, run from the top of the checkout as `.venv/bin/python -m tools.NAME`.

They may use the bench's helpers (`bench.cert`, `bench.loopback`); bench/ never
imports them, and they reach the server only through its command line."""
