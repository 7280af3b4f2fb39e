"""Fixtures shared by the server and integration tests."""

from tests.integration.conftest import corpus, default_server, state_dir
from tests.privdrop import world_tmp

__all__ = ["corpus", "default_server", "state_dir", "world_tmp"]
