"""Trust II, spec and render side: sender ownership on submission, own senders and own names refused on 25,
AEAD-only suites where TLS is mandatory, fail2ban jails — derived once on the model, rendered as tables."""

from __future__ import annotations

from pathlib import Path

import pytest

from provisioner import profiles, render, spec
from provisioner.errors import SpecError

GOLDEN = Path(__file__).resolve().parent.parent / "golden" / "sender_policy" / "mail.yml"
HASH = (
    "{SHA512-CRYPT}$6$wS5qFv6gH6eWpZYc$CWN4Y.K75r8CcEwmbGrEYDoDjJpy0Yiyv6WgUWMchTaZjFub/"
    "qVo33twQi9Dlk3mKe16jjf64k3/XAbldkurH0"
)


def table(text: str) -> dict[str, str]:
    rows = [line.split(" ", 1) for line in text.split("\n") if line and not line.startswith("#")]
    return {key: value for key, value in rows}


def test_owners_follow_aliases_and_grants() -> None:
    model = spec.load(GOLDEN)
    owners = model.sender_owners
    assert owners["alice@policy.test"] == ["alice@policy.test"]
    assert owners["team@policy.test"] == ["alice@policy.test", "bob@policy.test"]
    # all@ -> team@ -> alice, bob (through another alias); the outside target owns nothing
    assert owners["all@policy.test"] == ["alice@policy.test", "bob@policy.test"]
    assert owners["newsletter@policy.test"] == ["alice@policy.test"]
    assert owners["@alice-family.example"] == ["alice@policy.test"]
    assert "ops@partner.example" not in owners


def test_catch_all_grants_nothing() -> None:
    text = (
        "hostname: mail.x.test\ndomains:\n  - name: x.test\n    mailboxes:\n"
        f'      - address: a@x.test\n        password_hash: "{HASH}"\n    catch_all: a@x.test\n'
    )
    owners = spec.loads(text).sender_owners
    assert "@x.test" not in owners and owners["a@x.test"] == ["a@x.test"]


@pytest.mark.parametrize("profile_name", sorted(profiles.PROFILES))
def test_rendered_tables_and_restrictions(profile_name: str) -> None:
    model = spec.load(GOLDEN)
    files = render.render(model, profiles.get(profile_name))
    login = table(files["etc/postfix/sender_login"])
    assert login["boss@policy.test"] == "alice@policy.test"
    assert table(files["etc/postfix/sender_access"]) == {}  # reject_own_senders: false
    assert set(table(files["etc/postfix/helo_access"])) == {"mx.policy.test", "policy.test"}
    main = files["etc/postfix/main.cf"]
    assert (
        "smtpd_sender_login_maps = " in main and "check_sender_access" in main and "check_helo_access" in main
    )
    master = files["etc/postfix/master.cf"]
    assert master.count("reject_sender_login_mismatch") == 2  # 587 and 465
    ciphers = profiles.get(profile_name).tls_mandatory_ciphers
    assert f"tls_high_cipherlist = {ciphers}" in main
    assert f"ssl_cipher_list = {ciphers}" in files["etc/dovecot/dovecot.conf"]
    for weak in ("CBC", "CAMELLIA", "ARIA", "3DES", "RC4", "SHA1:", "-SHA:"):
        assert weak not in ciphers.replace("!SHA1", "")


def test_own_senders_refused_by_default() -> None:
    text = GOLDEN.read_text().replace("inbound: {reject_own_senders: false}\n", "")
    files = render.render(spec.loads(text), profiles.get("debian12"))
    refused = table(files["etc/postfix/sender_access"])
    assert set(refused) == {
        "alice@policy.test",
        "bob@policy.test",
        "team@policy.test",
        "all@policy.test",
        "boss@policy.test",
        "postmaster@policy.test",
    }
    assert all(v.startswith("REJECT 5.7.1") for v in refused.values())


