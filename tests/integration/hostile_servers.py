"""Fake mail servers that misbehave on purpose, and a fake DNS zone, on loopback: for `mailprov verify`.

`MailHost` serves SMTP (25 and 587 with STARTTLS, 465 implicit TLS), IMAP (143 with STARTTLS, 993) and
POP3 (110 with STLS, 995) on one loopback address, answering like a well-configured server. Each hostile
behaviour is a subclass overriding one part of the dialogue (trickled banners, endless continuation
lines, a gigabyte literal, markup and control bytes, garbage reply codes, out-of-turn lines, AUTH or
LOGIN processed in plaintext, a TLS port that never completes a handshake). `FakeZone` is a small
dnspython-based authoritative server whose TXT records may hold any bytes (ESC, NUL, markup).

Everything runs in daemon threads and is stopped by `stop()`; binding ports < 1024 needs root.
"""

from __future__ import annotations

import contextlib
import socket
import ssl
import threading
import time
from collections.abc import Callable
from pathlib import Path

import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import dns.rdtypes.ANY.TXT

SMTP_PORTS = (25, 587, 465)
IMAP_PORTS = (143, 993)
POP3_PORTS = (110, 995)
IMPLICIT_TLS = (465, 993, 995)
HOSTNAME = "mail.hostile.test"


class Conn:
    """One accepted connection: line reading with a cap, sending, and a server-side TLS upgrade."""

    def __init__(self, sock: socket.socket, host: MailHost, port: int) -> None:
        self.sock = sock
        self.host = host
        self.port = port
        self.buffer = b""
        self.tls = False
        sock.settimeout(30)

    def send(self, data: bytes | str) -> None:
        """Send everything (raises OSError when the client has gone)."""
        self.sock.sendall(data.encode() if isinstance(data, str) else data)

    def trickle(self, data: bytes | str, delay: float = 1.0) -> None:
        """Send one byte per delay seconds, until done, the client leaves or the host stops."""
        raw = data.encode() if isinstance(data, str) else data
        for i in range(len(raw)):
            if self.host.stopping.is_set():
                return
            self.sock.sendall(raw[i : i + 1])
            self.host.stopping.wait(delay)

    def readline(self) -> bytes | None:
        """The next line without its ending, or None at end of stream."""
        while b"\n" not in self.buffer:
            if len(self.buffer) > 65536:
                return None
            try:
                chunk = self.sock.recv(4096)
            except OSError:
                return None
            if not chunk:
                return None
            self.buffer += chunk
        line, _, self.buffer = self.buffer.partition(b"\n")
        return line.rstrip(b"\r")

    def starttls(self) -> bool:
        """Upgrade to TLS as the server; False when the handshake fails."""
        try:
            self.sock = self.host.tls_context.wrap_socket(self.sock, server_side=True)
        except (OSError, ssl.SSLError):
            return False
        self.tls = True
        self.buffer = b""
        return True

    def flood(self, chunk: bytes) -> None:
        """Send chunk again and again until the client stops reading or the host stops."""
        while not self.host.stopping.is_set():
            self.sock.sendall(chunk)


