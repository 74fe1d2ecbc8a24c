"""Bounded I/O of verify (provisioner/checks/bounded.py) and the strict SMTP reply reader, on socket pairs.

The peer end of each socket pair plays a misbehaving server: trickling, flooding, sending out of turn.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator

import pytest

from provisioner.checks import bounded
from provisioner.checks.base import Check, Result
from provisioner.checks.context import Context, Options, ProtocolError, read_smtp_reply
from provisioner.checks.runner import run


@pytest.fixture
def pair() -> Iterator[tuple[bounded.BoundedSocket, socket.socket]]:
    """(our bounded end, the server's end)."""
    ours, theirs = socket.socketpair()
    sock = bounded.BoundedSocket(ours.family, ours.type, ours.proto, fileno=ours.detach())
    try:
        yield sock, theirs
    finally:
        sock.close()
        theirs.close()


def _in_scope(seconds: float) -> bounded.Scope:
    scope = bounded.Scope(seconds, io_share=1.0)
    bounded.enter(scope)
    return scope


def test_reader_returns_lines_and_exact_reads(pair: tuple[bounded.BoundedSocket, socket.socket]) -> None:
    sock, server = pair
    server.sendall(b"first\r\nsecond\nrest-of-it")
    reader = sock.makefile("rb")
    assert reader.readline() == b"first\r\n"
    assert reader.readline() == b"second\n"
    assert reader.read(4) == b"rest"
    server.close()
    assert reader.readline() == b"-of-it"
    assert reader.readline() == b""


def test_reader_refuses_huge_literal_before_reading(
    pair: tuple[bounded.BoundedSocket, socket.socket],
) -> None:
    sock, _ = pair
    with pytest.raises(bounded.ReplyTooLarge, match="1073741824 bytes"):
        sock.makefile("rb").read(1 << 30)


def test_reader_caps_a_line_without_end(pair: tuple[bounded.BoundedSocket, socket.socket]) -> None:
    sock, server = pair
    threading.Thread(target=lambda: server.sendall(b"x" * 200_000), daemon=True).start()
    with pytest.raises(bounded.ReplyTooLarge, match="reply line over"):
        sock.makefile("rb").readline()


def test_reader_caps_bytes_per_connection(pair: tuple[bounded.BoundedSocket, socket.socket]) -> None:
    sock, server = pair

    def flood() -> None:
        try:
            while True:
                server.sendall(b"* OK filler\r\n" * 1000)
        except OSError:
            pass

    threading.Thread(target=flood, daemon=True).start()
    reader = sock.makefile("rb")
    with pytest.raises(bounded.ReplyTooLarge, match="over 1048576 bytes"):
        while True:
            reader.readline()


def test_trickle_is_bounded_by_the_scope_deadline(pair: tuple[bounded.BoundedSocket, socket.socket]) -> None:
    sock, server = pair
    stop = threading.Event()

    def trickle() -> None:
        while not stop.is_set():
            try:
                server.sendall(b"2")
            except OSError:
                return
            stop.wait(0.05)  # far below any per-read timeout

    threading.Thread(target=trickle, daemon=True).start()
    scope = _in_scope(0.5)
    sock.scope = scope
    started = time.monotonic()
    try:
        with pytest.raises(TimeoutError):
            sock.makefile("rb").readline()
    finally:
        stop.set()
        bounded.enter(None)
    assert time.monotonic() - started < 5  # hang guard, not a performance figure


def test_expire_unblocks_a_blocked_read(pair: tuple[bounded.BoundedSocket, socket.socket]) -> None:
    sock, _ = pair
    scope = bounded.Scope(60)
    scope.register(sock)
    sock.scope = scope
    outcome: list[object] = []

    def read() -> None:
        bounded.enter(scope)
        try:
            outcome.append(sock.makefile("rb").readline())
        except Exception as exc:
            outcome.append(exc)

    thread = threading.Thread(target=read, daemon=True)
    thread.start()
    time.sleep(0.1)
    scope.expire()
    thread.join(5)
    assert not thread.is_alive() and outcome


def test_task_result_waits_no_longer_than_the_scope() -> None:
    _in_scope(0.3)
    try:
        task = bounded.spawn(lambda: time.sleep(30))
        with pytest.raises(TimeoutError):
            task.result()
        assert task._thread.daemon
        assert bounded.parallel(lambda x: x * 2, [1, 2, 3]) == [2, 4, 6]
    finally:
        bounded.enter(None)


class _Lines:
    def __init__(self, *lines: bytes) -> None:
        self.lines = list(lines)

    def readline(self, limit: int = -1) -> bytes:
        return self.lines.pop(0) if self.lines else b""


def test_read_smtp_reply_strict() -> None:
    assert read_smtp_reply(_Lines(b"250-a\r\n", b"250-b\r\n", b"250 c\r\n")) == (250, [b"a", b"b", b"c"])
    with pytest.raises(ProtocolError, match="malformed"):
        read_smtp_reply(_Lines(b"XYZ hello\r\n"))
    with pytest.raises(ProtocolError, match="changes its code"):
        read_smtp_reply(_Lines(b"250-a\r\n", b"554 b\r\n"))
    with pytest.raises(bounded.ReplyTooLarge, match="100 lines"):
        read_smtp_reply(_Lines(*([b"250-x\r\n"] * 150)))


def test_runner_shuts_down_a_check_blocked_on_a_socket() -> None:
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    threads: list[threading.Thread] = []

    def silent(ctx: Context) -> Result:
        threads.append(threading.current_thread())
        sock = bounded.connect("127.0.0.1", port)
        sock.scope = None  # read without the scope's own deadline: only expire() can end this read
        sock.settimeout(None)
        sock.makefile("rb").readline()
        return Result("x.silent", "pass", "unreachable")

    check = Check("x.silent", "silent", "x", ("net",), "low", silent)
    try:
        report = run([check], Context(Options(target="127.0.0.1", timeout=0.5, allow_loopback=True)))
        assert report.results[0].status == "fail" and "timed out" in report.results[0].reason
        threads[0].join(5)
        assert not threads[0].is_alive()  # the check's thread ended with its deadline
    finally:
        listener.close()
