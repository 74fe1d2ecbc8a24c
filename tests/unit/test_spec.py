"""Spec loading: the example loads as written, derived values, and every bad-input case is refused
with the field's path (and line) and the expected form."""

from __future__ import annotations

from pathlib import Path

import pytest

from provisioner import spec
from provisioner.errors import SpecError

ROOT = Path(__file__).resolve().parents[2]
HASH = "{SHA512-CRYPT}$6$wS5qFv6gH6eWpZYc$CWN4Y.K75r8CcEwmbGrEYDoDjJpy0Yiyv6WgUWMchTaZjFub/qVo33twQi9Dlk3mKe16jjf64k3/XAbldkurH0"


def make(extra: str = "", mailboxes: str | None = None, aliases: str = "", domain_extra: str = "") -> str:
    boxes = (
        mailboxes
        if mailboxes is not None
        else f'      - address: alice@example.test\n        password_hash: "{HASH}"\n'
    )
    text = "hostname: mail.example.test\ndomains:\n  - name: example.test\n    mailboxes:\n" + boxes
    if aliases:
        text += "    aliases:\n" + aliases
    text += domain_extra
    return text + extra


def refused(text: str) -> SpecError:
    with pytest.raises(SpecError) as info:
        spec.loads(text)
    return info.value


def test_design_example_loads_as_written() -> None:
    model = spec.load(ROOT / "examples" / "mail.yml")
    assert model.hostname == "mail.example.test"
    assert model.mailboxes[0].quota == 2 * 1024**3
    assert model.message_size_limit == 50 * 1024**2
    assert model.open_ports == [25, 110, 143, 465, 587, 993, 995]
    assert model.dkim.selector == "mail"


def test_secure_defaults() -> None:
    model = spec.loads(make())
    assert model.tls.mode == "self-signed"
    assert model.submission.starttls_587 and model.submission.implicit_tls_465
    assert model.network.ipv4 and not model.network.ipv6
    assert model.dns.dmarc_policy == "quarantine"
    assert model.relayhost == ""


def test_postmaster_is_derived_when_missing() -> None:
    model = spec.loads(make())
    assert [(e.key, e.targets) for e in model.alias_entries] == [
        ("postmaster@example.test", ("alice@example.test",))
    ]


def test_catch_all_keeps_real_mailboxes() -> None:
    model = spec.loads(make(domain_extra="    catch_all: alice@example.test\n"))
    keys = [e.key for e in model.alias_entries]
    assert keys.index("alice@example.test") < keys.index("@example.test")


def test_relayhost_forms() -> None:
    assert spec.loads(make("relay_host: {host: smtp.x.test}\n")).relayhost == "[smtp.x.test]:587"
    assert (
        spec.loads(make("relay_host: {host: x.test, port: 25, mx_lookup: true}\n")).relayhost == "x.test:25"
    )


def test_sizes() -> None:
    assert spec.parse_size("50M") == 50 * 1024**2
    assert spec.parse_size(1024) == 1024
    assert spec.format_size(2 * 1024**3) == "2G"
    assert spec.format_size(1000) == "1000B"
    with pytest.raises(ValueError):
        spec.parse_size("lots")


def test_crypt_hash_without_scheme_is_tagged() -> None:
    bare = HASH.removeprefix("{SHA512-CRYPT}")
    text = make(mailboxes=f'      - address: alice@example.test\n        password_hash: "{bare}"\n')
    assert spec.loads(text).mailboxes[0].password_hash == HASH


