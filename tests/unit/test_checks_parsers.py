"""Pure parsers and judges of `mailprov verify` on recorded inputs (records, replies, certificates, output)."""

from __future__ import annotations

import base64
import dataclasses
import datetime as dt

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from provisioner.checks import parsers as p

# ---- SPF -----------------------------------------------------------------------------------------


def fake_dns(zone: dict[tuple[str, str], list[str]]) -> p.Lookup:
    """A lookup over a dict; missing names are void (None)."""

    def lookup(name: str, rdtype: str) -> list[str] | None:
        return zone.get((name, rdtype))

    return lookup


def test_parse_spf_terms_and_modifiers() -> None:
    record = p.parse_spf(
        "v=spf1 ip4:192.0.2.0/24 a mx/24 include:_spf.example.org ~all redirect=x.org exp=e.org"
    )
    assert [t.mechanism for t in record.terms] == ["ip4", "a", "mx", "include", "all"]
    assert record.terms[2].value == "/24"
    assert record.all_term == p.SpfTerm("~", "all")
    assert record.modifiers == {"redirect": "x.org", "exp": "e.org"}
    assert record.dns_terms == 4  # a, mx, include, redirect


def test_parse_spf_errors() -> None:
    assert p.parse_spf("v=spf2 -all").errors
    assert p.parse_spf("v=spf1 foo:bar -all").errors == ["unknown mechanism 'foo:bar'"]
    assert p.parse_spf("v=spf1 include -all").errors == ["include needs a value"]


@pytest.mark.parametrize(
    ("text", "status"),
    [
        ("v=spf1 mx -all", "pass"),
        ("v=spf1 mx ~all", "pass"),
        ("v=spf1 +all", "fail"),
        ("v=spf1 all", "fail"),
        ("v=spf1 mx ?all", "fail"),
        ("v=spf1 mx", "warn"),
        ("v=spf1 redirect=_spf.example.org", "pass"),
    ],
)
def test_judge_spf_all(text: str, status: str) -> None:
    assert p.judge_spf_all(p.parse_spf(text))[0] == status


def test_is_spf() -> None:
    assert p.is_spf("v=spf1 -all") and p.is_spf("V=SPF1") and not p.is_spf("v=spf10 -all")


def test_walk_counts_lookups_through_includes() -> None:
    lookup = fake_dns(
        {
            ("example.org", "TXT"): [
                "v=spf1 mx a include:_spf.example.org -all",
                "google-site-verification=x",
            ],
            ("_spf.example.org", "TXT"): ["v=spf1 include:_a.example.org include:_b.example.org ~all"],
            ("_a.example.org", "TXT"): ["v=spf1 ip4:192.0.2.0/24 -all"],
            ("_b.example.org", "TXT"): ["v=spf1 exists:%{i}.x.example.org -all"],
            ("example.org", "MX"): ["10 mail.example.org"],
            ("example.org", "A"): ["192.0.2.1"],
        }
    )
    walk = p.walk_spf("example.org", lookup)
    # mx, a, include:_spf, include:_a, include:_b, exists
    assert walk.lookups == 6
    assert walk.void == 1  # the exists target does not resolve
    assert set(walk.records) == {"example.org", "_spf.example.org", "_a.example.org", "_b.example.org"}


def test_walk_over_ten_lookups_and_void() -> None:
    mechanisms = " ".join(f"a:h{i}.example.org" for i in range(11))
    zone = {("example.org", "TXT"): [f"v=spf1 {mechanisms} -all"]}
    zone.update({(f"h{i}.example.org", "A"): ["192.0.2.1"] for i in range(8)})
    walk = p.walk_spf("example.org", fake_dns(zone))
    # A receiver stops at the 11th DNS-querying term (permerror); so does the walk.
    assert walk.lookups == 11 and walk.over_limit
    assert walk.void == 2  # h8, h9 have no address; h10 is past the limit
    assert any("more than 10 DNS-querying terms" in r for r in p.spf_limit_problems(walk))


def test_walk_stops_at_the_third_void_lookup() -> None:
    mechanisms = " ".join(f"a:gone{i}.example.org" for i in range(5))
    walk = p.walk_spf("example.org", fake_dns({("example.org", "TXT"): [f"v=spf1 {mechanisms} -all"]}))
    assert walk.void == 3 and walk.lookups == 3
    assert p.spf_limit_problems(walk) == ["more than 2 void lookups (RFC 7208 limit 2)"]


