"""SMTP checks: ports, greeting, EHLO, STARTTLS, implicit TLS, AUTH only after TLS, relaying, recipients.

Nothing here sends a message except smtp.roundtrip, which runs only with test credentials and deletes
its message afterwards. RCPT probes end with RSET/QUIT before DATA, so they never queue mail.
"""

from __future__ import annotations

import base64
import contextlib
import imaplib
import secrets
import smtplib
import ssl
import time
from email.message import EmailMessage

from provisioner.checks import bounded
from provisioner.checks.base import Result, Skip, Status, aggregate, check
from provisioner.checks.context import _SMTP, SMTP_PORTS, Context, client_context, close_imap, describe
from provisioner.checks.credentials import AUTH_TIMEOUT_SCALE, imap_connect, logins, submission_ports
from provisioner.checks.parsers import (
    LookupFailed,
    judge_banner,
    judge_plaintext_auth,
    missing_ehlo,
    parse_ehlo,
    reply_class,
    text_of,
)
from provisioner.checks.quota import parse_list_name, spam_tag

#: Outside addresses for the relay probe (RFC 2606 names; verify never sends to them).
RELAY_SENDER = "mailprov-verify@example.org"
RELAY_RECIPIENT = "mailprov-relay-test@example.net"


def _port_check(port: int) -> None:
    @check(f"smtp.port.{port}", f"SMTP port {port} accepts TCP", needs=("net",), severity="high")
    def port_open(ctx: Context) -> Result:
        """The port accepts TCP (or is closed when the spec switches it off)."""
        id = f"smtp.port.{port}"
        expected = ctx.port_expected(port)
        probe = ctx.smtp(port)
        where = f"{probe.address or ctx.options.target}:{port}"
        if probe.unsafe:
            return Result(id, "fail", probe.error or "address refused")
        if probe.tcp:
            if expected is False:
                return Result(id, "warn", f"{where} is open, but the spec switches it off")
            return Result(id, "pass", f"{where} accepts TCP")
        if expected is False:
            return Result(id, "pass", f"{where} is closed, as the spec expects")
        if expected is None:
            raise Skip(f"{where} is closed ({probe.error}); no spec says it should be open")
        return Result(id, "fail", f"{where}: {probe.error}")


for _port in SMTP_PORTS:
    _port_check(_port)


def _session(ctx: Context, port: int) -> None:
    """Fail (raise) when there is no usable SMTP session on the port."""
    probe = ctx.smtp(port)
    if probe.error and not probe.banner_code:
        raise ConnectionError(f"port {port}: {probe.error}")


@check("smtp.banner", "A 220 greeting naming the host", needs=("net",))
def banner(ctx: Context) -> Result:
    """A 220 greeting arrives in time; its name matches the PTR / host name (mismatch = warn)."""
    probe = ctx.smtp(25)
    if not probe.tcp:
        return Result("smtp.banner", "fail", f"port 25: {probe.error}")
    if not probe.banner_code:
        return Result("smtp.banner", "fail", f"no 220 greeting: {probe.error}")
    if probe.banner_code != 220:
        shown = f"{probe.banner_code} {probe.banner}" if probe.banner_code else probe.error
        return Result("smtp.banner", "fail", f"no 220 greeting: {shown}", probe.banner)
    expected = [ctx.hostname() or ""]
    with contextlib.suppress(LookupFailed):
        expected += ctx.ptr_names(probe.address)
    status, reason = judge_banner(probe.banner_name, expected)
    return Result("smtp.banner", status, reason, f"220 {probe.banner}")


@check("smtp.ehlo", "EHLO accepted with the expected extensions", needs=("net",))
def ehlo(ctx: Context) -> Result:
    """EHLO on port 25 is accepted and lists SIZE, PIPELINING, 8BITMIME, ENHANCEDSTATUSCODES."""
    _session(ctx, 25)
    probe = ctx.smtp(25)
    if probe.ehlo_code != 250:
        return Result("smtp.ehlo", "fail", f"EHLO not accepted: {probe.error}")
    missing = missing_ehlo(probe.caps)
    evidence = sorted(probe.caps)
    if missing:
        return Result("smtp.ehlo", "fail", f"EHLO lacks {', '.join(missing)}", evidence)
    return Result("smtp.ehlo", "pass", "lists " + ", ".join(evidence), evidence)