BAD = {
    "unknown key": (make("colour: blue\n"), "colour", "unknown key"),
    "unknown nested key": (make("tls: {mode: self-signed, bogus: 1}\n"), "tls.bogus", "unknown key"),
    "invalid hostname": (make().replace("mail.example.test", "mail_host"), "hostname", "fully qualified"),
    "invalid domain": (
        make().replace("name: example.test", "name: exa mple"),
        "domains[0].name",
        "fully qualified",
    ),
    "invalid address": (
        make(mailboxes=f'      - address: alice\n        password_hash: "{HASH}"\n'),
        "domains[0].mailboxes[0].address",
        "user@example.org",
    ),
    "mailbox outside its domain": (
        make(mailboxes=f'      - address: alice@other.test\n        password_hash: "{HASH}"\n'),
        "domains[0]",
        "not in domain example.test",
    ),
    "duplicate mailbox": (
        make(mailboxes=f'      - address: a@example.test\n        password_hash: "{HASH}"\n' * 2),
        "domains[0].mailboxes[1].address",
        "duplicate mailbox",
    ),
    "alias to nowhere": (
        make(aliases="      info@example.test: [nobody@example.test]\n"),
        "domains[0].aliases.info@example.test",
        "points nowhere",
    ),
    "alias loop": (
        make(aliases="      a@example.test: [b@example.test]\n      b@example.test: [a@example.test]\n"),
        "domains[0].aliases",
        "alias loop",
    ),
    "plaintext password": (
        make(mailboxes="      - address: alice@example.test\n        password_hash: hunter2\n"),
        "domains[0].mailboxes[0].password_hash",
        "plaintext passwords are refused",
    ),
    "weak scheme": (
        make(mailboxes="      - address: alice@example.test\n        password_hash: '{PLAIN}hunter2'\n"),
        "domains[0].mailboxes[0].password_hash",
        "not accepted",
    ),
    "tls files without path": (make("tls: {mode: files}\n"), "tls", "cert: required"),
    "tls files missing file": (
        make("tls: {mode: files, cert: /nonexistent/c.pem, key: /nonexistent/k.pem}\n"),
        "tls",
        "file not found",
    ),
    "bad bool": (make("imap: maybe\n"), "imap", "true or false"),
    "bad size": (make("message_size_limit: huge\n"), "message_size_limit", "50M"),
    "no domains": ("hostname: mail.example.test\ndomains: []\n", "domains", "at least one domain"),
    "no mailboxes": (make(mailboxes="      []\n"), "domains", "at least one mailbox"),
    "missing hostname": ("domains: []\n", "hostname", "required"),
    "duplicate yaml key": ("hostname: a.test\nhostname: b.test\n", "", "duplicate"),
    "yaml syntax": ("hostname: [mail.example.test\n", "", "YAML syntax error"),
    "empty file": ("", "", "empty"),
    "not a mapping": ("- a\n- b\n", "", "mapping"),
    "bad interfaces": (make("network: {interfaces: eth0}\n"), "network.interfaces", "list of IP addresses"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_input_is_refused_with_field_and_expectation(case: str) -> None:
    text, field, expected = BAD[case]
    error = refused(text)
    assert error.field.startswith(field), f"{case}: field {error.field!r}"
    assert expected in str(error), f"{case}: message {error}"
    assert error.exit_code == 2


def test_errors_carry_line_numbers() -> None:
    error = refused(make("colour: blue\n"))
    assert error.line == 7
    syntax = refused("hostname: ok.test\ndomains: [\n")
    assert syntax.line is not None


def test_missing_file() -> None:
    with pytest.raises(SpecError, match="file not found"):
        spec.load("/nonexistent/mail.yml")


def test_tls_files_mode_accepts_existing_files(tmp_path: Path, make_tls_files) -> None:  # type: ignore[no-untyped-def]
    cert, key = make_tls_files(tmp_path)
    model = spec.loads(make(f"tls: {{mode: files, cert: {cert}, key: {key}}}\n"))
    assert model.tls.cert == cert


@pytest.mark.parametrize("text", ["a@b.test", "first.last+tag@sub.example.org"])
def test_addresses_accepted(text: str) -> None:
    assert spec.check_address(text.upper()) == text.lower()


@pytest.mark.parametrize("text", ["a@b", "a@@b.test", ".a@b.test", "a b@c.test", "a@-b.test", "a@1.2.3.4"])
def test_addresses_refused(text: str) -> None:
    with pytest.raises(ValueError):
        spec.check_address(text)


def test_relative_paths_resolve_against_the_spec_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, make_tls_files
) -> None:
    make_tls_files(tmp_path / "tls", stem="x")
    (tmp_path / "tls" / "xcert.pem").rename(tmp_path / "tls" / "c.pem")
    (tmp_path / "tls" / "xkey.pem").rename(tmp_path / "tls" / "k.pem")
    spec_file = tmp_path / "mail.yml"
    spec_file.write_text(make("tls: {mode: files, cert: tls/c.pem, key: tls/k.pem}\n"))
    monkeypatch.chdir("/")
    model = spec.load(spec_file)
    assert model.tls.cert == tmp_path / "tls" / "c.pem"
    (tmp_path / "tls" / "k.pem").unlink()
    with pytest.raises(SpecError, match="file not found"):
        spec.load(spec_file)
