"""A real email, end to end: submit over 587 (STARTTLS + AUTH), read it back over IMAPS.

Used by `mailprov demo`'s smoke check and by the e2e tests. Plain smtplib/imaplib/ssl; certificates are
not verified (lab hosts use self-signed ones) — this proves mail moves, `verify` judges the TLS.
"""

from __future__ import annotations

import contextlib
import email.utils
import imaplib
import smtplib
import socket
import ssl
import time
import uuid
from email.message import EmailMessage


def insecure_context() -> ssl.SSLContext:
    """A client TLS context that accepts the lab's self-signed certificates."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


def port_open(host: str, port: int, timeout: float = 5.0) -> bool:
    """True when a TCP connection to host:port succeeds."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def submit(
    host: str, user: str, password: str, recipient: str, subject: str | None = None, port: int = 587
) -> str:
    """Send a message from `user` to `recipient` via host:port with STARTTLS and AUTH; return its subject."""
    subject = subject or f"mailprov test {uuid.uuid4().hex[:12]}"
    message = EmailMessage()
    message["From"] = user
    message["To"] = recipient
    message["Subject"] = subject
    message["Message-ID"] = email.utils.make_msgid(domain=user.rpartition("@")[2])
    message.set_content(f"Sent by mailprov to prove that mail moves.\n{subject}\n")
    with smtplib.SMTP(host, port, timeout=30) as smtp:
        smtp.ehlo("mailprov-client.test")
        smtp.starttls(context=insecure_context())
        smtp.ehlo("mailprov-client.test")
        smtp.login(user, password)
        smtp.send_message(message, from_addr=user, to_addrs=[recipient])
    return subject


def find_message(host: str, user: str, password: str, subject: str, port: int = 993) -> bool:
    """True when `user`'s INBOX on host holds a message with this subject (IMAPS login)."""
    imap = imaplib.IMAP4_SSL(host, port, ssl_context=insecure_context(), timeout=30)
    try:
        imap.login(user, password)
        imap.select("INBOX", readonly=True)
        status, data = imap.search(None, "SUBJECT", f'"{subject}"')
        return status == "OK" and bool(data and data[0].split())
    finally:
        with contextlib.suppress(imaplib.IMAP4.error, OSError):
            imap.logout()


def fetch_message(host: str, user: str, password: str, subject: str, port: int = 993) -> bytes | None:
    """The raw bytes (headers as delivered) of the newest message with this subject in `user`'s INBOX."""
    imap = imaplib.IMAP4_SSL(host, port, ssl_context=insecure_context(), timeout=30)
    try:
        imap.login(user, password)
        imap.select("INBOX", readonly=True)
        status, data = imap.search(None, "SUBJECT", f'"{subject}"')
        if status != "OK" or not data or not data[0].split():
            return None
        status, parts = imap.fetch(data[0].split()[-1], "(BODY.PEEK[])")
        for part in parts if status == "OK" else []:
            if isinstance(part, tuple):
                return bytes(part[1])
        return None
    finally:
        with contextlib.suppress(imaplib.IMAP4.error, OSError):
            imap.logout()


def wait_for_message(
    host: str, user: str, password: str, subject: str, timeout: float = 60.0, port: int = 993
) -> bool:
    """Poll `user`'s INBOX until the message arrives or timeout passes."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            if find_message(host, user, password, subject, port):
                return True
        except (imaplib.IMAP4.error, OSError):
            pass
        if time.monotonic() >= deadline:
            return False
        time.sleep(1.0)


def relay_refused(host: str, outside: str = "someone@relay-test.invalid", port: int = 25) -> tuple[bool, str]:
    """Try to relay to an outside domain without AUTH; (refused?, server reply)."""
    with smtplib.SMTP(host, port, timeout=30) as smtp:
        smtp.ehlo("mailprov-client.test")
        smtp.mail("probe@relay-test.invalid")
        code, reply = smtp.rcpt(outside)
        smtp.rset()
    return code >= 500, f"{code} {reply.decode(errors='replace')}"
