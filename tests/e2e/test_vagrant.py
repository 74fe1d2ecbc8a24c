"""Vagrant for real: the local box mailprov/debian12 under vagrant-libvirt (qemu/TCG) is brought up by the
project's Vagrantfile (apply + verify), receives a message on 587 (STARTTLS + AUTH) that is read back over
IMAPS, is re-provisioned with changed=0, and is destroyed leaving no domain, network or daemon behind.

Skips (with the reason) only when not root or when vagrant, vagrant-libvirt or libvirtd are missing;
scripts/setup.sh installs them, so CI runs it. Like every lab run, run it under /tmp/mailprov-lab.lock.
"""

from __future__ import annotations

import contextlib
import imaplib
import json
import os
import re
import secrets
import shutil
import smtplib
import ssl
import subprocess
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest

from provisioner import vagrantbox
from provisioner.passwords import hash_password

ROOT = Path(__file__).resolve().parents[2]
IP = "192.168.56.25"
USER = "alice@example.test"


def skip_reason() -> str | None:
    """Why Vagrant with libvirt cannot run here, or None."""
    if os.geteuid() != 0:
        return "needs root (libvirtd, bridges, the box build)"
    for tool in ("vagrant", "virsh", "qemu-img"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (scripts/setup.sh installs it)"
    if shutil.which("libvirtd") is None and not Path("/usr/sbin/libvirtd").exists():
        return "libvirtd is not installed (scripts/setup.sh installs libvirt-daemon)"
    plugins = subprocess.run(["vagrant", "plugin", "list"], capture_output=True, text=True, timeout=120)
    if "vagrant-libvirt" not in plugins.stdout:
        return "the vagrant-libvirt plugin is not installed (scripts/setup.sh installs it)"
    return None


def insecure_context() -> ssl.SSLContext:
    """TLS without verification: the VM's certificate is self-signed (verify judges it, not this test)."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


def recap(output: str) -> dict[str, Any]:
    """The `mailprov apply --format json` recap inside Vagrant's output."""
    match = re.search(r'\{\s*"hosts"', output)
    assert match, f"no JSON apply recap in the output:\n{output[-3000:]}"
    value, _ = json.JSONDecoder().raw_decode(output[match.start() :])
    assert isinstance(value, dict)
    return value


def libvirt_names(kind: str) -> list[str]:
    """Names of libvirt domains (`list`) or networks (`net-list`), defined or running."""
    if not vagrantbox.libvirt_running():
        return []
    proc = subprocess.run(
        ["virsh", "-c", "qemu:///system", kind, "--all", "--name"], capture_output=True, text=True, timeout=60
    )
    return sorted(line.strip() for line in proc.stdout.splitlines() if line.strip())


def libvirt_bridges() -> list[str]:
    """The virbrN bridges libvirt networks make on this machine."""
    return sorted(path.name for path in Path("/sys/class/net").glob("virbr*"))


class Vagrant:
    """Runs vagrant in the repository with its own .vagrant directory and environment."""

    def __init__(self, workdir: Path, spec: Path) -> None:
        self.workdir = workdir
        self.env = {
            **os.environ,
            "MAILPROV_BOX": vagrantbox.BOX_NAME,
            "MAILPROV_SPEC": str(spec),
            "MAILPROV_APPLY_FORMAT": "json",
            "MAILPROV_VERIFY_JUNIT": str(workdir / "verify.xml"),
            "VAGRANT_DOTFILE_PATH": str(workdir / "dotvagrant"),
            "VAGRANT_NO_COLOR": "1",
        }

    def __call__(self, *args: str, timeout: float = 900) -> subprocess.CompletedProcess[str]:
        """Run `vagrant ARGS` to completion; output kept for the assertions."""
        proc = subprocess.run(
            ["vagrant", *args],
            cwd=ROOT,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
        )
        (self.workdir / f"vagrant-{args[0]}.log").write_text(proc.stdout + proc.stderr)
        return proc


@pytest.fixture(scope="module")
def vm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Vagrant, dict[str, str], dict[str, Any]]]:
    """The box built, then a VM up (apply + verify by the trigger); destroyed afterwards, always."""
    reason = skip_reason()
    if reason:
        pytest.skip(f"vagrant unavailable: {reason}")
    build = subprocess.run(
        ["make", "-s", "vagrant-box"], cwd=ROOT, capture_output=True, text=True, timeout=2400
    )
    assert build.returncode == 0, build.stdout + build.stderr
    assert build.stdout.strip().splitlines()[-1] == "provider: libvirt", build.stdout
    workdir = tmp_path_factory.mktemp("vagrant")
    password = secrets.token_urlsafe(12)
    spec = workdir / "mail.yml"
    spec.write_text(
        "hostname: mail.example.test\n"
        "domains:\n"
        "  - name: example.test\n"
        "    mailboxes:\n"
        f'      - address: {USER}\n        password_hash: "{hash_password(password)}"\n'
        "    aliases:\n"
        f"      postmaster@example.test: [{USER}]\n"
        "tls: {mode: self-signed}\n"
        "submission: {starttls_587: true, implicit_tls_465: true}\n"
        "imap: true\n"
        "pop3: false\n"
    )
    (workdir / "password").write_text(password + "\n")
    vagrant = Vagrant(workdir, spec)
    vagrant.env["MAILPROV_VERIFY_USER"] = USER
    vagrant.env["MAILPROV_VERIFY_PASSWORD_FILE"] = str(workdir / "password")
    before = {"daemons": vagrantbox.libvirt_running(), "domains": libvirt_names("list")}
    before["networks"] = libvirt_names("net-list")
    before["bridges"] = libvirt_bridges()
    try:
        up = vagrant("up", "--provider=libvirt")
        yield vagrant, {"up": up.stdout + up.stderr, "rc": str(up.returncode), "password": password}, before
    finally:
        down = vagrant("destroy", "-f", timeout=300)
        (workdir / "destroy.rc").write_text(str(down.returncode))


