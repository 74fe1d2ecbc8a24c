"""Trust I: no spec value can become configuration the spec did not say.

Each hostile value is refused at load with the field's path (and line) and the expected form; files that are
not what they claim are refused; parsers and regexes stay bounded; and if a value did get past validation,
rendering parses its own output back and stops (renderguard)."""

from __future__ import annotations

import datetime
import os
import threading
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from provisioner import profiles, render, renderguard, spec
from provisioner.errors import SpecError

HASH = (
    "{SHA512-CRYPT}$6$wS5qFv6gH6eWpZYc$CWN4Y.K75r8CcEwmbGrEYDoDjJpy0Yiyv6WgUWMchTaZjFub/"
    "qVo33twQi9Dlk3mKe16jjf64k3/XAbldkurH0"
)
#: Real hashes of "x" made by Dovecot's own `doveadm pw -s SCHEME` (Debian 12, Dovecot 2.3.19).
DOVEADM_HASHES = [
    "{BLF-CRYPT}$2y$05$AF.3h3Jt/N1MhPZy3ArsfuLDfAe0kQMgEsZV5lnj/uJ7xNzltRAs6",
    "{ARGON2ID}$argon2id$v=19$m=65536,t=3,p=1$nYpABWHV99rbzIKWdcZMVw$nQzDq3Q/n7hTpe0HtougxOqTODIi19sJhbar0wewh7U",
    "{ARGON2I}$argon2i$v=19$m=32768,t=4,p=1$yYM6knICgbGqmMWvlIwqWg$EUgkycYcc9P61vclx/ft7CocEzlgxT9NJotaBUt7IAA",
    "{SSHA512}YX+oBcoOxH3va5NNfGbCu716FioZ23E4yZ4+O3w3Rt2JfbwWchzJj9oXBiYECIhzv1LEVN8fXnrkGf731mOoxSVJKF8=",
    "{PBKDF2}$1$5DvI6jplcVq27lsM$5000$4dc4a24c94a9af472351bb084d2aeeef72a84f29",
    "{SHA256-CRYPT}$5$VeVmV88gV/UVH4el$ACY6FKSNqVXv7QRcGOJMrcIKmRaK3mv7X0.EWdCqAVD",
]


def spec_text(
    box: str = "alice@example.test",
    hash_: str = HASH,
    extra: str = "",
    domain_extra: str = "",
    quote: bool = True,
) -> str:
    value = f'"{hash_}"' if quote else hash_
    return (
        "hostname: mail.example.test\n"
        "domains:\n"
        "  - name: example.test\n"
        "    mailboxes:\n"
        f"      - address: {box}\n"
        f"        password_hash: {value}\n" + domain_extra + extra
    )


def refused(text: str) -> SpecError:
    with pytest.raises(SpecError) as info:
        spec.loads(text)
    return info.value


