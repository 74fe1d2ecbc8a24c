"""End to end: OpenDKIM signs on one lab host, verifies on another, and the signature checks out on its own.

Two lab hosts of this module only (dkim1 serves dkim1.test, dkim2 serves dkim2.test), each signing with
its own key made for the run (`mailprov dkim-keygen`'s code), both domains published in the lab DNS.
alice@dkim1.test submits on 587 (STARTTLS + AUTH) to bob@dkim2.test; bob reads the message over IMAPS.
The message must carry dkim1's signature, dkim2's OpenDKIM must have verified it (Authentication-Results),
and dkimpy must verify it too against the lab resolver. The tests run in file order and share the hosts.
Traffic goes only to the lab hosts and the lab resolver.
"""

from __future__ import annotations

import email
import email.policy
import secrets
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import dns.resolver
import pytest

from provisioner import apply as apply_mod
from provisioner import dkimkeys, mailflow
from provisioner import spec as spec_mod
from provisioner.lab import Lab
from provisioner.passwords import hash_password
from provisioner.spec import Spec

pytestmark = pytest.mark.e2e

HOST1, HOST2 = "dkim1", "dkim2"
DOMAINS = {HOST1: "dkim1.test", HOST2: "dkim2.test"}
SELECTOR = "lab2026"
ALICE, BOB = "alice@dkim1.test", "bob@dkim2.test"


@dataclass
class Signed:
    """The module's hosts, their spec files, passwords and the lab resolver."""

    lab: Lab
    tmp: Path
    resolver: str
    passwords: dict[str, str]
    spec_files: dict[str, Path] = field(default_factory=dict)
    first: apply_mod.ApplyResult | None = None

    def spec(self, host: str) -> Spec:
        """The spec currently meant for a host."""
        return spec_mod.load(self.spec_files[host])


def spec_text(host: str, key: Path | None, resolver: str, passwords: dict[str, str]) -> str:
    """A one-domain spec for a host: its mailboxes, and DKIM signing with `key` (None: not signing)."""
    domain = DOMAINS[host]
    boxes = "".join(
        f'      - address: {user}@{domain}\n        password_hash: "{hash_password(passwords[f"{user}@{domain}"])}"\n'
        for user in ("alice", "bob")
    )
    dkim = (
        f"{{selector: {SELECTOR}, private_key: {key}, resolvers: [{resolver}]}}"
        if key
        else "{selector: mail}"
    )
    return (
        f"hostname: mail.{domain}\ndomains:\n  - name: {domain}\n    mailboxes:\n{boxes}"
        f"tls: {{mode: self-signed}}\npop3: false\ndkim: {dkim}\n"
    )


@pytest.fixture(scope="module")
def signed(lab: Lab, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Signed]:
    """Both hosts booted, applied once (one playbook run) with their own signing keys, DNS published."""
    lab.up([HOST1, HOST2])
    tmp = tmp_path_factory.mktemp("dkim")
    passwords = {f"{u}@{d}": secrets.token_urlsafe(16) for d in DOMAINS.values() for u in ("alice", "bob")}
    world = Signed(lab, tmp, lab.status()["resolver"], passwords)
    for host in (HOST1, HOST2):
        key = dkimkeys.write_key(tmp / f"{host}.key")
        world.spec_files[host] = tmp / f"{host}.yml"
        world.spec_files[host].write_text(spec_text(host, key, world.resolver, passwords), encoding="utf-8")
    request = apply_mod.ApplyRequest(
        inventory=lab.inventory_path, host_specs={h: world.spec(h) for h in (HOST1, HOST2)}
    )
    world.first = apply_mod.run(request)
    for host in (HOST1, HOST2):
        lab.dns_load(world.spec(host), host)
    yield world


def lab_txt(resolver: str) -> object:
    """A dkimpy dnsfunc that asks the lab resolver (and nothing else)."""
    res = dns.resolver.Resolver(configure=False)
    res.nameservers = [resolver]

    def get_txt(name: bytes | str, timeout: float = 5) -> bytes | None:
        qname = name.decode() if isinstance(name, bytes) else name
        try:
            answer = res.resolve(qname, "TXT", lifetime=timeout)
        except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
            return None
        return b"".join(answer[0].strings)

    return get_txt


def test_hosts_converge_with_opendkim_running(signed: Signed) -> None:
    result = signed.first
    assert result is not None and result.ok, {h: apply_mod.final_failure(r) for h, r in result.hosts.items()}
    for host in (HOST1, HOST2):
        assert "/etc/opendkim.conf" in result.hosts[host].files_changed
        state = signed.lab.run(
            host,
            "systemctl is-active opendkim; systemctl is-enabled opendkim;"
            " stat -c '%a %U:%G' /etc/dkimkeys/mailprov.private; postconf -h smtpd_milters",
        )
        assert state.stdout.split("\n")[:4] == [
            "active",
            "enabled",
            "600 opendkim:opendkim",
            "inet:127.0.0.1:8891",
        ]
        assert signed.lab.run(host, "ss -ltn 'sport = :8891' | grep -q 127.0.0.1:8891").returncode == 0


