"""`mailprov verify` against real Postfix + Dovecot servers configured by hand (not by mailprov).

Two server instances on loopback addresses, a test CA and a real unbound zone:
- mail.good.test (127.77.0.10): everything right; with --ca and test credentials every non-host check passes.
- mail.bad.test (127.77.0.11): many faults at once, each asserted on its own check id.
A third, DNS-only domain (spf-many.test) has an SPF record with more than 10 lookups, and a dead target
(closed ports, a silent port, a resolver that never answers) must finish with failures and reasons.

Needs root (ports < 1024, addresses on lo) and postfix, dovecot, unbound; skips with the reason otherwise.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import socket
import ssl
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from policy_server import GOOD_POLICY, Answer, PolicyServer
from typer.testing import CliRunner
from verify_servers import LoopbackAddress, MailServer, TestCA, free_port, missing_binaries, scratch_dir

from provisioner.cli import app
from provisioner.dns import Record
from provisioner.dnsserver import DnsServer

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root: binds ports < 1024 and adds addresses to lo"),
    pytest.mark.skipif(bool(missing_binaries()), reason=f"not installed: {', '.join(missing_binaries())}"),
]

GOOD_IP, BAD_IP, DEAD_IP = "127.77.0.10", "127.77.0.11", "127.77.0.12"
PASSWORD = "correct horse battery staple"
HASH = "{SHA512-CRYPT}$6$wS5qFv6gH6eWpZYc$CWN4Y.K75r8CcEwmbGrEYDoDjJpy0Yiyv6WgUWMchTaZjFub/qVo33twQi9Dlk3mKe16jjf64k3/XAbldkurH0"


def _records(dkim_b64: str) -> list[Record]:
    spf_many = " ".join(f"a:h{i}.spf-many.test" for i in range(1, 12))
    return [
        # good.test: everything published
        Record("mail.good.test", "A", GOOD_IP),
        Record("good.test", "MX", "10 mail.good.test"),
        Record("good.test", "TXT", "v=spf1 mx -all"),
        Record("_dmarc.good.test", "TXT", "v=DMARC1; p=reject; rua=mailto:postmaster@good.test"),
        Record("s1._domainkey.good.test", "TXT", f"v=DKIM1; k=rsa; p={dkim_b64}"),
        Record("_mta-sts.good.test", "TXT", "v=STSv1; id=20250101T000000"),
        Record("mta-sts.good.test", "A", GOOD_IP),  # the policy host: an HTTPS server beside the mail server
        Record("_smtp._tls.good.test", "TXT", "v=TLSRPTv1; rua=mailto:tlsrpt@good.test"),
        Record("10.0.77.127.in-addr.arpa", "PTR", "mail.good.test"),
        # bad.test: no MX, SPF +all, DMARC p=none, no PTR for its address
        Record("mail.bad.test", "A", BAD_IP),
        Record("bad.test", "TXT", "v=spf1 +all"),
        Record("_dmarc.bad.test", "TXT", "v=DMARC1; p=none"),
        Record("_mta-sts.bad.test", "TXT", "v=STSv1; id=1"),  # ...pointing to no policy host
        # spf-many.test: 11 DNS-querying terms
        Record("spf-many.test", "TXT", f"v=spf1 {spf_many} -all"),
        *[Record(f"h{i}.spf-many.test", "A", "192.0.2.1") for i in range(1, 12)],
    ]


def _spec(
    path: Path,
    hostname: str,
    domain: str,
    users: list[str],
    dkim: Path | None = None,
    quotas: dict[str, str] | None = None,
    features: bool = True,
) -> Path:
    """A spec for a hand-configured server; features: Sieve with ManageSieve, and antispam, are served."""
    quotas = quotas or {}
    dkim_line = f"dkim: {{selector: s1, public_key: {dkim}}}\n" if dkim else ""
    boxes = "".join(
        f'      - address: {user}\n        password_hash: "{HASH}"\n'
        + (f"        quota: {quotas[user]}\n" if user in quotas else "")
        for user in users
    )
    feature_lines = "sieve: {enabled: true}\nantispam: {enabled: true}\n" if features else ""
    path.write_text(
        f"hostname: {hostname}\n"
        f"domains:\n  - name: {domain}\n    mailboxes:\n{boxes}"
        "submission: {starttls_587: true, implicit_tls_465: true}\n" + dkim_line + feature_lines
    )
    return path


@pytest.fixture(scope="module")
def lab() -> Iterator[dict[str, Any]]:
    """Zone, CA, both servers and spec files; everything stopped and removed afterwards."""
    root = scratch_dir("mailprov-verify-it-")
    servers: list[MailServer] = []
    dns = None
    policy_server: PolicyServer | None = None
    addresses = [LoopbackAddress(GOOD_IP), LoopbackAddress(BAD_IP)]
    try:
        for address in addresses:
            address.__enter__()
        ca = TestCA(root)
        dkim_key = rsa.generate_private_key(public_exponent=65537, key_size=2048).public_key()
        dkim_pem = dkim_key.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        (root / "dkim.pub").write_bytes(dkim_pem)
        dkim_b64 = base64.b64encode(
            dkim_key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
        ).decode()
        dns = DnsServer(root / "unbound", listen="127.0.0.1", port=free_port())
        dns.start(_records(dkim_b64))
        good_cert = ca.issue("good", "mail.good.test")
        good = MailServer(
            root / "good",
            GOOD_IP,
            "mail.good.test",
            "good.test",
            {"alice@good.test": PASSWORD, "carol@good.test": PASSWORD},
            postfix_cert=good_cert,
            dovecot_cert=good_cert,
            quotas={"alice@good.test": "10M"},
            quota_plugin=True,
            managesieve=True,
            spam_reject=True,
        )
        bad = MailServer(
            root / "bad",
            BAD_IP,
            "mail.bad.test",
            "bad.test",
            {"bob@bad.test": PASSWORD, "dave@bad.test": PASSWORD},
            postfix_cert=ca.issue("bad-expired", "mail.bad.test", expired=True),
            dovecot_cert=ca.issue("bad-wrongname", "wrong-name.example.test"),
            open_relay=True,
            auth_before_tls=True,
            accept_unknown=True,
            no_smtps=True,
            imap_plaintext=True,
            dovecot_tls1=True,
            sender_forgery=True,
            local_spoof=True,
            own_helo=True,
            weak_ciphers=True,
            managesieve=True,  # with imap_plaintext: SASL offered before STARTTLS
            spam_tag_users=["bob@bad.test"],  # no filter refuses GTUBE; bob's delivery tags it
        )
        for server in (good, bad):
            server.root.mkdir()
            server.write()
            servers.append(server)
            server.start()
        policy_chain, policy_key = ca.issue("mta-sts", "mta-sts.good.test")
        policy_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        policy_context.load_cert_chain(str(policy_chain), str(policy_key))
        policy = GOOD_POLICY.format(mx="mail.good.test").encode()
        policy_server = PolicyServer(
            GOOD_IP, policy_context, {"mta-sts.good.test": Answer(policy)}
        ).__enter__()
        password_file = root / "password"
        password_file.write_text(PASSWORD + "\n")
        yield {
            "root": root,
            "ca": ca.path,
            "resolver": f"127.0.0.1:{dns.port}",
            "good": good,
            "bad": bad,
            "good_spec": _spec(
                root / "good.yml",
                "mail.good.test",
                "good.test",
                ["alice@good.test", "carol@good.test"],
                root / "dkim.pub",
                quotas={"alice@good.test": "10M"},
            ),
            "bad_spec": _spec(root / "bad.yml", "mail.bad.test", "bad.test", ["bob@bad.test"]),
            "password_file": password_file,
        }
    finally:
        if policy_server is not None:
            policy_server.__exit__()
        for server in servers:
            server.stop()
        if dns is not None:
            dns.stop()
        for address in addresses:
            address.__exit__()
        shutil.rmtree(root, ignore_errors=True)


def verify(*args: str) -> tuple[int, dict[str, Any]]:
    """Run `mailprov verify ... --format json` in-process: (exit code, report).

    The servers listen on loopback addresses, which verify refuses to probe without --allow-loopback.
    """
    result = CliRunner().invoke(app, ["verify", *args, "--format", "json", "--allow-loopback"])
    assert result.exception is None or isinstance(result.exception, SystemExit), result.output
    return result.exit_code, json.loads(result.stdout)


def by_id(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Results keyed by check id."""
    return {r["id"]: r for r in report["results"]}