# Each: (spec text, field expected in the error, a word of the expected form)
HOSTILE = {
    "hash with a second passwd-file line": (
        spec_text(hash_=HASH + "\\nbob@example.test:{PLAIN}secret::::::"),
        "domains[0].mailboxes[0].password_hash",
        "control character",
    ),
    "hash with passwd-file field separators": (
        spec_text(hash_=HASH + "::::/etc::userdb_home=/root"),
        "domains[0].mailboxes[0].password_hash",
        "SHA512-CRYPT",
    ),
    "hash of a plaintext scheme": (spec_text(hash_="{PLAIN}secret"), "password_hash", "not accepted"),
    "bare plaintext password": (spec_text(hash_="hunter2"), "password_hash", "plaintext"),
    "hash truncated": (spec_text(hash_=HASH[:-3]), "password_hash", "length"),
    "hash with a space": (spec_text(hash_=HASH[:30] + " " + HASH[31:]), "password_hash", "SHA512-CRYPT"),
    "hash null": (spec_text(hash_="null", quote=False), "password_hash", "password hash"),
    "address with a line break before @": (
        spec_text(box='"alice\\n@example.test"'),
        "domains[0].mailboxes[0].address",
        "control character",
    ),
    "address with a trailing newline": (spec_text(box='"alice@example.test\\n"'), "address", "control"),
    "mailbox with # (Dovecot refuses the login)": (spec_text(box='"a#b@example.test"'), "address", "Dovecot"),
    "mailbox with /": (spec_text(box="a/b@example.test"), "address", "Dovecot"),
    "mailbox with %": (spec_text(box="a%b@example.test"), "address", "Dovecot"),
    "mailbox with +": (spec_text(box="a+b@example.test"), "address", "Dovecot"),
    "mailbox starting with -": (spec_text(box="-a@example.test"), "address", "Dovecot"),
    "mailbox with a space": (spec_text(box='"a b@example.test"'), "address", "mailbox address"),
    "ipv6 interface with a zone id": (
        spec_text(extra='network: {interfaces: ["fe80::1%eth0\\nrelay_domains = static:ALL"], ipv6: true}\n'),
        "network.interfaces",
        "control",
    ),
    "ipv6 interface with a plain zone id": (
        spec_text(extra='network: {interfaces: ["fe80::1%eth0"], ipv6: true}\n'),
        "network.interfaces",
        "zone",
    ),
    "unspecified interface": (
        spec_text(extra="network: {interfaces: [0.0.0.0]}\n"),
        "network.interfaces",
        "unspec",
    ),
    "resolver with a zone id": (
        spec_text(extra='dkim: {resolvers: ["fe80::53%lo"]}\n'),
        "dkim.resolvers",
        "zone",
    ),
    "relay host with a zone id": (
        spec_text(extra='relay_host: {host: "fe80::1%eth0"}\n'),
        "relay_host.host",
        "host",
    ),
    "relay host with a line break": (
        spec_text(extra='relay_host: {host: "smtp.x.test\\nrelay_domains = static:ALL"}\n'),
        "relay_host.host",
        "control",
    ),
    "mail_root /": (spec_text(extra="mail_root: /\n"), "mail_root", "dedicated"),
    "mail_root /.": (spec_text(extra="mail_root: /.\n"), "mail_root", "dedicated"),
    "mail_root /etc": (spec_text(extra="mail_root: /etc\n"), "mail_root", "system directory"),
    "mail_root below /etc": (spec_text(extra="mail_root: /etc/mail\n"), "mail_root", "system directory"),
    "mail_root postfix spool": (spec_text(extra="mail_root: /var/spool/postfix\n"), "mail_root", "system"),
    "mail_root /var": (spec_text(extra="mail_root: /var\n"), "mail_root", "dedicated"),
    "mail_root with ..": (spec_text(extra="mail_root: /var/vmail/../../etc\n"), "mail_root", "plain name"),
    "mail_root relative": (spec_text(extra="mail_root: var/vmail\n"), "mail_root", "absolute"),
    "mail_root with %": (spec_text(extra="mail_root: /var/vmail/%d\n"), "mail_root", "plain name"),
    "catch_all with a line break": (
        spec_text(domain_extra='    catch_all: "alice@example.test\\n@example.test x@evil.test"\n'),
        "domains[0].catch_all",
        "control",
    ),
    "dmarc_rua with a line break": (
        spec_text(extra='dns: {dmarc_rua: "r@example.test\\nevil"}\n'),
        "dns.dmarc_rua",
        "control",
    ),
    "tlsrpt_rua with a quote": (
        spec_text(extra="dns: {tlsrpt_rua: 'r\"@example.test'}\n"),
        "dns.tlsrpt_rua",
        "mail",
    ),
    "alias key with a space": (
        spec_text(domain_extra='    aliases: {"a b@example.test": [alice@example.test]}\n'),
        "domains[0].aliases",
        "mail address",
    ),
    "alias target with a comma": (
        spec_text(domain_extra='    aliases: {a@example.test: ["alice@example.test,x@evil.test"]}\n'),
        "domains[0].aliases",
        "mail address",
    ),
    "alias target a command": (
        spec_text(domain_extra='    aliases: {a@example.test: ["|/bin/sh@example.org"]}\n'),
        "domains[0].aliases",
        "mail address",
    ),
    "hostname with a line break": (
        spec_text().replace(
            "hostname: mail.example.test", 'hostname: "mail.example.test\\nmynetworks = 0.0.0.0/0"'
        ),
        "hostname",
        "control",
    ),
    "domain with a tab": (
        spec_text().replace("name: example.test", 'name: "example.test\\t"'),
        "name",
        "control",
    ),
    "selector with a line break": (
        spec_text(extra='dkim: {selector: "mail\\nx"}\n'),
        "dkim.selector",
        "control",
    ),
    "boolean as a number": (spec_text(extra="imap: 1\n"), "imap", "true or false"),
    "boolean as yes": (spec_text(extra="pop3: yes\n"), "pop3", "true or false"),
    "port as a string": (
        spec_text(extra='relay_host: {host: smtp.x.test, port: "25"}\n'),
        "relay_host.port",
        "whole",
    ),
    "port out of range": (
        spec_text(extra="relay_host: {host: smtp.x.test, port: 70000}\n"),
        "relay_host.port",
        "",
    ),
    "size too large": (
        spec_text(extra="message_size_limit: 99999999999999999999\n"),
        "message_size_limit",
        "size",
    ),
    "size too small": (spec_text(extra="message_size_limit: 10k\n"), "message_size_limit", "size"),
    "size with a line break": (
        spec_text(extra='message_size_limit: "50M\\n"\n'),
        "message_size_limit",
        "control",
    ),
    "non-string key": (
        spec_text(domain_extra="    aliases: {1: [alice@example.test]}\n"),
        "aliases",
        "string",
    ),
    "control character in an unknown key": (spec_text(extra='"bad\\u0007key": 1\n'), "", "control"),
    "backup_mx equal to hostname": (
        spec_text(extra="backup_mx: [mail.example.test]\n"),
        "backup_mx",
        "hostname",
    ),
    "bad IDN": (spec_text().replace("name: example.test", "name: xn--zz.test"), "domains[0].name", "A-label"),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_value_is_refused(case: str) -> None:
    text, field, word = HOSTILE[case]
    error = refused(text)
    assert field in error.field
    assert word.lower() in error.message.lower()
    assert "\n" not in str(error), "the message is one line"


def test_quota_bool_is_refused() -> None:
    text = spec_text().replace(
        f'password_hash: "{HASH}"\n', f'password_hash: "{HASH}"\n        quota: true\n'
    )
    error = refused(text)
    assert error.field.endswith("quota") and "size" in error.message


def test_error_names_the_line() -> None:
    error = refused(spec_text(extra="mail_root: /etc\n"))
    assert error.line == 7


@pytest.mark.parametrize("hash_", [HASH, *DOVEADM_HASHES, HASH.removeprefix("{SHA512-CRYPT}")])
def test_good_hashes_are_accepted(hash_: str) -> None:
    assert spec.loads(spec_text(hash_=hash_)).mailboxes[0].password_hash.startswith("{")


def test_idn_becomes_a_labels() -> None:
    text = spec_text(box="alice@bücher.example").replace("name: example.test", "name: bücher.example")
    model = spec.loads(text)
    assert model.domain_names == ["xn--bcher-kva.example"]
    assert model.mailboxes[0].address == "alice@xn--bcher-kva.example"


@pytest.mark.parametrize(
    "root", ["/var/vmail", "/srv/mail", "/home/vmail", "/var/mail/vhosts", "/data/mail/"]
)
def test_dedicated_mail_roots_are_accepted(root: str) -> None:
    assert spec.loads(spec_text(extra=f"mail_root: {root}\n")).mail_root == root.rstrip("/")


# ---------------------------------------------------------------- bounded parsers


def test_yaml_alias_bomb_is_refused_quickly() -> None:
    lines = ['a0: &a0 ["x","x","x","x","x","x","x","x","x"]']
    lines += [f"a{i}: &a{i} [" + ",".join([f"*a{i - 1}"] * 9) + "]" for i in range(1, 9)]
    error = refused("\n".join(lines) + "\n" + spec_text())
    assert "YAML" in error.message or "expands" in error.message


def test_yaml_alias_expansion_beyond_the_text_is_refused() -> None:
    # Under yaml-rs's own replay limit, but far more values than characters.
    lines = ['a0: &a0 ["x","x","x","x","x","x","x","x","x","x"]']
    lines += [f"a{i}: &a{i} [" + ",".join([f"*a{i - 1}"] * 10) + "]" for i in range(1, 5)]
    error = refused(spec_text() + "\n".join(lines) + "\n")
    assert "expands to more than" in error.message


def test_deep_nesting_is_refused_without_recursion_error() -> None:
    deep = "x:\n" + "".join("  " * i + f"k{i}:\n" for i in range(1, 3000)) + "  " * 3000 + "v: 1\n"
    error = refused(spec_text() + deep)
    assert "nested deeper" in error.message or "nested too deeply" in error.message


def test_long_alias_chain_is_refused_without_recursion_error() -> None:
    chain = "".join(f"      a{i}@example.test: [a{i + 1}@example.test]\n" for i in range(1500))
    chain += "      a1500@example.test: [alice@example.test]\n"
    error = refused(spec_text(domain_extra="    aliases:\n" + chain))
    assert "deeper than" in error.message and "aliases" in error.field


def test_alias_loop_found_iteratively() -> None:
    chain = "".join(f"      a{i}@example.test: [a{i + 1}@example.test]\n" for i in range(50))
    chain += "      a50@example.test: [a0@example.test]\n"
    error = refused(spec_text(domain_extra="    aliases:\n" + chain))
    assert "alias loop" in error.message


def test_size_regex_is_linear() -> None:
    # A digit, a long run of spaces and a letter took over a minute with the old backtracking pattern.
    with pytest.raises(ValueError, match="size"):
        spec.parse_size("1" + " " * 100_000 + "x")
    with pytest.raises(ValueError, match="size"):
        spec.parse_size("1" * 50_000 + "Q")


def test_fifo_spec_is_refused_without_blocking(tmp_path: Path) -> None:
    fifo = tmp_path / "mail.yml"
    os.mkfifo(fifo)
    outcome: list[BaseException] = []
    worker = threading.Thread(target=lambda: _catch(outcome, fifo), daemon=True)
    worker.start()
    worker.join(20)
    assert not worker.is_alive(), "loading a FIFO blocked"
    assert isinstance(outcome[0], SpecError) and "regular" in str(outcome[0])


def _catch(outcome: list[BaseException], path: Path) -> None:
    try:
        spec.load(path)
    except BaseException as exc:  # the test inspects it
        outcome.append(exc)


@pytest.mark.parametrize("path", ["/dev/zero", "/proc/self/environ", "/"])
def test_special_files_as_spec_are_refused(path: str) -> None:
    with pytest.raises(SpecError) as info:
        spec.load(path)
    assert "expected a regular" in str(info.value) or "directory" in str(info.value)


def test_binary_spec_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "mail.yml"
    path.write_bytes(b"\xff\xfe\x00binary")
    with pytest.raises(SpecError, match="UTF-8"):
        spec.load(path)


# ---------------------------------------------------------------- TLS and key files


def _tls_spec(cert: Path, key: Path, chain: Path | None = None) -> str:
    extra = f"tls: {{mode: files, cert: {cert}, key: {key}" + (f", chain: {chain}" if chain else "") + "}\n"
    return spec_text(extra=extra)


def _cert(key: ec.EllipticCurvePrivateKey, subject: str, issuer: str, signer, days: int = 30):  # type: ignore[no-untyped-def]
    now = datetime.datetime.now(datetime.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
        .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer)]))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=2))
        .not_valid_after(now + datetime.timedelta(days=days))
        .sign(signer, hashes.SHA256())
    )


