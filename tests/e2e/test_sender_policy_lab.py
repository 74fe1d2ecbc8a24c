"""End to end (Trust II): on a lab host provisioned by `mailprov apply`, with a real SMTP client.

- Submission (587 STARTTLS, 465): an authenticated user may send as their own address, an alias that
  delivers to them and a send_as grant; a made-up address of their domain, another mailbox and an outside
  address are refused before DATA.
- Port 25 from outside: one of our addresses as envelope sender is refused, and accepted once the spec
  switches inbound.reject_own_senders off; EHLO with our own host name is refused.
- TLS suites: the mandatory-TLS ports hand-shake only with AEAD suites (a CBC-only client is refused),
  port 25 still accepts one.
"""

from __future__ import annotations

import imaplib
import secrets
import smtplib
import ssl
from collections.abc import Iterator
from typing import Any

import pytest

from provisioner import apply as apply_mod
from provisioner import spec as spec_mod
from provisioner.lab import Lab
from provisioner.passwords import hash_password

pytestmark = pytest.mark.e2e

HOST = "policy1"
DOMAIN = "policy.test"
HOSTNAME = f"mail.{DOMAIN}"


def spec_text(alice: str, bob: str, reject_own_senders: bool) -> str:
    return f"""
hostname: {HOSTNAME}
domains:
  - name: {DOMAIN}
    mailboxes:
      - address: alice@{DOMAIN}
        password_hash: "{hash_password(alice)}"
        send_as: [news@{DOMAIN}]
      - address: bob@{DOMAIN}
        password_hash: "{hash_password(bob)}"
    aliases:
      sales@{DOMAIN}: [alice@{DOMAIN}]
inbound: {{reject_own_senders: {str(reject_own_senders).lower()}}}
fail2ban: {{enabled: false}}
"""


def apply(lab: Lab, text: str, tmp: Any) -> None:
    path = tmp / "policy.yml"
    path.write_text(text, encoding="utf-8")
    spec = spec_mod.load(path)
    result = apply_mod.run(apply_mod.ApplyRequest(inventory=lab.inventory_path, host_specs={HOST: spec}))
    assert result.ok, {h: apply_mod.final_failure(r) for h, r in result.hosts.items()}