class MailHost:
    """A well-behaved fake mail server on every mail port of one address; subclasses misbehave."""

    #: Domain whose mailboxes exist (postmaster and alice).
    domain = "hostile.test"

    def __init__(self, address: str, tls_context: ssl.SSLContext) -> None:
        self.address = address
        self.tls_context = tls_context
        self.stopping = threading.Event()
        self.listeners: list[socket.socket] = []
        self.connections: dict[int, int] = dict.fromkeys(SMTP_PORTS + IMAP_PORTS + POP3_PORTS, 0)
        self.lock = threading.Lock()
        self.open: list[socket.socket] = []

    # ---- plumbing ---------------------------------------------------------------------------------

    def start(self) -> MailHost:
        """Listen on every port (SO_REUSEADDR) and serve each connection in a daemon thread."""
        for port in self.connections:
            sock = socket.socket()
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((self.address, port))
            sock.listen(64)
            self.listeners.append(sock)
            threading.Thread(target=self._accept, args=(sock, port), daemon=True).start()
        return self

    def stop(self) -> None:
        """Close the listeners and every open connection."""
        self.stopping.set()
        for sock in self.listeners + self.open:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            with contextlib.suppress(OSError):
                sock.close()

    def __enter__(self) -> MailHost:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _accept(self, listener: socket.socket, port: int) -> None:
        while not self.stopping.is_set():
            try:
                sock, _ = listener.accept()
            except OSError:
                return
            with self.lock:
                self.connections[port] += 1
                number = self.connections[port]
                self.open.append(sock)
            threading.Thread(target=self._serve, args=(sock, port, number), daemon=True).start()

    def _serve(self, sock: socket.socket, port: int, number: int) -> None:
        conn = Conn(sock, self, port)
        try:
            if port in IMPLICIT_TLS and not self.implicit_tls(conn):
                return
            if port in SMTP_PORTS:
                self.smtp(conn, number)
            elif port in IMAP_PORTS:
                self.imap(conn, number)
            else:
                self.pop3(conn, number)
        except (OSError, ssl.SSLError, ValueError):
            pass
        finally:
            with contextlib.suppress(OSError):
                conn.sock.close()

    def implicit_tls(self, conn: Conn) -> bool:
        """The TLS handshake on 465/993/995 (False: give up on the connection)."""
        return conn.starttls()

    # ---- SMTP -------------------------------------------------------------------------------------

    def banner(self, conn: Conn, number: int) -> None:
        """Send the greeting."""
        conn.send(f"220 {HOSTNAME} ESMTP\r\n")

    def ehlo_lines(self, conn: Conn) -> list[str]:
        """EHLO keywords offered in the current state."""
        lines = [HOSTNAME, "PIPELINING", "SIZE 10240000", "8BITMIME", "ENHANCEDSTATUSCODES"]
        if not conn.tls and conn.port != 465:
            lines.append("STARTTLS")
        if conn.tls and conn.port in (587, 465):
            lines.append("AUTH PLAIN LOGIN")
        return lines

    def ehlo(self, conn: Conn, arg: str) -> None:
        """Answer EHLO."""
        lines = self.ehlo_lines(conn)
        conn.send("".join(f"250-{x}\r\n" for x in lines[:-1]) + f"250 {lines[-1]}\r\n")

    def auth(self, conn: Conn, arg: str) -> None:
        """Answer AUTH: refused before TLS, a failed login after."""
        if not conn.tls:
            conn.send("530 5.7.0 Must issue a STARTTLS command first\r\n")
        else:
            conn.send("535 5.7.8 Error: authentication failed\r\n")

    def mail(self, conn: Conn, arg: str) -> None:
        """Answer MAIL FROM: our own addresses are refused from outside (no login on this fake)."""
        sender = arg.split(":", 1)[-1].strip().strip("<>").lower()
        if sender.endswith("@" + self.domain):
            conn.send(f"553 5.7.1 <{sender}>: Sender address rejected: not logged in\r\n")
        else:
            conn.send("250 2.1.0 Ok\r\n")

    def rcpt(self, conn: Conn, arg: str) -> None:
        """Answer RCPT TO: postmaster accepted, unknown local users and other domains refused."""
        address = arg.split(":", 1)[-1].strip().strip("<>").lower()
        if getattr(conn, "helo", "") == HOSTNAME:
            conn.send("550 5.7.1 Helo command rejected: You are not me\r\n")
        elif address == f"postmaster@{self.domain}":
            conn.send("250 2.1.5 Ok\r\n")
        elif address.endswith("@" + self.domain):
            conn.send(f"550 5.1.1 <{address}>: Recipient address rejected: User unknown\r\n")
        else:
            conn.send(f"554 5.7.1 <{address}>: Relay access denied\r\n")

    def smtp(self, conn: Conn, number: int) -> None:
        """The SMTP dialogue."""
        self.banner(conn, number)
        while True:
            line = conn.readline()
            if line is None:
                return
            verb, _, arg = line.decode("latin-1").partition(" ")
            verb = verb.upper()
            if verb in ("EHLO", "HELO"):
                conn.helo = arg.strip().lower()  # type: ignore[attr-defined]
                self.ehlo(conn, arg)
            elif verb == "STARTTLS" and not conn.tls and conn.port != 465:
                conn.send("220 2.0.0 Ready to start TLS\r\n")
                if not conn.starttls():
                    return
            elif verb == "AUTH":
                self.auth(conn, arg)
            elif verb == "MAIL":
                self.mail(conn, arg)
            elif verb == "RCPT":
                self.rcpt(conn, arg)
            elif verb in ("RSET", "NOOP"):
                conn.send("250 2.0.0 Ok\r\n")
            elif verb == "QUIT":
                conn.send("221 2.0.0 Bye\r\n")
                return
            elif verb == "*":
                conn.send("501 5.7.0 Authentication aborted\r\n")
            else:
                conn.send("502 5.5.2 Error: command not recognized\r\n")

    # ---- IMAP -------------------------------------------------------------------------------------

    def imap_caps(self, conn: Conn) -> str:
        """The capability list in the current state."""
        if conn.tls:
            return "IMAP4rev1 AUTH=PLAIN"
        return "IMAP4rev1 STARTTLS LOGINDISABLED"

    def imap_greeting(self, conn: Conn, number: int) -> None:
        """Send the IMAP greeting."""
        conn.send(f"* OK [CAPABILITY {self.imap_caps(conn)}] ready\r\n")

    def imap_login(self, conn: Conn, tag: str, arg: str) -> None:
        """Answer LOGIN: plaintext disallowed before TLS, a failure after."""
        if not conn.tls:
            conn.send(
                f"{tag} NO [PRIVACYREQUIRED] Plaintext authentication disallowed on non-secure connections.\r\n"
            )
        else:
            conn.send(f"{tag} NO [AUTHENTICATIONFAILED] Authentication failed.\r\n")

    def imap_capability(self, conn: Conn, tag: str) -> None:
        """Answer CAPABILITY."""
        conn.send(f"* CAPABILITY {self.imap_caps(conn)}\r\n{tag} OK done\r\n")

    def imap(self, conn: Conn, number: int) -> None:
        """The IMAP dialogue."""
        self.imap_greeting(conn, number)
        while True:
            line = conn.readline()
            if line is None:
                return
            tag, _, rest = line.decode("latin-1").partition(" ")
            command, _, arg = rest.partition(" ")
            command = command.upper()
            if command == "CAPABILITY":
                self.imap_capability(conn, tag)
            elif command == "STARTTLS" and not conn.tls:
                conn.send(f"{tag} OK Begin TLS negotiation now\r\n")
                if not conn.starttls():
                    return
            elif command == "LOGIN":
                self.imap_login(conn, tag, arg)
            elif command == "LOGOUT":
                conn.send(f"* BYE Logging out\r\n{tag} OK Logout completed\r\n")
                return
            elif command == "NOOP":
                conn.send(f"{tag} OK NOOP completed\r\n")
            else:
                conn.send(f"{tag} BAD Error in IMAP command\r\n")

    # ---- POP3 -------------------------------------------------------------------------------------

    def pop3_greeting(self, conn: Conn, number: int) -> None:
        """Send the POP3 greeting."""
        conn.send("+OK POP3 ready\r\n")

    def pop3_capa(self, conn: Conn) -> None:
        """Answer CAPA."""
        caps = ["USER", "PIPELINING"] + ([] if conn.tls else ["STLS"])
        conn.send("+OK\r\n" + "".join(f"{c}\r\n" for c in caps) + ".\r\n")

    def pop3(self, conn: Conn, number: int) -> None:
        """The POP3 dialogue."""
        self.pop3_greeting(conn, number)
        while True:
            line = conn.readline()
            if line is None:
                return
            command = line.decode("latin-1").split(" ", 1)[0].upper()
            if command == "CAPA":
                self.pop3_capa(conn)
            elif command == "STLS" and not conn.tls:
                conn.send("+OK Begin TLS negotiation\r\n")
                if not conn.starttls():
                    return
            elif command == "USER":
                conn.send("+OK\r\n")
            elif command == "PASS":
                conn.send("-ERR [AUTH] Authentication failed.\r\n")
            elif command == "QUIT":
                conn.send("+OK Logging out\r\n")
                return
            else:
                conn.send("-ERR Unknown command\r\n")


