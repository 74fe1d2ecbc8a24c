"""MTA-STS judges (RFC 8461): the TXT id grammar, the policy parser, mx pattern matching, coverage of the
MX hosts; and the pure parts of tls.cert.disk (which files Postfix and Dovecot serve, the comparison)."""

from __future__ import annotations

import pytest

from provisioner.checks import parsers as p

GOOD = "version: STSv1\r\nmode: enforce\r\nmx: mail.example.org\r\nmx: *.backup.example.org\r\nmax_age: 604800\r\n"


# ---- the TXT record ----------------------------------------------------------------------------------


@pytest.mark.parametrize("value", ["1", "20250101T000000", "a" * 32, "AbC123"])
def test_valid_ids(value: str) -> None:
    assert p.valid_sts_id(value)


@pytest.mark.parametrize("value", ["", "a" * 33, "2025-01-01", "id 1", "ü1", "1;", "abc\n"])
def test_invalid_ids(value: str) -> None:
    assert not p.valid_sts_id(value)


def test_txt_judgement() -> None:
    assert p.judge_mta_sts([]) == ("warn", "no _mta-sts TXT record (MTA-STS not published)")
    assert p.judge_mta_sts(["v=spf1 -all"])[0] == "warn"
    assert p.judge_mta_sts(["v=STSv1; id=abc123"]) == ("pass", "id=abc123")
    assert p.judge_mta_sts(["v=STSv1;id=abc123;"]) == ("pass", "id=abc123")
    assert p.judge_mta_sts(["v=STSv1; id=1", "v=STSv1; id=2"])[0] == "fail"
    status, reason = p.judge_mta_sts(["v=STSv1;"])
    assert status == "fail" and "without an id" in reason
    status, reason = p.judge_mta_sts(["v=STSv1; id=not-valid!"])
    assert status == "fail" and "invalid id" in reason
    # A record for another version is not an MTA-STS v1 record at all.
    assert p.sts_records(["v=STSv10; id=1", "v=STSv1; id=2"]) == ["v=STSv1; id=2"]


# ---- the policy ------------------------------------------------------------------------------------


def test_parse_good_policy() -> None:
    policy = p.parse_sts_policy(GOOD)
    assert policy.errors == []
    assert (policy.version, policy.mode, policy.max_age) == ("STSv1", "enforce", 604800)
    assert policy.mx == ["mail.example.org", "*.backup.example.org"]


def test_lf_line_endings_and_unknown_keys_are_accepted() -> None:
    text = "version: STSv1\nmode: testing\nmx: MAIL.example.org.\nmax_age:86400\nfuture_key: anything\n"
    policy = p.parse_sts_policy(text)
    assert policy.errors == [] and policy.mx == ["mail.example.org"] and policy.max_age == 86400


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("mode: enforce\nmx: a.example\nmax_age: 1\n", "no version"),
        ("version: STSv2\nmode: enforce\nmx: a.example\nmax_age: 1\n", "not STSv1"),
        ("version: stsv1\nmode: enforce\nmx: a.example\nmax_age: 1\n", "not STSv1"),
        ("version: STSv1\nmode: strict\nmx: a.example\nmax_age: 1\n", "mode 'strict'"),
        ("version: STSv1\nmode: Enforce\nmx: a.example\nmax_age: 1\n", "mode 'Enforce'"),
        ("version: STSv1\nmx: a.example\nmax_age: 1\n", "no mode"),
        ("version: STSv1\nmode: enforce\nmx: a.example\n", "no max_age"),
        ("version: STSv1\nmode: enforce\nmx: a.example\nmax_age: 31557601\n", "over 31557600"),
        ("version: STSv1\nmode: enforce\nmx: a.example\nmax_age: -1\n", "not a number"),
        ("version: STSv1\nmode: enforce\nmx: a.example\nmax_age: 1d\n", "not a number"),
        ("version: STSv1\nmode: enforce\nmx: a.example\nmax_age: 12345678901\n", "not a number"),
        ("version: STSv1\nmode: enforce\nmax_age: 86400\n", "no mx field"),
        ("version: STSv1\nmode: testing\nmax_age: 86400\n", "no mx field"),
        ("version: STSv1\nmode: enforce\nmx: mail.*.example\nmax_age: 1\n", "mx 'mail.*.example'"),
        ("version: STSv1\nmode: enforce\nmx: *\nmax_age: 1\n", "mx '*'"),
        ("version: STSv1\nmode: enforce\nmx: bad_name.example\nmax_age: 1\n", "mx 'bad_name.example'"),
        (
            "version: STSv1\nmode: enforce\nmode: none\nmx: a.example\nmax_age: 1\n",
            "mode appears more than once",
        ),
        ("version: STSv1\nmode enforce\nmx: a.example\nmax_age: 1\n", "line 2 is not 'key: value'"),
        ("<html>not a policy</html>", "line 1 is not"),
        ("", "no version"),
    ],
)
def test_invalid_policies(text: str, words: str) -> None:
    policy = p.parse_sts_policy(text)
    assert any(words in error for error in policy.errors), policy.errors
    status, reason = p.judge_sts_policy(policy, ["a.example"])
    assert status == "fail" and reason.startswith("invalid policy: ")