def _starttls_check(port: int) -> None:
    @check(f"smtp.starttls.{port}", f"STARTTLS on port {port}", needs=("net",), severity="high")
    def starttls(ctx: Context) -> Result:
        """STARTTLS is advertised and the TLS handshake completes."""
        id = f"smtp.starttls.{port}"
        ctx.require_port(port)
        _session(ctx, port)
        probe = ctx.smtp(port)
        if probe.banner_code != 220:
            return Result(
                id, "fail", f"no 220 greeting: {probe.banner_code or ''} {probe.banner or probe.error}"
            )
        if probe.ehlo_code != 250:
            return Result(id, "fail", f"EHLO not answered: {probe.error}")
        if "STARTTLS" not in probe.caps:
            return Result(id, "fail", "STARTTLS not advertised", sorted(probe.caps))
        if probe.tls is None:
            return Result(id, "fail", f"STARTTLS failed: {probe.starttls_error}")
        return Result(id, "pass", f"{probe.tls.version} {probe.tls.cipher}")


for _port in (25, 587):
    _starttls_check(_port)


@check("smtp.implicit_tls.465", "TLS from the first byte on 465", needs=("net",), severity="high")
def implicit_tls(ctx: Context) -> Result:
    """Port 465 speaks TLS from the first byte (RFC 8314), then SMTP."""
    ctx.require_port(465)
    probe = ctx.smtp(465)
    if probe.tls is None:
        return Result("smtp.implicit_tls.465", "fail", f"port 465: {probe.error}")
    if probe.banner_code != 220:
        return Result("smtp.implicit_tls.465", "fail", f"no 220 greeting after TLS: {probe.error}")
    return Result("smtp.implicit_tls.465", "pass", f"{probe.tls.version} {probe.tls.cipher}, then 220")


def plaintext_auth(ctx: Context, port: int) -> tuple[dict[str, str], dict[str, str], int, str]:
    """Before STARTTLS: EHLO twice, then AUTH PLAIN for a made-up user whether AUTH is advertised or not.

    The user cannot exist and the password is random, so no real credential is ever sent in plaintext.
    Returns (capabilities of the first EHLO, of the second, the AUTH reply code, its text).
    """
    client = ctx.smtp_client(port)
    try:
        first = parse_ehlo(client.ehlo_resp or b"") if client.does_esmtp else {}
        code, msg = client.ehlo()
        second = parse_ehlo(msg) if code == 250 else {}
        user = f"mailprov-verify-no-such-user-{ctx.token}@invalid"
        token = base64.b64encode(f"\0{user}\0{secrets.token_urlsafe(12)}".encode()).decode()
        code, msg = client.docmd("AUTH", f"PLAIN {token}")
        if code == 334:
            client.docmd("*")  # cancel the exchange (RFC 4954)
        elif code == 504:
            # PLAIN unknown: another plaintext mechanism may still be processed.
            code, msg = client.docmd("AUTH", "LOGIN")
            if code == 334:
                client.docmd("*")
        return first, second, code, text_of(msg)
    finally:
        client.quit_quietly()


@check("smtp.auth_after_tls", "AUTH only after STARTTLS", needs=("net",), severity="high")
def auth_after_tls(ctx: Context) -> Result:
    """Before STARTTLS, 25/587 offer no AUTH and refuse a tried AUTH as unavailable; after it, 587 offers AUTH."""
    parts: dict[str, tuple[Status, str]] = {}
    for port in (25, 587):
        expected = ctx.port_expected(port)
        if expected is False:
            continue
        probe = ctx.smtp(port)
        if probe.unsafe:
            raise LookupFailed(probe.error or "")
        if not probe.tcp and not expected:
            continue
        if probe.ehlo_code != 250:
            parts[f"port {port}"] = ("fail", f"no EHLO answer: {probe.error}")
            continue
        try:
            first, second, code, text = plaintext_auth(ctx, port)
        except (OSError, smtplib.SMTPException, LookupFailed) as exc:
            parts[f"port {port}"] = ("fail", f"could not try AUTH before STARTTLS: {describe(exc)}")
            continue
        advertised = [
            f"AUTH {caps['AUTH']}".strip() for caps in (probe.caps, first, second) if "AUTH" in caps
        ]
        status, reason = judge_plaintext_auth(code, text)
        if advertised:
            parts[f"port {port}"] = ("fail", f"offers {advertised[0]} before STARTTLS; {reason}")
        elif status != "pass":
            parts[f"port {port}"] = (status, reason)
        elif port == 587 and probe.tls is None:
            parts[f"port {port}"] = ("fail", f"no TLS to check AUTH after: {probe.starttls_error}")
        elif port == 587 and "AUTH" not in probe.caps_tls:
            parts[f"port {port}"] = ("fail", f"{reason}; but offers no AUTH after STARTTLS")
        else:
            after = probe.caps_tls.get("AUTH")
            parts[f"port {port}"] = ("pass", reason + (f"; AUTH {after} after" if after else ""))
    if not parts:
        raise Skip("neither port 25 nor 587 answered EHLO")
    return aggregate("smtp.auth_after_tls", parts)


