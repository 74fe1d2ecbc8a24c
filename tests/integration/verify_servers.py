"""Hand-configured Postfix + Dovecot servers on loopback addresses, for testing `mailprov verify`.

These are servers mailprov did NOT build: main.cf, master.cf and dovecot.conf are written here by hand
(never through mailprov's render), each instance with its own config dir, queue_directory,
data_directory and Dovecot base_dir, listening on its own loopback address (added to `lo` and removed
afterwards) so that clients arrive from 127.0.0.1 and Dovecot does not treat them as local/secure.
Faults are switched on per instance with keyword flags.
"""

from __future__ import annotations

import datetime as dt
import imaplib
import os
import shutil
import socket
import ssl
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

POSTFIX = shutil.which("postfix") or "/usr/sbin/postfix"
DOVECOT = shutil.which("dovecot") or "/usr/sbin/dovecot"
UNBOUND = shutil.which("unbound") or "/usr/sbin/unbound"


def missing_binaries() -> list[str]:
    """Programs these servers need that are not installed."""
    return [
        p for p in (POSTFIX, DOVECOT, UNBOUND, "/usr/sbin/ip") if not Path(p).exists() and not shutil.which(p)
    ]


def scratch_dir(prefix: str) -> Path:
    """A directory below /tmp that the postfix, dovecot and mail users can traverse (pytest's tmp is 0700)."""
    path = Path(tempfile.mkdtemp(prefix=prefix))
    path.chmod(0o755)
    return path


class LoopbackAddress:
    """An extra address on `lo` (as /8, so connections from here still originate from 127.0.0.1)."""

    def __init__(self, address: str) -> None:
        self.address = address
        self.added = False

    def __enter__(self) -> LoopbackAddress:
        shown = subprocess.run(
            ["ip", "-4", "addr", "show", "dev", "lo"], capture_output=True, text=True
        ).stdout
        if f" {self.address}/" not in shown:
            subprocess.run(["ip", "addr", "add", f"{self.address}/8", "dev", "lo"], check=True)
            self.added = True
        return self

    def __exit__(self, *exc: object) -> None:
        if self.added:
            subprocess.run(["ip", "addr", "del", f"{self.address}/8", "dev", "lo"], check=False)
            self.added = False


def _pem_key(key: rsa.RSAPrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


class TestCA:
    """A throwaway certificate authority issuing server certificates."""

    __test__ = False  # not a pytest test class

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "mailprov verify test CA")])
        now = dt.datetime.now(dt.UTC)
        self.cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(self.key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(days=400))
            .not_valid_after(now + dt.timedelta(days=400))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True
            )
            .sign(self.key, hashes.SHA256())
        )
        self.path = directory / "ca.pem"
        self.path.write_bytes(self.cert.public_bytes(serialization.Encoding.PEM))

    def issue(
        self, name: str, hostname: str, days: int = 90, expired: bool = False, extra: tuple[str, ...] = ()
    ) -> tuple[Path, Path]:
        """Issue a certificate for hostname (and extra names): (chain PEM path, key PEM path)."""
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        now = dt.datetime.now(dt.UTC)
        start, end = (
            (now - dt.timedelta(days=60), now - dt.timedelta(days=2))
            if expired
            else (
                now - dt.timedelta(hours=1),
                now + dt.timedelta(days=days),
            )
        )
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hostname)]))
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(start)
            .not_valid_after(end)
            .add_extension(
                x509.SubjectAlternativeName([x509.DNSName(n) for n in (hostname, *extra)]), critical=False
            )
            .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .sign(self.key, hashes.SHA256())
        )
        chain = self.directory / f"{name}.pem"
        key_path = self.directory / f"{name}.key"
        chain.write_bytes(
            cert.public_bytes(serialization.Encoding.PEM) + self.cert.public_bytes(serialization.Encoding.PEM)
        )
        key_path.write_bytes(_pem_key(key))
        key_path.chmod(0o600)
        return chain, key_path


