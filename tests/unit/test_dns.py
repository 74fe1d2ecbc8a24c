"""DNS records from the model: what a domain must publish, and its zone/JSON formats."""

from __future__ import annotations

import json
from pathlib import Path

import dns.zone
import pytest

from provisioner import dns as records_mod
from provisioner import spec
from provisioner.dnsserver import local_data, unbound_config, zones_for
from provisioner.errors import UsageError

GOLDEN = Path(__file__).resolve().parent.parent / "golden"


@pytest.fixture
def multi() -> spec.Spec:
    return spec.load(GOLDEN / "multi_domain" / "mail.yml")


def by_name(recs: list[records_mod.Record], name: str, rtype: str) -> list[str]:
    return [r.value for r in recs if r.name == name and r.type == rtype]


def test_records_for_every_domain(multi: spec.Spec) -> None:
    recs = records_mod.records(multi, "192.0.2.25", "2001:db8::25")
    for domain in ("example.org", "example.net"):
        assert by_name(recs, domain, "MX") == ["10 mx.example.org"]
        assert by_name(recs, domain, "TXT") == ["v=spf1 mx -all"]
        assert by_name(recs, f"_dmarc.{domain}", "TXT") == [
            "v=DMARC1; p=reject; rua=mailto:reports@example.org"
        ]
        assert not by_name(recs, f"_mta-sts.{domain}", "TXT"), (
            "self-signed: senders could not verify a policy host"
        )
        assert by_name(recs, f"_smtp._tls.{domain}", "TXT") == [f"v=TLSRPTv1; rua=mailto:postmaster@{domain}"]
    assert by_name(recs, "mx.example.org", "A") == ["192.0.2.25"]
    assert by_name(recs, "mx.example.org", "AAAA") == ["2001:db8::25"]
    assert by_name(recs, "25.2.0.192.in-addr.arpa", "PTR") == ["mx.example.org"]
    assert len([r for r in recs if r.type == "PTR"]) == 2


def test_without_ip_no_address_records(multi: spec.Spec) -> None:
    recs = records_mod.records(multi)
    assert not [r for r in recs if r.type in ("A", "AAAA", "PTR")]
    assert any("--ip" in note for note in records_mod.advice(multi, None, None))


def test_dkim_key_published_when_given(tmp_path: Path, multi: spec.Spec) -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    (tmp_path / "k.pub").write_bytes(pem)
    text = (
        (GOLDEN / "multi_domain" / "mail.yml")
        .read_text()
        .replace("dkim: {selector: s2026}", f"dkim: {{selector: s2026, public_key: {tmp_path / 'k.pub'}}}")
    )
    recs = records_mod.records(spec.loads(text))
    value = by_name(recs, "s2026._domainkey.example.org", "TXT")[0]
    assert value.startswith("v=DKIM1; k=rsa; p=MII") and len(value) > 255
    zone = records_mod.to_zone(spec.loads(text))
    assert '" "' in zone  # the long TXT is split into 255-byte strings


def test_zone_output_parses_with_dnspython(multi: spec.Spec) -> None:
    text = records_mod.to_zone(multi, "192.0.2.25")
    body = "\n".join(line for line in text.splitlines() if "in-addr.arpa" not in line)
    zone = dns.zone.from_text(
        "$ORIGIN .\n@ 3600 IN SOA ns. h. 1 1 1 1 1\n@ 3600 IN NS ns.\n" + body,
        origin=".",
        relativize=False,
        check_origin=False,
    )
    assert zone.get_rdataset("example.net.", "MX") is not None


def test_json_output_is_stable(multi: spec.Spec) -> None:
    payload = json.loads(records_mod.to_json(multi, "192.0.2.25"))
    assert set(payload) == {"records", "advice"}
    assert set(payload["records"][0]) == {"name", "type", "value", "ttl"}


def test_bad_ip_is_usage_error(multi: spec.Spec) -> None:
    with pytest.raises(UsageError, match="--ip"):
        records_mod.records(multi, "2001:db8::1")


def test_split_txt() -> None:
    assert records_mod.split_txt("a" * 300) == ["a" * 255, "a" * 45]
    assert records_mod.split_txt('say "hi"') == ['say \\"hi\\"']


def test_unbound_config_refuses_everything_else(multi: spec.Spec, tmp_path: Path) -> None:
    recs = records_mod.records(multi, "192.0.2.25")
    assert zones_for(recs) == ["2.0.192.in-addr.arpa", "example.net", "example.org"]
    conf = unbound_config(tmp_path, "127.0.0.1", 5353, zones_for(recs), recs)
    assert 'local-zone: "." refuse' in conf
    assert 'local-zone: "example.org." static' in conf
    assert local_data(records_mod.Record("x.test", "TXT", "v=spf1 -all")) == (
        "    local-data: 'x.test. 3600 IN TXT \"v=spf1 -all\"'"
    )
