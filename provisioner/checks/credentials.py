"""Test logins (SMTP AUTH, IMAP, POP3), done once per run in two phases.

Servers slow down authentication from an address that recently failed one (Dovecot's auth penalty:
each failure seen before a new attempt starts delays that attempt by seconds, and the penalty outlives
the run). So verify does all good-password logins first (together, and after smtp.roundtrip has logged
in), then the wrong-password attempts as one burst: every connection is opened and made ready first, then
one thread writes the three credential commands back to back and only then reads the replies, so the
server starts them all before it has failed any. One identical wrong password is used, which Dovecot
counts once. SMTP sends a single SASL mechanism (smtplib's login() would retry with another).
smtp.auth, imap.login and pop3.login read the resulting matrix.
"""

from __future__ import annotations

import base64
import contextlib
import imaplib
import poplib
import smtplib
import ssl
from typing import Any

from provisioner.checks import bounded
from provisioner.checks.context import (
    IMAP4,
    IMAP4_SSL,
    POP3,
    POP3_SSL,
    Context,
    client_context,
    close_imap,
    close_pop3,
    describe,
)
from provisioner.checks.managesieve import PORT as SIEVE_PORT
from provisioner.checks.managesieve import Client as SieveClient
from provisioner.checks.parsers import text_of

WRONG_PASSWORD = "mailprov-verify-wrong-password"
#: Login checks may wait on the server on purpose (auth penalty up to 15 s, failure delay 2 s):
#: they get this multiple of the per-check timeout, and their credential replies as long to arrive.
AUTH_TIMEOUT_SCALE = 3.0
Outcome = tuple[bool, str]  # (login accepted, what the server said)


def auth_timeout(ctx: Context) -> float:
    """How long a credential reply may take."""
    return ctx.io_timeout * AUTH_TIMEOUT_SCALE


class Login:
    """A connection made ready for one credential command: send() writes it, result() reads the verdict."""

    def send(self, password: str) -> None:
        """Write the credential command (no reading)."""
        raise NotImplementedError

    def result(self) -> Outcome:
        """Read the server's verdict on what send() wrote."""
        raise NotImplementedError

    def close(self) -> None:
        """Log out / quit, ignoring errors."""


class _SmtpLogin(Login):
    def __init__(self, ctx: Context, port: int) -> None:
        self.user = ctx.options.user or ""
        self.port = port
        self.client = ctx.smtp_client(port)
        if port != 465:
            self.client.starttls(context=client_context())
            self.client.ehlo()
        if self.client.sock is not None:
            self.client.sock.settimeout(auth_timeout(ctx))
        self.offered = self.client.esmtp_features.get("auth", "").upper().split()
        self.outcome: Outcome | None = None

    def send(self, password: str) -> None:
        if "PLAIN" in self.offered:
            token = base64.b64encode(f"\0{self.user}\0{password}".encode()).decode()
            self.client.send(f"AUTH PLAIN {token}\r\n")
        elif "LOGIN" in self.offered:  # a dialogue: cannot be split, done here
            self.client.user, self.client.password = self.user, password
            try:
                code, msg = self.client.auth("LOGIN", self.client.auth_login, initial_response_ok=False)
                self.outcome = (True, f"{code} {text_of(msg)}")
            except smtplib.SMTPAuthenticationError as exc:
                self.outcome = (False, f"{exc.smtp_code} {text_of(exc.smtp_error)}")
        else:
            shown = " ".join(self.offered) or "none"
            self.outcome = (False, f"port {self.port} offers no AUTH PLAIN or LOGIN (offers: {shown})")

    def result(self) -> Outcome:
        if self.outcome is not None:
            return self.outcome
        code, msg = self.client.getreply()
        return code == 235, f"{code} {text_of(msg)}"

    def close(self) -> None:
        self.client.quit_quietly()


def imap_connect(ctx: Context) -> tuple[imaplib.IMAP4, str]:
    """An IMAP connection over TLS: 993, else 143 with STARTTLS."""
    address = ctx.address()
    if ctx.port_expected(993) is not False:
        try:
            return IMAP4_SSL(address, 993, ssl_context=client_context(), timeout=ctx.io_timeout), "993"
        except ConnectionRefusedError:
            pass
    imap = IMAP4(address, 143, timeout=ctx.io_timeout)
    imap.starttls(ssl_context=client_context())
    return imap, "143+STARTTLS"


