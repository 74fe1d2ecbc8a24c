"""Test logins (SMTP AUTH, IMAP, POP3), done once per run in two concurrent phases.

Dovecot (and other servers) delay every authentication from an address that recently failed one
(Dovecot's auth penalty, seconds per failure). So all good-password logins happen first, together and
after smtp.roundtrip has logged in; then the wrong-password attempts: each connection is opened and made
ready first, and all send their single credential command at the same instant (a barrier), so none of
them waits on another's failure. SMTP uses one SASL mechanism (smtplib's login() would retry the wrong
password with a second mechanism). smtp.auth, imap.login and pop3.login read this shared matrix.
"""

from __future__ import annotations

import contextlib
import imaplib
import poplib
import smtplib
import ssl
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from provisioner.checks.context import Context, client_context, describe
from provisioner.checks.parsers import text_of

WRONG_PASSWORD = "mailprov-verify-wrong-password"
Outcome = tuple[bool, str]  # (login accepted, what the server said)
#: Opens a ready connection and returns (send the password -> Outcome, close).
Prepared = tuple[Callable[[str], Outcome], Callable[[], None]]


def _smtp_prepare(ctx: Context, port: int) -> Prepared:
    client = ctx.smtp_client(port)
    if port != 465:
        client.starttls(context=client_context())
        client.ehlo()
    offered = client.esmtp_features.get("auth", "").upper().split()
    mechanism = next((m for m in ("PLAIN", "LOGIN") if m in offered), None)

    def send(password: str) -> Outcome:
        if mechanism is None:
            return False, f"port {port} offers no AUTH PLAIN or LOGIN (offers: {' '.join(offered) or 'none'})"
        client.user, client.password = ctx.options.user or "", password
        authobject = client.auth_plain if mechanism == "PLAIN" else client.auth_login
        try:
            code, msg = client.auth(mechanism, authobject, initial_response_ok=True)
            return True, f"{code} {text_of(msg)}"
        except smtplib.SMTPAuthenticationError as exc:
            return False, f"{exc.smtp_code} {text_of(exc.smtp_error)}"

    def close() -> None:
        try:
            client.quit()
        except (OSError, smtplib.SMTPException):
            client.close()

    return send, close


def imap_connect(ctx: Context) -> tuple[imaplib.IMAP4, str]:
    """An IMAP connection over TLS: 993, else 143 with STARTTLS."""
    address = ctx.address()
    if ctx.port_expected(993) is not False:
        try:
            return imaplib.IMAP4_SSL(
                address, 993, ssl_context=client_context(), timeout=ctx.io_timeout
            ), "993"
        except ConnectionRefusedError:
            pass
    imap = imaplib.IMAP4(address, 143, timeout=ctx.io_timeout)
    imap.starttls(ssl_context=client_context())
    return imap, "143+STARTTLS"


def _imap_prepare(ctx: Context) -> Prepared:
    imap, where = imap_connect(ctx)

    def send(password: str) -> Outcome:
        try:
            typ, data = imap.login(ctx.options.user or "", password)
            return True, f"{where}: {typ} {data[0].decode(errors='replace') if data else ''}".strip()
        except imaplib.IMAP4.error as exc:
            return False, f"{where}: {exc}"

    def close() -> None:
        with contextlib.suppress(OSError, imaplib.IMAP4.error, ssl.SSLError):
            imap.logout()

    return send, close


def _pop3_prepare(ctx: Context) -> Prepared:
    address = ctx.address()
    pop: poplib.POP3 | None = None
    where = "995"
    if ctx.port_expected(995) is not False:
        with contextlib.suppress(ConnectionRefusedError):
            pop = poplib.POP3_SSL(address, 995, context=client_context(), timeout=ctx.io_timeout)
    if pop is None:
        pop = poplib.POP3(address, 110, timeout=ctx.io_timeout)
        pop.stls(context=client_context())
        where = "110+STLS"
    pop.user(ctx.options.user or "")
    connection = pop

    def send(password: str) -> Outcome:
        try:
            return True, f"{where}: {connection.pass_(password).decode(errors='replace')}"
        except poplib.error_proto as exc:
            return False, f"{where}: {exc}"

    def close() -> None:
        try:
            connection.quit()
        except (OSError, poplib.error_proto):
            connection.close()

    return send, close


def submission_ports(ctx: Context) -> list[int]:
    """Submission ports (587, 465) that are not switched off and accept TCP."""
    return [p for p in (587, 465) if ctx.port_expected(p) is not False and ctx.smtp(p).tcp]


def _prepare(ctx: Context, key: str) -> Prepared:
    protocol, _, port = key.partition(":")
    if protocol == "smtp":
        return _smtp_prepare(ctx, int(port))
    if protocol == "imap":
        return _imap_prepare(ctx)
    return _pop3_prepare(ctx)


def _attempt(ctx: Context, key: str, password: str, barrier: threading.Barrier | None = None) -> Outcome:
    """Connect for key ('smtp:587', 'imap', 'pop3'), wait at the barrier, send the password."""
    try:
        send, close = _prepare(ctx, key)
    except Exception as exc:
        if barrier is not None:
            barrier.abort()
        return False, f"error: {describe(exc)}"
    try:
        if barrier is not None:
            with contextlib.suppress(threading.BrokenBarrierError):
                barrier.wait(ctx.io_timeout)
        return send(password)
    except Exception as exc:
        return False, f"error: {describe(exc)}"
    finally:
        close()


def logins(ctx: Context) -> dict[str, Outcome]:
    """All test logins, memoised: keys like 'smtp:587', 'imap', 'pop3' and 'wrong:smtp:587', 'wrong:imap'."""
    return ctx.memo("logins", lambda: _logins(ctx))


def _logins(ctx: Context) -> dict[str, Outcome]:
    password = ctx.options.password or ""
    keys = [f"smtp:{p}" for p in submission_ports(ctx)]
    if ctx.port_expected(143) is not False or ctx.port_expected(993) is not False:
        keys.append("imap")
    if ctx.port_expected(110) is not False or ctx.port_expected(995) is not False:
        keys.append("pop3")
    # One wrong-password probe per protocol: SMTP on the first submission port.
    wrong = [k for k in keys if k != "smtp:465" or "smtp:587" not in keys]
    if not keys:
        return {}
    with ThreadPoolExecutor(max_workers=len(keys)) as pool:
        good = dict(zip(keys, pool.map(lambda k: _attempt(ctx, k, password), keys), strict=True))
        if "smtp.roundtrip" in ctx.selected:
            ctx.roundtrip_logged_in.wait(ctx.io_timeout)
        barrier = threading.Barrier(len(wrong))
        bad = dict(
            zip(wrong, pool.map(lambda k: _attempt(ctx, k, WRONG_PASSWORD, barrier), wrong), strict=True)
        )
    return {**good, **{f"wrong:{k}": v for k, v in bad.items()}}