def wait_port(address: str, port: int, timeout: float = 15) -> None:
    """Wait until address:port accepts TCP."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((address, port), 0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"{address}:{port} did not open within {timeout:.0f}s")


_MASTER_CF_BASE = """\
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
tlsmgr    unix  -       -       n       1000?   1       tlsmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
proxywrite unix -       -       n       -       1       proxymap
smtp      unix  -       -       n       -       -       smtp
relay     unix  -       -       n       -       -       smtp
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
local     unix  -       n       n       -       -       local
virtual   unix  -       n       n       -       -       virtual
lmtp      unix  -       -       n       -       -       lmtp
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
"""


@dataclass
class MailServer:
    """One hand-configured Postfix + Dovecot pair on a loopback address.

    Fault flags: open_relay, auth_before_tls (AUTH offered on 25/587 before STARTTLS), accept_unknown
    (unknown recipients accepted at RCPT time), no_smtps (nothing on 465), imap_plaintext (plaintext
    login before STARTTLS), dovecot_tls1 (TLS 1.0 accepted on 993/995), sender_forgery (authenticated
    users may use any envelope sender), local_spoof (outside mail from our own addresses accepted on 25),
    own_helo (EHLO with our own name accepted on 25), weak_ciphers (CBC suites on every TLS port).
    Features: quota_plugin with per-user quotas, managesieve (4190), spam_reject (GTUBE refused).
    Without faults the protections are configured the way an admin would by hand: smtpd_sender_login_maps
    with reject_sender_login_mismatch, check_helo_access, and AEAD-only cipher lists.
    Certificates are given per daemon.
    """

    root: Path
    address: str
    hostname: str
    domain: str
    users: dict[str, str]
    postfix_cert: tuple[Path, Path]
    dovecot_cert: tuple[Path, Path]
    open_relay: bool = False
    auth_before_tls: bool = False
    accept_unknown: bool = False
    no_smtps: bool = False
    imap_plaintext: bool = False
    dovecot_tls1: bool = False
    sender_forgery: bool = False
    local_spoof: bool = False
    own_helo: bool = False
    weak_ciphers: bool = False
    #: Mailbox features: per-user storage quotas (Dovecot quota plugin, imap_quota), ManageSieve on 4190,
    #: and a "spam filter" refusing GTUBE at the end of DATA (Postfix body_checks REJECT).
    quotas: dict[str, str] = field(default_factory=dict)
    quota_plugin: bool = False
    managesieve: bool = False
    spam_reject: bool = False
    #: Users whose delivery tags GTUBE mail (a Sieve editheader script adds X-Spam-Flag: YES), standing in
    #: for a filter that only tags.
    spam_tag_users: list[str] = field(default_factory=list)
    started: list[str] = field(default_factory=list)

    @property
    def conf(self) -> Path:
        """Postfix config directory."""
        return self.root / "postfix"

    @property
    def queue(self) -> Path:
        """Postfix queue_directory."""
        return self.root / "queue"

    @property
    def dovecot_conf(self) -> Path:
        """dovecot.conf path."""
        return self.root / "dovecot" / "dovecot.conf"

    def write(self) -> None:
        """Write all configuration files (plain text, by hand)."""
        self.conf.mkdir(parents=True)
        self.queue.mkdir()
        data = self.root / "data"
        data.mkdir()
        shutil.chown(data, "postfix")
        (self.root / "dovecot").mkdir()
        mail = self.root / "mail"
        mail.mkdir()
        shutil.chown(mail, "mail", "mail")
        cert, key = self.postfix_cert
        lines = [
            "compatibility_level = 3.6",
            f"queue_directory = {self.queue}",
            f"data_directory = {data}",
            f"myhostname = {self.hostname}",
            f"mydomain = {self.domain}",
            "myorigin = $mydomain",
            f"inet_interfaces = {self.address}",
            "inet_protocols = ipv4",
            "mydestination =",
            "alias_maps =",
            "alias_database =",
            "local_recipient_maps =",
            "biff = no",
            f"maillog_file = {self.root}/maillog",
            "maillog_file_prefixes = /tmp",
            "smtpd_banner = $myhostname ESMTP",
            f"virtual_mailbox_domains = {self.domain}",
            f"virtual_mailbox_maps = texthash:{self.conf}/vmailbox",
            f"virtual_alias_maps = texthash:{self.conf}/virtual",
            f"virtual_transport = lmtp:inet:{self.address}:24",
            f"smtpd_tls_chain_files = {key}, {cert}",
            "smtpd_tls_security_level = may",
            "smtpd_tls_protocols = >=TLSv1.2",
            "smtpd_tls_mandatory_protocols = >=TLSv1.2",
            "smtpd_sasl_type = dovecot",
            "smtpd_sasl_path = private/auth",
            f"smtpd_tls_auth_only = {'no' if self.auth_before_tls else 'yes'}",
            f"smtpd_sasl_auth_enable = {'yes' if self.auth_before_tls else 'no'}",
        ]
        if self.open_relay:
            lines += [
                "mynetworks = 0.0.0.0/0",
                "smtpd_relay_restrictions = permit_mynetworks, reject_unauth_destination",
            ]
        else:
            lines += [
                f"mynetworks = {self.address}/32",
                "smtpd_relay_restrictions = permit_mynetworks, permit_sasl_authenticated, reject_unauth_destination",
            ]
        if self.accept_unknown:
            lines.append("smtpd_reject_unlisted_recipient = no")
        first = next(iter(self.users))
        senders = {user: user for user in self.users} | {f"postmaster@{self.domain}": first}
        (self.conf / "senders").write_text("".join(f"{k} {v}\n" for k, v in senders.items()))
        lines.append(f"smtpd_sender_login_maps = texthash:{self.conf}/senders")
        if not self.local_spoof:
            # Port 25 has no SASL, so reject_sender_login_mismatch does nothing there: a sender table does.
            (self.conf / "own_senders").write_text("".join(f"{k} REJECT Not from outside\n" for k in senders))
            lines.append(f"smtpd_sender_restrictions = check_sender_access texthash:{self.conf}/own_senders")
        if not self.own_helo:
            (self.conf / "helo").write_text(
                f"{self.hostname} REJECT You are not me\n[{self.address}] REJECT You are not me\n"
            )
            lines += [
                "smtpd_helo_required = yes",
                f"smtpd_helo_restrictions = check_helo_access texthash:{self.conf}/helo",
            ]
        if not self.weak_ciphers:
            lines += [
                "tls_high_cipherlist = ECDHE+AESGCM:ECDHE+CHACHA20",
                "smtpd_tls_ciphers = high",
                "smtpd_tls_mandatory_ciphers = high",
            ]
        if self.spam_reject:
            gtube = r"XJS\*C4JDBQADN1\.NSBN3\*2IDNEN\*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL\*C\.34X"
            (self.conf / "body_checks").write_text(f"/{gtube}/ REJECT Spam (GTUBE)\n")
            lines.append(f"body_checks = regexp:{self.conf}/body_checks")
        (self.conf / "main.cf").write_text("\n".join(lines) + "\n")
        submission_senders = (
            "  -o smtpd_sender_restrictions="
            if self.sender_forgery
            else "  -o smtpd_sender_restrictions=reject_sender_login_mismatch"
        )
        master = ["smtp      inet  n       -       n       -       -       smtpd"]
        master += [
            "submission inet n       -       n       -       -       smtpd",
            "  -o syslog_name=postfix/submission",
            "  -o smtpd_tls_security_level=encrypt",
            "  -o smtpd_sasl_auth_enable=yes",
            "  -o smtpd_relay_restrictions=permit_sasl_authenticated,reject",
            submission_senders,
            "  -o smtpd_helo_restrictions=",
        ]
        if not self.no_smtps:
            master += [
                "smtps     inet  n       -       n       -       -       smtpd",
                "  -o syslog_name=postfix/smtps",
                "  -o smtpd_tls_wrappermode=yes",
                "  -o smtpd_sasl_auth_enable=yes",
                "  -o smtpd_relay_restrictions=permit_sasl_authenticated,reject",
                submission_senders,
                "  -o smtpd_helo_restrictions=",
            ]
        (self.conf / "master.cf").write_text("\n".join(master) + "\n" + _MASTER_CF_BASE)
        vmailbox = [f"{user} {user.split('@')[1]}/{user.split('@')[0]}/" for user in self.users]
        (self.conf / "vmailbox").write_text("\n".join(vmailbox) + "\n")
        (self.conf / "virtual").write_text(f"postmaster@{self.domain} {first}\n")
        self._write_dovecot()

    def _write_dovecot(self) -> None:
        cert, key = self.dovecot_cert
        users = self.root / "dovecot" / "users"
        tag_dir = self.root / "dovecot" / "tag"
        tag_script = tag_dir / "tag.sieve"
        if self.spam_tag_users:
            tag_dir.mkdir()
            tag_script.write_text(
                'require ["editheader", "body"];\n'
                'if body :contains "GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL" { addheader "X-Spam-Flag" "YES"; }\n'
            )
            shutil.chown(tag_dir, "mail", "mail")
        users.write_text(
            "".join(
                f"{u}:{{PLAIN}}{p}::::::"
                + " ".join(
                    ([f"userdb_quota_rule=*:storage={self.quotas[u]}"] if u in self.quotas else [])
                    + ([f"userdb_sieve_before={tag_script}"] if u in self.spam_tag_users else [])
                )
                + "\n"
                for u, p in self.users.items()
            )
        )
        features = []
        if self.quota_plugin:
            features += [
                "mail_plugins = $mail_plugins quota",
                "protocol imap {",
                "  mail_plugins = $mail_plugins imap_quota",
                "}",
                "plugin {",
                "  quota = maildir:User quota",
                "}",
            ]
        if self.managesieve:
            features += [
                "service managesieve-login {",
                "  inet_listener sieve {",
                f"    address = {self.address}",
                "    port = 4190",
                "  }",
                "}",
                "plugin {",
                "  sieve = file:~/sieve;active=~/.dovecot.sieve",
                "  sieve_extensions = +editheader",
                "}",
            ]
        ssl_lines = (
            ["ssl_min_protocol = TLSv1", "ssl_cipher_list = ALL:@SECLEVEL=0"]
            if self.dovecot_tls1
            else ["ssl_min_protocol = TLSv1.2"]
        )
        if not self.weak_ciphers and not self.dovecot_tls1:
            ssl_lines += ["ssl_cipher_list = ECDHE+AESGCM:ECDHE+CHACHA20", "ssl_prefer_server_ciphers = yes"]
        text = f"""\