@pytest.fixture(scope="module")
def good_report(lab: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    """The full catalog against the good server, with spec, CA and test credentials."""
    return verify(
        "mail.good.test",
        "--spec",
        str(lab["good_spec"]),
        "--resolver",
        lab["resolver"],
        "--ca",
        str(lab["ca"]),
        "--user",
        "alice@good.test",
        "--password-file",
        str(lab["password_file"]),
        "--timeout",
        "5",
    )


@pytest.fixture(scope="module")
def bad_report(lab: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The full catalog against the faulty server."""
    code, report = verify(
        "mail.bad.test",
        "--spec",
        str(lab["bad_spec"]),
        "--resolver",
        lab["resolver"],
        "--ca",
        str(lab["ca"]),
        "--timeout",
        "5",
    )
    assert code == 1
    return by_id(report)


def test_good_server_passes_everything(good_report: tuple[int, dict[str, Any]], lab: dict[str, Any]) -> None:
    code, report = good_report
    results = by_id(report)
    not_passed = {
        i: f"{r['status']}: {r['reason']}"
        for i, r in results.items()
        if r["status"] != "pass" and not i.startswith("host.") and i != "tls.cert.disk"
    }
    assert not_passed == {}, lab["good"].log()
    assert code == 0
    assert all(
        r["status"] == "skip" and "--ssh" in r["reason"] for i, r in results.items() if i.startswith("host.")
    )
    assert report["summary"]["fail"] == 0 and report["summary"]["warn"] == 0
    # Comparing with the files on disk needs host access.
    assert results["tls.cert.disk"]["status"] == "skip" and "--ssh" in results["tls.cert.disk"]["reason"]
    assert "mx mail.good.test covers mail.good.test" in results["dns.mta_sts"]["reason"]


def test_good_server_evidence(good_report: tuple[int, dict[str, Any]]) -> None:
    results = by_id(good_report[1])
    assert "mail.good.test" in results["smtp.banner"]["evidence"]
    assert "10 mail.good.test" in results["dns.mx"]["evidence"]["good.test"]
    assert "verified against --ca" in results["tls.cert.chain"]["reason"]
    assert "127.77.0.10 -> mail.good.test -> 127.77.0.10" in results["dns.ptr"]["reason"]
    assert "delivered over port 587" in results["smtp.roundtrip"]["reason"]
    assert set(results["tls.versions"]["evidence"]) == {"25", "587", "465", "993", "995"}


@pytest.mark.parametrize(
    ("check_id", "status", "words"),
    [
        ("smtp.open_relay", "fail", "open relay"),
        ("smtp.auth_after_tls", "fail", "AUTH"),
        ("imap.login_disabled", "fail", "plaintext"),
        ("tls.cert.expiry", "fail", "expired"),
        ("tls.cert.name", "fail", "wrong-name.example.test"),
        ("tls.versions", "fail", "TLSv1"),
        ("dns.mx", "fail", "no MX"),
        ("dns.spf", "fail", "+all"),
        ("dns.dmarc", "warn", "p=none"),
        ("dns.ptr", "fail", "no PTR"),
        ("smtp.unknown_user", "fail", "accepted at RCPT time"),
        ("smtp.port.465", "fail", "refused"),
        ("smtp.spoof_local_sender", "fail", "accepted from outside"),
        ("smtp.helo_own_name", "warn", "EHLO mail.bad.test accepted"),
        ("tls.ciphers", "fail", "CBC"),
        ("dns.mta_sts", "fail", "mta-sts.bad.test has no A or AAAA record"),
        ("sieve.managesieve", "fail", "offers SASL PLAIN LOGIN before STARTTLS"),
        ("smtp.spam_filter", "fail", "GTUBE accepted"),
    ],
)
def test_bad_server_fault_caught(
    bad_report: dict[str, dict[str, Any]], check_id: str, status: str, words: str
) -> None:
    result = bad_report[check_id]
    assert result["status"] == status, result
    assert words in result["reason"], result


def test_bad_server_faults_are_not_blamed_elsewhere(bad_report: dict[str, dict[str, Any]]) -> None:
    # Expired and wrong-name certificates are judged by their own checks; the chain itself is trusted.
    assert bad_report["tls.cert.chain"]["status"] == "pass", bad_report["tls.cert.chain"]
    assert bad_report["smtp.port.25"]["status"] == "pass"
    assert bad_report["smtp.postmaster"]["status"] == "pass"


def test_spf_with_too_many_lookups(lab: dict[str, Any]) -> None:
    code, report = verify(
        "mail.good.test",
        "--domain",
        "spf-many.test",
        "--resolver",
        lab["resolver"],
        "--only",
        "dns.spf",
    )
    (result,) = report["results"]
    assert code == 1
    assert result["status"] == "fail"
    assert "more than 10 DNS-querying terms" in result["reason"]


def test_only_and_junit(lab: dict[str, Any], tmp_path: Path) -> None:
    out = tmp_path / "verify.xml"
    result = CliRunner().invoke(
        app,
        [
            "verify",
            "mail.good.test",
            "--resolver",
            lab["resolver"],
            "--only",
            "smtp.port.*,dns.mx",
            "--format",
            "junit",
            "--output",
            str(out),
            "--ca",
            str(lab["ca"]),
            "--allow-loopback",
        ],
    )
    assert result.exit_code == 0, result.output
    import xml.etree.ElementTree as ET

    cases = ET.parse(out).getroot().findall(".//testcase")
    assert {c.get("name") for c in cases} == {"smtp.port.25", "smtp.port.587", "smtp.port.465", "dns.mx"}
    assert "smtp.port.25" in result.stdout  # the table still prints


@pytest.fixture
def silent_smtp() -> Iterator[str]:
    """Port 25 on DEAD_IP accepts TCP (kernel backlog) but never says a word; the other ports are closed."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((DEAD_IP, 25))
    sock.listen(64)
    try:
        yield DEAD_IP
    finally:
        sock.close()


def test_dead_target_finishes_with_reasons(lab: dict[str, Any], dead_resolver: str, silent_smtp: str) -> None:
    code, report = verify(
        silent_smtp,
        "--spec",
        str(lab["good_spec"]),
        "--resolver",
        dead_resolver,
        "--timeout",
        "2",
    )
    results = by_id(report)
    assert code == 1
    assert results["smtp.port.25"]["status"] == "pass"  # TCP is accepted...
    assert results["smtp.banner"]["status"] == "fail"  # ...but no greeting arrives
    assert "timed out" in results["smtp.banner"]["reason"]
    assert results["smtp.port.587"]["status"] == "fail"
    assert "refused" in results["smtp.port.587"]["reason"]
    assert results["imap.port.993"]["status"] == "fail"
    # The spec serves ManageSieve, so a closed 4190 is a failure, not a skip.
    assert results["sieve.managesieve"]["status"] == "fail"
    assert "refused" in results["sieve.managesieve"]["reason"]
    for check_id in ("dns.mx", "dns.spf", "dns.ptr"):
        assert results[check_id]["status"] == "fail"
        assert "did not answer" in results[check_id]["reason"], results[check_id]
    assert all(r["reason"] for r in report["results"])
    assert "Traceback" not in json.dumps(report)


def test_good_server_refuses_forgery_and_weak_suites(good_report: tuple[int, dict[str, Any]]) -> None:
    results = by_id(good_report[1])
    ownership = results["smtp.sender_ownership"]["reason"]
    for words in ("made-up address in the user's domain", "foreign address", "another mailbox", "port 465"):
        assert words in ownership, ownership
    assert "refused" in results["smtp.spoof_local_sender"]["reason"]
    assert "refused" in results["smtp.helo_own_name"]["reason"]
    assert "AEAD only" in results["tls.ciphers"]["reason"]


def test_bad_server_lets_users_forge_senders(lab: dict[str, Any]) -> None:
    code, report = verify(
        "mail.bad.test",
        "--spec",
        str(lab["bad_spec"]),
        "--resolver",
        lab["resolver"],
        "--ca",
        str(lab["ca"]),
        "--user",
        "bob@bad.test",
        "--password-file",
        str(lab["password_file"]),
        "--only",
        "smtp.sender_ownership",
        "--timeout",
        "5",
    )
    (result,) = report["results"]
    assert code == 1
    assert result["status"] == "fail" and "accepted" in result["reason"], result
    assert "foreign address" in result["reason"]


def test_without_a_spec_unknown_user_and_spoofing_are_warnings(lab: dict[str, Any]) -> None:
    common = ["--resolver", lab["resolver"], "--ca", str(lab["ca"]), "--timeout", "5"]
    only = ["--only", "smtp.unknown_user,smtp.spoof_local_sender,smtp.helo_own_name"]
    _, bad = verify("mail.bad.test", "--domain", "bad.test", *common, *only)
    results = by_id(bad)
    assert results["smtp.unknown_user"]["status"] == "warn"
    assert "a catch-all, or backscatter" in results["smtp.unknown_user"]["reason"]
    assert results["smtp.spoof_local_sender"]["status"] == "warn"
    assert results["smtp.helo_own_name"]["status"] == "warn"
    code, good = verify("mail.good.test", "--domain", "good.test", *common, *only)
    assert code == 0
    assert {r["id"]: r["status"] for r in good["results"]} == {
        "smtp.unknown_user": "pass",
        "smtp.spoof_local_sender": "pass",
        "smtp.helo_own_name": "pass",
    }


# ---- mailbox features: imap.quota, sieve.managesieve, smtp.spam_filter --------------------------------


def test_good_server_mailbox_features(good_report: tuple[int, dict[str, Any]]) -> None:
    results = by_id(good_report[1])
    quota = results["imap.quota"]
    assert quota["status"] == "pass" and "is the spec's 10M for alice@good.test" in quota["reason"], quota
    assert quota["evidence"]["quota"]["User quota"]["STORAGE"][1] == 10240
    sieve = results["sieve.managesieve"]
    assert sieve["status"] == "pass", sieve
    for words in (
        "no SASL before it",
        "ENCRYPT-NEEDED",
        "SASL PLAIN LOGIN",
        "good password",
        "wrong password",
    ):
        assert words in sieve["reason"], sieve
    assert sieve["evidence"]["capabilities"]["SASL"] == ""
    spam = results["smtp.spam_filter"]
    assert spam["status"] == "pass" and "550 5.7.1 Spam (GTUBE)" in spam["reason"], spam


def _creds(lab: dict[str, Any], user: str) -> list[str]:
    return ["--user", user, "--password-file", str(lab["password_file"])]


def test_quota_other_than_the_spec_fails(lab: dict[str, Any], tmp_path: Path) -> None:
    spec = _spec(
        tmp_path / "other.yml",
        "mail.good.test",
        "good.test",
        ["alice@good.test", "carol@good.test"],
        quotas={"alice@good.test": "20M"},
    )
    common = ["--resolver", lab["resolver"], "--only", "imap.quota", "--timeout", "5"]
    code, report = verify("mail.good.test", "--spec", str(spec), *common, *_creds(lab, "alice@good.test"))
    (result,) = report["results"]
    assert code == 1
    assert result["status"] == "fail" and "10M" in result["reason"] and "spec sets 20M" in result["reason"]
    # carol has no quota on the server and none in the spec: nothing to enforce, as the spec says.
    code, report = verify("mail.good.test", "--spec", str(spec), *common, *_creds(lab, "carol@good.test"))
    (result,) = report["results"]
    assert (code, result["status"]) == (0, "pass"), result
    assert "no STORAGE limit, as the spec sets no quota" in result["reason"]


def test_quota_without_a_spec(lab: dict[str, Any], tmp_path: Path) -> None:
    common = ["--resolver", lab["resolver"], "--only", "imap.quota", "--timeout", "5"]
    code, report = verify("mail.good.test", "--domain", "good.test", *common, *_creds(lab, "alice@good.test"))
    (result,) = report["results"]
    assert (code, result["status"]) == (0, "pass"), result
    assert "STORAGE limit" in result["reason"] and "10M" in result["reason"]
    # The faulty server runs no quota plugin: without a spec nothing is expected...
    code, report = verify("mail.bad.test", "--domain", "bad.test", *common, *_creds(lab, "bob@bad.test"))
    (result,) = report["results"]
    assert (code, result["status"]) == (0, "skip") and "server has no quota" in result["reason"], result
    # ...with a spec that sets a quota, its absence fails.
    spec = _spec(
        tmp_path / "q.yml", "mail.bad.test", "bad.test", ["bob@bad.test"], quotas={"bob@bad.test": "1G"}
    )
    code, report = verify("mail.bad.test", "--spec", str(spec), *common, *_creds(lab, "bob@bad.test"))
    (result,) = report["results"]
    assert (code, result["status"]) == (1, "fail") and "no QUOTA capability" in result["reason"], result


def test_managesieve_without_a_spec(lab: dict[str, Any]) -> None:
    common = ["--resolver", lab["resolver"], "--only", "sieve.managesieve", "--timeout", "5"]
    code, report = verify("mail.good.test", "--domain", "good.test", *common, *_creds(lab, "carol@good.test"))
    (result,) = report["results"]
    assert (code, result["status"]) == (0, "pass"), result
    assert "good password: accepted" in result["reason"] and "wrong password: refused" in result["reason"]
    code, report = verify("mail.bad.test", "--domain", "bad.test", *common)
    (result,) = report["results"]
    assert (code, result["status"]) == (1, "fail") and "before STARTTLS" in result["reason"], result
    # Nothing listens on 4190 of the dead address, and no spec says anything should.
    code, report = verify(DEAD_IP, "--domain", "good.test", *common)
    (result,) = report["results"]
    assert (code, result["status"]) == (0, "skip") and "closed" in result["reason"], result


def test_spam_filter_expected_only_when_asked(lab: dict[str, Any]) -> None:
    common = ["--resolver", lab["resolver"], "--only", "smtp.spam_filter", "--timeout", "5"]
    code, report = verify("mail.bad.test", "--domain", "bad.test", *common)
    (result,) = report["results"]
    assert (code, result["status"]) == (0, "skip") and "--expect-antispam" in result["reason"], result
    code, report = verify("mail.bad.test", "--domain", "bad.test", "--expect-antispam", *common)
    (result,) = report["results"]
    assert (code, result["status"]) == (1, "fail") and "GTUBE accepted (250" in result["reason"], result
    code, report = verify("mail.good.test", "--domain", "good.test", "--expect-antispam", *common)
    (result,) = report["results"]
    assert (code, result["status"]) == (0, "pass") and "GTUBE refused" in result["reason"], result


def _gtube_messages(lab: dict[str, Any], user: str) -> int:
    """How many GTUBE test messages a bad.test mailbox holds (runs without credentials leave theirs)."""
    maildir = lab["root"] / "bad" / "mail" / "bad.test" / user / "Maildir"
    found = [p for d in ("new", "cur") if (maildir / d).exists() for p in (maildir / d).iterdir()]
    return sum("spam filter test" in p.read_text() for p in found)


def test_spam_filter_with_credentials_looks_for_spam_headers(lab: dict[str, Any]) -> None:
    common = [
        "--resolver",
        lab["resolver"],
        "--only",
        "smtp.spam_filter",
        "--timeout",
        "5",
        "--expect-antispam",
    ]
    before = {user: _gtube_messages(lab, user) for user in ("bob", "dave")}
    # Accepted, and delivered with X-Spam-Flag: YES: a filter that tags, confirmed from the mailbox.
    code, report = verify("mail.bad.test", "--domain", "bad.test", *common, *_creds(lab, "bob@bad.test"))
    (result,) = report["results"]
    assert (code, result["status"]) == (0, "pass"), result
    assert "tagged as spam (X-Spam-Flag: YES) in INBOX" in result["reason"]
    # Accepted and delivered untagged.
    code, report = verify("mail.bad.test", "--domain", "bad.test", *common, *_creds(lab, "dave@bad.test"))
    (result,) = report["results"]
    assert (code, result["status"]) == (1, "fail"), result
    assert "delivered to INBOX without spam headers" in result["reason"]
    # With credentials the message went to the test mailbox, and verify deleted it.
    assert {user: _gtube_messages(lab, user) for user in ("bob", "dave")} == before