def test_fail2ban_jail_and_switch() -> None:
    model = spec.load(GOLDEN)
    jail = render.render(model, profiles.get("el9"))["etc/fail2ban/jail.d/mailprov.local"]
    assert "ignoreip = 127.0.0.1/8 ::1 192.0.2.0/24 2001:db8::/32" in jail
    assert "banaction = firewallcmd-rich-rules" in jail and "maxretry = 3" in jail and "bantime = 2h" in jail
    off = spec.loads(GOLDEN.read_text().replace("fail2ban: {", "fail2ban: {enabled: false, "))
    assert "etc/fail2ban/jail.d/mailprov.local" not in render.render(off, profiles.get("el9"))


@pytest.mark.parametrize(
    ("extra", "field"),
    [
        ("fail2ban: {ignore_ip: ['10.0.0.1%eth0']}\n", "fail2ban.ignore_ip"),
        ('fail2ban: {ignore_ip: ["10.0.0.0/24\\nx"]}\n', "fail2ban.ignore_ip"),
        ('fail2ban: {bantime: "1h\\n[sshd]"}\n', "fail2ban.bantime"),
        ("fail2ban: {findtime: 10 minutes}\n", "fail2ban.findtime"),
        ("fail2ban: {maxretry: 0}\n", "fail2ban.maxretry"),
        ("fail2ban: {enabled: 1}\n", "fail2ban.enabled"),
        ("inbound: {reject_own_senders: 'no'}\n", "inbound.reject_own_senders"),
    ],
)
def test_policy_values_are_checked(extra: str, field: str) -> None:
    text = (
        "hostname: mail.x.test\ndomains:\n  - name: x.test\n    mailboxes:\n"
        f'      - address: a@x.test\n        password_hash: "{HASH}"\n' + extra
    )
    with pytest.raises(SpecError) as info:
        spec.loads(text)
    assert info.value.field.startswith(field)


@pytest.mark.parametrize(
    "grant", ["'@'", "'@bad domain'", '"a@b.test\\nc"', "'|x@y.test'", "'a@b.test, c@d.test'"]
)
def test_send_as_grants_are_checked(grant: str) -> None:
    text = (
        "hostname: mail.x.test\ndomains:\n  - name: x.test\n    mailboxes:\n"
        f'      - address: a@x.test\n        password_hash: "{HASH}"\n        send_as: [{grant}]\n'
    )
    with pytest.raises(SpecError) as info:
        spec.loads(text)
    assert info.value.field.startswith("domains[0].mailboxes[0].send_as")


@pytest.mark.parametrize(
    ("extra", "field"),
    [
        ("sieve: {enabled: true}\n", "sieve.enabled"),
        ("antispam: {enabled: true}\n", "antispam.enabled"),
        ("tls: {mode: acme, email: hostmaster@x.test}\n", "tls.mode"),
    ],
)
def test_apply_refuses_features_it_cannot_install_yet(extra: str, field: str, tmp_path: Path) -> None:
    """Render supports them; apply refuses them (exit 2, the field named) before any host changes."""
    import subprocess
    import sys

    from provisioner import apply as apply_mod

    text = (
        "hostname: mail.x.test\ndomains:\n  - name: x.test\n    mailboxes:\n"
        f'      - address: a@x.test\n        password_hash: "{HASH}"\n' + extra
    )
    model = spec.loads(text)
    render.render(model, profiles.get("debian12"))  # render is fine
    with pytest.raises(SpecError) as info:
        apply_mod.plan(model, profiles.get("debian12"), render.render(model, profiles.get("debian12")))
    assert info.value.field == field and "apply does not install" in info.value.message
    spec_file = tmp_path / "mail.yml"
    spec_file.write_text(text)
    inventory = tmp_path / "inventory.ini"
    inventory.write_text("mail.x.test ansible_host=127.0.0.1 ansible_port=9\n")  # never reached
    proc = subprocess.run(
        [sys.executable, "-m", "provisioner", "apply", str(spec_file), "-i", str(inventory)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert field in proc.stderr and "Traceback" not in proc.stderr
