"""Fleets: MX records for the primary and its backups, and which server an inventory host is."""

from __future__ import annotations

from pathlib import Path

import pytest

from provisioner import apply as apply_mod
from provisioner import dns
from provisioner import spec as spec_mod
from provisioner.errors import UsageError

FLEET = Path(__file__).resolve().parents[2] / "examples" / "fleet" / "mail.yml"


@pytest.fixture(scope="module")
def fleet() -> spec_mod.Spec:
    return spec_mod.load(FLEET)


def test_mx_10_for_the_primary_then_20_30_for_the_backups(fleet: spec_mod.Spec) -> None:
    mx = [r.value for r in dns.records(fleet) if r.type == "MX"]
    assert mx == ["10 mail.example.org", "20 mx2.example.org", "30 mx3.example.org"]
    helo_spf = {r.name for r in dns.records(fleet) if r.type == "TXT" and r.value == "v=spf1 a -all"}
    assert helo_spf == {"mail.example.org", "mx2.example.org", "mx3.example.org"}
    policy = dns.mta_sts_policy(fleet)
    assert [line for line in policy.splitlines() if line.startswith("mx:")] == [
        "mx: mail.example.org",
        "mx: mx2.example.org",
        "mx: mx3.example.org",
    ]
    assert any("backup MX mx3.example.org" in note for note in dns.advice(fleet, None, None))


def test_a_single_server_spec_keeps_one_mx() -> None:
    single = spec_mod.load(FLEET.parents[1] / "mail.yml")
    assert [r.value for r in dns.records(single) if r.type == "MX"] == [f"10 {single.hostname}"]


def test_inventory_host_is_the_primary_by_default_or_a_named_backup(fleet: spec_mod.Spec) -> None:
    assert apply_mod.check_server(fleet, None) == "mail.example.org"
    assert apply_mod.check_server(fleet, "MX3.example.org.") == "mx3.example.org"
    with pytest.raises(UsageError, match=r"mailprov_hostname: mx9\.example\.org is neither"):
        apply_mod.check_server(fleet, "mx9.example.org")
    assert apply_mod.server_names(fleet) == ["mail.example.org", "mx2.example.org", "mx3.example.org"]
