"""`python -m bench`: see `bench.cli` (the run) and `bench/__init__.py` (the design)."""

from bench.cli import main

raise SystemExit(main())