# ---- hostile behaviours -----------------------------------------------------------------------------


class TrickleAll(MailHost):
    """Every greeting arrives one byte per second (the per-read timeout never fires)."""

    def banner(self, conn: Conn, number: int) -> None:
        conn.trickle(f"220 {HOSTNAME} ESMTP\r\n")

    def imap_greeting(self, conn: Conn, number: int) -> None:
        conn.trickle(f"* OK [CAPABILITY {self.imap_caps(conn)}] ready\r\n")

    def pop3_greeting(self, conn: Conn, number: int) -> None:
        conn.trickle("+OK POP3 ready\r\n")


class TrickleLater(TrickleAll):
    """Each port's first connection is answered normally; later greetings trickle one byte per second."""

    def banner(self, conn: Conn, number: int) -> None:
        (MailHost.banner if number == 1 else TrickleAll.banner)(self, conn, number)

    def imap_greeting(self, conn: Conn, number: int) -> None:
        (MailHost.imap_greeting if number == 1 else TrickleAll.imap_greeting)(self, conn, number)

    def pop3_greeting(self, conn: Conn, number: int) -> None:
        (MailHost.pop3_greeting if number == 1 else TrickleAll.pop3_greeting)(self, conn, number)


class EndlessEhlo(MailHost):
    """EHLO continuation lines that never end."""

    def ehlo(self, conn: Conn, arg: str) -> None:
        conn.send(f"250-{HOSTNAME}\r\n")
        conn.flood(b"250-X-FILLER " + b"x" * 50 + b"\r\n")


