"""IMAP and POP3 checks: greetings on 143/993/110/995, LOGINDISABLED before STARTTLS, test logins."""

from __future__ import annotations

from provisioner.checks.base import Result, Skip, Status, aggregate, check
from provisioner.checks.context import IMAP_PORTS, POP3_PORTS, Context, describe
from provisioner.checks.credentials import AUTH_TIMEOUT_SCALE, logins
from provisioner.checks.parsers import judge_login_disabled


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
    status, reason = judge_login_disabled(probe.caps)
    return Result("imap.login_disabled", status, reason, probe.caps)


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