def _pem(cert) -> bytes:  # type: ignore[no-untyped-def]
    return cert.public_bytes(serialization.Encoding.PEM)


def _key_file(path: Path, key, mode: int = 0o600) -> Path:  # type: ignore[no-untyped-def]
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    path.chmod(mode)
    return path


def test_passwd_and_shadow_are_not_a_certificate() -> None:
    error = refused(_tls_spec(Path("/etc/passwd"), Path("/etc/shadow")))
    assert error.field == "tls.cert" and "PEM certificate" in error.message


def test_binary_certificate_is_refused(tmp_path: Path) -> None:
    (tmp_path / "c.pem").write_bytes(os.urandom(300))
    _key_file(tmp_path / "k.pem", ec.generate_private_key(ec.SECP256R1()))
    error = refused(_tls_spec(tmp_path / "c.pem", tmp_path / "k.pem"))
    assert error.field == "tls.cert"


def test_mismatched_key_is_refused(tmp_path: Path, make_tls_files) -> None:  # type: ignore[no-untyped-def]
    cert, _ = make_tls_files(tmp_path, stem="a")
    _, other_key = make_tls_files(tmp_path, stem="b")
    error = refused(_tls_spec(cert, other_key))
    assert error.field == "tls.key" and "not the private key" in error.message