def _exponential_zone(depth: int) -> tuple[dict[tuple[str, str], list[str]], list[tuple[str, str]]]:
    """n0 includes n1 twice, n1 includes n2 twice...: 2^depth include evaluations if walked naively."""
    zone = {
        (f"n{i}.test", "TXT"): [f"v=spf1 include:n{i + 1}.test include:n{i + 1}.test -all"]
        for i in range(depth)
    }
    zone[(f"n{depth}.test", "TXT")] = ["v=spf1 ip4:192.0.2.1 -all"]
    return zone, []


def test_spf_walk_and_evaluation_are_linear_on_an_exponential_include_tree() -> None:
    zone, _ = _exponential_zone(14)
    calls: list[tuple[str, str]] = []

    def lookup(name: str, rdtype: str) -> list[str] | None:
        calls.append((name, rdtype))
        return zone.get((name, rdtype))

    walk = p.walk_spf("n0.test", lookup)
    assert walk.over_limit and walk.lookups == 11
    assert p.evaluate_spf("198.51.100.1", "n0.test", lookup) == "permerror"
    assert len(calls) < 100  # 2^14 include evaluations without the limit


def test_walk_reports_missing_and_duplicate_records() -> None:
    assert p.walk_spf("x.org", fake_dns({})).errors == ["x.org has no v=spf1 record"]
    dup = fake_dns({("x.org", "TXT"): ["v=spf1 -all", "v=spf1 mx -all"]})
    assert "2 v=spf1 records" in p.walk_spf("x.org", dup).errors[0]
    missing_include = fake_dns({("x.org", "TXT"): ["v=spf1 include:gone.org -all"]})
    walk = p.walk_spf("x.org", missing_include)
    assert walk.void == 1 and "include:gone.org does not exist" in walk.errors


def test_walk_stops_include_loops() -> None:
    loop = fake_dns(
        {("a.org", "TXT"): ["v=spf1 include:b.org -all"], ("b.org", "TXT"): ["v=spf1 include:a.org -all"]}
    )
    walk = p.walk_spf("a.org", loop)
    assert walk.over_limit and walk.lookups == 11


ZONE = {
    ("example.org", "TXT"): ["v=spf1 mx ip4:198.51.100.0/24 include:_spf.example.net -all"],
    ("example.org", "MX"): ["10 mail.example.org"],
    ("mail.example.org", "A"): ["192.0.2.10"],
    ("_spf.example.net", "TXT"): ["v=spf1 a:relay.example.net/28 ~all"],
    ("relay.example.net", "A"): ["203.0.113.1"],
    ("soft.org", "TXT"): ["v=spf1 ~all"],
    ("redir.org", "TXT"): ["v=spf1 redirect=example.org"],
}


@pytest.mark.parametrize(
    ("ip", "domain", "result"),
    [
        ("192.0.2.10", "example.org", "pass"),  # via mx
        ("198.51.100.7", "example.org", "pass"),  # via ip4
        ("203.0.113.14", "example.org", "pass"),  # via include + a/28
        ("203.0.113.99", "example.org", "fail"),  # include neither matches nor errors: -all
        ("192.0.2.10", "soft.org", "softfail"),
        ("192.0.2.10", "redir.org", "pass"),
        ("192.0.2.10", "nothing.org", "none"),
    ],
)
def test_evaluate_spf(ip: str, domain: str, result: str) -> None:
    assert p.evaluate_spf(ip, domain, fake_dns(ZONE)) == result


# ---- DMARC, DKIM, MTA-STS, TLS-RPT ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("txts", "status", "words"),
    [
        (["v=DMARC1; p=reject; rua=mailto:d@example.org"], "pass", "p=reject"),
        (["v=DMARC1; p=quarantine"], "pass", "p=quarantine"),
        (["v=DMARC1; p=none; rua=mailto:d@example.org"], "warn", "p=none"),
        (["v=DMARC1; p=reject; pct=20"], "warn", "pct=20"),
        (["v=DMARC1; rua=mailto:d@example.org"], "fail", "no p="),
        (["v=DMARC1; p=reject", "v=DMARC1; p=none"], "fail", "2 v=DMARC1"),
        ([], "fail", "no v=DMARC1"),
        (["v=DMARC1; p=maybe"], "fail", "unknown policy"),
    ],
)
def test_judge_dmarc(txts: list[str], status: str, words: str) -> None:
    got, reason = p.judge_dmarc(txts)
    assert got == status and words in reason


