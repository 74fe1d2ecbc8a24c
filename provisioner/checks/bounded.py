"""Bounded network I/O for verify: one deadline per check, capped replies, daemon helper threads.

Servers under test may be hostile: they can trickle a byte per second (the standard library's per-read
timeout never fires), send endless continuation lines, or announce gigabyte literals. So:

- Every check runs inside a `Scope` with one deadline for its whole exchange. Sockets made through this
  module get, before each blocking operation, the time left until that deadline as their timeout
  (a TLS handshake is bounded as a whole by the timeout it starts with). When the deadline passes the
  runner calls `Scope.expire()`, which shuts down every socket the check still holds, so a thread
  blocked anywhere in a read returns at once and no check outlives its deadline.
- Reads go through `BoundedReader` (what `makefile()` returns for our sockets, so smtplib, imaplib and
  poplib use it unchanged): lines, single reads and the bytes of one connection are capped, and crossing
  a cap raises `ReplyTooLarge` ("reply over N bytes") instead of buffering without end.
- Helper threads (`spawn`) are daemon threads that carry the scope of the check that started them, so
  nothing waits for them at interpreter exit (ThreadPoolExecutor's workers are joined at exit).
"""

from __future__ import annotations

import contextvars
import select
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any, Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")

#: One reply line (SMTP allows 512 octets; servers in the wild send longer, never this long).
MAX_LINE = 4096
#: One SMTP reply / one POP3 multi-line reply / one IMAP response line.
MAX_REPLY_BYTES = 64 * 1024
MAX_REPLY_LINES = 100
#: An IMAP literal or a single read() (nothing verify reads is larger).
MAX_READ = 64 * 1024
#: Everything one connection may send us.
MAX_CONNECTION_BYTES = 1024 * 1024


class ReplyTooLarge(OSError):
    """The server sent more than a cap allows; reading stopped at the cap."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "reply too large"


class ProtocolError(OSError):
    """The server's reply breaks the protocol (bad code, inconsistent lines, out-of-turn data)."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "protocol error"


class Scope:
    """The deadline of one check and the sockets it holds."""

    def __init__(self, seconds: float, io_share: float = 0.85) -> None:
        now = time.monotonic()
        self.deadline = now + seconds
        #: Network waits end here, a little before the deadline, so the check can still give a reason.
        self.io_deadline = now + seconds * io_share
        self.expired = False
        self._lock = threading.Lock()
        self._sockets: list[socket.socket] = []

    def remaining(self) -> float:
        """Seconds left for network waits (never negative)."""
        return max(0.0, self.io_deadline - time.monotonic())

    def hard_remaining(self) -> float:
        """Seconds left until the check's deadline."""
        return max(0.0, self.deadline - time.monotonic())

    def register(self, sock: socket.socket) -> None:
        """Track a socket so expire() can shut it down."""
        with self._lock:
            if self.expired:
                _shutdown(sock)
                raise TimeoutError("timed out")
            self._sockets = [s for s in self._sockets if s.fileno() != -1]
            self._sockets.append(sock)

    def expire(self) -> None:
        """Shut down every socket of the check: blocked reads and handshakes return at once."""
        with self._lock:
            self.expired = True
            sockets, self._sockets = self._sockets, []
        for sock in sockets:
            _shutdown(sock)


def _shutdown(sock: socket.socket) -> None:
    # socket.socket.shutdown, not SSLSocket.shutdown: the latter drops the TLS object under a thread
    # that may be using it; shutting the TCP connection down makes that thread's read return instead.
    try:
        if sock.fileno() != -1:
            socket.socket.shutdown(sock, socket.SHUT_RDWR)
    except OSError:
        pass


_current: contextvars.ContextVar[Scope | None] = contextvars.ContextVar("verify_scope", default=None)


def current() -> Scope | None:
    """The scope of the running check (None outside the runner)."""
    return _current.get()


def enter(scope: Scope | None) -> contextvars.Token[Scope | None]:
    """Make scope current in this thread (the runner does this for each check)."""
    return _current.set(scope)


def time_left(cap: float | None = None) -> float | None:
    """Seconds a network wait may take now: the scope's remaining time, at most cap.

    Raises TimeoutError when the scope has no time left.
    """
    scope = current()
    if scope is None:
        return cap
    left = scope.remaining()
    if left <= 0 or scope.expired:
        raise TimeoutError("timed out")
    return left if cap is None else min(cap, left)


def _arm(sock: socket.socket, cap: float | None = None) -> None:
    sock.settimeout(time_left(cap))


