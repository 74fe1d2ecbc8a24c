"""ManageSieve check: port 4190 offers STARTTLS, no SASL before it, SASL after it, logins work."""

from __future__ import annotations

import contextlib
import re
import secrets
import ssl
from dataclasses import dataclass, field

from provisioner.checks import bounded
from provisioner.checks.base import Result, Skip, Status, aggregate, check
from provisioner.checks.context import Context, client_context, describe
from provisioner.checks.credentials import AUTH_TIMEOUT_SCALE, logins
from provisioner.checks.managesieve import PORT, Client, Response, sasl_mechanisms

_PLAINTEXT_REFUSED = re.compile(
    r"plain ?text|disallowed|not allowed|encrypt|(?:ssl|tls|starttls)\b[^.]*\brequired"
    r"|requires? (?:ssl|tls|starttls)|unsupported|not supported|unknown (?:sasl )?mechanism",
    re.I,
)
_AUTH_FAILED = re.compile(r"authentication failed|invalid (?:credentials|password)|auth.*fail", re.I)


def judge_plaintext_authenticate(response: Response) -> tuple[Status, str]:
    """The answer to AUTHENTICATE (a made-up user) before STARTTLS: pass only when refused unprocessed."""
    shown = response.summary()
    if response.ok:
        return "fail", f"AUTHENTICATE accepted before STARTTLS for a made-up user ({shown})"
    if response.code in ("ENCRYPT-NEEDED", "TRANSITION-NEEDED", "AUTH-TOO-WEAK"):
        return "pass", f"AUTHENTICATE refused before STARTTLS ({shown})"
    if _AUTH_FAILED.search(response.text) and not _PLAINTEXT_REFUSED.search(response.text):
        return (
            "fail",
            f"AUTHENTICATE processed before STARTTLS: the password was checked in plaintext ({shown})",
        )
    if _PLAINTEXT_REFUSED.search(response.text):
        return "pass", f"AUTHENTICATE refused before STARTTLS ({shown})"
    return "warn", f"AUTHENTICATE before STARTTLS refused for an unstated reason ({shown})"


@dataclass
class SieveProbe:
    """What one ManageSieve session on 4190 showed."""

    #: No TCP connection to 4190 (refused, unreachable or no answer to the connect).
    closed: bool = False
    error: str | None = None
    greeting: str = ""
    caps: dict[str, str] = field(default_factory=dict)
    plaintext: tuple[Status, str] | None = None
    starttls: str = ""
    tls_error: str | None = None
    tls_version: str = ""
    caps_tls: dict[str, str] = field(default_factory=dict)


def probe(ctx: Context) -> SieveProbe:
    """One memoised session: greeting, AUTHENTICATE before TLS (made-up user), STARTTLS, capabilities."""
    return ctx.memo("managesieve", lambda: _probe(ctx))


def _probe(ctx: Context) -> SieveProbe:
    out = SieveProbe()
    address = ctx.address()
    try:
        sock = bounded.connect(address, PORT, ctx.io_timeout)
    except Exception as exc:
        # Refused, unreachable (a firewall's reject) or dropped: nothing serves ManageSieve here.
        out.closed = True
        out.error = describe(exc)
        return out
    try:
        client = Client(address, PORT, sock=sock)
    except Exception as exc:
        with contextlib.suppress(OSError):
            sock.close()
        out.error = describe(exc)
        return out
    try:
        out.greeting = client.greeting.summary()
        out.caps = client.caps
        if not client.greeting.ok:
            return out
        if "STARTTLS" not in out.caps:
            return out
        user = f"mailprov-verify-no-such-user-{ctx.token}@invalid"
        try:
            client.send_plain(user, secrets.token_urlsafe(12))
            out.plaintext = judge_plaintext_authenticate(client.auth_result())
        except Exception as exc:
            out.plaintext = ("fail", f"could not try AUTHENTICATE before STARTTLS: {describe(exc)}")
            return out
        if out.plaintext[0] == "fail" and "accepted" in out.plaintext[1]:
            return out  # logged in: STARTTLS is no longer allowed
        try:
            reply = client.starttls(client_context(), ctx.sni())
        except Exception as exc:
            out.tls_error = describe(exc)
            return out
        out.starttls = reply.summary()
        if not reply.ok:
            out.tls_error = f"STARTTLS refused: {reply.summary()}"
            return out
        if isinstance(client.tls, ssl.SSLSocket):
            out.tls_version = client.tls.version() or ""
        out.caps_tls = client.caps_tls
        return out
    except Exception as exc:
        out.error = describe(exc)
        return out
    finally:
        with contextlib.suppress(Exception):
            client.close()