def test_world_readable_key_is_refused(tmp_path: Path, make_tls_files) -> None:  # type: ignore[no-untyped-def]
    cert, key = make_tls_files(tmp_path)
    key.chmod(0o644)
    error = refused(_tls_spec(cert, key))
    assert error.field == "tls.key" and "0644" in error.message


def test_expired_certificate_is_refused(tmp_path: Path) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    cert = _cert(key, "mail.example.test", "mail.example.test", key, days=-1)
    (tmp_path / "c.pem").write_bytes(_pem(cert))
    error = refused(_tls_spec(tmp_path / "c.pem", _key_file(tmp_path / "k.pem", key)))
    assert error.field == "tls.cert" and "expired" in error.message


def test_chain_in_order_is_accepted_and_out_of_order_refused(tmp_path: Path) -> None:
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = _cert(ca_key, "Test CA", "Test CA", ca_key, days=300)
    leaf_key = ec.generate_private_key(ec.SECP256R1())
    leaf = _cert(leaf_key, "mail.example.test", "Test CA", ca_key)
    key = _key_file(tmp_path / "k.pem", leaf_key)
    (tmp_path / "leaf.pem").write_bytes(_pem(leaf))
    (tmp_path / "ca.pem").write_bytes(_pem(ca))
    model = spec.loads(_tls_spec(tmp_path / "leaf.pem", key, tmp_path / "ca.pem"))
    assert model.tls.pair is not None and model.tls.pair.chain_pem.count("BEGIN CERTIFICATE") == 2
    (tmp_path / "wrong.pem").write_bytes(_pem(ca) + _pem(leaf))
    error = refused(_tls_spec(tmp_path / "wrong.pem", key))
    assert error.field == "tls.cert" and "order" in error.message