def test_mail_is_signed_by_sender_and_verified_by_receiver(signed: Signed) -> None:
    import dkim

    subject = mailflow.submit(signed.lab.ip(HOST1), ALICE, signed.passwords[ALICE], BOB)
    assert mailflow.wait_for_message(signed.lab.ip(HOST2), BOB, signed.passwords[BOB], subject, timeout=90)
    raw = mailflow.fetch_message(signed.lab.ip(HOST2), BOB, signed.passwords[BOB], subject)
    assert raw is not None
    message = email.message_from_bytes(raw, policy=email.policy.compat32)
    signatures = message.get_all("DKIM-Signature") or []
    assert len(signatures) == 1, signatures
    tags = {
        k.strip(): v.strip()
        for k, _, v in (t.partition("=") for t in " ".join(signatures[0].split()).split(";"))
    }
    assert tags["d"] == "dkim1.test" and tags["s"] == SELECTOR and tags["c"] == "relaxed/simple"
    results = " ".join(" ".join(h.split()) for h in message.get_all("Authentication-Results") or [])
    assert (
        results.startswith("mail.dkim2.test;") and "dkim=pass" in results and "header.d=dkim1.test" in results
    ), results
    # Independently of OpenDKIM: dkimpy checks the signature against the key the lab DNS publishes.
    assert dkim.verify(raw, dnsfunc=lab_txt(signed.resolver)), "dkimpy could not verify the signature"


def test_reapply_without_change_reports_changed_0(signed: Signed) -> None:
    result = apply_mod.run(
        apply_mod.ApplyRequest(
            inventory=signed.lab.inventory_path, host_specs={h: signed.spec(h) for h in (HOST1, HOST2)}
        )
    )
    assert result.ok and result.changed == 0, {
        h: (r.changed, r.files_changed) for h, r in result.hosts.items()
    }


def test_new_key_is_installed_and_signs_local_mail(signed: Signed) -> None:
    """A new key alone (same files) is copied and OpenDKIM restarted; local (sendmail) mail is signed with it.

    Checked with dkimpy against the lab resolver: dkim2's OpenDKIM may still hold the old record in its
    cache (TTL 3600), which is why real rotations also change the selector.
    """
    import dkim

    before = signed.lab.run(HOST1, "systemctl show -p MainPID --value opendkim").stdout.strip()
    dkimkeys.write_key(signed.tmp / f"{HOST1}.key", force=True)
    spec = signed.spec(HOST1)
    result = apply_mod.run(
        apply_mod.ApplyRequest(inventory=signed.lab.inventory_path, host_specs={HOST1: spec})
    )
    assert result.ok and result.hosts[HOST1].changed > 0, apply_mod.final_failure(result.hosts[HOST1])
    assert result.hosts[HOST1].files_changed == []  # only the key changed, and it is not a rendered file
    after = signed.lab.run(HOST1, "systemctl show -p MainPID --value opendkim").stdout.strip()
    assert after != before, "OpenDKIM was not restarted for the new key"
    signed.lab.dns_load(spec, HOST1)
    subject = f"local {secrets.token_hex(6)}"
    sent = signed.lab.run(
        HOST1,
        f"printf 'From: {ALICE}\\nTo: {ALICE}\\nSubject: {subject}\\n\\nsigned locally\\n'"
        f" | /usr/sbin/sendmail -f {ALICE} {ALICE}",
    )
    assert sent.returncode == 0, sent.stderr
    assert mailflow.wait_for_message(
        signed.lab.ip(HOST1), ALICE, signed.passwords[ALICE], subject, timeout=90
    )
    raw = mailflow.fetch_message(signed.lab.ip(HOST1), ALICE, signed.passwords[ALICE], subject)
    assert raw is not None and b"d=dkim1.test" in raw
    assert dkim.verify(raw, dnsfunc=lab_txt(signed.resolver)), "not signed with the new key"


def test_signing_switched_off_stops_opendkim(signed: Signed) -> None:
    path = signed.spec_files[HOST2]
    path.write_text(spec_text(HOST2, None, signed.resolver, signed.passwords), encoding="utf-8")
    result = apply_mod.run(
        apply_mod.ApplyRequest(inventory=signed.lab.inventory_path, host_specs={HOST2: signed.spec(HOST2)})
    )
    assert result.ok, apply_mod.final_failure(result.hosts[HOST2])
    state = signed.lab.run(HOST2, "systemctl is-active opendkim; systemctl is-enabled opendkim; postconf -n")
    lines = state.stdout.split("\n")
    assert lines[:2] == ["inactive", "disabled"]
    assert "smtpd_milters" not in state.stdout
    # Mail still flows without the milter.
    subject = mailflow.submit(signed.lab.ip(HOST1), ALICE, signed.passwords[ALICE], BOB)
    assert mailflow.wait_for_message(signed.lab.ip(HOST2), BOB, signed.passwords[BOB], subject, timeout=90)