def test_parse_tags() -> None:
    assert p.parse_tags(" v=DMARC1 ;P=reject; rua = mailto:x@y.org ;") == {
        "v": "DMARC1",
        "p": "reject",
        "rua": "mailto:x@y.org",
    }


def _dkim_p(bits: int = 2048) -> str:
    key = rsa.generate_private_key(public_exponent=65537, key_size=bits).public_key()
    der = key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return base64.b64encode(der).decode()


def test_dkim_parse_and_judge() -> None:
    key = _dkim_p()
    assert p.judge_dkim(f"v=DKIM1; k=rsa; p={key}") == ("pass", "rsa 2048-bit key")
    assert p.judge_dkim(f"v=DKIM1; p={key}", expected_p=key)[0] == "pass"
    assert p.judge_dkim(f"v=DKIM1; p={key}", expected_p=_dkim_p())[1].startswith("published key differs")
    assert p.parse_dkim("v=DKIM1; p=").error == "empty p=: the key is revoked"
    assert p.parse_dkim("v=DKIM1; p=!!!").error == "p= is not valid base64"
    assert p.parse_dkim("v=DKIM1; k=rsa; p=AAAA").error == "p= does not hold a parseable RSA public key"
    assert p.judge_dkim("v=DKIM1; k=ed25519; p=" + base64.b64encode(b"x" * 32).decode())[0] == "pass"
    assert p.judge_dkim(f"v=DKIM1; p={_dkim_p(1024)}")[0] == "pass"


def test_dkim_pkcs1_key_is_accepted() -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048).public_key()
    pkcs1 = key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.PKCS1)
    assert p.parse_dkim("p=" + base64.b64encode(pkcs1).decode()).bits == 2048


def test_mta_sts_and_tlsrpt() -> None:
    assert p.judge_mta_sts(["v=STSv1; id=20250101T000000"]) == ("pass", "id=20250101T000000")
    assert p.judge_mta_sts([])[0] == "warn"
    assert p.judge_mta_sts(["v=STSv1;"])[0] == "fail"
    assert p.judge_tlsrpt(["v=TLSRPTv1; rua=mailto:tls@example.org"])[0] == "pass"
    assert p.judge_tlsrpt(["v=TLSRPTv1; rua=https://r.example.org/v1,mailto:a@b.org"])[0] == "pass"
    assert p.judge_tlsrpt([])[0] == "warn"
    assert p.judge_tlsrpt(["v=TLSRPTv1;"])[0] == "fail"


def test_mx_and_null_mx() -> None:
    assert p.parse_mx(["20 b.example.org.", "10 A.example.org."]) == [
        (10, "a.example.org"),
        (20, "b.example.org"),
    ]
    assert p.parse_mx(["0 ."]) == [(0, ".")]
    assert p.judge_null_mx([(0, ".")]) == ("pass", "null MX: the domain accepts no mail")
    assert p.judge_null_mx([(0, "."), (10, "mx.example.org")])[0] == "fail"
    assert p.judge_null_mx([(10, "mx.example.org")])[0] == "pass"


# ---- SMTP, IMAP ------------------------------------------------------------------------------------

POSTFIX_EHLO = (
    b"mail.example.org\nPIPELINING\nSIZE 52428800\nVRFY\nETRN\nSTARTTLS\nENHANCEDSTATUSCODES\n8BITMIME\nDSN\nSMTPUTF8\n"
    b"CHUNKING"
)


def test_parse_ehlo_postfix() -> None:
    caps = p.parse_ehlo(POSTFIX_EHLO)
    assert caps["SIZE"] == "52428800" and "STARTTLS" in caps and "MAIL.EXAMPLE.ORG" not in caps
    assert p.missing_ehlo(caps) == []


def test_parse_ehlo_auth_forms() -> None:
    caps = p.parse_ehlo(b"mx.example.org Hello\nAUTH PLAIN LOGIN\nAUTH=LOGIN\nSIZE")
    assert caps["AUTH"] == "PLAIN LOGIN LOGIN"
    assert p.missing_ehlo(caps) == ["PIPELINING", "8BITMIME", "ENHANCEDSTATUSCODES"]