class BoundedReader:
    """A binary file-like reader over a socket: deadline per operation from the scope, capped sizes."""

    def __init__(self, sock: socket.socket, scope: Scope | None) -> None:
        self.sock = sock
        self.scope = scope
        self.buffer = bytearray()
        self.received = 0
        self.eof = False
        self.closed = False

    def _deadline_timeout(self) -> float | None:
        if self.scope is None:
            return self.sock.gettimeout()
        left = self.scope.remaining()
        if left <= 0 or self.scope.expired:
            raise TimeoutError("timed out")
        return left

    def _fill(self) -> bool:
        """Receive more bytes into the buffer; False at end of stream."""
        if self.eof:
            return False
        self.sock.settimeout(self._deadline_timeout())
        chunk = self.sock.recv(16384)
        if not chunk:
            self.eof = True
            return False
        self.received += len(chunk)
        if self.received > MAX_CONNECTION_BYTES:
            raise ReplyTooLarge(f"server sent over {MAX_CONNECTION_BYTES} bytes on one connection")
        self.buffer += chunk
        return True

    def readline(self, limit: int = -1) -> bytes:
        """One line (with its newline), at most limit bytes (MAX_READ when unlimited) like io's readline."""
        cap = MAX_READ if limit is None or limit < 0 else min(limit, MAX_READ)
        while True:
            end = self.buffer.find(b"\n", 0, cap)
            if end >= 0:
                return self._take(end + 1)
            if len(self.buffer) >= cap:
                if limit is None or limit < 0 or limit > MAX_READ:
                    raise ReplyTooLarge(f"reply line over {cap} bytes")
                return self._take(cap)
            if not self._fill():
                return self._take(len(self.buffer))

    def read(self, size: int = -1) -> bytes:
        """Exactly size bytes (fewer at end of stream); sizes over MAX_READ are refused before reading."""
        if size is None or size < 0 or size > MAX_READ:
            raise ReplyTooLarge(f"literal of {size} bytes: reply over {MAX_READ} bytes")
        while len(self.buffer) < size and self._fill():
            pass
        return self._take(min(size, len(self.buffer)))

    def _take(self, n: int) -> bytes:
        out = bytes(self.buffer[:n])
        del self.buffer[:n]
        return out

    def pending(self) -> bytes:
        """Bytes the server sent that nobody asked for yet (buffered, or waiting on a plain socket)."""
        if self.buffer:
            return bytes(self.buffer)
        if isinstance(self.sock, ssl.SSLSocket):
            # select() would also see TLS records such as session tickets; only decrypted data counts.
            return b"pending" if self.sock.pending() else b""
        try:
            readable, _, _ = select.select([self.sock], [], [], 0)
            if readable:
                return self.sock.recv(512, socket.MSG_PEEK | socket.MSG_DONTWAIT)
        except (OSError, ValueError):
            return b""
        return b""

    def close(self) -> None:
        """Forget the buffer (the socket is closed by its owner)."""
        self.closed = True
        self.buffer.clear()

    def flush(self) -> None:
        """Nothing to flush (reader only)."""


class BoundedSocket(socket.socket):
    """A TCP socket whose makefile() is a BoundedReader tied to the scope it was made in."""

    scope: Scope | None = None

    def makefile(self, *args: Any, **kwargs: Any) -> Any:  # type: ignore[override]
        """A BoundedReader (verify only ever reads through the file)."""
        return BoundedReader(self, self.scope)


class BoundedSSLSocket(ssl.SSLSocket):
    """The TLS counterpart: the handshake is bounded by the scope; makefile() is a BoundedReader."""

    scope: Scope | None = None

    @classmethod
    def _create(cls, sock: socket.socket, *args: Any, **kwargs: Any) -> BoundedSSLSocket:  # type: ignore[override]
        scope = getattr(sock, "scope", None) or current()
        # The handshake runs inside _create with the raw socket's timeout as its whole budget.
        if scope is not None:
            left = scope.remaining()
            if left <= 0 or scope.expired:
                raise TimeoutError("timed out")
            sock.settimeout(left)
        wrapped: BoundedSSLSocket = super()._create(sock, *args, **kwargs)  # type: ignore[misc]
        wrapped.scope = scope
        if scope is not None:
            scope.register(wrapped)
        return wrapped

    def makefile(self, *args: Any, **kwargs: Any) -> Any:  # type: ignore[override]
        """A BoundedReader over the TLS stream."""
        return BoundedReader(self, self.scope)


def bound_context(context: ssl.SSLContext) -> ssl.SSLContext:
    """Make a client TLS context produce BoundedSSLSockets."""
    context.sslsocket_class = BoundedSSLSocket
    return context


def connect(address: str, port: int, cap: float | None = None) -> BoundedSocket:
    """A TCP connection within the scope's deadline, registered with the scope."""
    scope = current()
    timeout = time_left(cap)
    raw = socket.create_connection((address, port), timeout)
    sock = BoundedSocket(raw.family, raw.type, raw.proto, fileno=raw.detach())
    sock.settimeout(timeout)
    sock.scope = scope
    if scope is not None:
        try:
            scope.register(sock)
        except TimeoutError:
            sock.close()
            raise
    return sock


class Task(Generic[T]):
    """A daemon thread running fn in the caller's scope; result() waits no longer than the scope allows."""

    def __init__(self, fn: Callable[[], T]) -> None:
        self._value: T | None = None
        self._error: BaseException | None = None
        self._done = threading.Event()
        context = contextvars.copy_context()

        def run() -> None:
            try:
                self._value = context.run(fn)
            except BaseException as exc:
                self._error = exc
            finally:
                self._done.set()

        self._thread = threading.Thread(target=run, daemon=True, name="verify:helper")
        self._thread.start()

    def result(self) -> T:
        """The value of fn(), its exception, or TimeoutError when the scope's deadline passes first."""
        scope = current()
        wait = scope.hard_remaining() if scope is not None else None
        if not self._done.wait(wait):
            raise TimeoutError("timed out")
        if self._error is not None:
            raise self._error
        return self._value  # type: ignore[return-value]


def spawn(fn: Callable[[], T]) -> Task[T]:
    """Run fn in a daemon thread that carries the current scope."""
    return Task(fn)


def parallel(fn: Callable[[T], R], items: Iterable[T]) -> list[R]:
    """fn over items in daemon threads (one each), results in order; exceptions propagate."""
    tasks = [spawn(lambda item=item: fn(item)) for item in items]  # type: ignore[misc]
    return [task.result() for task in tasks]
