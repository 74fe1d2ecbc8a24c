"""sieve.managesieve against fake ManageSieve servers that misbehave on purpose.

Each case runs the real `mailprov verify --only sieve.managesieve` in a subprocess against a fake server on
a loopback address (port 4190) and asserts the status and the reason. The subprocess has a hang guard
(it is killed after the check's deadline + 10 s, which fails the test), and stdout must be valid JSON with
no traceback. A well-behaved fake passes, so each failure below comes from the misbehaviour alone.
The real Dovecot ManageSieve cases are in test_verify_servers.py.

Needs root (adds an address to lo).
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from verify_servers import LoopbackAddress, TestCA, scratch_dir

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root: adds an address to lo"),
]

ADDRESS = "127.77.0.40"
HASH = "{SHA512-CRYPT}$6$wS5qFv6gH6eWpZYc$CWN4Y.K75r8CcEwmbGrEYDoDjJpy0Yiyv6WgUWMchTaZjFub/qVo33twQi9Dlk3mKe16jjf64k3/XAbldkurH0"
TIMEOUT = 2
CAPS = b'"IMPLEMENTATION" "fake"\r\n"SASL" ""\r\n"STARTTLS"\r\n"VERSION" "1.0"\r\n'
CAPS_TLS = b'"IMPLEMENTATION" "fake"\r\n"SASL" "PLAIN"\r\n"VERSION" "1.0"\r\n'

Behaviour = Callable[[socket.socket, ssl.SSLContext], None]


def _lines(sock: Any) -> Iterator[bytes]:
    buffer = b""
    while True:
        while b"\n" not in buffer:
            chunk = sock.recv(4096)
            if not chunk:
                return
            buffer += chunk
        line, buffer = buffer.split(b"\n", 1)
        yield line.rstrip(b"\r")


def dialogue(
    greeting: bytes = CAPS + b'OK "ready"\r\n',
    plaintext_auth: bytes = b'NO (ENCRYPT-NEEDED) "TLS first"\r\n',
    after_starttls: bytes = b'OK "Begin TLS"\r\n',
    caps_tls: bytes = CAPS_TLS + b'OK "TLS up"\r\n',
) -> Behaviour:
    """A ManageSieve server following RFC 5804, with any of its answers replaced."""

    def serve(sock: socket.socket, context: ssl.SSLContext) -> None:
        sock.sendall(greeting)
        conn: Any = sock
        for line in _lines(conn):
            word = line.split(b" ", 1)[0].upper()
            if word == b"AUTHENTICATE":
                conn.sendall(plaintext_auth if conn is sock else b'OK "Logged in"\r\n')
            elif word == b"STARTTLS":
                conn.sendall(after_starttls)
                if not after_starttls.startswith(b"OK"):
                    continue
                conn = context.wrap_socket(sock, server_side=True)
                conn.sendall(caps_tls)
                return_to = _lines(conn)
                for again in return_to:
                    if again.upper().startswith(b"AUTHENTICATE"):
                        conn.sendall(b'OK "Logged in"\r\n')
                    elif again.upper().startswith(b"LOGOUT"):
                        conn.sendall(b'OK "Bye"\r\n')
                        return
                return
            elif word == b"LOGOUT":
                conn.sendall(b'OK "Bye"\r\n')
                return

    return serve


def trickle(sock: socket.socket, context: ssl.SSLContext) -> None:
    """One byte of the greeting every half second, for ever."""
    for byte in (CAPS * 100).decode():
        sock.sendall(byte.encode())
        time.sleep(0.5)


def huge_literal(sock: socket.socket, context: ssl.SSLContext) -> None:
    """Announces a 1 GiB literal, then streams bytes."""
    sock.sendall(b'"IMPLEMENTATION" {1073741824}\r\n')
    for _ in range(200):
        sock.sendall(b"x" * 65536)


def endless_caps(sock: socket.socket, context: ssl.SSLContext) -> None:
    """Capability lines without end."""
    for i in range(100000):
        sock.sendall(b'"X-%d" "y"\r\n' % i)


class FakeSieve:
    """A listener on ADDRESS:4190 running a behaviour per connection (daemon threads)."""

    def __init__(self, behaviour: Behaviour, context: ssl.SSLContext) -> None:
        self.behaviour = behaviour
        self.context = context
        self.listener = socket.socket()
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind((ADDRESS, 4190))
        self.listener.listen(16)
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                sock, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(sock,), daemon=True).start()

    def _serve(self, sock: socket.socket) -> None:
        try:
            self.behaviour(sock, self.context)
        except (OSError, ssl.SSLError):
            pass
        finally:
            sock.close()

    def close(self) -> None:
        """Stop accepting (shutdown wakes the thread blocked in accept, so the port is free at once)."""
        with contextlib.suppress(OSError):
            self.listener.shutdown(socket.SHUT_RDWR)
        self.listener.close()


@pytest.fixture(scope="module")
def setting() -> Iterator[dict[str, Any]]:
    """The loopback address, a server TLS context, a spec that serves ManageSieve, a password file."""
    root = scratch_dir("mailprov-sieve-it-")
    with LoopbackAddress(ADDRESS):
        ca = TestCA(root)
        chain, key = ca.issue("sieve", "mail.sieve.test")
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(str(chain), str(key))
        spec = root / "mail.yml"
        spec.write_text(
            f"hostname: mail.sieve.test\n"
            "domains:\n  - name: sieve.test\n    mailboxes:\n"
            f'      - address: alice@sieve.test\n        password_hash: "{HASH}"\n'
            "sieve: {enabled: true}\n"
        )
        password = root / "password"
        password.write_text("secret\n")
        yield {"context": context, "spec": spec, "password": password, "root": root}


def run_verify(setting: dict[str, Any], *extra: str) -> dict[str, Any]:
    """`mailprov verify ADDRESS --only sieve.managesieve` in a subprocess: its single result."""
    command = [sys.executable, "-m", "provisioner", "verify", ADDRESS, "--spec", str(setting["spec"])]
    command += ["--only", "sieve.managesieve", "--timeout", str(TIMEOUT), "--format", "json"]
    command += ["--allow-loopback", *extra]
    done = subprocess.run(command, capture_output=True, text=True, timeout=TIMEOUT * 3 + 10)
    assert "Traceback" not in done.stderr, done.stderr
    assert done.returncode in (0, 1), done.stderr
    (result,) = json.loads(done.stdout)["results"]
    assert result["id"] == "sieve.managesieve"
    return dict(result)


CASES = [
    ("well-behaved", dialogue(), "pass", "STARTTLS offered, no SASL before it"),
    ("trickled greeting", trickle, "fail", "timed out"),
    ("1 GiB literal", huge_literal, "fail", "literal of 1073741824 bytes"),
    ("endless capabilities", endless_caps, "fail", "over 100 lines"),
    (
        "SASL before TLS",
        dialogue(greeting=CAPS.replace(b'"SASL" ""', b'"SASL" "PLAIN LOGIN"') + b"OK\r\n"),
        "fail",
        "offers SASL PLAIN LOGIN before STARTTLS",
    ),
    (
        "plaintext AUTHENTICATE processed",
        dialogue(plaintext_auth=b'NO "Authentication failed."\r\n'),
        "fail",
        "checked in plaintext",
    ),
    (
        "plaintext AUTHENTICATE accepted",
        dialogue(plaintext_auth=b"OK\r\n"),
        "fail",
        "accepted before STARTTLS",
    ),
    (
        "no STARTTLS",
        dialogue(greeting=CAPS.replace(b'"STARTTLS"\r\n', b"") + b"OK\r\n"),
        "fail",
        "STARTTLS not offered",
    ),
    (
        "STARTTLS injection",
        dialogue(after_starttls=b'OK "Begin TLS"\r\nOK "injected"\r\n'),
        "fail",
        "data before the TLS handshake",
    ),
    (
        "STARTTLS refused",
        dialogue(after_starttls=b'NO "not today"\r\n'),
        "fail",
        'STARTTLS refused: NO "not today"',
    ),
    (
        "no SASL after TLS",
        dialogue(caps_tls=b'"IMPLEMENTATION" "fake"\r\n"VERSION" "1.0"\r\nOK\r\n'),
        "fail",
        "no SASL mechanism offered after STARTTLS",
    ),
    ("greeting NO", dialogue(greeting=b'NO "go away"\r\n'), "fail", 'greeting ends with NO "go away"'),
    ("not ManageSieve", dialogue(greeting=b"220 smtp.example ESMTP\r\n"), "fail", "protocol error"),
]


@pytest.mark.parametrize(("name", "behaviour", "status", "words"), CASES, ids=[c[0] for c in CASES])
def test_fake_managesieve(
    setting: dict[str, Any], name: str, behaviour: Behaviour, status: str, words: str
) -> None:
    server = FakeSieve(behaviour, setting["context"])
    try:
        result = run_verify(setting)
    finally:
        server.close()
    assert result["status"] == status, result
    assert words in result["reason"], result
    assert "\x1b" not in result["reason"] and "\n" not in result["reason"]


def test_fake_managesieve_logins(setting: dict[str, Any]) -> None:
    # This fake accepts every password: the wrong one must fail the check.
    server = FakeSieve(dialogue(), setting["context"])
    try:
        result = run_verify(
            setting, "--user", "alice@sieve.test", "--password-file", str(setting["password"])
        )
    finally:
        server.close()
    assert result["status"] == "fail", result
    assert "wrong password: accepted" in result["reason"], result


def test_closed_port_fails_when_the_spec_serves_managesieve(setting: dict[str, Any], tmp_path: Path) -> None:
    result = run_verify(setting)
    assert result["status"] == "fail" and "refused (the spec serves ManageSieve)" in result["reason"], result
