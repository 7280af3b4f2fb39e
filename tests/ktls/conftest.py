"""Fixtures of the ktls tests: certificates in a temporary directory, server contexts."""

from __future__ import annotations

import pytest

from tests.ktls.harness import ServerContexts
from tests.support.certs import CertFiles, make_cert


@pytest.fixture(scope="session")
def certs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, CertFiles]:
    """An ECDSA P-256 and an RSA 2048 self-signed certificate for "localhost"."""
    directory = tmp_path_factory.mktemp("certs")
    return {kind: make_cert(directory, kind) for kind in ("ec", "rsa")}


@pytest.fixture(scope="session")
def contexts(certs: dict[str, CertFiles]) -> ServerContexts:
    return ServerContexts(certs)
