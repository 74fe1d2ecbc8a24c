"""What the checks share: the options, the resolver, and network probes done once per target.

`Context` memoises its lookups and probes per key behind a lock, so when twenty checks ask for the
certificate on port 465 at once, one TLS handshake happens and the others wait for its result (or its
exception), never longer than their own deadline. Every socket is made through `bounded` (one deadline
per check for the whole exchange, capped replies); DNS lookups get the time the check has left. The
SMTP, IMAP and POP3 clients are the standard library's, with their sockets and reply reading bounded and
SMTP replies parsed strictly (three digits 2xx-5xx, consistent multi-line replies, nothing out of turn).
"""

from __future__ import annotations

import contextlib
import errno
import http.client
import imaplib
import ipaddress
import poplib
import secrets
import smtplib
import socket
import ssl
import threading
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import dns.exception
import dns.name
import dns.rdatatype
import dns.resolver
import dns.reversename

from provisioner.checks import bounded
from provisioner.checks.base import Skip
from provisioner.checks.bounded import ProtocolError, ReplyTooLarge
from provisioner.checks.parsers import (
    STS_MAX_BYTES,
    LookupFailed,
    ReplyError,
    banner_name,
    parse_ehlo,
    parse_mx,
    parse_reply_line,
    shown_bytes,
    text_of,
    unsafe_address,
)
from provisioner.spec import Spec

T = TypeVar("T")

SMTP_PORTS = (25, 587, 465)
IMAP_PORTS = (143, 993)
POP3_PORTS = (110, 995)
#: Ports whose TLS the tls.* checks examine: 25 and 587 via STARTTLS, the others implicit TLS.
TLS_PORTS = (25, 587, 465, 993, 995)
STARTTLS_PORTS = (25, 587)
# Verify's own EHLO name is the client's address literal: valid everywhere, needs no DNS.
_NO_CHECK_TIME = 0x200000  # X509_V_FLAG_NO_CHECK_TIME: chain trust is judged apart from expiry


@dataclass
class Options:
    """What the user gave `mailprov verify`."""

    target: str
    spec: Spec | None = None
    domains: list[str] = field(default_factory=list)
    resolver: tuple[str, int] | None = None
    ca: Path | None = None
    user: str | None = None
    password: str | None = None
    host: Any = None  # a testinfra host (SSH or local), or None
    timeout: float = 10.0
    #: Connect to loopback/unspecified/link-local/multicast addresses (testing a server on this machine).
    allow_loopback: bool = False
    #: A spam filter is expected although the spec does not say so (smtp.spam_filter runs).
    expect_antispam: bool = False


class UnsafeAddress(LookupFailed):
    """The target resolves to an address verify does not probe without --allow-loopback."""


class _Cell:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.done = False
        self.value: Any = None
        self.error: BaseException | None = None


@dataclass
class TlsInfo:
    """The outcome of one TLS handshake on a port."""

    port: int
    version: str = ""
    cipher: str = ""
    der: bytes = b""
    #: None when the chain verified against the trust store (time not considered), else OpenSSL's reason.
    verify_error: str | None = None


@dataclass
class SmtpProbe:
    """One SMTP session on a port: greeting, EHLO before and after TLS, the TLS handshake."""

    port: int
    address: str = ""
    tcp: bool = False
    error: str | None = None
    #: The address was refused before connecting (loopback etc. without --allow-loopback).
    unsafe: bool = False
    banner_code: int = 0
    banner: str = ""
    ehlo_code: int = 0
    caps: dict[str, str] = field(default_factory=dict)
    starttls_error: str | None = None
    tls: TlsInfo | None = None
    caps_tls: dict[str, str] = field(default_factory=dict)

    @property
    def banner_name(self) -> str:
        """The host name in the greeting."""
        return banner_name(self.banner)


@dataclass
class MailboxProbe:
    """The greeting and capabilities of an IMAP or POP3 port (after TLS on 993/995)."""

    port: int
    greeting: str = ""
    caps: list[str] = field(default_factory=list)
    tls: TlsInfo | None = None


def describe(exc: BaseException) -> str:
    """A one-line reason for a network exception."""
    if isinstance(exc, ReplyTooLarge | ProtocolError | LookupFailed):
        return str(exc)
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, socket.timeout | TimeoutError):
        return "timed out"
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"certificate verification failed: {exc.verify_message}"
    if isinstance(exc, ssl.SSLError):
        return f"TLS error: {exc.reason or exc}"
    if isinstance(exc, smtplib.SMTPServerDisconnected):
        # smtplib reports a read timeout as a disconnect ("Connection unexpectedly closed: timed out").
        return "timed out" if "timed out" in str(exc) else "server closed the connection"
    if isinstance(exc, smtplib.SMTPResponseException):
        return f"{exc.smtp_code} {text_of(exc.smtp_error)}"
    if isinstance(exc, imaplib.IMAP4.error | poplib.error_proto):
        return f"protocol error: {exc}"
    if isinstance(exc, socket.gaierror):
        return f"name resolution failed: {exc.strerror}"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror.lower()
    return str(exc) or type(exc).__name__


