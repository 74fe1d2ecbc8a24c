"""The host's certificate transaction (templates/usr/local/sbin/mailprov-tls-deploy), run for real.

The script is rendered exactly as apply installs it and run with this machine's openssl and python3 against
TLS servers on loopback (implicit TLS and SMTP STARTTLS) that load the certificate file the way a daemon
does: on start and on reload. Each case checks the files on disk and the certificate actually served.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import shutil
import socket
import ssl
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from provisioner import profiles, render, spec

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")

HASH = (
    "{SHA512-CRYPT}$6$wS5qFv6gH6eWpZYc$CWN4Y.K75r8CcEwmbGrEYDoDjJpy0Yiyv6WgUWMchTaZjFub/"
    "qVo33twQi9Dlk3mKe16jjf64k3/XAbldkurH0"
)


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def make_cert(
    directory: Path, names: list[str], days: int = 90, issuer: tuple | None = None
) -> tuple[Path, str]:
    """fullchain.pem + privkey.pem for `names` (self-signed, or signed by issuer=(cert, key)); fingerprint."""
    directory.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    issuer_cert, issuer_key = issuer if issuer else (None, key)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(names[0]))
        .issuer_name(issuer_cert.subject if issuer_cert else _name(names[0]))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(n) for n in names]), critical=False)
        .sign(issuer_key, hashes.SHA256())
    )
    chain = cert.public_bytes(serialization.Encoding.PEM)
    if issuer_cert is not None:
        chain += issuer_cert.public_bytes(serialization.Encoding.PEM)
    (directory / "fullchain.pem").write_bytes(chain)
    (directory / "privkey.pem").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return directory, hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest()


def make_ca(directory: Path) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name("Test ACME Root"))
        .issuer_name(_name("Test ACME Root"))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=365))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "ca.pem"
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return cert, key, path


class Daemon:
    """A TLS server on loopback that, like Postfix or Dovecot, reads its certificate at start and reload."""

    def __init__(self, cert: Path, key: Path, starttls: bool) -> None:
        self.cert, self.key, self.starttls = cert, key, starttls
        self.sticky = False  # True: ignores reloads (a daemon that keeps the old certificate)
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.context = self._load()
        threading.Thread(target=self._serve, daemon=True).start()

    def _load(self) -> ssl.SSLContext:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(self.cert, self.key)
        return context

    def reload(self) -> None:
        if not self.sticky:
            self.context = self._load()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._handle, args=(conn,), daemon=True).start()

    def _handle(self, conn: socket.socket) -> None:
        conn.settimeout(5)
        try:
            if self.starttls:
                conn.sendall(b"220 test ESMTP\r\n")
                f = conn.makefile("rb")
                f.readline()
                conn.sendall(b"250-test\r\n250 STARTTLS\r\n")
                f.readline()
                conn.sendall(b"220 go ahead\r\n")
            with self.context.wrap_socket(conn, server_side=True) as tls:
                tls.recv(1)
        except (OSError, ssl.SSLError):
            pass
        finally:
            conn.close()

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def host(tmp_path: Path) -> Iterator[dict]:
    """Installed cert/key, two daemons (465-like and 587-like), the rendered script and its config."""
    live = tmp_path / "live"
    make_cert(live, ["mail.example.test"])
    cert, key = tmp_path / "etc" / "mailprov.pem", tmp_path / "etc" / "mailprov.key"
    cert.parent.mkdir()
    shutil.copyfile(live / "fullchain.pem", cert)
    shutil.copyfile(live / "privkey.pem", key)
    daemons = [Daemon(cert, key, starttls=False), Daemon(cert, key, starttls=True)]
    reload_flag = tmp_path / "reloaded"
    model = spec.loads(
        "hostname: mail.example.test\ndomains:\n  - name: example.test\n    mailboxes:\n"
        f'      - address: a@example.test\n        password_hash: "{HASH}"\n'
    )
    files = render.render(model, profiles.get("debian12"))
    script = tmp_path / "mailprov-tls-deploy"
    script.write_text(files["usr/local/sbin/mailprov-tls-deploy"])
    config = json.loads(files["etc/mailprov/tls-deploy.json"])
    config.update(
        cert=str(cert),
        key=str(key),
        stage=str(tmp_path / "stage"),
        backup_dir=str(tmp_path / "backup"),
        probes=[{"port": daemons[0].port, "starttls": None}, {"port": daemons[1].port, "starttls": "smtp"}],
        reload=[["touch", str(reload_flag)]],
        probe_seconds=3,
    )
    config_path = tmp_path / "tls-deploy.json"

    def write(**changes: object) -> None:
        config_path.write_text(json.dumps({**config, **changes}))

    write()
    stop = threading.Event()

    def reloader() -> None:  # the "daemons" reload when the script runs its reload commands
        while not stop.is_set():
            if reload_flag.exists():
                reload_flag.unlink()
                for daemon in daemons:
                    daemon.reload()
            stop.wait(0.05)

    threading.Thread(target=reloader, daemon=True).start()
    yield {
        "tmp": tmp_path,
        "cert": cert,
        "key": key,
        "daemons": daemons,
        "script": script,
        "config": config_path,
        "write": write,
    }
    stop.set()
    for daemon in daemons:
        daemon.close()


def run(host: dict, *args: str) -> tuple[int, dict]:
    proc = subprocess.run(
        [sys.executable, str(host["script"]), "--config", str(host["config"]), *args],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert "Traceback" not in proc.stderr, proc.stderr
    return proc.returncode, json.loads(proc.stdout.strip().splitlines()[-1])


def served(daemon: Daemon) -> str:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    with socket.create_connection(("127.0.0.1", daemon.port), timeout=5) as sock:
        if daemon.starttls:
            f = sock.makefile("rb")
            f.readline()
            sock.sendall(b"EHLO t\r\n")
            f.readline(), f.readline()
            sock.sendall(b"STARTTLS\r\n")
            f.readline()
        with context.wrap_socket(sock) as tls:
            return hashlib.sha256(tls.getpeercert(binary_form=True)).hexdigest()


def test_new_certificate_is_switched_in_served_and_backed_up(host: dict) -> None:
    old = served(host["daemons"][0])
    new_dir, new_fp = make_cert(host["tmp"] / "new", ["mail.example.test"])
    code, result = run(host, "--from", str(new_dir))
    assert code == 0 and result["changed"] and result["fingerprint"] == new_fp and result["previous"] == old
    assert all(served(d) == new_fp for d in host["daemons"])
    assert host["cert"].read_bytes() == (new_dir / "fullchain.pem").read_bytes()
    assert oct(host["key"].stat().st_mode & 0o777) == "0o600"
    assert (Path(result["backup"]) / "fullchain.pem").is_file()
    code, again = run(host, "--from", str(new_dir))
    assert code == 0 and not again["changed"]
    code, checked = run(host, "--check")
    assert code == 0 and checked["fingerprint"] == new_fp


def test_key_that_does_not_match_changes_nothing(host: dict) -> None:
    before = host["cert"].read_bytes()
    a, _ = make_cert(host["tmp"] / "a", ["mail.example.test"])
    b, _ = make_cert(host["tmp"] / "b", ["mail.example.test"])
    shutil.copyfile(b / "privkey.pem", a / "privkey.pem")
    code, result = run(host, "--from", str(a))
    assert code == 1 and "not the new certificate's key" in result["msg"]
    assert host["cert"].read_bytes() == before


def test_daemon_that_keeps_the_old_certificate_is_rolled_back(host: dict) -> None:
    old_cert, old_key = host["cert"].read_bytes(), host["key"].read_bytes()
    old = served(host["daemons"][1])
    host["daemons"][1].sticky = True  # the STARTTLS port keeps serving the old certificate
    new_dir, _ = make_cert(host["tmp"] / "new", ["mail.example.test"])
    code, result = run(host, "--from", str(new_dir))
    assert code == 1 and "switched back" in result["msg"]
    assert f"port {host['daemons'][1].port}" in result["msg"]
    assert "the previous certificate is served again" in result["msg"]
    assert host["cert"].read_bytes() == old_cert and host["key"].read_bytes() == old_key
    assert all(served(d) == old for d in host["daemons"])


def test_names_expiry_and_chain_are_judged(host: dict) -> None:
    before = host["cert"].read_bytes()
    host["write"](names=["mail.example.test", "mta-sts.example.test"], min_days=7)
    short, _ = make_cert(host["tmp"] / "short", ["mail.example.test", "mta-sts.example.test"], days=2)
    code, result = run(host, "--from", str(short))
    assert code == 1 and "expires within 7 days" in result["msg"]
    narrow, _ = make_cert(host["tmp"] / "narrow", ["mail.example.test"])
    code, result = run(host, "--from", str(narrow))
    assert code == 1 and "does not cover mta-sts.example.test" in result["msg"]
    ca_cert, ca_key, ca_file = make_ca(host["tmp"] / "ca")
    other_cert, other_key, _ = make_ca(host["tmp"] / "other")
    host["write"](names=["mail.example.test"], min_days=7, ca_file=str(ca_file))
    foreign, _ = make_cert(host["tmp"] / "foreign", ["mail.example.test"], issuer=(other_cert, other_key))
    code, result = run(host, "--from", str(foreign))
    assert code == 1 and "does not chain to" in result["msg"]
    assert host["cert"].read_bytes() == before
    good, fp = make_cert(host["tmp"] / "good", ["mail.example.test"], issuer=(ca_cert, ca_key))
    code, result = run(host, "--from", str(good))
    assert code == 0 and result["changed"] and served(host["daemons"][0]) == fp


def test_bad_usage_and_missing_files(host: dict) -> None:
    code, result = run(host, "--from", str(host["tmp"] / "nowhere"))
    assert code == 1 and "missing" in result["msg"]
    proc = subprocess.run(
        [sys.executable, str(host["script"]), "--config", str(host["tmp"] / "none.json"), "--check"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2 and "cannot read" in proc.stdout
    assert os.access(host["script"], os.R_OK)
