"""Fixtures shared by the unit and integration suites."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest


@pytest.fixture(scope="session", autouse=True)
def private_keys_of_the_checkout_are_private() -> None:
    """git keeps no file modes but +x: keys committed as test data come out 0644, which mailprov refuses."""
    from pathlib import Path

    for pattern in ("*.key", "*.password"):
        for secret in (Path(__file__).resolve().parent / "golden").rglob(pattern):
            secret.chmod(0o600)


@pytest.fixture
def dead_resolver() -> Iterator[str]:
    """A UDP socket on loopback that receives DNS queries and never answers (IP:PORT)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    try:
        yield f"127.0.0.1:{sock.getsockname()[1]}"
    finally:
        sock.close()


@pytest.fixture
def make_tls_files():  # type: ignore[no-untyped-def]
    """A factory writing a real self-signed certificate and its key (mode 0600) into a directory."""
    from pathlib import Path

    from provisioner.tlsutil import self_signed

    def make(directory: Path, hostname: str = "mail.example.test", stem: str = "") -> tuple[Path, Path]:
        directory.mkdir(parents=True, exist_ok=True)
        cert_pem, key_pem = self_signed(hostname)
        cert, key = directory / f"{stem}cert.pem", directory / f"{stem}key.pem"
        cert.write_bytes(cert_pem)
        key.write_bytes(key_pem)
        key.chmod(0o600)
        return cert, key

    return make