def client_context(
    verify: bool = False, cafile: Path | None = None, version: ssl.TLSVersion | None = None
) -> ssl.SSLContext:
    """A client TLS context: verifying (chain only) or accepting anything; optionally pinned to one version."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    if verify:
        ctx.verify_mode = ssl.CERT_REQUIRED
        ctx.load_default_certs()
        if cafile is not None:
            ctx.load_verify_locations(cafile=str(cafile))
        ctx.verify_flags |= _NO_CHECK_TIME  # type: ignore[assignment]
    else:
        ctx.verify_mode = ssl.CERT_NONE
    if version is not None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            ctx.minimum_version = version
            ctx.maximum_version = version
        if version < ssl.TLSVersion.TLSv1_2:
            # OpenSSL 3 refuses TLS 1.0/1.1 at the default security level; probing needs level 0.
            ctx.set_ciphers("DEFAULT:@SECLEVEL=0")
    return bounded.bound_context(ctx)


_verifying: dict[tuple[str, int, int], ssl.SSLContext] = {}
_verifying_lock = threading.Lock()


def verifying_context(cafile: Path | None = None) -> ssl.SSLContext:
    """The verifying client context for a trust store, built once per process and shared.

    Loading the system trust store costs ~40 ms of CPU under the GIL; every TLS probe of a run waits for
    it, and verifying several targets at once paid it once per target. A context only reads its trust
    store when built, so the cache key includes the CA file's size and mtime.
    """
    key = ("", 0, 0)
    if cafile is not None:
        try:
            stat = Path(cafile).stat()
            key = (str(cafile), stat.st_size, stat.st_mtime_ns)
        except OSError:
            return client_context(verify=True, cafile=cafile)  # let loading report the problem
    with _verifying_lock:
        if key not in _verifying:
            _verifying[key] = client_context(verify=True, cafile=cafile)
        return _verifying[key]


_https: dict[tuple[str, int, int], ssl.SSLContext] = {}


def https_context(cafile: Path | None = None) -> ssl.SSLContext:
    """A client context as an HTTPS client verifies: chain (system store plus --ca), name and dates.

    Built once per process and trust store, like verifying_context.
    """
    key = ("", 0, 0)
    if cafile is not None:
        with contextlib.suppress(OSError):
            stat = Path(cafile).stat()
            key = (str(cafile), stat.st_size, stat.st_mtime_ns)
    with _verifying_lock:
        if key not in _https:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # CERT_REQUIRED and check_hostname
            ctx.minimum_version = ssl.TLSVersion.TLSv1_2
            ctx.load_default_certs()
            if cafile is not None:
                ctx.load_verify_locations(cafile=str(cafile))
            _https[key] = bounded.bound_context(ctx)
        return _https[key]


class PolicyFetchError(Exception):
    """The MTA-STS policy could not be fetched, or the answer is not one a sender may use (the reason)."""


@dataclass
class StsFetch:
    """An MTA-STS policy as fetched: where from, and its text."""

    url: str
    address: str
    content_type: str
    text: str


#: Connection errors after which the policy host's next address is tried.
_UNREACHABLE = (errno.ECONNREFUSED, errno.ENETUNREACH, errno.EHOSTUNREACH)

#: RFC 8461 section 3.3: the policy's fixed place on the policy host.
STS_PATH = "/.well-known/mta-sts.txt"


class _HTTPS(http.client.HTTPSConnection):
    """http.client's HTTPS connection to a given address, on a bounded socket (deadline, capped reads)."""

    def __init__(self, host: str, address: str, context: ssl.SSLContext, timeout: float) -> None:
        super().__init__(host, 443, timeout=timeout, context=context)
        self.address = address
        self.tls_context = context

        self.held: list[socket.socket] = []

    def connect(self) -> None:
        """TCP to the resolved address; TLS with SNI and name checks for the policy host."""
        raw = bounded.connect(self.address, self.port, self.timeout)
        self.sock = self.tls_context.wrap_socket(raw, server_hostname=self.host)
        self.held.append(self.sock)

    def release(self) -> None:
        """Close the connection's socket for good (after the response has been read)."""
        self.close()
        for sock in self.held:
            with contextlib.suppress(OSError):
                sock.close()
        self.held.clear()

    def close(self) -> None:
        """Forget the socket without closing it: the response still reads from it.

        http.client closes its connection as soon as a response says the connection will close; a
        regular socket survives that through makefile()'s reference count, our bounded reader does not.
        """
        self.sock = None
        super().close()