class EndlessCapa(MailHost):
    """A POP3 CAPA reply that never ends."""

    def pop3_capa(self, conn: Conn) -> None:
        conn.send("+OK\r\n")
        conn.flood(b"X-FILLER " + b"y" * 60 + b"\r\n")


class HugeLiteral(MailHost):
    """An IMAP literal announced as 1 GiB, then a stream of bytes."""

    def imap_greeting(self, conn: Conn, number: int) -> None:
        conn.send("* OK ready\r\n")

    def imap_capability(self, conn: Conn, tag: str) -> None:
        conn.send("* CAPABILITY {1073741824}\r\n")
        conn.flood(b"z" * 65536)


#: Markup, terminal escapes (title change, screen clear), NUL and a bidi override.
NASTY = "[link=http://evil.test]click[/link] [/] [bold red]x\x1b]0;pwned\x07\x1b[2J\x00\u202e"


class Markup(MailHost):
    """Replies full of Rich markup, ESC sequences and NUL bytes."""

    def banner(self, conn: Conn, number: int) -> None:
        conn.send(f"220 {NASTY} ESMTP\r\n".encode())

    def rcpt(self, conn: Conn, arg: str) -> None:
        conn.send(f"554 5.7.1 {NASTY}\r\n".encode())

    def imap_greeting(self, conn: Conn, number: int) -> None:
        conn.send(f"* OK [CAPABILITY {self.imap_caps(conn)}] {NASTY}\r\n".encode())

    def pop3_greeting(self, conn: Conn, number: int) -> None:
        conn.send(f"+OK {NASTY}\r\n".encode())


def garbage_rcpt(reply: str) -> type[MailHost]:
    """A server answering every RCPT with a reply that is not SMTP (e.g. 'XYZ', '600')."""

    class Garbage(MailHost):
        def rcpt(self, conn: Conn, arg: str) -> None:
            conn.send(reply + "\r\n")

    Garbage.__name__ = f"GarbageRcpt({reply.split()[0]})"
    return Garbage