# hand-written for a verify test
base_dir = {self.root}/dovecot/run
instance_name = mailprov-verify-{self.address}
listen = {self.address}
protocols = imap pop3 lmtp{" sieve" if self.managesieve else ""}
ssl = {"yes" if self.imap_plaintext else "required"}
ssl_cert = <{cert}
ssl_key = <{key}
{chr(10).join(ssl_lines)}
disable_plaintext_auth = {"no" if self.imap_plaintext else "yes"}
auth_mechanisms = plain login
auth_failure_delay = 1 secs
mail_location = maildir:~/Maildir
first_valid_uid = 8
log_path = {self.root}/dovecot/dovecot.log
passdb {{
  driver = passwd-file
  args = scheme=PLAIN username_format=%u {users}
}}
userdb {{
  driver = passwd-file
  args = username_format=%u {users}
  default_fields = uid=mail gid=mail home={self.root}/mail/%d/%n
}}
service lmtp {{
  inet_listener lmtp {{
    address = {self.address}
    port = 24
  }}
}}
service auth {{
  unix_listener {self.queue}/private/auth {{
    mode = 0660
    user = postfix
    group = postfix
  }}
}}
protocol lmtp {{
  postmaster_address = postmaster@{self.domain}
  {"mail_plugins = $mail_plugins sieve" if self.spam_tag_users else ""}
}}
{chr(10).join(features)}
"""
        self.dovecot_conf.write_text(text)

    def start(self) -> None:
        """Start Postfix (its own master) and Dovecot, and wait for their ports."""
        quiet = {"stdin": subprocess.DEVNULL, "stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
        subprocess.run([POSTFIX, "-c", str(self.conf), "start"], check=True, timeout=60, **quiet)  # type: ignore[call-overload]
        self.started.append("postfix")
        subprocess.run([DOVECOT, "-c", str(self.dovecot_conf)], check=True, timeout=60, **quiet)  # type: ignore[call-overload]
        self.started.append("dovecot")
        ports = [25, 587, 143, 993, 110, 995, 24] + ([] if self.no_smtps else [465])
        for port in ports + ([4190] if self.managesieve else []):
            wait_port(self.address, port)
        self._wait_auth()

    def _wait_auth(self, timeout: float = 20) -> None:
        """Wait until Dovecot's auth answers (a first login right after start can stall for seconds)."""
        user, password = next(iter(self.users.items()))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                imap = imaplib.IMAP4(self.address, 143, timeout=5)
                imap.starttls(ssl_context=ssl._create_unverified_context())
                imap.login(user, password)
                imap.logout()
                if (self.queue / "private" / "auth").exists():
                    return
            except (OSError, imaplib.IMAP4.error):
                pass
            time.sleep(0.2)
        raise RuntimeError(f"Dovecot on {self.address} did not accept a login within {timeout:.0f}s")

    def stop(self) -> None:
        """Stop both daemons (idempotent) and wait for the Postfix master to exit."""
        quiet = {"stdin": subprocess.DEVNULL, "stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
        if "dovecot" in self.started:
            subprocess.run([DOVECOT, "-c", str(self.dovecot_conf), "stop"], check=False, timeout=30, **quiet)  # type: ignore[call-overload]
            self.started.remove("dovecot")
        if "postfix" in self.started:
            pidfile = self.queue / "pid" / "master.pid"
            pid = int(pidfile.read_text().split()[0]) if pidfile.exists() else None
            subprocess.run([POSTFIX, "-c", str(self.conf), "stop"], check=False, timeout=60, **quiet)  # type: ignore[call-overload]
            self.started.remove("postfix")
            deadline = time.monotonic() + 10
            while pid is not None and time.monotonic() < deadline:
                try:
                    os.kill(pid, 0)
                except ProcessLookupError:
                    break
                time.sleep(0.1)

    def log(self) -> str:
        """The Postfix and Dovecot logs (for failure messages)."""
        parts = []
        for path in (self.root / "maillog", self.root / "dovecot" / "dovecot.log"):
            if path.exists():
                parts.append(f"== {path}\n{path.read_text()[-3000:]}")
        return "\n".join(parts)


def free_port() -> int:
    """A TCP and UDP port free on 127.0.0.1 right now."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            udp.bind(("127.0.0.1", 0))
            port = udp.getsockname()[1]
            with socket.socket() as tcp:
                try:
                    tcp.bind(("127.0.0.1", port))
                    return int(port)
                except OSError:
                    continue
    raise RuntimeError("no free port")