@pytest.fixture(scope="module")
def policy_host(lab: Lab, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    tmp = tmp_path_factory.mktemp("policy")
    lab.up([HOST])
    passwords = {"alice": secrets.token_urlsafe(12), "bob": secrets.token_urlsafe(12)}
    texts = {flag: spec_text(passwords["alice"], passwords["bob"], flag) for flag in (True, False)}
    apply(lab, texts[True], tmp)
    yield {"ip": lab.ip(HOST), "passwords": passwords, "texts": texts, "tmp": tmp, "lab": lab}


def insecure_context(ciphers: str | None = None) -> ssl.SSLContext:
    """The lab host's certificate is self-signed; these tests judge policy, not the certificate."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    if ciphers:
        context.maximum_version = ssl.TLSVersion.TLSv1_2  # TLS 1.3 suites are all AEAD
        context.set_ciphers(ciphers)
    return context


def submit(ip: str, port: int, user: str, password: str, sender: str) -> tuple[int, str]:
    """AUTH as user, MAIL FROM sender, RCPT TO bob: the first refusal's (code, text) or (250, 'accepted')."""
    if port == 465:
        client: smtplib.SMTP = smtplib.SMTP_SSL(ip, port, timeout=30, context=insecure_context())
    else:
        client = smtplib.SMTP(ip, port, timeout=30)
        client.starttls(context=insecure_context())
    with client:
        client.ehlo("client.example")
        client.login(user, password)
        code, text = client.mail(sender)
        if code >= 400:
            return code, text.decode(errors="replace")
        code, text = client.rcpt(f"bob@{DOMAIN}")
        client.rset()
        return (250, "accepted") if code < 400 else (code, text.decode(errors="replace"))


@pytest.mark.parametrize("port", [587, 465])
def test_submission_senders_are_owned(policy_host: dict[str, Any], port: int) -> None:
    ip, pw = policy_host["ip"], policy_host["passwords"]
    alice = f"alice@{DOMAIN}"
    for sender in (alice, f"alice+tag@{DOMAIN}", f"sales@{DOMAIN}", f"news@{DOMAIN}"):
        assert submit(ip, port, alice, pw["alice"], sender) == (250, "accepted"), sender
    for sender in (f"bob@{DOMAIN}", f"madeup@{DOMAIN}", "someone@outside.example"):
        code, text = submit(ip, port, alice, pw["alice"], sender)
        assert code == 553 or code == 554 or 500 <= code < 600, (sender, code, text)
        assert "not owned" in text or "Sender address rejected" in text, (sender, text)
    # bob does not get alice's grant
    code, _ = submit(ip, port, f"bob@{DOMAIN}", pw["bob"], f"news@{DOMAIN}")
    assert code >= 500


def outside_mail(ip: str, ehlo: str, sender: str) -> tuple[int, str]:
    """Unauthenticated on 25: EHLO, MAIL FROM sender, RCPT TO alice: the first refusal or (250, 'accepted')."""
    with smtplib.SMTP(ip, 25, timeout=30) as client:
        client.ehlo(ehlo)
        code, text = client.mail(sender)
        if code >= 400:
            return code, text.decode(errors="replace")
        code, text = client.rcpt(f"alice@{DOMAIN}")
        client.rset()
        return (250, "accepted") if code < 400 else (code, text.decode(errors="replace"))


def test_port_25_refuses_our_senders_and_our_name_then_the_switch(policy_host: dict[str, Any]) -> None:
    ip = policy_host["ip"]
    assert outside_mail(ip, "mx.outside.example", "someone@outside.example") == (250, "accepted")
    for sender in (f"alice@{DOMAIN}", f"sales@{DOMAIN}", f"postmaster@{DOMAIN}"):
        code, text = outside_mail(ip, "mx.outside.example", sender)
        assert code == 554 and "belongs to this server" in text, (sender, code, text)
    code, text = outside_mail(ip, HOSTNAME, "someone@outside.example")
    assert code == 554 and f"You are not {HOSTNAME}" in text, (code, text)
    apply(policy_host["lab"], policy_host["texts"][False], policy_host["tmp"])
    try:
        assert outside_mail(ip, "mx.outside.example", f"alice@{DOMAIN}") == (250, "accepted")
        code, _ = outside_mail(ip, HOSTNAME, "someone@outside.example")
        assert code == 554, "own-name HELO stays refused when own senders are allowed"
    finally:
        apply(policy_host["lab"], policy_host["texts"][True], policy_host["tmp"])


CBC_ONLY = "ECDHE-RSA-AES128-SHA:ECDHE-ECDSA-AES128-SHA:ECDHE-RSA-AES256-SHA384:ECDHE-ECDSA-AES256-SHA384"


def handshake(ip: str, port: int, ciphers: str) -> str | None:
    """The negotiated suite with a client offering only `ciphers` (TLS 1.2), or None when refused."""
    context = insecure_context(ciphers)
    try:
        if port in (465, 993, 995):
            import socket

            with socket.create_connection((ip, port), timeout=20) as sock, context.wrap_socket(sock) as tls:
                return tls.cipher()[0]
        if port in (25, 587):
            with smtplib.SMTP(ip, port, timeout=20) as client:
                client.ehlo("client.example")
                client.starttls(context=context)
                return client.sock.cipher()[0]  # type: ignore[union-attr]
        imap = imaplib.IMAP4(ip, port, timeout=20)
        try:
            imap.starttls(ssl_context=context)
            return imap.sock.cipher()[0]  # type: ignore[attr-defined]
        finally:
            imap.shutdown()
    except (ssl.SSLError, smtplib.SMTPException, imaplib.IMAP4.error, OSError):
        return None


def test_mandatory_tls_ports_offer_aead_only(policy_host: dict[str, Any]) -> None:
    ip = policy_host["ip"]
    for port in (465, 587, 993, 995, 143):
        assert handshake(ip, port, CBC_ONLY) is None, f"port {port} accepted a CBC-only client"
        suite = handshake(ip, port, "ECDHE+AESGCM:ECDHE+CHACHA20")
        assert suite is not None and ("GCM" in suite or "CHACHA20" in suite), (port, suite)
    assert handshake(ip, 25, CBC_ONLY) is not None, (
        "port 25 (opportunistic) should still take a CBC-only sender"
    )