def _rcpt(ctx: Context, recipient: str, sender: str = RELAY_SENDER) -> tuple[int, str]:
    """MAIL FROM sender, RCPT TO recipient on port 25, then RSET: the RCPT reply."""
    client = ctx.smtp_client(25)
    try:
        code, msg = client.mail(sender)
        if reply_class(code) != "accepted":
            return code, f"MAIL FROM refused: {text_of(msg)}"
        code, msg = client.rcpt(recipient)
        client.rset()
        return code, text_of(msg)
    finally:
        client.quit_quietly()


@check("smtp.open_relay", "No relaying for strangers", needs=("net",), severity="high")
def open_relay(ctx: Context) -> Result:
    """Unauthenticated MAIL FROM an outside address, RCPT TO an outside domain is refused (5xx)."""
    _session(ctx, 25)
    code, msg = _rcpt(ctx, RELAY_RECIPIENT)
    evidence = f"RCPT TO:<{RELAY_RECIPIENT}> -> {code} {msg}"
    verdict = reply_class(code)
    if verdict == "accepted":
        return Result("smtp.open_relay", "fail", f"open relay: {evidence}", evidence)
    if verdict == "deferred":
        return Result("smtp.open_relay", "warn", f"relay deferred, not refused: {evidence}", evidence)
    return Result("smtp.open_relay", "pass", f"refused: {code} {msg}", evidence)


def _mail_domains(ctx: Context) -> list[str]:
    domains = []
    for domain in ctx.require_domains():
        try:
            mx = ctx.mx(domain) if not ctx.spec else []
        except LookupFailed:
            mx = []
        if mx and all(host == "." for _, host in mx):
            continue  # null MX: the domain accepts no mail
        domains.append(domain)
    if not domains:
        raise Skip("every domain has a null MX: it accepts no mail")
    return domains


@check("smtp.postmaster", "postmaster@ accepted", needs=("net",))
def postmaster(ctx: Context) -> Result:
    """RCPT TO postmaster@DOMAIN is accepted (RFC 5321)."""
    _session(ctx, 25)
    parts: dict[str, tuple[Status, str]] = {}
    for domain in _mail_domains(ctx):
        code, msg = _rcpt(ctx, f"postmaster@{domain}")
        verdict = reply_class(code)
        status: Status = "pass" if verdict == "accepted" else "warn" if verdict == "deferred" else "fail"
        parts[domain] = (status, f"RCPT TO:<postmaster@{domain}> -> {code} {msg}")
    return aggregate("smtp.postmaster", parts)


@check("smtp.unknown_user", "Unknown recipients refused at RCPT time", needs=("net",))
def unknown_user(ctx: Context) -> Result:
    """RCPT TO a nonexistent local user is refused at RCPT time (no backscatter).

    Without a spec an acceptance is a warning (a catch-all, or backscatter); with one, a failure unless
    the spec gives that domain a catch-all (then the domain is not probed).
    """
    catch_all = {d.name for d in ctx.spec.domains if d.catch_all} if ctx.spec is not None else set()
    _session(ctx, 25)
    parts: dict[str, tuple[Status, str]] = {}
    for domain in _mail_domains(ctx):
        if domain in catch_all:
            continue
        rcpt = f"mailprov-no-such-user-{ctx.token}@{domain}"
        code, msg = _rcpt(ctx, rcpt)
        verdict = reply_class(code)
        if verdict == "accepted" and ctx.spec is None:
            parts[domain] = ("warn", f"accepted at RCPT time ({code} {msg}): a catch-all, or backscatter")
        elif verdict == "accepted":
            parts[domain] = ("fail", f"accepted at RCPT time ({code} {msg}): bounces would be backscatter")
        elif verdict == "deferred":
            parts[domain] = ("warn", f"deferred, not refused: {code} {msg}")
        else:
            parts[domain] = ("pass", f"refused: {code} {msg}")
    if not parts:
        raise Skip("every domain has a catch-all in the spec")
    return aggregate("smtp.unknown_user", parts)


