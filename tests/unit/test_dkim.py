"""DKIM signing keys: spec validation of dkim.private_key, `mailprov dkim-keygen`, the record from the key,
and what render adds (and does not add) for a signing spec."""

from __future__ import annotations

import base64
import stat
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from typer.testing import CliRunner

from provisioner import dkimkeys, profiles, render, spec
from provisioner import dns as dns_mod
from provisioner.cli import app
from provisioner.errors import SpecError

HASH = "{SHA512-CRYPT}$6$wS5qFv6gH6eWpZYc$CWN4Y.K75r8CcEwmbGrEYDoDjJpy0Yiyv6WgUWMchTaZjFub/qVo33twQi9Dlk3mKe16jjf64k3/XAbldkurH0"
runner = CliRunner()


def spec_text(dkim: str) -> str:
    return (
        "hostname: mail.example.test\ndomains:\n"
        f'  - name: example.test\n    mailboxes:\n      - address: a@example.test\n        password_hash: "{HASH}"\n'
        f'  - name: example.org\n    mailboxes:\n      - address: b@example.org\n        password_hash: "{HASH}"\n'
        f"dkim: {dkim}\n"
    )


def write_pem(path: Path, key: object) -> Path:
    path.write_bytes(
        key.private_bytes(  # type: ignore[attr-defined]
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    path.chmod(0o600)
    return path


@pytest.fixture(scope="module")
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def expected_b64(key: rsa.RSAPrivateKey) -> str:
    der = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return base64.b64encode(der).decode()


def refused(text: str) -> SpecError:
    with pytest.raises(SpecError) as info:
        spec.loads(text)
    return info.value


def test_private_key_signs_and_derives_the_record(tmp_path: Path, rsa_key: rsa.RSAPrivateKey) -> None:
    key = write_pem(tmp_path / "mail.key", rsa_key)
    model = spec.loads(spec_text(f"{{selector: s1, private_key: {key}}}"))
    assert model.dkim.signing and model.dkim.public_key_b64 == expected_b64(rsa_key)
    records = dns_mod.records(model)
    for domain in ("example.test", "example.org"):
        txt = [r.value for r in records if r.name == f"s1._domainkey.{domain}"]
        assert txt == [f"v=DKIM1; k=rsa; p={expected_b64(rsa_key)}"]
    assert not any("DKIM" in note for note in dns_mod.advice(model, None, None))


def test_no_key_no_signing_and_advice(tmp_path: Path) -> None:
    model = spec.loads(spec_text("{selector: mail}"))
    assert not model.dkim.signing and model.dkim.public_key_b64 is None
    assert any("dkim-keygen" in note for note in dns_mod.advice(model, None, None))


def test_matching_public_key_is_accepted(tmp_path: Path, rsa_key: rsa.RSAPrivateKey) -> None:
    key = write_pem(tmp_path / "mail.key", rsa_key)
    pub = tmp_path / "mail.pub"
    pub.write_bytes(
        rsa_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    model = spec.loads(spec_text(f"{{private_key: {key}, public_key: {pub}}}"))
    assert model.dkim.public_key_b64 == expected_b64(rsa_key)
    # Published-only keys keep working through the old helper too.
    assert dns_mod.dkim_public_key_b64(pub) == expected_b64(rsa_key)


def test_missing_private_key_file(tmp_path: Path) -> None:
    error = refused(spec_text(f"{{private_key: {tmp_path / 'nope.key'}}}"))
    assert error.field == "dkim.private_key"
    assert "file not found" in error.message and "mailprov dkim-keygen" in error.message


def test_not_a_key(tmp_path: Path) -> None:
    (tmp_path / "junk.key").write_text("hello\n")
    (tmp_path / "junk.key").chmod(0o600)
    error = refused(spec_text(f"{{private_key: {tmp_path / 'junk.key'}}}"))
    assert error.field == "dkim.private_key" and "PEM RSA private key" in error.message


def test_not_rsa(tmp_path: Path) -> None:
    key = write_pem(tmp_path / "ec.key", ec.generate_private_key(ec.SECP256R1()))
    error = refused(spec_text(f"{{private_key: {key}}}"))
    assert error.field == "dkim.private_key" and "not an RSA key" in error.message


def test_too_small(tmp_path: Path) -> None:
    key = write_pem(tmp_path / "small.key", rsa.generate_private_key(public_exponent=65537, key_size=1024))
    error = refused(spec_text(f"{{private_key: {key}}}"))
    assert error.field == "dkim.private_key" and "1024-bit" in error.message and "2048" in error.message


def test_public_key_must_match(tmp_path: Path, rsa_key: rsa.RSAPrivateKey) -> None:
    key = write_pem(tmp_path / "mail.key", rsa_key)
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048).public_key()
    pub = tmp_path / "other.pub"
    pub.write_bytes(
        other.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    error = refused(spec_text(f"{{private_key: {key}, public_key: {pub}}}"))
    assert error.field == "dkim.public_key" and "not the public half" in error.message


def test_keygen_writes_0600_and_refuses_overwrite(tmp_path: Path) -> None:
    target = tmp_path / "dkim" / "mail.key"
    result = runner.invoke(app, ["dkim-keygen", "-o", str(target)])
    assert result.exit_code == 0, result.output
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    assert str(target) in result.output and "private_key" in result.output
    assert "PRIVATE KEY" not in result.output  # key material is never printed
    first = target.read_bytes()
    model = spec.loads(spec_text(f"{{private_key: {target}}}"))
    assert model.dkim.signing
    result = runner.invoke(app, ["dkim-keygen", "-o", str(target)])
    assert result.exit_code == 2
    assert "exists" in result.output and "--force" in result.output and "Traceback" not in result.output
    assert target.read_bytes() == first
    result = runner.invoke(app, ["dkim-keygen", "-o", str(target), "--force", "--bits", "3072"])
    assert result.exit_code == 0 and target.read_bytes() != first
    assert stat.S_IMODE(target.stat().st_mode) == 0o600


def test_keygen_refuses_bad_bits(tmp_path: Path) -> None:
    result = runner.invoke(app, ["dkim-keygen", "-o", str(tmp_path / "k"), "--bits", "1024"])
    assert result.exit_code == 2 and "--bits" in result.output
    assert not (tmp_path / "k").exists()


def test_generated_key_size() -> None:
    key = serialization.load_pem_private_key(dkimkeys.generate_pem(2048), password=None)
    assert isinstance(key, rsa.RSAPrivateKey) and key.key_size == 2048


@pytest.mark.parametrize("profile_name", sorted(profiles.PROFILES))
def test_render_signing_files_hold_no_key_material(
    tmp_path: Path, rsa_key: rsa.RSAPrivateKey, profile_name: str
) -> None:
    key = write_pem(tmp_path / "mail.key", rsa_key)
    profile = profiles.get(profile_name)
    files = render.render(spec.loads(spec_text(f"{{private_key: {key}}}")), profile)
    assert {"etc/opendkim.conf", "etc/opendkim/KeyTable", "etc/opendkim/SigningTable"} <= set(files)
    assert "smtpd_milters = inet:127.0.0.1:8891" in files["etc/postfix/main.cf"]
    assert f"example.org:mail:{profile.dkim_key}" in files["etc/opendkim/KeyTable"]
    secret = expected_b64(rsa_key)[40:80]
    assert not any("PRIVATE" in text or secret in text for text in files.values())
    unsigned = render.render(spec.loads(spec_text("{selector: mail}")), profile)
    assert not any("opendkim" in rel for rel in unsigned)
    assert "milter" not in unsigned["etc/postfix/main.cf"]


def test_resolvers_are_validated_and_rendered(tmp_path: Path, rsa_key: rsa.RSAPrivateKey) -> None:
    key = write_pem(tmp_path / "mail.key", rsa_key)
    error = refused(spec_text(f"{{private_key: {key}, resolvers: [not-an-ip]}}"))
    assert error.field == "dkim.resolvers" and "IP address" in error.message
    model = spec.loads(spec_text(f"{{private_key: {key}, resolvers: [10.0.0.53]}}"))
    files = render.render(model, profiles.get("debian12"))
    assert "forward-addr: 10.0.0.53" in files["etc/opendkim/resolver.conf"]
    assert "ResolverConfiguration   /etc/opendkim/resolver.conf" in files["etc/opendkim.conf"]
    without = render.render(spec.loads(spec_text(f"{{private_key: {key}}}")), profiles.get("debian12"))
    assert "etc/opendkim/resolver.conf" not in without and "Resolver" not in without["etc/opendkim.conf"]


def test_apply_plan_carries_the_key_by_path_and_digest_only(
    tmp_path: Path, rsa_key: rsa.RSAPrivateKey
) -> None:
    import hashlib
    import json

    from provisioner import apply as apply_mod

    key = write_pem(tmp_path / "mail.key", rsa_key)
    model = spec.loads(spec_text(f"{{private_key: {key}}}"))
    apply_mod.write_build(model, tmp_path / "build")
    text = (tmp_path / "build" / "debian12.json").read_text()
    assert "PRIVATE KEY" not in text
    plan = json.loads(text)["mailprov_plan"]
    assert plan["dkim"]["signing"] and plan["dkim"]["key_src"] == str(key.resolve())
    assert plan["dkim"]["key_sha256"] == hashlib.sha256(key.read_bytes()).hexdigest()
    assert plan["dkim"]["key"] == "/etc/dkimkeys/mailprov.private" and "opendkim" in plan["packages"]
    assert {"port": 8891, "kind": "tcp", "host": "127.0.0.1"} in plan["probe"]["ports"]
    unsigned = apply_mod.plan(
        spec.loads(spec_text("{selector: mail}")),
        profiles.get("el9"),
        render.render(model, profiles.get("el9")),
    )
    assert not unsigned["dkim"]["signing"] and "opendkim" not in unsigned["packages"]
    assert all(p["kind"] != "tcp" for p in unsigned["probe"]["ports"])


def test_demo_specs_sign_with_a_key_per_host(tmp_path: Path) -> None:
    from provisioner.demo import demo_specs

    specs, _ = demo_specs(dkim_dir=tmp_path, resolvers=["10.1.2.1"])
    keys = {host: s.dkim.private_key for host, s in specs.items()}
    assert all(s.dkim.signing and s.dkim.resolvers == ["10.1.2.1"] for s in specs.values())
    assert len({s.dkim.public_key_b64 for s in specs.values()}) == len(specs)
    for key in keys.values():
        assert key is not None and stat.S_IMODE(key.stat().st_mode) == 0o600
