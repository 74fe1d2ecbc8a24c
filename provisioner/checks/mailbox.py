"""IMAP and POP3 checks: greetings on 143/993/110/995, LOGINDISABLED before STARTTLS, test logins."""

from __future__ import annotations

import imaplib
import re
import secrets

from provisioner.checks.base import Result, Skip, Status, aggregate, check, worst
from provisioner.checks.context import IMAP4, IMAP_PORTS, POP3_PORTS, Context, close_imap, describe
from provisioner.checks.credentials import AUTH_TIMEOUT_SCALE, logins
from provisioner.checks.parsers import judge_login_disabled, judge_plaintext_login, text_of


def _port_check(protocol: str, port: int) -> None:
    greeting_prefix = "* OK" if protocol == "imap" else "+OK"

    @check(f"{protocol}.port.{port}", f"{protocol.upper()} greeting on {port}", needs=("net",))
    def greeting(ctx: Context) -> Result:
        """The port answers with the protocol's greeting (or is closed when the spec switches it off)."""
        id = f"{protocol}.port.{port}"
        expected = ctx.port_expected(port)
        try:
            probe = ctx.mailbox(port)
        except Exception as exc:
            reason = describe(exc)
            if expected is False:
                return Result(id, "pass", f"closed, as the spec expects ({reason})")
            if expected is None and isinstance(exc, ConnectionRefusedError):
                raise Skip(f"port {port} is closed and no spec says it should be open") from None
            return Result(id, "fail", f"port {port}: {reason}")
        if expected is False:
            return Result(id, "warn", f"port {port} answers, but the spec switches it off", probe.greeting)
        if not probe.greeting.startswith(greeting_prefix):
            return Result(id, "fail", f"unexpected greeting: {probe.greeting[:80]}", probe.greeting)
        if probe.tls is None and port in (993, 995):
            return Result(id, "fail", f"port {port}: no TLS", probe.greeting)
        tls = f" over {probe.tls.version}" if probe.tls else ""
        return Result(id, "pass", f"{probe.greeting[:60]}{tls}", probe.greeting)


for _port in IMAP_PORTS:
    _port_check("imap", _port)
for _port in POP3_PORTS:
    _port_check("pop3", _port)


@check("imap.login_disabled", "No plaintext IMAP login before STARTTLS", needs=("net",), severity="high")
def login_disabled(ctx: Context) -> Result:
    """Before STARTTLS on 143, the capability list has LOGINDISABLED (and no AUTH=)."""
    expected = ctx.port_expected(143)
    if expected is False:
        raise Skip("port 143 is switched off in the spec")
    try:
        probe = ctx.mailbox(143)
    except Exception as exc:
        if expected is None and isinstance(exc, ConnectionRefusedError):
            raise Skip("port 143 is closed") from None
        return Result("imap.login_disabled", "fail", f"port 143: {describe(exc)}")
    advertised = judge_login_disabled(probe.caps)
    try:
        typ, text = plaintext_login(ctx)
    except Exception as exc:
        tried: tuple[Status, str] = ("fail", f"could not try LOGIN before STARTTLS: {describe(exc)}")
    else:
        tried = judge_plaintext_login(typ, text)
    if tried[0] == "pass" and "LOGINDISABLED" not in {c.upper() for c in probe.caps}:
        # Refused, but unannounced: clients send the password before they learn it is refused.
        advertised = (
            "fail",
            "LOGINDISABLED not advertised before STARTTLS, so clients send the password first",
        )
    status = worst([advertised[0], tried[0]])
    reason = "; ".join(r for s, r in (advertised, tried) if s == status)
    return Result("imap.login_disabled", status, reason, {"capabilities": probe.caps, "login": tried[1]})


def plaintext_login(ctx: Context) -> tuple[str, str]:
    """LOGIN on 143 before STARTTLS for a made-up user with a random password: (OK/NO/BAD, reply text).

    Tried whatever the capabilities say, since a server may advertise LOGINDISABLED and still log in.
    """
    imap = IMAP4(ctx.address(), 143, timeout=ctx.io_timeout)
    try:
        user = f"mailprov-verify-no-such-user-{ctx.token}@invalid"
        tag = imap._command("LOGIN", user, imap._quote(secrets.token_urlsafe(12)))  # type: ignore[attr-defined]
        try:
            typ, data = imap._command_complete("LOGIN", tag)  # type: ignore[attr-defined]
        except imaplib.IMAP4.abort:
            raise
        except imaplib.IMAP4.error as exc:  # a tagged BAD: "LOGIN command error: BAD [b'text']"
            match = re.search(r"BAD \[b?(['\"])(.*)\1\]$", str(exc), re.S)
            return "BAD", match.group(2) if match else str(exc)
        last = data[-1] if data else b""
        return str(typ), text_of(last if isinstance(last, bytes | str) else b"")
    finally:
        close_imap(imap)


def _login_check(protocol: str) -> None:
    @check(
        f"{protocol}.login",
        f"{protocol.upper()} login over TLS",
        needs=("net", "creds"),
        timeout_scale=AUTH_TIMEOUT_SCALE,
    )
    def login(ctx: Context) -> Result:
        """With test credentials, login over TLS works and a wrong password fails."""
        ports = IMAP_PORTS if protocol == "imap" else POP3_PORTS
        if all(ctx.port_expected(p) is False for p in ports):
            raise Skip(f"{protocol.upper()} is switched off in the spec")
        results = logins(ctx)
        if protocol not in results:
            raise Skip(f"{protocol.upper()} is switched off in the spec")
        parts: dict[str, tuple[Status, str]] = {}
        ok, reply = results[protocol]
        parts["good password"] = ("pass", f"accepted ({reply})") if ok else ("fail", f"refused ({reply})")
        ok, reply = results[f"wrong:{protocol}"]
        parts["wrong password"] = ("fail", f"accepted ({reply})") if ok else ("pass", f"refused ({reply})")
        return aggregate(f"{protocol}.login", parts)


_login_check("imap")
_login_check("pop3")