@check(
    "smtp.auth", "Submission AUTH works after TLS", needs=("net", "creds"), timeout_scale=AUTH_TIMEOUT_SCALE
)
def auth(ctx: Context) -> Result:
    """The good password is accepted on 587 (after STARTTLS) and 465; a wrong one is refused."""
    ports = submission_ports(ctx)
    if not ports:
        raise Skip("no submission port (587, 465) answers")
    results = logins(ctx)
    parts: dict[str, tuple[Status, str]] = {}
    for port in ports:
        ok, reply = results[f"smtp:{port}"]
        parts[f"port {port}"] = ("pass", f"login accepted ({reply})") if ok else ("fail", f"refused: {reply}")
    ok, reply = results[f"wrong:smtp:{ports[0]}"]
    parts[f"port {ports[0]} wrong password"] = (
        ("fail", f"accepted: {reply}") if ok else ("pass", f"refused ({reply})")
    )
    return aggregate("smtp.auth", parts)


@check(
    "smtp.roundtrip", "A submitted message arrives in the mailbox", needs=("net", "creds"), timeout_scale=3
)
def roundtrip(ctx: Context) -> Result:
    """A message submitted on 587 (or 465) to the test user is found over IMAP in time, then deleted."""
    user = ctx.options.user or ""
    try:
        return _roundtrip(ctx, user)
    finally:
        ctx.roundtrip_logged_in.set()


def _roundtrip(ctx: Context, user: str) -> Result:
    ports = submission_ports(ctx)
    if not ports:
        raise Skip("no submission port (587, 465) answers")
    port = ports[0]
    subject = f"mailprov verify roundtrip {ctx.token}"
    message = EmailMessage()
    message["From"] = user
    message["To"] = user
    message["Subject"] = subject
    message.set_content("Test message from `mailprov verify` (smtp.roundtrip); it deletes itself.\n")
    client = ctx.smtp_client(port)
    try:
        if port != 465:
            client.starttls(context=client_context())
            client.ehlo()
        client.login(user, ctx.options.password or "")
        client.send_message(message)
    finally:
        client.quit_quietly()
    sent = time.monotonic()
    deadline = sent + ctx.timeout * 3 - ctx.io_timeout
    imap, _ = imap_connect(ctx)
    imap.login(user, ctx.options.password or "")
    ctx.roundtrip_logged_in.set()
    try:
        while True:
            imap.select("INBOX")
            typ, data = imap.search(None, "HEADER", "Subject", f'"{ctx.token}"')
            ids = data[0].split() if typ == "OK" and data and data[0] else []
            if ids:
                elapsed = time.monotonic() - sent
                for num in ids:
                    imap.store(num, "+FLAGS", "\\Deleted")
                imap.expunge()
                return Result(
                    "smtp.roundtrip", "pass", f"delivered over port {port} in {elapsed:.1f}s", subject
                )
            if time.monotonic() > deadline:
                return Result(
                    "smtp.roundtrip", "fail", f"not in INBOX {time.monotonic() - sent:.0f}s after submission"
                )
            time.sleep(0.1)  # local delivery usually takes well under a second: poll often
    finally:
        with contextlib.suppress(OSError, imaplib.IMAP4.error, ssl.SSLError):
            close_imap(imap)


# ---- sender forgery and HELO hygiene (shared/checks.md, trust work) ---------------------------------


def _envelope(client: _SMTP, sender: str, recipient: str) -> tuple[str, str]:
    """MAIL FROM sender, RCPT TO recipient, RSET: ('accepted'|'deferred'|'refused', the deciding reply)."""
    code, msg = client.mail(sender)
    if reply_class(code) != "accepted":
        client.rset()
        return reply_class(code), f"MAIL FROM:<{sender}> -> {code} {text_of(msg)}"
    code, msg = client.rcpt(recipient)
    client.rset()
    return reply_class(code), f"MAIL FROM:<{sender}>, RCPT TO:<{recipient}> -> {code} {text_of(msg)}"


