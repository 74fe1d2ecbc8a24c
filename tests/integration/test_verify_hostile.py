"""`mailprov verify` against fake servers that misbehave on purpose (tests/integration/hostile_servers.py).

Each case runs the real command in a subprocess against a fake mail host on a loopback address and a fake
DNS zone, and asserts: the exit code; that the whole run ends (a hang guard: the subprocess is killed
after the per-check timeout x the longest check scale + 5 s, which fails the test); bounded memory (the
child's peak RSS under 200 MB); no traceback; clean output (no ESC or NUL byte reaches stdout); and the
exact statuses of the check ids the misbehaviour concerns. A well-behaved control host passes, so each
failure below is caused by the misbehaviour and nothing else.

Needs root (the fake host binds the mail ports < 1024).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from hostile_servers import (
    HOSTNAME,
    NASTY,
    BrokenTls993,
    EndlessCapa,
    EndlessEhlo,
    ExtraAfterBanner,
    FakeZone,
    HugeLiteral,
    LoginDespiteDisabled,
    LoginDisabledUnannounced,
    LoginFailsInPlaintext,
    LongLine,
    MailHost,
    Markup,
    PlaintextAfterStarttls,
    TrickleAll,
    TrickledHandshake,
    TrickleLater,
    UntaggedFlood,
    base_zone,
    garbage_rcpt,
    plaintext_auth,
    server_context,
)
from policy_server import GOOD_POLICY, Answer, PolicyServer

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root: the fake host binds ports < 1024"),
]

ROOT = Path(__file__).resolve().parents[2]
ADDRESS = "127.79.0.10"
TIMEOUT = 2.0
MEMORY_MB = 200
PASSWORD = "not the real one"
HASH = "{SHA512-CRYPT}$6$wS5qFv6gH6eWpZYc$CWN4Y.K75r8CcEwmbGrEYDoDjJpy0Yiyv6WgUWMchTaZjFub/qVo33twQi9Dlk3mKe16jjf64k3/XAbldkurH0"


@dataclass
class Run:
    """One finished `mailprov verify` subprocess."""

    code: int
    stdout: bytes
    stderr: str
    seconds: float
    max_rss_mb: float
    report: dict[str, Any] = field(default_factory=dict)

    def status(self, check_id: str) -> tuple[str, str]:
        """(status, reason) of a check id in the JSON report."""
        for result in self.report["results"]:
            if result["id"] == check_id:
                return result["status"], result["reason"]
        raise KeyError(check_id)


def run_verify(args: list[str], scale: float = 1.0, fmt: str = "json") -> Run:
    """Run `python -m provisioner verify ARGS` with a hang guard; measure its peak RSS with wait4."""
    cmd = [sys.executable, "-m", "provisioner", "verify", *args, "--timeout", f"{TIMEOUT:g}", "--format", fmt]
    guard = TIMEOUT * scale + 5
    env = {**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": "200"}
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, stdin=subprocess.DEVNULL, env=env, cwd=ROOT)
        started = time.monotonic()
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            if time.monotonic() - started > guard:
                proc.kill()
                os.wait4(proc.pid, 0)
                proc.returncode = -9
                pytest.fail(f"verify still running {guard:g}s after start (hang guard): {' '.join(args)}")
            time.sleep(0.02)
        seconds = time.monotonic() - started
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        run = Run(
            proc.returncode,
            out.read(),
            err.read().decode("utf-8", "replace"),
            seconds,
            usage.ru_maxrss / 1024,
        )
    if fmt == "json" and "--output" not in args and run.stdout.strip():
        run.report = json.loads(run.stdout)
    return run


def assert_sane(run: Run) -> None:
    """What every run must satisfy, however hostile the server."""
    assert "Traceback" not in run.stderr, run.stderr[-3000:]
    assert b"\x1b" not in run.stdout and b"\x00" not in run.stdout
    assert run.max_rss_mb < MEMORY_MB, f"peak RSS {run.max_rss_mb:.0f} MB"
    if run.report:
        assert all(r["reason"] for r in run.report["results"])
        assert all(len(r["reason"]) <= 1000 for r in run.report["results"])


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, Path]:
    """Server TLS context and the CA file that trusts it."""
    return server_context(tmp_path_factory.mktemp("hostile-ca"))


@pytest.fixture(scope="module")
def spec_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A mail.yml for the fake host (SMTP, submission, IMAP and POP3 on)."""
    path = tmp_path_factory.mktemp("hostile-spec") / "mail.yml"
    path.write_text(
        f"hostname: {HOSTNAME}\n"
        "domains:\n  - name: hostile.test\n    mailboxes:\n"
        f'      - address: alice@hostile.test\n        password_hash: "{HASH}"\n'
        "submission: {starttls_587: true, implicit_tls_465: true}\n"
        "imap: true\npop3: true\n"
    )
    return path