class ExtraAfterBanner(MailHost):
    """The greeting is followed by an unasked '250' line: every later reply would shift by one."""

    def banner(self, conn: Conn, number: int) -> None:
        conn.send(f"220 {HOSTNAME} ESMTP\r\n250 2.1.5 Ok\r\n")


def plaintext_auth(reply: str, advertise: bool = False, second_ehlo: bool = False) -> type[MailHost]:
    """AUTH processed before STARTTLS (reply: 235 accepted, 334 challenge, 535 failed)."""

    class Plain(MailHost):
        ehlos: dict[int, int]

        def ehlo_lines(self, conn: Conn) -> list[str]:
            lines = super().ehlo_lines(conn)
            seen = getattr(conn, "ehlos", 0) + 1
            conn.ehlos = seen  # type: ignore[attr-defined]
            if not conn.tls and (advertise or (second_ehlo and seen >= 2)):
                lines.append("AUTH PLAIN LOGIN")
            return lines

        def auth(self, conn: Conn, arg: str) -> None:
            if conn.tls:
                super().auth(conn, arg)
            else:
                conn.send(reply + "\r\n")

    Plain.__name__ = f"PlaintextAuth({reply.split()[0]}{', second EHLO' if second_ehlo else ''})"
    return Plain


class LoginDespiteDisabled(MailHost):
    """Advertises LOGINDISABLED on 143 but logs anyone in before STARTTLS."""

    def imap_login(self, conn: Conn, tag: str, arg: str) -> None:
        conn.send(f"{tag} OK [CAPABILITY IMAP4rev1] Logged in\r\n")


class LoginFailsInPlaintext(MailHost):
    """Advertises LOGINDISABLED but checks passwords in plaintext ('authentication failed')."""

    def imap_login(self, conn: Conn, tag: str, arg: str) -> None:
        conn.send(f"{tag} NO [AUTHENTICATIONFAILED] Authentication failed.\r\n")


class LoginDisabledUnannounced(MailHost):
    """Refuses plaintext LOGIN but does not advertise LOGINDISABLED (clients send the password first)."""

    def imap_caps(self, conn: Conn) -> str:
        return "IMAP4rev1 AUTH=PLAIN" if conn.tls else "IMAP4rev1 STARTTLS"


class BrokenTls993(MailHost):
    """Port 993 accepts TCP but answers the TLS handshake with plaintext garbage."""

    def implicit_tls(self, conn: Conn) -> bool:
        if conn.port == 993:
            conn.send("* OK this is not TLS\r\n")
            time.sleep(0.2)
            return False
        return super().implicit_tls(conn)


class LongLine(MailHost):
    """An EHLO reply line of 200 kB with no end in sight for a line reader."""

    def ehlo(self, conn: Conn, arg: str) -> None:
        conn.send(b"250-" + b"A" * 200_000 + b"\r\n250 OK\r\n")


class TrickledHandshake(MailHost):
    """The implicit-TLS ports answer the handshake one byte every half second."""

    def implicit_tls(self, conn: Conn) -> bool:
        conn.trickle(b"\x16\x03\x03\x00\x50" + b"\x00" * 80, delay=0.5)
        return False


class UntaggedFlood(MailHost):
    """IMAP CAPABILITY answered by untagged lines without end."""

    def imap_capability(self, conn: Conn, tag: str) -> None:
        conn.flood(b"* OK still here\r\n")


class PlaintextAfterStarttls(MailHost):
    """A 220 to STARTTLS followed by plaintext bytes before the handshake (a STARTTLS injection)."""

    def smtp(self, conn: Conn, number: int) -> None:
        self.banner(conn, number)
        while True:
            line = conn.readline()
            if line is None:
                return
            if line.upper().startswith(b"EHLO"):
                self.ehlo(conn, "")
            elif line.upper().startswith(b"STARTTLS"):
                conn.send(b"220 2.0.0 Ready\r\n250 injected\r\n")
                time.sleep(1)
                return
            else:
                conn.send(b"502 5.5.2 not here\r\n")


# ---- DNS --------------------------------------------------------------------------------------------