def test_key_in_certificate_file_is_refused(tmp_path: Path, make_tls_files) -> None:  # type: ignore[no-untyped-def]
    cert, key = make_tls_files(tmp_path)
    (tmp_path / "both.pem").write_bytes(cert.read_bytes() + key.read_bytes())
    error = refused(_tls_spec(tmp_path / "both.pem", key))
    assert error.field == "tls.cert" and "private key" in error.message


def test_fifo_as_key_is_refused(tmp_path: Path, make_tls_files) -> None:  # type: ignore[no-untyped-def]
    cert, key = make_tls_files(tmp_path)
    key.unlink()
    os.mkfifo(key)
    error = refused(_tls_spec(cert, key))
    assert error.field == "tls.key" and "regular" in error.message


def test_dev_zero_as_dkim_key_is_refused() -> None:
    error = refused(spec_text(extra="dkim: {private_key: /dev/zero}\n"))
    assert error.field == "dkim.private_key" and "pseudo-file" in error.message


# ---------------------------------------------------------------- renderguard: the second wall


def _model() -> spec.Spec:
    return spec.loads(spec_text(domain_extra="    aliases: {info@example.test: [alice@example.test]}\n"))


@pytest.mark.parametrize("profile_name", sorted(profiles.PROFILES))
def test_clean_render_passes_the_guard(profile_name: str) -> None:
    render.render(_model(), profiles.get(profile_name))  # check_rendered runs inside render


def test_guard_catches_a_hash_that_smuggles_a_line() -> None:
    model = _model()
    box = model.mailboxes[0].model_copy(update={"password_hash": HASH + "\nbob@example.test:{PLAIN}x::::::"})
    domain = model.domains[0].model_copy(update={"mailboxes": [box]})
    bad = model.model_copy(update={"domains": [domain]})
    with pytest.raises(renderguard.Mismatch, match="etc/dovecot/users"):
        render.render(bad, profiles.get("el9"))


def test_guard_catches_an_address_that_smuggles_a_catch_all() -> None:
    model = _model()
    box = model.mailboxes[0].model_copy(update={"address": "alice\n@example.test"})
    domain = model.domains[0].model_copy(update={"mailboxes": [box]})
    bad = model.model_copy(update={"domains": [domain]})
    with pytest.raises(renderguard.Mismatch):
        render.render(bad, profiles.get("debian12"))


def test_guard_catches_a_second_main_cf_parameter() -> None:
    model = _model()
    bad = model.model_copy(update={"hostname": "mail.example.test\nrelay_domains = static:ALL"})
    with pytest.raises(renderguard.Mismatch):
        render.render(bad, profiles.get("el10"))


def test_guard_catches_a_dovecot_listen_injection() -> None:
    model = _model()
    network = model.network.model_copy(update={"interfaces": ["127.0.0.1\nauth_debug_passwords = yes"]})
    bad = model.model_copy(update={"network": network})
    with pytest.raises(renderguard.Mismatch):
        render.render(bad, profiles.get("el9"))