@pytest.fixture(scope="module")
def password_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A password file for --user (the fake hosts refuse every login)."""
    path = tmp_path_factory.mktemp("hostile-pw") / "password"
    path.write_text(PASSWORD + "\n")
    return path


@pytest.fixture
def serve(tls: tuple[Any, Path]) -> Iterator[Any]:
    """Start a fake host class on ADDRESS with a zone; stopped afterwards."""
    started: list[Any] = []

    def start(
        cls: type[MailHost], zone: dict[tuple[str, str], list[str | bytes]] | None = None
    ) -> tuple[MailHost, FakeZone]:
        host = cls(ADDRESS, tls[0]).start()
        started.append(host)
        # A well-behaved MTA-STS policy host beside every fake mail host (dns.mta_sts fetches it).
        policy = GOOD_POLICY.format(mx=HOSTNAME).encode()
        started.append(PolicyServer(ADDRESS, tls[0], {"mta-sts.hostile.test": Answer(policy)}).__enter__())
        fake = FakeZone(zone if zone is not None else base_zone(ADDRESS)).__enter__()
        started.append(fake)
        return host, fake

    yield start
    for item in reversed(started):
        item.__exit__()


def common(zone: FakeZone, ca: Path) -> list[str]:
    """Arguments every run against the fake host uses."""
    return [HOSTNAME, "--resolver", zone.resolver, "--ca", str(ca), "--allow-loopback"]


# ---- a well-behaved control host -----------------------------------------------------------------


def test_control_host_passes(serve: Any, tls: tuple[Any, Path], spec_file: Path) -> None:
    _, zone = serve(MailHost)
    run = run_verify([*common(zone, tls[1]), "--spec", str(spec_file)])
    assert_sane(run)
    failed = {r["id"]: r["reason"] for r in run.report["results"] if r["status"] in ("fail", "warn")}
    # The fake host has no DKIM key (the spec names none): a warning, not a failure.
    assert set(failed) == {"dns.dkim"}, failed
    assert run.code == 0
    for check_id in (
        "smtp.auth_after_tls",
        "imap.login_disabled",
        "smtp.open_relay",
        "tls.versions",
        "dns.mta_sts",
    ):
        assert run.status(check_id)[0] == "pass", run.status(check_id)


# ---- 1. bounded everything -----------------------------------------------------------------------


def test_trickled_banners_fail_in_time(serve: Any, tls: tuple[Any, Path]) -> None:
    _, zone = serve(TrickleAll)
    run = run_verify(common(zone, tls[1]))
    assert_sane(run)
    assert run.code == 1
    assert run.status("smtp.port.25")[0] == "pass"  # TCP is accepted...
    for check_id in (
        "smtp.banner",
        "smtp.ehlo",
        "imap.port.143",
        "imap.port.993",
        "pop3.port.110",
        "pop3.port.995",
    ):
        status, reason = run.status(check_id)
        assert status == "fail" and "timed out" in reason, (check_id, reason)
    for check_id in (
        "smtp.open_relay",
        "smtp.auth_after_tls",
        "imap.login_disabled",
        "tls.versions",
        "tls.cert.name",
    ):
        assert run.status(check_id)[0] == "fail", run.status(check_id)


def test_later_connections_trickle_with_logins_the_process_still_exits(
    serve: Any, tls: tuple[Any, Path], password_file: Path
) -> None:
    _, zone = serve(TrickleLater)
    args = [*common(zone, tls[1]), "--user", "alice@hostile.test", "--password-file", str(password_file)]
    run = run_verify(args, scale=3)  # login checks get 3x the timeout
    assert_sane(run)
    assert run.code == 1
    for check_id in ("smtp.auth", "imap.login", "pop3.login", "tls.versions"):
        assert run.status(check_id)[0] == "fail", run.status(check_id)


def test_endless_ehlo_is_capped(serve: Any, tls: tuple[Any, Path]) -> None:
    _, zone = serve(EndlessEhlo)
    run = run_verify(common(zone, tls[1]))
    assert_sane(run)
    assert run.code == 1
    assert run.status("smtp.banner")[0] == "pass"
    status, reason = run.status("smtp.ehlo")
    assert status == "fail" and "reply over 100 lines" in reason, reason
    for check_id in ("smtp.open_relay", "smtp.postmaster", "smtp.starttls.25", "smtp.auth_after_tls"):
        assert run.status(check_id)[0] == "fail", run.status(check_id)


def test_endless_pop3_capa_is_capped(serve: Any, tls: tuple[Any, Path]) -> None:
    _, zone = serve(EndlessCapa)
    run = run_verify(common(zone, tls[1]))
    assert_sane(run)
    assert run.code == 1
    for check_id in ("pop3.port.110", "pop3.port.995"):
        status, reason = run.status(check_id)
        assert status == "fail" and "over 100 lines" in reason, (check_id, reason)
    assert run.status("imap.port.143")[0] == "pass"


def test_huge_imap_literal_is_refused(serve: Any, tls: tuple[Any, Path]) -> None:
    _, zone = serve(HugeLiteral)
    run = run_verify(common(zone, tls[1]))
    assert_sane(run)
    assert run.code == 1
    for check_id in ("imap.port.143", "imap.port.993"):
        status, reason = run.status(check_id)
        assert status == "fail" and "1073741824 bytes" in reason, (check_id, reason)
    assert run.status("imap.login_disabled")[0] == "fail"
    assert run.status("pop3.port.110")[0] == "pass"


def test_endless_reply_line_is_capped(serve: Any, tls: tuple[Any, Path]) -> None:
    _, zone = serve(LongLine)
    run = run_verify(common(zone, tls[1]))
    assert_sane(run)
    assert run.code == 1
    status, reason = run.status("smtp.ehlo")
    assert status == "fail" and "reply line over 4096 bytes" in reason, reason


def test_trickled_tls_handshake_is_bounded(serve: Any, tls: tuple[Any, Path]) -> None:
    _, zone = serve(TrickledHandshake)
    run = run_verify(common(zone, tls[1]))
    assert_sane(run)
    assert run.code == 1
    for check_id in ("smtp.implicit_tls.465", "imap.port.993", "pop3.port.995"):
        status, reason = run.status(check_id)
        assert status == "fail" and "timed out" in reason, (check_id, reason)
    status, reason = run.status("tls.cert.name")
    assert status == "fail" and "port 465" in reason, reason
    assert run.status("smtp.starttls.587")[0] == "pass"


def test_untagged_imap_flood_is_capped(serve: Any, tls: tuple[Any, Path]) -> None:
    _, zone = serve(UntaggedFlood)
    run = run_verify(common(zone, tls[1]))
    assert_sane(run)
    assert run.code == 1
    for check_id in ("imap.port.143", "imap.port.993"):
        status, reason = run.status(check_id)
        assert status == "fail" and "over 1048576 bytes" in reason, (check_id, reason)


def test_plaintext_left_before_the_tls_handshake_is_refused(serve: Any, tls: tuple[Any, Path]) -> None:
    _, zone = serve(PlaintextAfterStarttls)
    run = run_verify(common(zone, tls[1]))
    assert_sane(run)
    assert run.code == 1
    for check_id in ("smtp.starttls.25", "smtp.starttls.587"):
        status, reason = run.status(check_id)
        assert status == "fail" and "out of turn" in reason, (check_id, reason)


# ---- 2. untrusted text stays text ------------------------------------------------------------------


def _nasty_zone() -> dict[tuple[str, str], list[str | bytes]]:
    zone = base_zone(ADDRESS)
    zone[("hostile.test", "TXT")] = [f"v=spf1 ip4:{ADDRESS} -all", NASTY.encode()]
    zone[("_smtp._tls.hostile.test", "TXT")] = [f"v=TLSRPTv1; rua=mailto:{NASTY}".encode()]
    zone[("_mta-sts.hostile.test", "TXT")] = [f"v=STSv1; id={NASTY}".encode()]
    return zone


def test_markup_and_control_bytes_stay_text(serve: Any, tls: tuple[Any, Path], tmp_path: Path) -> None:
    _, zone = serve(Markup, _nasty_zone())
    junit = tmp_path / "report.xml"
    table = run_verify([*common(zone, tls[1]), "--output", str(junit)], fmt="junit")
    assert_sane(table)
    assert table.code == 1  # the banner is fine SMTP, but the TLS-RPT record's rua is not a mailto:/https:
    text = table.stdout.decode()
    assert "[/]" in text and "[link=http://evil.test]" in text  # printed literally, not as markup
    assert "\\x1b" in text  # the escape, shown escaped
    root = ET.parse(junit).getroot()  # well-formed
    assert len(root.findall(".//testcase")) > 30
    assert "\x1b" not in junit.read_text()

    run = run_verify(common(zone, tls[1]))
    assert_sane(run)
    assert run.status("smtp.banner")[0] == "warn"  # greets as "[link=...]...", not the host name
    assert run.status("smtp.open_relay")[0] == "pass"  # 554 refused, whatever its text
    status, reason = run.status("dns.tlsrpt")
    assert status == "pass" and "\\x1b" in reason and "\x1b" not in reason
    assert run.status("dns.mta_sts")[0] == "fail"
    assert run.status("dns.spf")[0] == "pass"  # the second TXT is not SPF


# ---- 3. judge only what was confirmed ---------------------------------------------------------------


@pytest.mark.parametrize("reply", ["XYZ nothing to see", "600 6.0.0 beyond the codes", "25 short"])
def test_garbage_rcpt_replies_are_protocol_errors(
    serve: Any, tls: tuple[Any, Path], spec_file: Path, reply: str
) -> None:
    _, zone = serve(garbage_rcpt(reply))
    run = run_verify([*common(zone, tls[1]), "--spec", str(spec_file)])
    assert_sane(run)
    assert run.code == 1
    for check_id in ("smtp.open_relay", "smtp.unknown_user", "smtp.postmaster"):
        status, reason = run.status(check_id)
        assert status == "fail" and "protocol error" in reason and "refused" not in reason, (check_id, reason)


def test_extra_line_after_banner_is_desync(serve: Any, tls: tuple[Any, Path]) -> None:
    _, zone = serve(ExtraAfterBanner)
    run = run_verify(common(zone, tls[1]))
    assert_sane(run)
    assert run.code == 1
    for check_id in ("smtp.ehlo", "smtp.open_relay", "smtp.postmaster"):
        status, reason = run.status(check_id)
        assert status == "fail" and "out of turn" in reason, (check_id, reason)
        assert "open relay" not in reason


@pytest.mark.parametrize(
    "server",
    [
        plaintext_auth("235 2.7.0 Authentication successful"),
        plaintext_auth("334 "),
        plaintext_auth("535 5.7.8 Error: authentication failed"),
        plaintext_auth("530 5.7.0 Must issue a STARTTLS command first", second_ehlo=True),
    ],
    ids=lambda cls: cls.__name__,
)
def test_plaintext_auth_is_tried_not_read_from_ehlo(
    serve: Any, tls: tuple[Any, Path], server: type[MailHost]
) -> None:
    _, zone = serve(server)
    run = run_verify([*common(zone, tls[1]), "--only", "smtp.auth_after_tls"])
    assert_sane(run)
    assert run.code == 1
    status, reason = run.status("smtp.auth_after_tls")
    assert status == "fail", reason
    assert "port 25" in reason and "port 587" in reason


@pytest.mark.parametrize("server", [LoginDespiteDisabled, LoginFailsInPlaintext, LoginDisabledUnannounced])
def test_imap_login_is_tried_before_starttls(
    serve: Any, tls: tuple[Any, Path], server: type[MailHost]
) -> None:
    _, zone = serve(server)
    run = run_verify([*common(zone, tls[1]), "--only", "imap"])
    assert_sane(run)
    assert run.code == 1
    status, reason = run.status("imap.login_disabled")
    assert status == "fail" and "before STARTTLS" in reason, reason
    assert run.status("imap.port.143")[0] == "pass"


def test_served_tls_port_without_handshake_fails_tls_checks(serve: Any, tls: tuple[Any, Path]) -> None:
    _, zone = serve(BrokenTls993)
    run = run_verify(common(zone, tls[1]))
    assert_sane(run)
    assert run.code == 1
    assert run.status("imap.port.993")[0] == "fail"
    for check_id in (
        "tls.versions",
        "tls.cert.name",
        "tls.cert.chain",
        "tls.cert.expiry",
        "tls.cert.key",
        "tls.cert.same",
    ):
        status, reason = run.status(check_id)
        assert status == "fail" and "port 993" in reason, (check_id, reason)
    assert run.status("imap.port.143")[0] == "pass" and run.status("smtp.implicit_tls.465")[0] == "pass"


def test_spf_cannot_evaluate_host_says_so(serve: Any, tls: tuple[Any, Path]) -> None:
    zone = base_zone(ADDRESS)
    del zone[(HOSTNAME, "A")]
    _, fake = serve(MailHost, zone)
    run = run_verify([HOSTNAME, "--resolver", fake.resolver, "--domain", "hostile.test", "--only", "dns.spf"])
    assert_sane(run)
    status, reason = run.status("dns.spf")
    assert status == "fail" and "cannot evaluate SPF for the mail host" in reason, reason


# ---- 5. SPF evaluation is linear -------------------------------------------------------------------


def test_exponential_spf_include_tree_stops_at_the_limit(serve: Any, tls: tuple[Any, Path]) -> None:
    zone = base_zone(ADDRESS)
    depth = 14
    zone[("hostile.test", "TXT")] = ["v=spf1 include:n1.hostile.test include:n1.hostile.test -all"]
    for i in range(1, depth):
        zone[(f"n{i}.hostile.test", "TXT")] = [
            f"v=spf1 include:n{i + 1}.hostile.test include:n{i + 1}.hostile.test -all"
        ]
    zone[(f"n{depth}.hostile.test", "TXT")] = [f"v=spf1 ip4:{ADDRESS} -all"]
    _, fake = serve(MailHost, zone)
    run = run_verify([*common(fake, tls[1]), "--domain", "hostile.test", "--only", "dns.spf"])
    assert_sane(run)
    assert run.code == 1
    status, reason = run.status("dns.spf")
    assert status == "fail" and "more than 10 DNS-querying terms" in reason and "timed out" not in reason, (
        reason
    )
    assert fake.queries < 100  # 2^14 evaluations without memo and limit


# ---- 4. no probes to ourselves ---------------------------------------------------------------------


@pytest.mark.parametrize("target_address", [ADDRESS, "0.0.0.0"])
def test_loopback_targets_are_refused_without_allow_loopback(
    serve: Any, tls: tuple[Any, Path], target_address: str
) -> None:
    zone = base_zone(ADDRESS)
    zone[(HOSTNAME, "A")] = [target_address]
    zone[("hostile.test", "MX")] = ["10 mx.hostile.test."]
    zone[("mx.hostile.test", "A")] = ["127.0.0.1"]
    host, fake = serve(MailHost, zone)
    run = run_verify([HOSTNAME, "--resolver", fake.resolver, "--ca", str(tls[1])])
    assert_sane(run)
    assert run.code == 1
    kind = "loopback" if target_address == ADDRESS else "unspecified"
    for check_id in (
        "dns.a",
        "smtp.port.25",
        "smtp.banner",
        "imap.port.143",
        "pop3.port.110",
        "tls.versions",
        "imap.login_disabled",
        "smtp.auth_after_tls",
    ):
        status, reason = run.status(check_id)
        assert status == "fail" and kind in reason and "--allow-loopback" in reason, (check_id, reason)
    status, reason = run.status("dns.mx")
    assert status == "fail" and "loopback" in reason, reason
    assert sum(host.connections.values()) == 0  # no connection was made


def test_loopback_ip_target_is_refused(serve: Any, tls: tuple[Any, Path]) -> None:
    host, fake = serve(MailHost)
    run = run_verify([ADDRESS, "--resolver", fake.resolver, "--only", "smtp,imap,pop3"])
    assert_sane(run)
    assert run.code == 1
    assert all(
        r["status"] == "fail" for r in run.report["results"] if r["id"] in ("smtp.port.25", "smtp.banner")
    )
    assert sum(host.connections.values()) == 0


# ---- 6. --output -----------------------------------------------------------------------------------


def test_bad_output_is_refused_before_the_run(serve: Any, tls: tuple[Any, Path], tmp_path: Path) -> None:
    host, zone = serve(MailHost)
    target = tmp_path / "precious.txt"
    target.write_text("keep me\n")
    link = tmp_path / "link.xml"
    link.symlink_to(target)
    for output in (tmp_path / "missing" / "r.xml", tmp_path, link):
        run = run_verify([*common(zone, tls[1]), "--output", str(output)], fmt="junit")
        assert run.code == 2
        lines = [line for line in run.stderr.splitlines() if line.strip()]
        assert len(lines) == 1 and "--output" in lines[0], run.stderr
        assert "Traceback" not in run.stderr
    assert target.read_text() == "keep me\n"
    assert sum(host.connections.values()) == 0  # refused before any probe


def test_output_written_atomically(serve: Any, tls: tuple[Any, Path], tmp_path: Path) -> None:
    _, zone = serve(MailHost)
    output = tmp_path / "report.json"
    output.write_text("old")
    run = run_verify([*common(zone, tls[1]), "--only", "smtp.port.25", "--output", str(output)])
    assert run.code == 0
    assert json.loads(output.read_text())["results"][0]["id"] == "smtp.port.25"
    assert b"smtp.port.25" in run.stdout  # the table still prints
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".report.json")]