class FakeZone:
    """An authoritative UDP DNS server on 127.0.0.1 answering from a dict.

    records: {(name, type): [values]}; TXT values may be str or bytes (any bytes, split at 255).
    A name with no record of the asked type answers NOERROR without data; an unknown name NXDOMAIN.
    """

    def __init__(self, records: dict[tuple[str, str], list[str | bytes]]) -> None:
        self.records = {(n.lower().rstrip("."), t.upper()): v for (n, t), v in records.items()}
        self.names = {n for n, _ in self.records}
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.queries = 0
        self.thread = threading.Thread(target=self._serve, daemon=True)

    def __enter__(self) -> FakeZone:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.sock.close()

    @property
    def resolver(self) -> str:
        """IP:PORT for --resolver."""
        return f"127.0.0.1:{self.port}"

    def _serve(self) -> None:
        while True:
            try:
                data, peer = self.sock.recvfrom(4096)
            except OSError:
                return
            self.queries += 1
            try:
                self.sock.sendto(self._answer(data), peer)
            except Exception:  # a malformed query is simply not answered
                continue

    def _answer(self, data: bytes) -> bytes:
        query = dns.message.from_wire(data)
        response = dns.message.make_response(query)
        response.flags |= dns.flags.AA
        question = query.question[0]
        name = question.name.to_text().rstrip(".").lower()
        rdtype = dns.rdatatype.to_text(question.rdtype)
        values = self.records.get((name, rdtype))
        if values:
            rrset = response.find_rrset(
                response.answer, question.name, dns.rdataclass.IN, question.rdtype, create=True
            )
            for value in values:
                if rdtype == "TXT":
                    raw = value.encode() if isinstance(value, str) else value
                    chunks = [raw[i : i + 255] for i in range(0, len(raw), 255)] or [b""]
                    rdata: dns.rdata.Rdata = dns.rdtypes.ANY.TXT.TXT(
                        dns.rdataclass.IN, dns.rdatatype.TXT, chunks
                    )
                else:
                    text = value.decode() if isinstance(value, bytes) else value
                    rdata = dns.rdata.from_text(dns.rdataclass.IN, question.rdtype, text)
                rrset.add(rdata, ttl=60)
        elif name not in self.names:
            response.set_rcode(dns.rcode.NXDOMAIN)
        try:
            return response.to_wire(max_size=65535)
        except dns.exception.TooBig:
            response.flags |= dns.flags.TC
            response.answer = []
            return response.to_wire()


def base_zone(address: str, domain: str = "hostile.test") -> dict[tuple[str, str], list[str | bytes]]:
    """A zone in which the fake host is a correctly published mail server of domain."""
    reverse = ".".join(reversed(address.split("."))) + ".in-addr.arpa"
    return {
        (HOSTNAME, "A"): [address],
        (domain, "MX"): [f"10 {HOSTNAME}."],
        (domain, "TXT"): [f"v=spf1 ip4:{address} -all"],
        (f"_dmarc.{domain}", "TXT"): ["v=DMARC1; p=reject"],
        (f"_mta-sts.{domain}", "TXT"): ["v=STSv1; id=1"],
        (f"mta-sts.{domain}", "A"): [address],  # the policy host (tests/integration/policy_server.py)
        (f"_smtp._tls.{domain}", "TXT"): [f"v=TLSRPTv1; rua=mailto:tls@{domain}"],
        (reverse, "PTR"): [f"{HOSTNAME}."],
    }


def server_context(directory: Path) -> tuple[ssl.SSLContext, Path]:
    """A server TLS context for HOSTNAME issued by a fresh test CA: (context, CA file)."""
    from verify_servers import TestCA

    ca = TestCA(directory)
    chain, key = ca.issue("hostile", HOSTNAME, extra=("mta-sts.hostile.test",))
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_ciphers("ECDHE+AESGCM:ECDHE+CHACHA20")  # AEAD only, like a well-configured server
    context.load_cert_chain(str(chain), str(key))
    return context, ca.path


Factory = Callable[[str, ssl.SSLContext], MailHost]