def test_mode_none_needs_no_mx_and_is_a_warning() -> None:
    policy = p.parse_sts_policy("version: STSv1\nmode: none\nmax_age: 86400\n")
    assert policy.errors == []
    assert p.judge_sts_policy(policy, ["mail.example.org"])[0] == "warn"


def test_max_age_bounds() -> None:
    for value in ("0", "31557600"):
        assert p.parse_sts_policy(f"version: STSv1\nmode: none\nmax_age: {value}\n").errors == []


# ---- mx patterns -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("host", "pattern", "matches"),
    [
        ("mail.example.org", "mail.example.org", True),
        ("MAIL.Example.org.", "mail.example.org", True),
        ("mx1.example.org", "*.example.org", True),
        ("example.org", "*.example.org", False),
        ("a.mx1.example.org", "*.example.org", False),
        ("mail.example.org", "example.org", False),
        ("mail.example.org.evil", "mail.example.org", False),
        ("mailexample.org", "*.example.org", False),
    ],
)
def test_mx_matching(host: str, pattern: str, matches: bool) -> None:
    assert p.sts_mx_matches(host, pattern) is matches


def test_coverage_of_every_mx_host() -> None:
    policy = p.parse_sts_policy(GOOD)
    status, reason = p.judge_sts_policy(policy, ["mail.example.org", "mx2.backup.example.org"])
    assert status == "pass" and "mode enforce, max_age 604800" in reason
    status, reason = p.judge_sts_policy(policy, ["mail.example.org", "mx3.example.org"])
    assert status == "fail" and reason.endswith("do not cover the MX host(s) mx3.example.org")
    assert p.judge_sts_policy(policy, ["."])[0] == "warn"  # null MX: nothing to cover
    assert p.judge_sts_policy(policy, [])[0] == "warn"


# ---- tls.cert.disk: which file each port serves -------------------------------------------------------


def test_postfix_cert_paths_main_cf_and_overrides() -> None:
    files = p.postfix_cert_paths("/etc/ssl/mail.pem", "", "")
    assert files == {25: ["/etc/ssl/mail.pem"], 587: ["/etc/ssl/mail.pem"], 465: ["/etc/ssl/mail.pem"]}
    # smtpd_tls_chain_files replaces smtpd_tls_cert_file when set.
    files = p.postfix_cert_paths("/etc/ssl/old.pem", "/etc/ssl/key.pem, /etc/ssl/chain.pem", "")
    assert files[25] == ["/etc/ssl/key.pem", "/etc/ssl/chain.pem"]
    overrides = (
        "submission/inet/smtpd_tls_security_level = encrypt\n"
        "submission/inet/smtpd_tls_cert_file = /etc/ssl/sub.pem\n"
        "127.0.0.1:smtps/inet/smtpd_tls_chain_files = /etc/ssl/s.pem\n"
        "2525/inet/smtpd_tls_cert_file = /etc/ssl/other.pem\n"
    )
    files = p.postfix_cert_paths("/etc/ssl/mail.pem", "", overrides)
    assert files == {25: ["/etc/ssl/mail.pem"], 587: ["/etc/ssl/sub.pem"], 465: ["/etc/ssl/s.pem"]}
    assert p.postfix_cert_paths("", "", "") == {25: [], 587: [], 465: []}