def _not_owned(ctx: Context, user: str) -> str | None:
    """Another real mailbox of the spec that the test user may not send as, or None."""
    if ctx.spec is None:
        return None
    owners = getattr(ctx.spec, "sender_owners", {}) or {}
    for box in ctx.spec.mailboxes:
        address = box.address
        domain = address.rsplit("@", 1)[-1]
        if address == user or user in owners.get(address, []) or user in owners.get(f"@{domain}", []):
            continue
        return str(address)
    return None


@check(
    "smtp.sender_ownership",
    "Authenticated users send only as themselves",
    needs=("net", "creds"),
    severity="high",
    timeout_scale=AUTH_TIMEOUT_SCALE,
)
def sender_ownership(ctx: Context) -> Result:
    """After AUTH on 587/465, MAIL FROM an address the user does not own is refused before DATA."""
    try:
        return _sender_ownership(ctx)
    finally:
        ctx.sender_checked.set()


def _sender_ownership(ctx: Context) -> Result:
    user = ctx.options.user or ""
    ports = submission_ports(ctx)
    if not ports:
        raise Skip("no submission port (587, 465) answers")
    domain = user.rsplit("@", 1)[-1]
    forged = {
        "made-up address in the user's domain": f"mailprov-verify-not-yours-{ctx.token}@{domain}",
        "foreign address": f"mailprov-verify-not-yours-{ctx.token}@example.net",
    }
    other = _not_owned(ctx, user)
    if other is not None:
        forged["another mailbox"] = other
    parts: dict[str, tuple[Status, str]] = {}
    evidence: dict[str, str] = {}
    for port in ports:
        try:
            client = ctx.smtp_client(port)
        except (OSError, smtplib.SMTPException, LookupFailed) as exc:
            parts[f"port {port}"] = ("fail", f"no session: {describe(exc)}")
            continue
        try:
            if port != 465:
                client.starttls(context=client_context())
                client.ehlo()
            client.login(user, ctx.options.password or "")
            verdict, reply = _envelope(client, user, user)
            evidence[f"{port} own"] = reply
            if verdict != "accepted":
                parts[f"port {port}"] = (
                    "fail",
                    f"could not confirm: even the user's own address is not accepted ({reply})",
                )
                continue
            for label, sender in forged.items():
                verdict, reply = _envelope(client, sender, user)
                evidence[f"{port} {label}"] = reply
                name = f"port {port} {label}"
                if verdict == "accepted":
                    parts[name] = ("fail", f"accepted: {reply}")
                elif verdict == "deferred":
                    parts[name] = ("warn", f"deferred, not refused: {reply}")
                else:
                    parts[name] = ("pass", f"refused ({reply})")
        except (OSError, smtplib.SMTPException) as exc:
            parts[f"port {port}"] = ("fail", f"error: {describe(exc)}")
        finally:
            client.quit_quietly()
    return aggregate("smtp.sender_ownership", parts, evidence)


@check("smtp.spoof_local_sender", "No outside mail from our own addresses", needs=("net",))
def spoof_local_sender(ctx: Context) -> Result:
    """Unauthenticated on 25, MAIL FROM one of the domain's own addresses to a local recipient is refused."""
    _session(ctx, 25)
    protected = None
    if ctx.spec is not None:
        inbound = getattr(ctx.spec, "inbound", None)
        protected = getattr(inbound, "reject_own_senders", True)
    parts: dict[str, tuple[Status, str]] = {}
    for domain in _mail_domains(ctx):
        own = [b.address for b in ctx.spec.mailboxes if b.address.endswith("@" + domain)] if ctx.spec else []
        sender = own[0] if own else f"postmaster@{domain}"
        client = ctx.smtp_client(25)
        try:
            verdict, reply = _envelope(client, sender, f"postmaster@{domain}")
        finally:
            client.quit_quietly()
        if verdict == "refused":
            control, control_reply = _control_envelope(ctx, f"postmaster@{domain}")
            if control == "accepted":
                parts[domain] = ("pass", f"refused ({reply})")
            else:
                parts[domain] = (
                    "warn",
                    f"could not confirm: postmaster@{domain} is not accepted from an outside sender either ({control_reply})",
                )
        elif verdict == "deferred":
            parts[domain] = ("warn", f"deferred, not refused: {reply}")
        elif protected is None:
            parts[domain] = (
                "warn",
                f"accepted from outside: {reply} (forged own sender; no spec says whether that is wanted)",
            )
        elif protected:
            parts[domain] = ("fail", f"accepted from outside: {reply}")
        else:
            parts[domain] = (
                "pass",
                f"accepted, as the spec allows (inbound.reject_own_senders: false): {reply}",
            )
    return aggregate("smtp.spoof_local_sender", parts)