def test_up_applies_and_verifies(vm: tuple[Vagrant, dict[str, str], dict[str, Any]]) -> None:
    """`vagrant up` exits 0 only when apply converged and verify found nothing failed (JUnit report)."""
    vagrant, run, _ = vm
    assert run["rc"] == "0", run["up"][-4000:]
    result = recap(run["up"])["hosts"]["default"]
    assert result["failed"] == 0 and result["unreachable"] == 0, result
    report = ET.parse(vagrant.workdir / "verify.xml").getroot()
    cases = report.findall(".//testcase")
    assert len(cases) > 10
    failed = [case.get("name") for case in cases if case.find("failure") is not None]
    assert failed == []
    # Host checks ran over SSH as root: none skipped for lack of access (SELinux is skipped on Debian).
    host = [case for case in cases if (case.get("name") or "").startswith("host.")]
    skipped = {
        case.get("name"): (skip.get("message") or skip.text or "")
        for case in host
        if (skip := case.find("skipped")) is not None
    }
    assert len(host) - len(skipped) >= 5, skipped
    assert not any("ssh" in reason.lower() for reason in skipped.values()), skipped
    # Credentials were given: the login and roundtrip checks ran rather than being skipped.
    names = {case.get("name") for case in cases if case.find("skipped") is None}
    assert {"smtp.auth", "imap.login"} <= names, sorted(n for n in names if n)


def test_message_in_on_587_out_on_imaps(vm: tuple[Vagrant, dict[str, str], dict[str, Any]]) -> None:
    """A real message: STARTTLS + AUTH on 587 into the VM, then read back over IMAPS."""
    _, run, _ = vm
    assert run["rc"] == "0", run["up"][-2000:]
    subject = f"mailprov vagrant {secrets.token_hex(6)}"
    message = EmailMessage()
    message["From"] = USER
    message["To"] = USER
    message["Subject"] = subject
    message.set_content("sent by tests/e2e/test_vagrant.py\n")
    with smtplib.SMTP(IP, 587, timeout=60) as smtp:
        smtp.ehlo("client.example.test")
        smtp.starttls(context=insecure_context())
        smtp.ehlo("client.example.test")
        smtp.login(USER, run["password"])
        refused = smtp.send_message(message)
        assert refused == {}
    deadline = time.monotonic() + 120
    found: list[bytes] = []
    while not found:
        with imaplib.IMAP4_SSL(IP, 993, ssl_context=insecure_context(), timeout=60) as imap:
            imap.login(USER, run["password"])
            imap.select("INBOX", readonly=True)
            status, data = imap.search(None, "SUBJECT", f'"{subject}"')
            assert status == "OK"
            found = data[0].split()
            if found:
                status, body = imap.fetch(found[0].decode(), "(RFC822)")
                assert status == "OK"
                raw = b"".join(part[1] for part in body if isinstance(part, tuple))
                assert subject.encode() in raw
                assert b"sent by tests/e2e/test_vagrant.py" in raw
        if not found:
            assert time.monotonic() < deadline, f"{subject!r} did not arrive in INBOX within 120 s"
            time.sleep(2)


def test_provision_changes_nothing(vm: tuple[Vagrant, dict[str, str], dict[str, Any]]) -> None:
    """`vagrant provision` re-applies the same spec: changed=0, and verify passes again."""
    vagrant, run, _ = vm
    assert run["rc"] == "0", run["up"][-2000:]
    proc = vagrant("provision")
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-4000:]
    result = recap(output)["hosts"]["default"]
    assert result["changed"] == 0 and result["failed"] == 0, result


def test_destroy_leaves_nothing(vm: tuple[Vagrant, dict[str, str], dict[str, Any]]) -> None:
    """`vagrant destroy -f`: no domain, no network, and the daemons stopped when we started them."""
    vagrant, _, before = vm
    proc = vagrant("destroy", "-f", timeout=300)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    assert libvirt_names("list") == before["domains"]
    assert libvirt_names("net-list") == before["networks"]
    assert libvirt_bridges() == before["bridges"]
    assert not (Path(vagrant.env["VAGRANT_DOTFILE_PATH"]) / "machines/default/libvirt/id").exists()
    if not before["daemons"]:
        assert not vagrantbox.libvirt_running(), "libvirtd still answers after destroy"
        with contextlib.suppress(FileNotFoundError):
            for entry in json.loads(vagrantbox.STATE_FILE.read_text()).get("started", []):
                assert not vagrantbox.lab.pid_matches(entry.get("pid"), entry.get("start")), entry