class _ImapLogin(Login):
    def __init__(self, ctx: Context) -> None:
        self.user = ctx.options.user or ""
        self.imap, self.where = imap_connect(ctx)
        self.imap.sock.settimeout(auth_timeout(ctx))
        self.tag = ""

    def send(self, password: str) -> None:
        # imaplib's login() is _command + _command_complete; split so the command can be sent first.
        self.tag = self.imap._command("LOGIN", self.user, self.imap._quote(password))  # type: ignore[attr-defined]

    def result(self) -> Outcome:
        try:
            typ, data = self.imap._command_complete("LOGIN", self.tag)  # type: ignore[attr-defined]
        except imaplib.IMAP4.error as exc:
            return False, f"{self.where}: {exc}"
        text = data[-1].decode(errors="replace") if data and isinstance(data[-1], bytes) else ""
        return typ == "OK", f"{self.where}: {typ} {text}".strip()

    def close(self) -> None:
        with contextlib.suppress(OSError, imaplib.IMAP4.error, ssl.SSLError):
            close_imap(self.imap)


class _Pop3Login(Login):
    def __init__(self, ctx: Context) -> None:
        address = ctx.address()
        pop: poplib.POP3 | None = None
        self.where = "995"
        if ctx.port_expected(995) is not False:
            with contextlib.suppress(ConnectionRefusedError):
                pop = POP3_SSL(address, 995, context=client_context(), timeout=ctx.io_timeout)
        if pop is None:
            pop = POP3(address, 110, timeout=ctx.io_timeout)
            pop.stls(context=client_context())
            self.where = "110+STLS"
        pop.user(ctx.options.user or "")
        pop.sock.settimeout(auth_timeout(ctx))
        self.pop = pop

    def send(self, password: str) -> None:
        # poplib's pass_() is _putcmd + _getresp; split so the command can be sent first.
        self.pop._putcmd(f"PASS {password}")  # type: ignore[attr-defined]

    def result(self) -> Outcome:
        try:
            reply = self.pop._getresp()  # type: ignore[attr-defined]
            return True, f"{self.where}: {reply.decode(errors='replace')}"
        except poplib.error_proto as exc:
            return False, f"{self.where}: {exc}"

    def close(self) -> None:
        close_pop3(self.pop)


class _SieveLogin(Login):
    def __init__(self, ctx: Context) -> None:
        self.user = ctx.options.user or ""
        self.client = SieveClient(ctx.address(), SIEVE_PORT, ctx.io_timeout)
        try:
            if not self.client.greeting.ok:
                raise ConnectionError(f"4190: greeting ends with {self.client.greeting.summary()}")
            reply = self.client.starttls(client_context(), ctx.sni())
            if not reply.ok:
                raise ConnectionError(f"4190: STARTTLS refused: {reply.summary()}")
        except BaseException:
            self.client.close()
            raise

    def send(self, password: str) -> None:
        self.client.send_plain(self.user, password)

    def result(self) -> Outcome:
        reply = self.client.auth_result()
        return reply.ok, f"4190+STARTTLS: {reply.summary()}"

    def close(self) -> None:
        self.client.close()


def submission_ports(ctx: Context) -> list[int]:
    """Submission ports (587, 465) that are not switched off and accept TCP.

    A bare TCP connect (memoised per port) rather than the full SMTP probe: the logins and the roundtrip
    need only know where to connect, and waiting for the probe's TLS handshake delayed them.
    """
    ctx.address()  # an address verify will not probe fails the login checks with that reason
    return [p for p in (587, 465) if ctx.port_expected(p) is not False and ctx.tcp_open(p)]


def _prepare(ctx: Context, key: str) -> Login | Outcome:
    """A ready Login for key ('smtp:587', 'imap', 'pop3'), or a failed Outcome."""
    protocol, _, port = key.partition(":")
    try:
        if protocol == "smtp":
            return _SmtpLogin(ctx, int(port))
        if protocol == "imap":
            return _ImapLogin(ctx)
        if protocol == "sieve":
            return _SieveLogin(ctx)
        return _Pop3Login(ctx)
    except Exception as exc:
        return False, f"error: {describe(exc)}"