@check("smtp.helo_own_name", "EHLO with our own name refused", needs=("net",))
def helo_own_name(ctx: Context) -> Result:
    """EHLO on 25 with the server's own host name is refused (at EHLO, MAIL or RCPT); accepted = warn."""
    _session(ctx, 25)
    name = ctx.hostname() or ctx.smtp(25).banner_name
    if not name:
        raise Skip("the server's own name is unknown: pass --spec or a host name as TARGET")
    domain = _mail_domains(ctx)[0]
    recipient = f"postmaster@{domain}"
    client = _SMTP(timeout=ctx.io_timeout)
    client.sni = ctx.sni()
    try:
        code, msg = client.connect(ctx.address(), 25)
        if code != 220:
            return Result("smtp.helo_own_name", "fail", f"no 220 greeting: {code} {text_of(msg)}")
        code, msg = client.ehlo(name)
        if reply_class(code) == "refused":
            return Result("smtp.helo_own_name", "pass", f"EHLO {name} refused ({code} {text_of(msg)})")
        if code != 250:
            return Result("smtp.helo_own_name", "warn", f"EHLO {name} -> {code} {text_of(msg)}")
        verdict, reply = _envelope(client, RELAY_SENDER, recipient)
    finally:
        client.quit_quietly()
    evidence = f"EHLO {name}; {reply}"
    if verdict == "accepted":
        return Result("smtp.helo_own_name", "warn", f"EHLO {name} accepted: {reply}", evidence)
    control, control_reply = _control_envelope(ctx, recipient)
    if control != "accepted":
        return Result(
            "smtp.helo_own_name",
            "warn",
            f"could not confirm: {recipient} is not accepted with an ordinary EHLO either ({control_reply})",
            evidence,
        )
    if verdict == "deferred":
        return Result("smtp.helo_own_name", "warn", f"EHLO {name}: deferred, not refused ({reply})", evidence)
    return Result("smtp.helo_own_name", "pass", f"EHLO {name} refused ({reply})", evidence)


def _control_envelope(ctx: Context, recipient: str) -> tuple[str, str]:
    """The same envelope after an ordinary EHLO (verify's address literal)."""
    client = ctx.smtp_client(25)
    try:
        return _envelope(client, RELAY_SENDER, recipient)
    finally:
        client.quit_quietly()


# ---- spam filtering (mailbox work) ------------------------------------------------------------------

#: The Generic Test for Unsolicited Bulk Email: every spam filter scores a message holding it as spam.
GTUBE = "XJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X"


def gtube_message(sender: str, recipient: str, token: str) -> EmailMessage:
    """A small message whose body holds the GTUBE string."""
    message = EmailMessage()
    message["From"] = sender
    message["To"] = recipient
    message["Subject"] = f"mailprov verify spam filter test {token}"
    message.set_content(
        f"Test message from `mailprov verify` (smtp.spam_filter): a spam filter must refuse it.\n\n{GTUBE}\n"
    )
    return message


def antispam_expected(ctx: Context) -> bool:
    """Whether a spam filter is expected: the spec enables antispam, or --expect-antispam was given."""
    if ctx.options.expect_antispam:
        return True
    return bool(ctx.spec is not None and ctx.spec.antispam.enabled)


# Not given a longer deadline: its probes share memoised cells (the address, the domains) with the quick
# checks, and a cell computed under a longer deadline would make those wait past theirs.
@check("smtp.spam_filter", "A GTUBE message is refused or tagged", needs=("net",))
def spam_filter(ctx: Context) -> Result:
    """When antispam is expected: GTUBE on 25 is refused at the end of DATA (or, with credentials, tagged)."""
    try:
        return _spam_filter(ctx)
    finally:
        ctx.spam_checked.set()