def _expected(ctx: Context) -> bool | None:
    """Whether the spec serves ManageSieve (None without a spec)."""
    return ctx.port_expected(PORT) if ctx.spec is not None else None


@check(
    "sieve.managesieve",
    "ManageSieve on 4190: STARTTLS, AUTH only after TLS",
    needs=("net",),
    timeout_scale=AUTH_TIMEOUT_SCALE,
)
def managesieve(ctx: Context) -> Result:
    """4190 offers STARTTLS and no SASL before it, SASL after it; with credentials the login works."""
    id = "sieve.managesieve"
    expected = _expected(ctx)
    found = probe(ctx)
    if found.closed:
        if expected:
            return Result(id, "fail", f"port {PORT}: {found.error} (the spec serves ManageSieve)")
        if expected is False:
            raise Skip(f"port {PORT} is closed ({found.error}); the spec serves no ManageSieve")
        raise Skip(f"port {PORT} is closed ({found.error}) and no spec says it should serve ManageSieve")
    if found.error and not found.greeting:
        return Result(id, "fail", f"port {PORT}: no ManageSieve greeting: {found.error}")
    evidence = {"capabilities": found.caps, "capabilities_after_tls": found.caps_tls}
    if expected is False:
        return Result(id, "warn", f"port {PORT} answers ManageSieve, but the spec serves none", evidence)
    if found.error and not found.caps:
        return Result(id, "fail", f"no ManageSieve greeting: {found.error}", evidence)
    if not found.greeting.startswith("OK"):
        return Result(id, "fail", f"greeting ends with {found.greeting}", evidence)
    parts: dict[str, tuple[Status, str]] = {}
    before = sasl_mechanisms(found.caps)
    if "STARTTLS" not in found.caps:
        parts["before TLS"] = (
            "fail",
            "STARTTLS not offered" + (f"; SASL {' '.join(before)}" if before else ""),
        )
        return aggregate(id, parts, evidence)
    if before:
        parts["before TLS"] = ("fail", f"offers SASL {' '.join(before)} before STARTTLS")
    elif found.plaintext is not None and found.plaintext[0] != "pass":
        parts["before TLS"] = found.plaintext
    else:
        shown = found.plaintext[1] if found.plaintext else "no SASL offered"
        parts["before TLS"] = ("pass", f"STARTTLS offered, no SASL before it; {shown}")
    if found.error:
        parts["session"] = ("fail", found.error)
    elif found.tls_error:
        parts["STARTTLS"] = ("fail", found.tls_error)
    elif found.plaintext is not None and found.plaintext[0] == "fail" and "accepted" in found.plaintext[1]:
        pass
    else:
        after = sasl_mechanisms(found.caps_tls)
        if not after:
            parts["after TLS"] = ("fail", f"no SASL mechanism offered after STARTTLS ({found.tls_version})")
        else:
            parts["after TLS"] = ("pass", f"{found.tls_version}, then SASL {' '.join(after)}")
    if ctx.has_creds and "STARTTLS" not in parts and "session" not in parts:
        results = logins(ctx)
        if "sieve" in results:
            ok, reply = results["sieve"]
            parts["good password"] = ("pass", f"accepted ({reply})") if ok else ("fail", f"refused ({reply})")
            ok, reply = results["wrong:sieve"]
            parts["wrong password"] = (
                ("fail", f"accepted ({reply})") if ok else ("pass", f"refused ({reply})")
            )
    return aggregate(id, parts, evidence)