def read_policy_response(response: http.client.HTTPResponse, url: str) -> tuple[str, str]:
    """(content type, text) of a policy response, or PolicyFetchError: no redirects, text/plain, <= 64 KB."""
    if 300 <= response.status < 400:
        location = response.getheader("Location") or "no Location"
        raise PolicyFetchError(
            f"{url} redirects ({response.status} to {location}); RFC 8461 forbids following redirects"
        )
    if response.status != 200:
        raise PolicyFetchError(f"{url} answered HTTP {response.status} {response.reason}")
    content_type = response.getheader("Content-Type")
    if content_type is None:
        raise PolicyFetchError(f"{url} has no Content-Type (expected text/plain)")
    if content_type.split(";")[0].strip().lower() != "text/plain":
        raise PolicyFetchError(f"{url} has Content-Type {content_type!r}, not text/plain")
    length = response.getheader("Content-Length")
    if length is not None and length.strip().isdigit() and int(length) > STS_MAX_BYTES:
        raise PolicyFetchError(f"{url}: policy of {int(length)} bytes, over {STS_MAX_BYTES} (RFC 8461's cap)")
    body = bytearray()
    while True:
        chunk = response.read(16384)
        if not chunk:
            break
        body += chunk
        if len(body) > STS_MAX_BYTES:
            raise PolicyFetchError(f"{url}: policy over {STS_MAX_BYTES} bytes (RFC 8461's cap)")
    try:
        return content_type, body.decode("utf-8")
    except UnicodeDecodeError:
        raise PolicyFetchError(f"{url}: the policy is not UTF-8 text") from None


def read_smtp_reply(file: Any) -> tuple[int, list[bytes]]:
    """Read one SMTP reply through a bounded reader: (code, text lines); strict and capped.

    Raises ProtocolError (malformed or inconsistent lines), ReplyTooLarge (over MAX_REPLY_LINES lines or
    MAX_REPLY_BYTES bytes), smtplib.SMTPServerDisconnected (end of stream) or the reader's TimeoutError.
    """
    code: int | None = None
    lines: list[bytes] = []
    size = 0
    while True:
        line = file.readline(bounded.MAX_LINE + 1)
        if not line:
            raise smtplib.SMTPServerDisconnected("Connection unexpectedly closed")
        if len(line) > bounded.MAX_LINE and not line.endswith(b"\n"):
            raise ReplyTooLarge(f"reply line over {bounded.MAX_LINE} bytes")
        size += len(line)
        if size > bounded.MAX_REPLY_BYTES:
            raise ReplyTooLarge(f"reply over {bounded.MAX_REPLY_BYTES} bytes")
        try:
            code, more, text = parse_reply_line(line, code)
        except ReplyError as exc:
            raise ProtocolError(f"protocol error: {exc}") from None
        lines.append(text)
        if not more:
            return code, lines
        if len(lines) >= bounded.MAX_REPLY_LINES:
            raise ReplyTooLarge(f"reply over {bounded.MAX_REPLY_LINES} lines")


class _SMTP(smtplib.SMTP):
    """smtplib.SMTP on a bounded socket, with strict reply parsing and out-of-turn data detection.

    It records whether the TCP connection itself succeeded (a closed port and a silent one differ).
    """

    tcp_connected = False
    implicit_context: ssl.SSLContext | None = None
    sni: str | None = None

    def _get_socket(self, host: str, port: int, timeout: float) -> socket.socket:
        sock: socket.socket = bounded.connect(host, port, timeout)
        self.tcp_connected = True
        if self.implicit_context is not None:
            sock = self.implicit_context.wrap_socket(sock, server_hostname=self.sni)
        return sock

    def getreply(self) -> tuple[int, bytes]:
        """One strict, capped reply; any protocol or size error closes the connection."""
        if self.file is None:
            if self.sock is None:
                raise smtplib.SMTPServerDisconnected("not connected")
            self.file = self.sock.makefile("rb")
        try:
            code, lines = read_smtp_reply(self.file)
        except BaseException:
            self.close()
            raise
        return code, b"\n".join(lines)

    def out_of_turn(self) -> None:
        """Raise ProtocolError when the server sent data we did not ask for (a desynchronised dialogue)."""
        pending = getattr(self.file, "pending", None)
        extra = pending() if pending is not None else b""
        if extra:
            self.close()
            raise ProtocolError(
                f"protocol error: the server sent data out of turn ('{shown_bytes(extra)}'): replies would shift"
            )

    def send(self, s: Any) -> None:
        """Send a command, after checking that the server has not sent anything unasked."""
        if self.sock is not None:
            self.out_of_turn()
        if self.sock is not None:
            self.sock.settimeout(bounded.time_left(self.timeout))
        super().send(s)

    def starttls(self, *args: Any, context: ssl.SSLContext | None = None, **kwargs: Any) -> tuple[int, bytes]:  # type: ignore[override]
        """STARTTLS (must be advertised), with no plaintext data left over before the handshake."""
        self.ehlo_or_helo_if_needed()
        if not self.has_extn("starttls"):
            raise smtplib.SMTPNotSupportedError("STARTTLS extension not supported by server.")
        code, reply = self.docmd("STARTTLS")
        if code != 220:
            raise smtplib.SMTPResponseException(code, reply)
        self.upgrade(context or client_context())
        return code, reply

    def upgrade(self, context: ssl.SSLContext) -> None:
        """TLS handshake after a 220 to STARTTLS; forget what was learned before (RFC 3207)."""
        self.out_of_turn()
        assert self.sock is not None
        self.sock = context.wrap_socket(self.sock, server_hostname=self.sni or None)
        self.file = None
        self.helo_resp = self.ehlo_resp = None
        self.esmtp_features = {}
        self.does_esmtp = False

    def quit_quietly(self) -> None:
        """Send QUIT and close without waiting for the reply (a hostile server could delay it)."""
        try:
            if self.sock is not None:
                self.sock.settimeout(1.0)
                self.sock.sendall(b"QUIT\r\n")
        except OSError:
            pass
        self.close()


