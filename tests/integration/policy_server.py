"""An HTTPS server on a loopback address:443 answering MTA-STS policy requests per Host header.

Each policy host name maps to an `Answer` (status, headers, body, optionally trickled a byte at a time),
so one server plays a good policy host and every misbehaving one at once. The standard library's
http.server, TLS per connection in the connection's own thread (a slow client cannot stall the others).
Binding port 443 needs root.
"""

from __future__ import annotations

import contextlib
import socket
import ssl
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

GOOD_POLICY = "version: STSv1\r\nmode: enforce\r\nmx: {mx}\r\nmax_age: 604800\r\n"


@dataclass
class Answer:
    """What the server answers for one policy host."""

    body: bytes = b""
    status: int = 200
    headers: dict[str, str] = field(default_factory=lambda: {"Content-Type": "text/plain"})
    #: Send Content-Length (else the body ends when the connection closes).
    length: bool = True
    #: Seconds between bytes of the body (0: all at once).
    trickle: float = 0.0


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: str, context: ssl.SSLContext, answers: dict[str, Answer]) -> None:
        self.context = context
        self.answers = answers
        self.stopping = threading.Event()
        self.requests_seen: list[str] = []
        super().__init__((address, 443), _Handler)

    def finish_request(self, request: Any, client_address: Any) -> None:
        """TLS handshake in the connection's thread, then the HTTP exchange."""
        request.settimeout(10)
        try:
            tls = self.context.wrap_socket(request, server_side=True)
        except (ssl.SSLError, OSError):
            return  # the client did not trust us, or left: nothing to serve
        try:
            super().finish_request(tls, client_address)
        finally:
            with contextlib.suppress(OSError):
                tls.close()


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: the tests read requests_seen instead."""

    def do_GET(self) -> None:
        """Answer with the Answer of the Host header's name (404 for an unknown host or path)."""
        host = (self.headers.get("Host") or "").split(":")[0].lower()
        self.server.requests_seen.append(f"{host}{self.path}")
        answer = self.server.answers.get(host)
        if answer is None or self.path != "/.well-known/mta-sts.txt":
            answer = Answer(b"not found\n", status=404)
        self.send_response(answer.status)
        for name, value in answer.headers.items():
            self.send_header(name, value)
        if answer.length:
            self.send_header("Content-Length", str(len(answer.body)))
        self.send_header("Connection", "close")
        self.end_headers()
        try:
            if not answer.trickle:
                self.wfile.write(answer.body)
                return
            for i in range(len(answer.body)):
                if self.server.stopping.is_set():
                    return
                self.wfile.write(answer.body[i : i + 1])
                self.wfile.flush()
                self.server.stopping.wait(answer.trickle)
        except OSError:
            return  # the client gave up (as it should with a trickled body)


class PolicyServer:
    """Serve answers on ADDRESS:443 in daemon threads; stop() closes everything."""

    def __init__(self, address: str, context: ssl.SSLContext, answers: dict[str, Answer]) -> None:
        self.server = _Server(address, context, {k.lower(): v for k, v in answers.items()})
        self.thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True
        )

    @property
    def requests_seen(self) -> list[str]:
        """host+path of every request received."""
        return self.server.requests_seen

    def __enter__(self) -> PolicyServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.stopping.set()
        self.server.shutdown()
        with contextlib.suppress(OSError):
            self.server.socket.shutdown(socket.SHUT_RDWR)
        self.server.server_close()
