"""A small bounded ManageSieve client (RFC 5804) for verify, and its pure response parser.

Only what `sieve.managesieve` needs: the greeting (a capability response), STARTTLS, the capabilities
re-issued after TLS, `AUTHENTICATE "PLAIN"` with an initial response, LOGOUT. Replies are read through a
file-like reader (a `bounded.BoundedReader` on the wire, `io.BytesIO` in tests): every line, literal and
response is capped, and the socket's waits come from the check's deadline, so a hostile server can
neither stall nor flood the client.

Grammar (RFC 5804 section 4): a response is data lines followed by `OK` / `NO` / `BYE`, optionally a
parenthesised response code, optionally a string. Strings are quoted (`"..."` with `\\"` and `\\\\`
escapes, one line) or literals (`{N}` or `{N+}` at the end of a line, then exactly N octets).
"""

from __future__ import annotations

import base64
import contextlib
import re
import ssl
from dataclasses import dataclass, field
from typing import Any, Protocol

from provisioner.checks import bounded
from provisioner.checks.bounded import ProtocolError, ReplyTooLarge
from provisioner.checks.parsers import shown_bytes

PORT = 4190
#: One response (all its lines and literals) and its number of lines.
MAX_RESPONSE_BYTES = bounded.MAX_REPLY_BYTES
MAX_RESPONSE_LINES = bounded.MAX_REPLY_LINES
#: A literal the server announces (RFC 5804 puts no bound; nothing verify reads is larger).
MAX_LITERAL = bounded.MAX_READ


class Reader(Protocol):
    """What the parser reads from: readline(limit) and read(n), like a binary file."""

    def readline(self, limit: int = -1, /) -> bytes: ...

    def read(self, size: int = -1, /) -> bytes: ...


@dataclass(frozen=True)
class Token:
    """An atom (`OK`, `(`, `QUOTA/MAXSIZE`) or a string (quoted or literal)."""

    kind: str  # "atom" | "string"
    value: str