class _CappedPOP3Mixin:
    """poplib's multi-line reading, capped in lines and bytes."""

    def _getlongresp(self) -> tuple[bytes, list[bytes], int]:
        resp = self._getresp()  # type: ignore[attr-defined]
        lines: list[bytes] = []
        octets = 0
        while True:
            line, size = self._getline()  # type: ignore[attr-defined]
            if line == b".":
                return resp, lines, octets
            if line.startswith(b".."):
                size -= 1
                line = line[1:]
            octets += size
            lines.append(line)
            if len(lines) > bounded.MAX_REPLY_LINES:
                raise ReplyTooLarge(f"multi-line reply over {bounded.MAX_REPLY_LINES} lines")
            if octets > bounded.MAX_REPLY_BYTES:
                raise ReplyTooLarge(f"multi-line reply over {bounded.MAX_REPLY_BYTES} bytes")


class POP3(_CappedPOP3Mixin, poplib.POP3):
    """poplib.POP3 on a bounded socket."""

    def _create_socket(self, timeout: float) -> socket.socket:
        return bounded.connect(self.host, self.port, timeout)


class POP3_SSL(_CappedPOP3Mixin, poplib.POP3_SSL):
    """poplib.POP3_SSL on a bounded socket (the context should come from client_context)."""

    def _create_socket(self, timeout: float) -> socket.socket:
        sock = bounded.connect(self.host, self.port, timeout)
        return self.context.wrap_socket(sock, server_hostname=self.host)  # type: ignore[attr-defined,no-any-return]


def close_imap(imap: imaplib.IMAP4) -> None:
    """Send LOGOUT and close without waiting for the server's goodbye."""
    try:
        imap.sock.settimeout(1.0)
        imap.send(b"mpv0 LOGOUT\r\n")
    except (OSError, AttributeError):
        pass
    with contextlib.suppress(OSError):
        imap.shutdown()


def close_pop3(pop: poplib.POP3) -> None:
    """Send QUIT and close without waiting for the reply."""
    try:
        pop.sock.settimeout(1.0)
        pop.sock.sendall(b"QUIT\r\n")
    except (OSError, AttributeError):
        pass
    pop.close()


class IMAP4(imaplib.IMAP4):
    """imaplib.IMAP4 on a bounded socket (lines, literals and the connection's bytes capped)."""

    def _create_socket(self, timeout: float | None) -> socket.socket:
        return bounded.connect(self.host, self.port, timeout)


class IMAP4_SSL(imaplib.IMAP4_SSL):
    """imaplib.IMAP4_SSL on a bounded socket."""

    def _create_socket(self, timeout: float | None) -> socket.socket:
        sock = bounded.connect(self.host, self.port, timeout)
        return self.ssl_context.wrap_socket(sock, server_hostname=self.host)  # type: ignore[no-any-return]


def tls_info(sock: ssl.SSLSocket, port: int) -> TlsInfo:
    """Facts of an established TLS socket."""
    cipher = sock.cipher()
    return TlsInfo(
        port=port,
        version=sock.version() or "",
        cipher=cipher[0] if cipher else "",
        der=sock.getpeercert(binary_form=True) or b"",
    )