@pytest.mark.parametrize(
    ("banner", "expected", "status"),
    [
        (b"mail.example.org ESMTP Postfix (Debian/GNU)", ["mail.example.org"], "pass"),
        (b"MAIL.example.org. ESMTP", ["mail.example.org"], "pass"),
        (b"localhost ESMTP", ["mail.example.org", "mx.example.org"], "warn"),
        (b"", ["mail.example.org"], "warn"),
        (b"mx1 ESMTP", [], "pass"),
    ],
)
def test_banner(banner: bytes, expected: list[str], status: str) -> None:
    assert p.judge_banner(p.banner_name(banner), expected)[0] == status


def test_reply_class() -> None:
    assert [p.reply_class(c) for c in (250, 354, 451, 554, 0)] == [
        "accepted",
        "accepted",
        "deferred",
        "refused",
        "error",
    ]


def test_login_disabled() -> None:
    dovecot_before_tls = [
        "IMAP4REV1",
        "SASL-IR",
        "LOGIN-REFERRALS",
        "ID",
        "ENABLE",
        "IDLE",
        "LITERAL+",
        "STARTTLS",
        "LOGINDISABLED",
    ]
    assert p.judge_login_disabled(dovecot_before_tls)[0] == "pass"
    plaintext = ["IMAP4REV1", "STARTTLS", "AUTH=PLAIN", "AUTH=LOGIN"]
    assert p.judge_login_disabled(plaintext) == (
        "fail",
        "plaintext LOGIN allowed before STARTTLS (no LOGINDISABLED)",
    )
    assert p.judge_login_disabled(["LOGINDISABLED", "AUTH=PLAIN"])[0] == "fail"


# ---- certificates ---------------------------------------------------------------------------------


def make_cert(
    names: list[str],
    cn: str = "mail.example.org",
    days: float = 90,
    key: object | None = None,
    algorithm: hashes.HashAlgorithm | None = None,
    self_signed: bool = True,
) -> bytes:
    """A DER certificate with the given SAN names, lifetime and key."""
    private = key or ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    issuer = subject if self_signed else x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Some CA")])
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(private.public_key())  # type: ignore[attr-defined]
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=days))
    )
    if names:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.DNSName(n) for n in names]), critical=False
        )
    cert = builder.sign(private, algorithm or hashes.SHA256())  # type: ignore[arg-type]
    return cert.public_bytes(serialization.Encoding.DER)


def test_cert_facts() -> None:
    facts = p.cert_facts(make_cert(["mail.example.org", "*.example.net"]))
    assert facts.dns_names == ["mail.example.org", "*.example.net"]
    assert facts.key_type == "ECDSA" and facts.key_bits == 256 and facts.signature_hash == "sha256"
    assert facts.self_issued and len(facts.sha256) == 64
    assert facts.evidence()["subject"] == "CN=mail.example.org"


@pytest.mark.parametrize(
    ("host", "pattern", "ok"),
    [
        ("mail.example.org", "mail.example.org", True),
        ("MAIL.example.org.", "mail.example.org", True),
        ("mail.example.net", "*.example.net", True),
        ("a.b.example.net", "*.example.net", False),
        ("example.net", "*.example.net", False),
        ("mail.org", "*.org", False),
    ],
)
def test_name_matches(host: str, pattern: str, ok: bool) -> None:
    assert p.name_matches(host, pattern) is ok


def test_cert_name_uses_san_then_cn() -> None:
    assert p.judge_cert_name(p.cert_facts(make_cert(["mail.example.org"])), "mail.example.org")[0] == "pass"
    wrong = p.judge_cert_name(p.cert_facts(make_cert(["other.example.org"])), "mail.example.org")
    assert wrong == ("fail", "issued for other.example.org, not mail.example.org")
    # CN only counts when there is no SAN at all
    assert (
        p.judge_cert_name(p.cert_facts(make_cert([], cn="mail.example.org")), "mail.example.org")[0] == "pass"
    )
    assert (
        p.judge_cert_name(
            p.cert_facts(make_cert(["x.example.org"], cn="mail.example.org")), "mail.example.org"
        )[0]
        == "fail"
    )