@dataclass
class Response:
    """One ManageSieve response: its data lines (tokens each) and the final OK/NO/BYE line."""

    status: str = ""
    code: str = ""
    code_args: list[str] = field(default_factory=list)
    text: str = ""
    lines: list[list[Token]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """Whether the final line is OK."""
        return self.status == "OK"

    def summary(self) -> str:
        """The final line as a reason shows it: `NO (ENCRYPT-NEEDED) "text"`."""
        parts = [self.status]
        if self.code:
            parts.append(f"({' '.join([self.code, *self.code_args])})")
        if self.text:
            parts.append(f'"{self.text}"')
        return " ".join(parts)


_ATOM = re.compile(rb"[^\s\"(){}]+")
_LITERAL_END = re.compile(rb"\{(\d{1,10})\+?\}$")


def tokenize(line: bytes) -> tuple[list[Token], int | None]:
    """One physical line (without CRLF) -> (tokens, length of the literal announced at its end or None).

    Raises ProtocolError for an unterminated quoted string, a bad escape, or a stray character.
    """
    tokens: list[Token] = []
    literal: int | None = None
    match = _LITERAL_END.search(line)
    if match:
        literal = int(match.group(1))
        line = line[: match.start()]
    i, n = 0, len(line)
    while i < n:
        ch = line[i : i + 1]
        if ch in (b" ", b"\t"):
            i += 1
        elif ch in (b"(", b")"):
            tokens.append(Token("atom", ch.decode()))
            i += 1
        elif ch == b'"':
            out = bytearray()
            i += 1
            while True:
                if i >= n:
                    raise ProtocolError(
                        f"protocol error: unterminated quoted string in '{shown_bytes(line)}'"
                    )
                c = line[i : i + 1]
                if c == b"\\":
                    nxt = line[i + 1 : i + 2]
                    if nxt not in (b'"', b"\\"):
                        raise ProtocolError(
                            f"protocol error: bad escape in quoted string '{shown_bytes(line)}'"
                        )
                    out += nxt
                    i += 2
                elif c == b'"':
                    i += 1
                    break
                else:
                    out += c
                    i += 1
            tokens.append(Token("string", out.decode("utf-8", "replace")))
        else:
            atom = _ATOM.match(line, i)
            if not atom:
                raise ProtocolError(
                    f"protocol error: unexpected '{shown_bytes(ch)}' in '{shown_bytes(line)}'"
                )
            tokens.append(Token("atom", atom.group().decode("ascii", "replace")))
            i = atom.end()
    return tokens, literal


def _readline(reader: Reader, budget: list[int]) -> bytes:
    line = reader.readline(bounded.MAX_LINE + 1)
    if not line:
        raise ConnectionError("server closed the connection")
    if len(line) > bounded.MAX_LINE and not line.endswith(b"\n"):
        raise ReplyTooLarge(f"reply line over {bounded.MAX_LINE} bytes")
    budget[0] += len(line)
    if budget[0] > MAX_RESPONSE_BYTES:
        raise ReplyTooLarge(f"reply over {MAX_RESPONSE_BYTES} bytes")
    return line.rstrip(b"\r\n")


def read_logical_line(reader: Reader, budget: list[int] | None = None) -> list[Token]:
    """One logical line: physical lines joined by the literals they announce, as tokens."""
    budget = budget if budget is not None else [0]
    tokens, literal = tokenize(_readline(reader, budget))
    while literal is not None:
        if literal > MAX_LITERAL:
            raise ReplyTooLarge(f"literal of {literal} bytes: reply over {MAX_LITERAL} bytes")
        data = reader.read(literal)
        if len(data) < literal:
            raise ConnectionError("server closed the connection inside a literal")
        budget[0] += literal
        if budget[0] > MAX_RESPONSE_BYTES:
            raise ReplyTooLarge(f"reply over {MAX_RESPONSE_BYTES} bytes")
        tokens.append(Token("string", data.decode("utf-8", "replace")))
        more, literal = tokenize(_readline(reader, budget))
        tokens += more
    return tokens


def _final(tokens: list[Token]) -> Response:
    """Parse `OK/NO/BYE [(code args)] [string]` strictly."""
    response = Response(status=tokens[0].value.upper())
    rest = tokens[1:]
    if rest and rest[0] == Token("atom", "("):
        try:
            close = rest.index(Token("atom", ")"))
        except ValueError:
            raise ProtocolError("protocol error: response code without ')'") from None
        inner = rest[1:close]
        if not inner or inner[0].kind != "atom":
            raise ProtocolError("protocol error: empty or malformed response code")
        response.code = inner[0].value.upper()
        response.code_args = [t.value for t in inner[1:]]
        rest = rest[close + 1 :]
    if len(rest) > 1 or (rest and rest[0].kind != "string"):
        shown = " ".join(t.value for t in rest)
        raise ProtocolError(f"protocol error: unexpected '{shown[:60]}' after {response.status}")
    response.text = rest[0].value if rest else ""
    return response


def read_response(reader: Reader) -> Response:
    """Read data lines up to the final OK/NO/BYE line; capped in lines and bytes; strict."""
    budget = [0]
    lines: list[list[Token]] = []
    while True:
        tokens = read_logical_line(reader, budget)
        if not tokens:
            raise ProtocolError("protocol error: empty response line")
        first = tokens[0]
        if first.kind == "atom" and first.value.upper() in ("OK", "NO", "BYE"):
            response = _final(tokens)
            response.lines = lines
            return response
        if first.kind != "string":
            # Every ManageSieve data line starts with a string; anything else is another protocol.
            shown = " ".join(t.value for t in tokens)
            raise ProtocolError(f"protocol error: '{shown[:60]}' is not a ManageSieve response")
        lines.append(tokens)
        if len(lines) >= MAX_RESPONSE_LINES:
            raise ReplyTooLarge(f"reply over {MAX_RESPONSE_LINES} lines")


def capabilities(response: Response) -> dict[str, str]:
    """A capability response's lines -> {NAME (upper case): value ('' when none)}; strict."""
    caps: dict[str, str] = {}
    for tokens in response.lines:
        if tokens[0].kind != "string" or len(tokens) > 2 or any(t.kind != "string" for t in tokens):
            shown = " ".join(t.value for t in tokens)
            raise ProtocolError(f"protocol error: '{shown[:60]}' is not a capability line")
        caps[tokens[0].value.upper()] = tokens[1].value if len(tokens) == 2 else ""
    return caps


def sasl_mechanisms(caps: dict[str, str]) -> list[str]:
    """The SASL mechanisms a capability list offers (upper case; [] for a missing or empty SASL)."""
    return [m.upper() for m in caps.get("SASL", "").split()]


def quoted(text: str) -> str:
    """A ManageSieve quoted string (only for text without CR/LF)."""
    if "\r" in text or "\n" in text:
        raise ValueError("a quoted string cannot hold a line break")
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def plain_command(user: str, password: str) -> bytes:
    """`AUTHENTICATE "PLAIN" "<base64 of NUL user NUL password>"` with its CRLF."""
    token = base64.b64encode(f"\0{user}\0{password}".encode()).decode()
    return f'AUTHENTICATE "PLAIN" {quoted(token)}\r\n'.encode()


class Client:
    """One ManageSieve session on a bounded socket: greeting, STARTTLS, AUTHENTICATE, LOGOUT."""

    def __init__(
        self, address: str, port: int = PORT, timeout: float | None = None, sock: Any = None
    ) -> None:
        self.sock: Any = sock if sock is not None else bounded.connect(address, port, timeout)
        self.file: Any = self.sock.makefile("rb")
        self.greeting = read_response(self.file)
        self.caps = capabilities(self.greeting) if self.greeting.ok else {}
        self.caps_tls: dict[str, str] = {}
        self.tls: ssl.SSLSocket | None = None

    def send(self, data: bytes) -> None:
        """Write a command, after making sure the server sent nothing unasked (a shifted dialogue)."""
        extra = self.file.pending() if hasattr(self.file, "pending") else b""
        if extra:
            raise ProtocolError(
                f"protocol error: the server sent data out of turn ('{shown_bytes(extra)}'): replies would shift"
            )
        self.sock.settimeout(bounded.time_left())
        self.sock.sendall(data)

    def command(self, data: bytes) -> Response:
        """Send a command and read its response."""
        self.send(data)
        return read_response(self.file)

    def starttls(self, context: ssl.SSLContext, server_hostname: str | None) -> Response:
        """STARTTLS; on OK the handshake, then the capabilities the server must re-issue (RFC 5804 2.2)."""
        response = self.command(b"STARTTLS\r\n")
        if not response.ok:
            return response
        extra = self.file.pending() if hasattr(self.file, "pending") else b""
        if extra:
            raise ProtocolError(
                f"protocol error: data before the TLS handshake ('{shown_bytes(extra)}'): a STARTTLS injection"
            )
        self.sock = context.wrap_socket(self.sock, server_hostname=server_hostname)
        self.tls = self.sock
        self.file = self.sock.makefile("rb")
        again = read_response(self.file)
        if not again.ok:
            raise ProtocolError(f"capabilities after STARTTLS end with {again.summary()}")
        self.caps_tls = capabilities(again)
        return response

    def send_plain(self, user: str, password: str) -> None:
        """Write AUTHENTICATE "PLAIN" with the initial response (reading is auth_result's)."""
        self.send(plain_command(user, password))

    def auth_result(self) -> Response:
        """The verdict on AUTHENTICATE; a server challenge (none is due with PLAIN) is cancelled with "*"."""
        budget = [0]
        tokens = read_logical_line(self.file, budget)
        if tokens and tokens[0].kind == "string":
            self.send(b'"*"\r\n')
            return read_response(self.file)
        if not tokens or tokens[0].kind != "atom" or tokens[0].value.upper() not in ("OK", "NO", "BYE"):
            shown = " ".join(t.value for t in tokens)
            raise ProtocolError(f"protocol error: unexpected '{shown[:60]}' in answer to AUTHENTICATE")
        return _final(tokens)

    def close(self) -> None:
        """LOGOUT without waiting for the answer, then close."""
        with contextlib.suppress(OSError, ValueError):
            self.sock.settimeout(1.0)
            self.sock.sendall(b"LOGOUT\r\n")
        with contextlib.suppress(OSError):
            self.sock.close()