class Context:
    """Options plus memoised DNS answers and network probes, shared by all checks of one run."""

    def __init__(self, options: Options) -> None:
        self.options = options
        self.spec = options.spec
        self.timeout = options.timeout
        self.io_timeout = options.timeout * 0.7
        self._cells: dict[Any, _Cell] = {}
        self._cells_lock = threading.Lock()
        self.token = secrets.token_hex(6)
        #: Ids of the checks in this run (set by the runner), for work shared between checks.
        self.selected: set[str] = set()
        #: Set once smtp.roundtrip has logged in, so wrong-password attempts come after it.
        self.roundtrip_logged_in = threading.Event()
        #: Set once smtp.sender_ownership has done its logins (same reason).
        self.sender_checked = threading.Event()
        #: Set once imap.quota and smtp.spam_filter have logged in (same reason).
        self.quota_checked = threading.Event()
        self.spam_checked = threading.Event()

    # ---- memo -------------------------------------------------------------------------------------

    def memo(self, key: Any, fn: Callable[[], T]) -> T:
        """Compute fn() once per key (thread-safe); later callers get the value or the same exception."""
        with self._cells_lock:
            cell = self._cells.setdefault(key, _Cell())
        # Another check may be computing this cell: wait no longer than this check's own deadline.
        scope = bounded.current()
        if not cell.lock.acquire(timeout=scope.hard_remaining() if scope is not None else -1):
            raise TimeoutError("timed out")
        try:
            if not cell.done:
                try:
                    cell.value = fn()
                except BaseException as exc:
                    cell.error = exc
                cell.done = True
        finally:
            cell.lock.release()
        if cell.error is not None:
            raise cell.error
        return cell.value  # type: ignore[no-any-return]

    # ---- what the user gave -----------------------------------------------------------------------

    @property
    def host(self) -> Any:
        """The testinfra host, or None."""
        return self.options.host

    @property
    def has_creds(self) -> bool:
        """Whether test credentials were given."""
        return bool(self.options.user and self.options.password)

    @property
    def target_is_ip(self) -> bool:
        """Whether TARGET is an IP address."""
        try:
            ipaddress.ip_address(self.options.target)
            return True
        except ValueError:
            return False

    def port_expected(self, port: int) -> bool | None:
        """Whether the spec serves the port (None without a spec; 25 is always expected)."""
        if self.spec is not None:
            return self.spec.ports.get(port, False)
        return True if port == 25 else None

    # ---- DNS ------------------------------------------------------------------------------------

    @property
    def resolver(self) -> dns.resolver.Resolver:
        """The dnspython resolver: --resolver, else the system's configuration."""

        def make() -> dns.resolver.Resolver:
            if self.options.resolver is not None:
                resolver = dns.resolver.Resolver(configure=False)
                resolver.nameservers = [self.options.resolver[0]]
                resolver.port = self.options.resolver[1]
            else:
                resolver = dns.resolver.Resolver()
            resolver.timeout = self.io_timeout
            resolver.lifetime = self.io_timeout
            resolver.cache = None
            return resolver

        return self.memo("resolver", make)

    @property
    def resolver_name(self) -> str:
        """How to name the resolver in reasons."""
        if self.options.resolver:
            addr, port = self.options.resolver
            return f"{addr}:{port}" if port != 53 else addr
        return "the system resolver"

    def lookup(self, name: str, rdtype: str) -> list[str] | None:
        """Record texts for name/rdtype (TXT joined, names without trailing dot); None when none exist.

        Raises LookupFailed when the resolver does not answer or answers with an error.
        """
        key = ("dns", name.lower().rstrip("."), rdtype)
        return self.memo(key, lambda: self._lookup(name, rdtype))

    def _lookup(self, name: str, rdtype: str) -> list[str] | None:
        try:
            lifetime = bounded.time_left(self.io_timeout)
            answer = self.resolver.resolve(
                dns.name.from_text(name), rdtype, search=False, raise_on_no_answer=False, lifetime=lifetime
            )
        except TimeoutError:
            raise LookupFailed(
                f"{self.resolver_name} did not answer for {name} {rdtype} in the time left"
            ) from None
        except dns.resolver.NXDOMAIN:
            return None
        except dns.resolver.LifetimeTimeout:
            raise LookupFailed(
                f"{self.resolver_name} did not answer for {name} {rdtype} within {self.io_timeout:g}s"
            ) from None
        except dns.resolver.NoNameservers as exc:
            raise LookupFailed(f"{self.resolver_name} failed for {name} {rdtype}: {exc}") from None
        except dns.exception.DNSException as exc:
            raise LookupFailed(f"lookup of {name} {rdtype} failed: {exc}") from None
        if answer.rrset is None:
            return None
        out = []
        for rr in list(answer.rrset)[:100]:
            if rr.rdtype == dns.rdatatype.TXT:
                out.append(b"".join(rr.strings).decode("utf-8", "replace"))
            else:
                out.append(rr.to_text().rstrip("."))
        return out

    def addresses_of(self, name: str) -> list[str]:
        """A and AAAA addresses of a name ([] when it has none)."""
        return (self.lookup(name, "A") or []) + (self.lookup(name, "AAAA") or [])

    def ptr_names(self, address: str) -> list[str]:
        """PTR names of an address, lower-case."""
        rev = dns.reversename.from_address(address).to_text().rstrip(".")
        return [n.lower() for n in (self.lookup(rev, "PTR") or [])]

    def mx(self, domain: str) -> list[tuple[int, str]]:
        """MX records of a domain as (preference, host)."""
        return parse_mx(self.lookup(domain, "MX") or [])

    def mta_sts_policy(self, domain: str) -> StsFetch:
        """The policy at https://mta-sts.DOMAIN/.well-known/mta-sts.txt (memoised), or PolicyFetchError.

        Verified HTTPS (system store plus --ca, host name, dates), no redirects followed, text/plain, at
        most 64 KB, within the check's deadline; addresses verify does not probe are refused as elsewhere.
        """
        return self.memo(("mta-sts", domain.lower()), lambda: self._fetch_policy(domain))

    def _fetch_policy(self, domain: str) -> StsFetch:
        host = f"mta-sts.{domain.lower().rstrip('.')}"
        url = f"https://{host}{STS_PATH}"
        found = self.addresses_of(host)
        if not found:
            raise PolicyFetchError(f"{host} has no A or AAAA record, so {url} cannot be fetched")
        safe = [address for address in found if self.unsafe_reason(address, host) is None]
        if not safe:
            raise PolicyFetchError(self.unsafe_reason(found[0], host) or f"{host}: no usable address")
        context = https_context(self.options.ca)
        for index, address in enumerate(safe):
            conn = _HTTPS(host, address, context, self.io_timeout)
            try:
                conn.request(
                    "GET",
                    STS_PATH,
                    headers={"User-Agent": "mailprov-verify", "Accept": "text/plain", "Connection": "close"},
                )
                content_type, text = read_policy_response(conn.getresponse(), url)
                return StsFetch(url, address, content_type, text)
            except OSError as exc:
                # Like a sender, try the policy host's next address when this one cannot be reached at all.
                if exc.errno not in _UNREACHABLE or index == len(safe) - 1:
                    raise PolicyFetchError(f"{url} ({address}:443): {describe(exc)}") from None
            except PolicyFetchError:
                raise
            except http.client.HTTPException as exc:
                raise PolicyFetchError(f"{url}: HTTP protocol error: {type(exc).__name__} {exc}") from None
            except Exception as exc:
                raise PolicyFetchError(f"{url} ({address}): {describe(exc)}") from None
            finally:
                conn.release()
        raise PolicyFetchError(f"{url}: no address answered")

    # ---- the target -------------------------------------------------------------------------------

    def address(self) -> str:
        """The address to connect to: TARGET itself, or its first A/AAAA record via the resolver.

        Raises Skip-free errors (LookupFailed / ValueError) that checks turn into failures.
        """

        def resolve() -> str:
            if self.target_is_ip:
                found = [str(ipaddress.ip_address(self.options.target))]
            else:
                found = self.addresses_of(self.options.target)
            if not found:
                raise LookupFailed(f"{self.options.target} has no A or AAAA record ({self.resolver_name})")
            if self.options.allow_loopback:
                return found[0]
            for address in found:
                if unsafe_address(address) is None:
                    return address
            raise UnsafeAddress(self.unsafe_reason(found[0]) or "")

        return self.memo("address", resolve)

    def unsafe_reason(self, address: str, name: str | None = None) -> str | None:
        """Why verify will not connect to address (None when it may, or with --allow-loopback)."""
        kind = unsafe_address(address)
        if kind is None or self.options.allow_loopback:
            return None
        shown = f"{name} resolves to {address}" if name else address
        if name is None and not self.target_is_ip:
            shown = f"{self.options.target} resolves to {address}"
        return (
            f"{shown}, {kind}: verify does not probe this machine or a non-host "
            "(pass --allow-loopback to test a server on this machine)"
        )

    def target_addresses(self) -> list[str]:
        """All addresses of TARGET."""
        if self.target_is_ip:
            return [self.address()]
        return self.memo("target_addresses", lambda: self.addresses_of(self.options.target))

    def hostname(self) -> str | None:
        """The mail host's expected name: the spec's hostname, TARGET when it is a name, else its PTR."""

        def find() -> str | None:
            if self.spec is not None:
                return self.spec.hostname
            if not self.target_is_ip:
                return self.options.target.lower().rstrip(".")
            try:
                names = self.ptr_names(self.address())
            except LookupFailed:
                return None
            return names[0] if names else None

        return self.memo("hostname", find)

    def sni(self) -> str | None:
        """The name to send as TLS SNI: the expected host name when known (never a lookup failure)."""
        try:
            return self.hostname()
        except Exception:
            return None

    def require_hostname(self) -> str:
        """The expected host name, or Skip with the reason."""
        name = self.hostname()
        if not name:
            raise Skip("no host name: TARGET is an address without PTR; pass --spec")
        return name

    def domains(self) -> list[str]:
        """Mail domains to check: --domain, else the spec's, else inferred from the host name."""

        def find() -> list[str]:
            if self.options.domains:
                return list(self.options.domains)
            if self.spec is not None:
                return self.spec.domain_names
            name = self.hostname()
            if not name:
                return []
            labels = name.split(".")
            # The closest parent domain that publishes MX records, else the host name's parent.
            candidates = [".".join(labels[i:]) for i in range(len(labels) - 1)]
            for candidate in candidates:
                try:
                    if self.lookup(candidate, "MX"):
                        return [candidate]
                except LookupFailed:
                    break
            return [candidates[1]] if len(candidates) > 1 else candidates

        return self.memo("domains", find)

    def require_domains(self) -> list[str]:
        """Domains to check, or Skip."""
        found = self.domains()
        if not found:
            raise Skip("no mail domain known: pass --domain or --spec")
        return found

    def domains_inferred(self) -> bool:
        """Whether the domains were guessed from the host name (no --domain, no spec)."""
        return not self.options.domains and self.spec is None

    # ---- SMTP ---------------------------------------------------------------------------------

    def _verify_context(self) -> ssl.SSLContext:
        return self.memo("verify_ctx", lambda: verifying_context(self.options.ca))

    def smtp(self, port: int) -> SmtpProbe:
        """One memoised SMTP session on port: greeting, EHLO, STARTTLS (or implicit TLS on 465), EHLO."""
        return self.memo(("smtp", port), lambda: self._smtp_probe(port))

    def _smtp_probe(self, port: int) -> SmtpProbe:
        probe = SmtpProbe(port)
        try:
            probe.address = self.address()
        except LookupFailed as exc:
            probe.error = str(exc)
            probe.unsafe = isinstance(exc, UnsafeAddress)
            return probe
        verify_error: str | None = None
        for verify in (True, False):
            probe = SmtpProbe(port, address=probe.address)
            try:
                self._smtp_session(probe, verify)
            except ssl.SSLCertVerificationError as exc:
                verify_error = exc.verify_message or str(exc)
                continue
            except (OSError, smtplib.SMTPException, EOFError) as exc:
                reason = describe(exc)
                if port != 465 and probe.caps and probe.ehlo_code == 250:
                    probe.starttls_error = reason
                else:
                    probe.error = reason
            break
        if probe.tls is not None:
            probe.tls.verify_error = verify_error
        return probe

    def _smtp_session(self, probe: SmtpProbe, verify: bool) -> None:
        port = probe.port
        client = _SMTP(timeout=self.io_timeout)
        client.sni = self.sni()
        if port == 465:
            client.implicit_context = self._verify_context() if verify else client_context()
        try:
            try:
                code, msg = client.connect(probe.address, port)
            finally:
                probe.tcp = client.tcp_connected
            probe.banner_code, probe.banner = code, text_of(msg)
            if code != 220:
                raise smtplib.SMTPConnectError(code, msg)
            local = client.sock.getsockname()[0] if client.sock else "127.0.0.1"
            client.local_hostname = f"[IPv6:{local}]" if ":" in local else f"[{local}]"
            if port == 465 and isinstance(client.sock, ssl.SSLSocket):
                probe.tls = tls_info(client.sock, port)
            code, msg = client.ehlo()
            probe.ehlo_code = code
            probe.caps = parse_ehlo(msg) if code == 250 else {}
            if code != 250:
                raise smtplib.SMTPHeloError(code, msg)
            if port != 465 and "STARTTLS" in probe.caps:
                context = self._verify_context() if verify else client_context()
                code, msg = client.docmd("STARTTLS")
                if code != 220:
                    probe.starttls_error = f"STARTTLS refused: {code} {text_of(msg)}"
                    return
                client.upgrade(context)
                assert isinstance(client.sock, ssl.SSLSocket)
                probe.tls = tls_info(client.sock, port)
                code, msg = client.ehlo()
                probe.caps_tls = parse_ehlo(msg) if code == 250 else {}
        finally:
            client.quit_quietly()

    def smtp_client(self, port: int) -> _SMTP:
        """A fresh SMTP client on port after EHLO (TLS-wrapped on 465; the caller does STARTTLS)."""
        client = _SMTP(timeout=self.io_timeout)
        client.sni = self.sni()
        if port == 465:
            client.implicit_context = client_context()
        code, msg = client.connect(self.address(), port)
        if code != 220:
            client.quit_quietly()
            raise smtplib.SMTPConnectError(code, msg)
        local = client.sock.getsockname()[0] if client.sock else "127.0.0.1"
        client.local_hostname = f"[IPv6:{local}]" if ":" in local else f"[{local}]"
        client.ehlo()
        return client

    def tcp_open(self, port: int) -> bool:
        """Whether the target accepts TCP on port (memoised; the SMTP probe's answer when it is done)."""

        def connect() -> bool:
            cell = self._cells.get(("smtp", port))
            if cell is not None and cell.done and cell.error is None:
                return bool(cell.value.tcp)
            try:
                with bounded.connect(self.address(), port, self.io_timeout):
                    return True
            except UnsafeAddress:
                raise
            except (OSError, LookupFailed):
                return False

        return self.memo(("tcp", port), connect)

    def require_port(self, port: int) -> None:
        """Skip when the port is switched off in the spec, or closed while no spec says it should be open."""
        expected = self.port_expected(port)
        if expected is False:
            raise Skip(f"port {port} is switched off in the spec")
        if port in SMTP_PORTS:
            probe = self.smtp(port)
            if probe.unsafe:
                raise UnsafeAddress(probe.error or "")
            if expected is None and not probe.tcp:
                raise Skip(f"port {port} is closed and no spec says it should be open")

    # ---- TLS ----------------------------------------------------------------------------------

    def tls(self, port: int) -> TlsInfo:
        """The TLS facts of a TLS port (from the shared SMTP/IMAP/POP3 probes); raises when TLS failed."""
        if port in SMTP_PORTS:
            probe = self.smtp(port)
            if probe.tls is None:
                raise ConnectionError(probe.error or probe.starttls_error or "no STARTTLS offered")
            return probe.tls
        box = self.mailbox(port)
        if box.tls is None:
            raise ConnectionError("no TLS")
        return box.tls

    def mailbox(self, port: int) -> MailboxProbe:
        """Memoised IMAP/POP3 greeting and capabilities on port (TLS handshake on 993/995)."""
        return self.memo(("mailbox", port), lambda: self._mailbox_probe(port))

    def _mailbox_probe(self, port: int) -> MailboxProbe:
        address = self.address()
        verify_error: str | None = None
        for verify in (True, False):
            context = self._verify_context() if verify else client_context()
            probe = MailboxProbe(port)
            try:
                if port in IMAP_PORTS:
                    imap = (
                        IMAP4_SSL(address, port, ssl_context=context, timeout=self.io_timeout)
                        if port == 993
                        else IMAP4(address, port, timeout=self.io_timeout)
                    )
                    try:
                        probe.greeting = text_of(imap.welcome)
                        probe.caps = list(imap.capabilities)
                        if isinstance(imap.sock, ssl.SSLSocket):
                            probe.tls = tls_info(imap.sock, port)
                    finally:
                        close_imap(imap)
                else:
                    pop = (
                        POP3_SSL(address, port, context=context, timeout=self.io_timeout)
                        if port == 995
                        else POP3(address, port, timeout=self.io_timeout)
                    )
                    try:
                        probe.greeting = text_of(pop.getwelcome())
                        try:
                            probe.caps = sorted(pop.capa())
                        except poplib.error_proto:
                            probe.caps = []
                        if isinstance(pop.sock, ssl.SSLSocket):
                            probe.tls = tls_info(pop.sock, port)
                    finally:
                        close_pop3(pop)
            except ssl.SSLCertVerificationError as exc:
                verify_error = exc.verify_message or str(exc)
                continue
            break
        if probe.tls is not None:
            probe.tls.verify_error = verify_error
        return probe

    def tls_handshake(self, port: int, context: ssl.SSLContext) -> TlsInfo:
        """A fresh TLS handshake on port with a given context (STARTTLS first on 25/587)."""
        address = self.address()
        if port in STARTTLS_PORTS:
            client = _SMTP(timeout=self.io_timeout)
            client.sni = self.sni()
            try:
                client.connect(address, port)
                client.local_hostname = "[{}]".format(client.sock.getsockname()[0] if client.sock else "x")
                client.ehlo()
                code, msg = client.docmd("STARTTLS")
                if code != 220:
                    raise ConnectionError(f"STARTTLS refused: {code} {text_of(msg)}")
                client.upgrade(context)
                assert isinstance(client.sock, ssl.SSLSocket)
                return tls_info(client.sock, port)
            finally:
                client.close()
        with (
            bounded.connect(address, port, self.io_timeout) as raw,
            context.wrap_socket(raw, server_hostname=self.sni()) as sock,
        ):
            return tls_info(sock, port)