def _spam_filter(ctx: Context) -> Result:
    id = "smtp.spam_filter"
    if not antispam_expected(ctx):
        raise Skip("no spam filter expected (the spec has no antispam.enabled; pass --expect-antispam)")
    _session(ctx, 25)
    # With credentials the message goes to the test mailbox, where verify can look for spam headers and
    # delete it; without, to postmaster@ (a recipient every domain has).
    recipient = (
        ctx.options.user if ctx.has_creds and ctx.options.user else f"postmaster@{_mail_domains(ctx)[0]}"
    )
    client = ctx.smtp_client(25)
    try:
        verdict, reply = _envelope_kept(client, RELAY_SENDER, recipient)
        if verdict != "accepted":
            status: Status = "warn" if verdict == "deferred" else "fail"
            return Result(id, status, f"could not confirm: the envelope was not accepted ({reply})")
        code, msg = client.data(gtube_message(RELAY_SENDER, recipient, ctx.token).as_bytes())
    except smtplib.SMTPDataError as exc:
        # smtplib raises only when DATA itself is refused; the end-of-data reply is returned.
        return Result(
            id, "fail", f"could not confirm: DATA refused ({exc.smtp_code} {text_of(exc.smtp_error)})"
        )
    finally:
        client.quit_quietly()
    evidence = f"GTUBE to <{recipient}> -> {code} {text_of(msg)}"
    verdict = reply_class(code)
    if verdict == "refused":
        return Result(id, "pass", f"GTUBE refused at end of DATA ({code} {text_of(msg)})", evidence)
    if verdict == "deferred":
        return Result(id, "warn", f"GTUBE deferred, not refused ({code} {text_of(msg)})", evidence)
    accepted = f"GTUBE accepted ({code} {text_of(msg)})"
    if not ctx.has_creds:
        return Result(
            id,
            "fail",
            f"{accepted}: no filter refused it (tagging cannot be confirmed without credentials)",
            evidence,
        )
    found = _find_tagged(ctx)
    if found is None:
        return Result(
            id,
            "fail",
            f"{accepted}, and not found in the test mailbox in time to look for spam headers",
            evidence,
        )
    folder, tag = found
    if tag is None:
        return Result(id, "fail", f"{accepted} and delivered to {folder} without spam headers", evidence)
    return Result(id, "pass", f"{accepted} but tagged as spam ({tag}) in {folder}", evidence)


#: IMAP folders searched for the GTUBE message (a mailbox with more is not searched further).
MAX_FOLDERS = 50


def _find_tagged(ctx: Context) -> tuple[str, str | None] | None:
    """Find the GTUBE message in the test mailbox, delete it: (folder, spam tag or None), None if not found."""
    imap, _ = imap_connect(ctx)
    try:
        imap.login(ctx.options.user or "", ctx.options.password or "")
        ctx.spam_checked.set()
        typ, data = imap.list()
        folders = [
            f for f in (parse_list_name(line) for line in (data or []) if isinstance(line, bytes)) if f
        ]
        folders = sorted(folders, key=lambda f: (f.upper() != "INBOX", f))[:MAX_FOLDERS] or ["INBOX"]
        # Poll while the check's network time lasts, keeping a moment to report "not found".
        deadline = time.monotonic() + (bounded.time_left(ctx.io_timeout) or ctx.io_timeout) - 0.5
        while True:
            for folder in folders:
                typ, _ = imap.select(imap._quote(folder))  # type: ignore[attr-defined]
                if typ != "OK":
                    continue
                typ, found = imap.search(None, "HEADER", "Subject", f'"{ctx.token}"')
                ids = [n.decode() for n in found[0].split()] if typ == "OK" and found and found[0] else []
                if ids:
                    typ, parts = imap.fetch(ids[0], "(BODY.PEEK[HEADER])")
                    header = b"".join(part[1] for part in parts or [] if isinstance(part, tuple))
                    for num in ids:
                        imap.store(num, "+FLAGS", "\\Deleted")
                    imap.expunge()
                    return folder, spam_tag(header.decode("utf-8", "replace"))
            if time.monotonic() > deadline:
                return None
            time.sleep(0.2)
    finally:
        with contextlib.suppress(OSError, imaplib.IMAP4.error, ssl.SSLError):
            close_imap(imap)


def _envelope_kept(client: _SMTP, sender: str, recipient: str) -> tuple[str, str]:
    """MAIL FROM, RCPT TO (no RSET): ('accepted'|'deferred'|'refused', the deciding reply)."""
    code, msg = client.mail(sender)
    if reply_class(code) != "accepted":
        return reply_class(code), f"MAIL FROM:<{sender}> -> {code} {text_of(msg)}"
    code, msg = client.rcpt(recipient)
    return reply_class(code), f"RCPT TO:<{recipient}> -> {code} {text_of(msg)}"