def test_dovecot_cert_path() -> None:
    assert p.dovecot_cert_path("</etc/dovecot/private/dovecot.pem\n") == "/etc/dovecot/private/dovecot.pem"
    assert p.dovecot_cert_path("") is None
    assert p.dovecot_cert_path("-----BEGIN CERTIFICATE-----") is None


def test_judge_cert_on_disk() -> None:
    served = "ab" * 32
    assert p.judge_cert_on_disk(served, {"/a.pem": served})[0] == "pass"
    status, reason = p.judge_cert_on_disk(served, {"/a.pem": "cd" * 32})
    assert status == "fail" and "/a.pem holds cdcd" in reason
    # A key file first, the certificate after it (smtpd_tls_chain_files): the first certificate counts.
    assert p.judge_cert_on_disk(served, {"/key.pem": None, "/chain.pem": served})[0] == "pass"
    assert p.judge_cert_on_disk(served, {"/key.pem": None})[1] == "no certificate in /key.pem"
    assert p.judge_cert_on_disk(served, {}) == ("fail", "no certificate file configured")


# ---- tls.cert.disk end to end through the check, with a fake testinfra host --------------------------


class _Out:
    def __init__(self, stdout: str, rc: int = 0) -> None:
        self.stdout, self.stderr, self.rc = stdout, "", rc


class _File:
    def __init__(self, text: str | None) -> None:
        self.exists = text is not None
        self.content_string = text or ""


class FakeHost:
    """Answers postconf/doveconf like a host whose Postfix and Dovecot name the given files."""

    def __init__(self, files: dict[str, str], commands: dict[str, str]) -> None:
        self.files, self.commands = files, commands

    def run(self, cmd: str) -> _Out:
        return _Out(self.commands.get(cmd, ""), 0 if cmd in self.commands or cmd == "true" else 1)

    def file(self, path: str) -> _File:
        return _File(self.files.get(path))


def _pem(der: bytes) -> str:
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    return x509.load_der_x509_certificate(der).public_bytes(serialization.Encoding.PEM).decode()


def _run_disk_check(monkeypatch: pytest.MonkeyPatch, served: dict[int, bytes], host: FakeHost) -> object:
    from provisioner.checks import tls
    from provisioner.checks.base import CATALOG
    from provisioner.checks.context import Context, Options

    ctx = Context(Options(target="mail.example.org", host=host))
    facts = {port: p.cert_facts(der) for port, der in served.items()}
    monkeypatch.setattr(tls, "_certs", lambda ctx, id: ({}, facts))
    monkeypatch.setattr(tls, "tls_ports", lambda ctx, served_only=False: ({}, {}))
    return CATALOG["tls.cert.disk"].fn(ctx)


def test_cert_disk_check(monkeypatch: pytest.MonkeyPatch) -> None:
    from test_checks_parsers import make_cert

    old, new = make_cert(["mail.example.org"]), make_cert(["mail.example.org"])
    commands = {
        "postconf -h smtpd_tls_cert_file": "/etc/ssl/mail.pem\n",
        "postconf -h smtpd_tls_chain_files": "\n",
        "postconf -P": "",
        "doveconf -h ssl_cert": "</etc/dovecot/mail.pem\n",
    }
    files = {"/etc/ssl/mail.pem": _pem(new), "/etc/dovecot/mail.pem": _pem(new)}
    served = {25: new, 587: new, 465: new, 993: new, 995: new}
    result = _run_disk_check(monkeypatch, served, FakeHost(files, commands))
    assert result.status == "pass", result.reason  # type: ignore[attr-defined]
    # Dovecot was not reloaded after the file changed: it still serves the old certificate.
    served = {25: new, 587: new, 465: new, 993: old, 995: old}
    result = _run_disk_check(monkeypatch, served, FakeHost(files, commands))
    assert result.status == "fail"  # type: ignore[attr-defined]
    assert "port 993: serves" in result.reason and "/etc/dovecot/mail.pem holds" in result.reason  # type: ignore[attr-defined]
    assert "port 25" not in result.reason  # type: ignore[attr-defined]
    # A configured file that is gone.
    result = _run_disk_check(monkeypatch, {25: new}, FakeHost({}, commands))
    assert result.status == "fail" and "no certificate in /etc/ssl/mail.pem" in result.reason  # type: ignore[attr-defined]