def test_expiry() -> None:
    now = dt.datetime(2025, 6, 1, tzinfo=dt.UTC)
    assert p.judge_expiry(now + dt.timedelta(days=60), now)[0] == "pass"
    assert p.judge_expiry(now + dt.timedelta(days=5), now) == ("warn", "expires in 5 days (2025-06-06)")
    assert p.judge_expiry(now - dt.timedelta(days=1), now) == ("fail", "expired on 2025-05-31")
    assert p.judge_expiry(now + dt.timedelta(days=14, seconds=1), now)[0] == "pass"
    assert p.judge_expiry(now + dt.timedelta(days=13, hours=23), now)[0] == "warn"
    assert p.judge_expiry(now + dt.timedelta(days=3, seconds=1), now)[0] == "warn"
    status, reason = p.judge_expiry(now + dt.timedelta(days=2, hours=23), now)
    assert status == "fail" and reason.startswith("expires in 71 hours (2025-06-03): under 3 days left")
    assert p.judge_expiry(now + dt.timedelta(seconds=30), now)[0] == "fail"


def test_cert_key() -> None:
    assert p.judge_cert_key(p.cert_facts(make_cert(["a.org"])))[0] == "pass"
    weak = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    assert p.judge_cert_key(p.cert_facts(make_cert(["a.org"], key=weak)))[1].startswith("weak key: RSA 1024")
    strong = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    assert p.judge_cert_key(p.cert_facts(make_cert(["a.org"], key=strong))) == (
        "pass",
        "RSA 2048, signed with sha256",
    )
    sha1 = dataclasses.replace(p.cert_facts(make_cert(["a.org"], key=strong)), signature_hash="sha1")
    assert p.judge_cert_key(sha1) == ("fail", "weak signature hash: RSA 2048, signed with sha1")


def test_pem_fingerprints() -> None:
    der = make_cert(["a.org"])
    pem = x509.load_der_x509_certificate(der).public_bytes(serialization.Encoding.PEM).decode()
    assert p.pem_fingerprints("junk\n" + pem + pem) == [p.sha256_hex(der)] * 2


# ---- host command output --------------------------------------------------------------------------

POSTQUEUE_J = """\
{"queue_name": "deferred", "queue_id": "4F1A2", "arrival_time": 1000, "message_size": 1, "sender": "a@b.org", "recipients": []}
{"queue_name": "active", "queue_id": "4F1A3", "arrival_time": 1000, "message_size": 1, "sender": "", "recipients": []}
{"queue_name": "deferred", "queue_id": "4F1A4", "arrival_time": 9000, "message_size": 1, "sender": "", "recipients": []}
postqueue: warning: something
"""


def test_postqueue() -> None:
    messages = p.parse_postqueue_json(POSTQUEUE_J)
    assert len(messages) == 3
    assert [m["queue_id"] for m in p.old_deferred(messages, now=10000)] == ["4F1A2"]


def test_listening() -> None:
    sockets = [
        "tcp://0.0.0.0:25",
        "tcp://:::25",
        "tcp://127.0.0.1:587",
        "tcp://192.0.2.1:993",
        "udp://0.0.0.0:53",
        "unix:///run/x",
    ]
    listening = p.parse_listening(sockets)
    assert listening[25] == {"0.0.0.0", "::"} and 53 not in listening
    status, reason, _ = p.judge_listening(listening, {25: True, 587: True, 993: True, 110: False}, None)
    assert status == "pass"
    status, reason, _ = p.judge_listening(listening, {25: True, 465: True}, None)
    assert (status, reason) == ("fail", "not listening on 465")
    status, reason, _ = p.judge_listening(listening, {587: True}, ["192.0.2.1"])
    assert reason == "not listening on 192.0.2.1:587"
    assert p.judge_listening(listening, {25: True, 993: False}, None)[0] == "warn"


def test_file_modes() -> None:
    assert p.judge_mode("/k", 0o100600, "private key")[0] == "pass"
    assert p.judge_mode("/k", 0o640, "private key")[0] == "pass"
    assert p.judge_mode("/k", 0o644, "private key") == ("fail", "/k is 0644: world-accessible private key")
    assert p.judge_mode("/k", 0o660, "private key")[0] == "fail"
    assert p.judge_mode("/etc/dovecot/users", 0o640, "password file")[0] == "pass"
    assert p.judge_mode("/etc/dovecot/users", 0o644, "password file")[0] == "fail"


