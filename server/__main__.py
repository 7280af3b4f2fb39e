"""`python -m server` is the `nomapd` command."""

from server.cli import main

raise SystemExit(main())