def _finish(login: Login) -> Outcome:
    try:
        return login.result()
    except Exception as exc:
        return False, f"error: {describe(exc)}"
    finally:
        login.close()


def _attempt(ctx: Context, key: str, password: str) -> Outcome:
    """One complete login attempt."""
    login = _prepare(ctx, key)
    if isinstance(login, tuple):
        return login
    try:
        login.send(password)
    except Exception as exc:
        login.close()
        return False, f"error: {describe(exc)}"
    return _finish(login)


def _send_all(prepared: dict[str, Login | Outcome], password: str, pool: Any = None) -> dict[str, Outcome]:
    """Send every credential command back to back on ready connections, then read the replies."""
    sent: dict[str, Login] = {}
    out: dict[str, Outcome] = {}
    for key, login in prepared.items():
        if isinstance(login, tuple):
            out[key] = login
            continue
        try:
            login.send(password)
            sent[key] = login
        except Exception as exc:
            login.close()
            out[key] = (False, f"error: {describe(exc)}")
    out.update(zip(sent, bounded.parallel(_finish, list(sent.values())), strict=True))
    return {key: out[key] for key in prepared}


def _burst(ctx: Context, keys: list[str], password: str) -> dict[str, Outcome]:
    """Prepare all connections concurrently, send every credential command back to back, then read."""
    prepared = dict(zip(keys, bounded.parallel(lambda k: _prepare(ctx, k), keys), strict=True))
    return _send_all(prepared, password)


def logins(ctx: Context) -> dict[str, Outcome]:
    """All test logins, memoised: keys like 'smtp:587', 'imap', 'pop3', 'sieve' and 'wrong:...' for each."""
    return ctx.memo("logins", lambda: _logins(ctx))


def _logins(ctx: Context) -> dict[str, Outcome]:
    password = ctx.options.password or ""
    keys = [f"smtp:{p}" for p in submission_ports(ctx)]
    if ctx.port_expected(143) is not False or ctx.port_expected(993) is not False:
        keys.append("imap")
    if ctx.port_expected(110) is not False or ctx.port_expected(995) is not False:
        keys.append("pop3")
    if "sieve.managesieve" in ctx.selected and ctx.port_expected(4190) is not False and ctx.tcp_open(4190):
        keys.append("sieve")
    # One wrong-password probe per protocol: SMTP on the first submission port.
    wrong = [k for k in keys if k != "smtp:465" or "smtp:587" not in keys]
    if not keys:
        return {}
    # The wrong-password connections are opened and made ready (TCP, TLS, EHLO/USER) while the good
    # logins run: readying a connection sends no credentials, so it cannot trigger the auth penalty.
    # Only the credential commands wait for the good logins and the roundtrip's login.
    # Daemon threads bound to this check's deadline (bounded.spawn), never an executor joined at exit.
    ready = {k: bounded.spawn(lambda k=k: _prepare(ctx, k)) for k in wrong}  # type: ignore[misc]
    good = dict(zip(keys, bounded.parallel(lambda k: _attempt(ctx, k, password), keys), strict=True))
    if "smtp.roundtrip" in ctx.selected:
        ctx.roundtrip_logged_in.wait(bounded.time_left(ctx.io_timeout))
    if "smtp.sender_ownership" in ctx.selected:
        ctx.sender_checked.wait(bounded.time_left(ctx.io_timeout))
    if "imap.quota" in ctx.selected:
        ctx.quota_checked.wait(bounded.time_left(ctx.io_timeout))
    if "smtp.spam_filter" in ctx.selected:
        ctx.spam_checked.wait(bounded.time_left(ctx.io_timeout))
    bad = _send_all({k: _ready(task) for k, task in ready.items()}, WRONG_PASSWORD)
    return {**good, **{f"wrong:{k}": v for k, v in bad.items()}}


def _ready(task: bounded.Task[Login | Outcome]) -> Login | Outcome:
    try:
        return task.result()
    except Exception as exc:
        return False, f"error: {describe(exc)}"