def test_main_cf_and_postconf_n_compare() -> None:
    rendered = "# managed\nmyhostname = mail.example.org\nsmtpd_relay_restrictions =\n    permit_mynetworks,\n    reject_unauth_destination\n"
    postconf_n = "myhostname = mail.example.org\nsmtpd_relay_restrictions = permit_mynetworks, reject_unauth_destination\n"
    assert p.diff_settings(p.parse_main_cf(rendered), p.parse_main_cf(postconf_n)) == []
    drifted = postconf_n.replace("mail.example.org", "mx.example.org") + "relayhost = [x]\n"
    diff = p.diff_settings(p.parse_main_cf(rendered), p.parse_main_cf(drifted))
    assert diff == [
        "myhostname: 'mx.example.org' (expected 'mail.example.org')",
        "relayhost: '[x]' not in the rendered config",
    ]


def test_master_cf_normalised() -> None:
    rendered = "submission inet n - y - - smtpd\n  -o syslog_name=postfix/submission\n"
    postconf_m = (
        "submission inet  n       -       y       -       -       smtpd -o syslog_name=postfix/submission\n"
    )
    assert p.parse_master_cf(rendered) == p.parse_master_cf(postconf_m)


def test_dovecot_conf_sections() -> None:
    text = """\
# comment
protocols = imap pop3 lmtp
service imap-login {
  inet_listener imaps {
    port = 993   # trailing comment
    ssl = yes
  }
}
!include_try /usr/share/dovecot/protocols.d/*.protocol
"""
    assert p.parse_dovecot_conf(text) == {
        "protocols": "imap pop3 lmtp",
        "service imap-login/inet_listener imaps/port": "993",
        "service imap-login/inet_listener imaps/ssl": "yes",
    }


def test_firewall() -> None:
    mail = {"smtp", "smtps", "smtp-submission", "imap", "imaps", "pop3", "pop3s"}
    ports = {25, 465, 587, 143, 993, 110, 995}
    expected = {"smtp", "smtp-submission", "smtps", "imaps"}
    assert p.judge_firewall(expected | {"ssh"}, set(), expected, mail, ports)[0] == "pass"
    assert p.judge_firewall({"smtp"}, set(), expected, mail, ports)[1].startswith("firewall does not open")
    assert p.judge_firewall(expected | {"pop3"}, set(), expected, mail, ports) == (
        "fail",
        "firewall also opens pop3",
    )
    assert p.judge_firewall(expected, {"110/tcp", "8080/tcp"}, expected, mail, ports) == (
        "fail",
        "firewall also opens 110/tcp",
    )


def test_doveconf_output_quirks() -> None:
    doveconf = 'mail_plugins = " quota"\nssl_key = # hidden, use -P to show it\nnamespace inbox {\n  location = \n}\n'
    parsed = p.parse_dovecot_conf(doveconf)
    assert parsed == {"mail_plugins": "quota", "ssl_key": p.HIDDEN, "namespace inbox/location": ""}


def test_firewalld_list_all() -> None:
    text = """public (active)
  target: default
  icmp-block-inversion: no
  interfaces: host0
  sources:
  services: dhcpv6-client imap imaps smtp smtp-submission smtps ssh
  ports: 8080/tcp
  protocols:
  forward: yes
  rich rules:
"""
    zone = p.parse_firewalld_zone(text)
    assert zone["services"].split() == [
        "dhcpv6-client",
        "imap",
        "imaps",
        "smtp",
        "smtp-submission",
        "smtps",
        "ssh",
    ]
    assert zone["ports"] == "8080/tcp" and zone["sources"] == ""


# ---- SMTP replies, plaintext AUTH/LOGIN, addresses, untrusted text -------------------------------


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        (b"250-PIPELINING\r\n", (250, True, b"PIPELINING")),
        (b"250 OK\r\n", (250, False, b"OK")),
        (b"220\r\n", (220, False, b"")),
        (b"554 5.7.1 Relay access denied\n", (554, False, b"5.7.1 Relay access denied")),
    ],
)
def test_parse_reply_line(line: bytes, expected: tuple[int, bool, bytes]) -> None:
    assert p.parse_reply_line(line) == expected


@pytest.mark.parametrize(
    "line",
    [
        b"XYZ nothing\r\n",
        b"600 too high\r\n",
        b"199 too low\r\n",
        b"25 short\r\n",
        b"2500 long\r\n",
        b"250_x\r\n",
        b"\r\n",
    ],
)
def test_parse_reply_line_rejects_garbage(line: bytes) -> None:
    with pytest.raises(p.ReplyError):
        p.parse_reply_line(line)


