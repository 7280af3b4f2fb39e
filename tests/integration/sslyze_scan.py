"""Scan one TLS server with sslyze and check it against a Mozilla configuration.

Run by tests/integration/test_tls_profile.py with the python of sslyze's own
venv (sslyze caps cryptography below what nomapd needs, so the two cannot
share one environment):

    python sslyze_scan.py HOST PORT intermediate|modern

Prints one JSON object: sslyze's version, the Mozilla profile version its
checker ships, the checker's issues ({} when compliant) and what the scan
saw (versions, suites, groups, compression).
"""

from __future__ import annotations

import json
import sys
from typing import Any

import sslyze  # type: ignore[import-not-found]
from sslyze.__version__ import __version__  # type: ignore[import-not-found]
from sslyze.mozilla_tls_profile.tls_config_checker import (  # type: ignore[import-not-found]
    SCAN_COMMANDS_NEEDED_BY_MOZILLA_CHECKER,
    MozillaTlsConfiguration,
    ServerNotCompliantWithTlsConfiguration,
    TlsConfigurationEnum,
    check_server_against_tls_configuration,
)

VERSION_FIELDS = {"tls_1_2_cipher_suites": "TLSv1.2", "tls_1_3_cipher_suites": "TLSv1.3"}
OLD_VERSION_FIELDS = {
    "ssl_2_0_cipher_suites": "SSLv2",
    "ssl_3_0_cipher_suites": "SSLv3",
    "tls_1_0_cipher_suites": "TLSv1",
    "tls_1_1_cipher_suites": "TLSv1.1",
}


def scan(host: str, port: int, profile: str) -> dict[str, Any]:
    location = sslyze.ServerNetworkLocation(hostname=host, port=port, ip_address=host)
    request = sslyze.ServerScanRequest(
        server_location=location, scan_commands=SCAN_COMMANDS_NEEDED_BY_MOZILLA_CHECKER
    )
    scanner = sslyze.Scanner()
    scanner.queue_scans([request])
    [result] = list(scanner.get_results())
    if result.scan_status != sslyze.ServerScanStatusEnum.COMPLETED:
        return {"error": f"scan {result.scan_status}: {result.connectivity_error_trace}"}
    attempts = result.scan_result
    config = MozillaTlsConfiguration.get(TlsConfigurationEnum(profile))
    issues: dict[str, str] = {}
    try:
        check_server_against_tls_configuration(result, config)
    except ServerNotCompliantWithTlsConfiguration as e:
        issues = dict(e.issues)
    suites: dict[str, list[str]] = {}
    for field, name in {**OLD_VERSION_FIELDS, **VERSION_FIELDS}.items():
        suite_result = getattr(attempts, field).result
        if suite_result.is_tls_version_supported:
            accepted = suite_result.accepted_cipher_suites
            suites[name] = sorted(a.cipher_suite.name for a in accepted)
    curves = attempts.elliptic_curves.result
    profile_json = MozillaTlsConfiguration._JSON_PROFILE_PATH.read_text()  # e.g. 5.7.json
    return {
        "sslyze": __version__,
        "mozilla_profile_version": json.loads(profile_json)["version"],
        "issues": issues,
        "suites": suites,
        "groups": sorted(c.name for c in curves.supported_curves or []),
        "rejected_groups": sorted(c.name for c in curves.rejected_curves or []),
        "compression": attempts.tls_compression.result.supports_compression,
    }


def main(argv: list[str]) -> int:
    host, port, profile = argv
    print(json.dumps(scan(host, int(port), profile), sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
