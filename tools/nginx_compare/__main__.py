"""`python -m tools.nginx_compare`: see the package's head."""

import sys

from tools.nginx_compare.cli import main

sys.exit(main())