def test_parse_reply_line_requires_one_code_per_reply() -> None:
    assert p.parse_reply_line(b"250 last\r\n", code=250) == (250, False, b"last")
    with pytest.raises(p.ReplyError, match="from 250 to 554"):
        p.parse_reply_line(b"554 other\r\n", code=250)


def test_reply_error_quotes_escaped() -> None:
    with pytest.raises(p.ReplyError) as info:
        p.parse_reply_line(b"\x1b[2J\x00boom\r\n")
    assert "\x1b" not in str(info.value) and "\\x1b" in str(info.value)


@pytest.mark.parametrize(
    ("code", "status"),
    [
        (503, "pass"),
        (530, "pass"),
        (538, "pass"),
        (502, "pass"),
        (334, "fail"),
        (235, "fail"),
        (535, "fail"),
        (454, "fail"),
        (250, "fail"),
    ],
)
def test_judge_plaintext_auth(code: int, status: str) -> None:
    assert p.judge_plaintext_auth(code, "text")[0] == status


@pytest.mark.parametrize(
    ("typ", "text", "status"),
    [
        (
            "NO",
            "[PRIVACYREQUIRED] Plaintext authentication disallowed on non-secure (SSL/TLS) connections.",
            "pass",
        ),
        ("BAD", "Plaintext authentication disallowed", "pass"),
        ("NO", "LOGIN requires TLS", "pass"),
        ("NO", "[AUTHENTICATIONFAILED] Authentication failed.", "fail"),
        ("NO", "Invalid credentials", "fail"),
        ("OK", "Logged in", "fail"),
        ("BAD", "Error in IMAP command", "fail"),
    ],
)
def test_judge_plaintext_login(typ: str, text: str, status: str) -> None:
    assert p.judge_plaintext_login(typ, text)[0] == status


@pytest.mark.parametrize(
    ("address", "kind"),
    [
        ("127.0.0.1", "loopback"),
        ("127.77.0.5", "loopback"),
        ("0.0.0.0", "unspecified"),
        ("::", "unspecified"),
        ("::1", "loopback"),
        ("::ffff:127.0.0.1", "loopback"),
        ("169.254.1.1", "link-local"),
        ("fe80::1", "link-local"),
        ("224.0.0.1", "multicast"),
        ("ff02::1", "multicast"),
    ],
)
def test_unsafe_address(address: str, kind: str) -> None:
    assert kind in (p.unsafe_address(address) or "")


@pytest.mark.parametrize("address", ["10.0.0.5", "192.0.2.1", "2001:db8::1", "172.16.0.1"])
def test_safe_address(address: str) -> None:
    assert p.unsafe_address(address) is None


def test_clean_reason_escapes_and_truncates() -> None:
    assert p.clean_reason("a\x1b]0;title\x07 b\x00\u202e [/]") == "a\\x1b]0;title\\x07 b\\x00\\u202e [/]"
    long = p.clean_reason("x" * 5000)
    assert len(long) <= p.MAX_REASON and long.endswith("more characters truncated]")
    assert p.clean_reason(long) == long  # idempotent


def test_clean_evidence_is_json_safe_and_capped() -> None:
    import json

    cleaned = p.clean_evidence({"banner": "220 \x1b[31mred\x00", "caps": ["A"] * 1000, "raw": b"\xff\x00"})
    text = json.dumps(cleaned)
    assert "\\u001b" not in text and "\\\\x1b" in text
    assert len(cleaned["caps"]) == 200
    big = p.clean_evidence(["y" * 3000] * 100)
    assert isinstance(big, str) and "truncated" in big


def test_weak_suite_families_hold_only_weak_suites() -> None:
    import ssl

    from provisioner.checks.tls import family_context, weak_families

    families = weak_families()
    assert set(families) >= {"CBC", "NULL", "anonymous"}
    for family, names in families.items():
        suites = family_context(names).get_ciphers()
        weak = [c for c in suites if c["protocol"] != "TLSv1.3"]
        assert weak, family
        assert all(not c["aead"] for c in weak if family in ("CBC", "NULL")), family
        assert all(c["auth"] == "auth-null" for c in weak if family == "anonymous"), family
        assert all("PSK" not in c["name"] for c in weak)
    assert family_context(families["CBC"]).maximum_version == ssl.TLSVersion.TLSv1_2
