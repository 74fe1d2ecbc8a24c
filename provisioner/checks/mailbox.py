"""IMAP and POP3 checks: greetings on 143/993/110/995, LOGINDISABLED before STARTTLS, test logins."""

from __future__ import annotations

import contextlib
import imaplib
import re
import secrets
import ssl

from provisioner.checks.base import Result, Skip, Status, aggregate, check, worst
from provisioner.checks.context import IMAP4, IMAP_PORTS, POP3_PORTS, Context, close_imap, describe
from provisioner.checks.credentials import AUTH_TIMEOUT_SCALE, imap_connect, logins
from provisioner.checks.parsers import judge_login_disabled, judge_plaintext_login, text_of
from provisioner.checks.quota import (
    Quota,
    QuotaSyntaxError,
    flatten,
    judge_quota,
    parse_quota,
    parse_quotaroot,
)


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


@check(
    "imap.quota",
    "IMAP GETQUOTA reports the test user's limit",
    needs=("net", "creds"),
    timeout_scale=AUTH_TIMEOUT_SCALE,
)
def quota(ctx: Context) -> Result:
    """After login over TLS, GETQUOTAROOT INBOX answers with a STORAGE limit (the spec's, with a spec)."""
    try:
        return _quota(ctx)
    finally:
        ctx.quota_checked.set()


def _expected_quota(ctx: Context, user: str) -> tuple[int | None, bool]:
    """(the spec's quota for user in bytes or None, whether the spec has user as a mailbox)."""
    if ctx.spec is None:
        return None, False
    for box in ctx.spec.mailboxes:
        if box.address.lower() == user.lower():
            return box.quota, True
    return None, False


def _quota(ctx: Context) -> Result:
    id = "imap.quota"
    if ctx.port_expected(143) is False and ctx.port_expected(993) is False:
        raise Skip("IMAP is switched off in the spec")
    user = ctx.options.user or ""
    expected, known = _expected_quota(ctx, user)
    imap, where = imap_connect(ctx)
    try:
        try:
            imap.login(user, ctx.options.password or "")
        except imaplib.IMAP4.error as exc:
            return Result(id, "fail", f"login on {where} refused: {exc}")
        finally:
            ctx.quota_checked.set()
        typ, data = imap.capability()
        words = text_of(data[-1]).split() if typ == "OK" and data and isinstance(data[-1], bytes) else []
        capable = any(w.upper() in ("QUOTA", "QUOTASET") or w.upper().startswith("QUOTA=") for w in words)
        quotas: list[Quota] = []
        evidence: dict[str, object] = {"port": where, "capability": words}
        if capable:
            typ, data = imap._simple_command("GETQUOTAROOT", "INBOX")  # type: ignore[attr-defined]
            if typ != "OK":
                return Result(
                    id,
                    "fail",
                    f"GETQUOTAROOT INBOX refused: {typ} {text_of(data[-1] if data and isinstance(data[-1], bytes) else b'')}",
                )
            _, roots = imap._untagged_response(typ, data, "QUOTAROOT")  # type: ignore[attr-defined]
            _, answers = imap._untagged_response(typ, data, "QUOTA")  # type: ignore[attr-defined]
            try:
                names = [parse_quotaroot(line) for line in flatten([r for r in roots if r is not None])]
                quotas = [parse_quota(line) for line in flatten([a for a in answers if a is not None])]
            except QuotaSyntaxError as exc:
                return Result(id, "fail", f"malformed QUOTA answer: {exc}", evidence)
            evidence["quotaroot"] = [{"mailbox": m, "roots": r} for m, r in names]
            evidence["quota"] = {q.root: q.resources for q in quotas}
        status, reason = judge_quota(capable, quotas, expected, known, user)
        if status == "skip":
            raise Skip(reason)
        return Result(id, status, f"{where}: {reason}", evidence)
    finally:
        with contextlib.suppress(OSError, imaplib.IMAP4.error, ssl.SSLError):
            close_imap(imap)
