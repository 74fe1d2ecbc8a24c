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
    policy = fleet.mta_sts_policy
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


def test_a_backup_plan_runs_postfix_on_25_only(fleet: spec_mod.Spec) -> None:
    from provisioner import profiles
    from provisioner import render as render_mod

    profile = profiles.get("el9")
    files = render_mod.render(fleet, profile)
    primary = apply_mod.plan(fleet, profile, files)
    assert primary["role"] == "primary" and primary["services"] == ["postfix", "dovecot"]
    backup = apply_mod.plan(fleet, profile, files, hostname="mx2.example.org")
    assert backup["role"] == "backup" and backup["services"] == ["postfix"]
    assert backup["hostname"] == "mx2.example.org"
    assert not any(p.startswith("dovecot") for p in backup["packages"]) and "postfix" in backup["packages"]
    assert backup["probe"]["ports"] == [{"port": 25, "kind": "smtp"}] and backup["probe"]["sockets"] == []
    assert backup["firewall"]["services"] == ["smtp"] and not backup["dkim"]["signing"]
    inputs = apply_mod.state_inputs({"el9": backup})["RedHat-9"]
    assert inputs["services"] == ["postfix"] and inputs["hostname"] == "mx2.example.org"


def test_a_backup_is_rendered_by_render_for_that_server(
    fleet: spec_mod.Spec, monkeypatch: pytest.MonkeyPatch
) -> None:
    from provisioner import profiles
    from provisioner import render as render_mod

    calls = []

    def render(spec: spec_mod.Spec, profile: object, server: str | None = None) -> dict[str, str]:
        calls.append(server)
        return {"etc/postfix/main.cf": f"myhostname = {server or spec.hostname}\n"}

    monkeypatch.setattr(render_mod, "render", render)
    data = apply_mod.role_input(fleet, "mx3.example.org", profiles=[profiles.get("debian12")])
    assert calls == ["mx3.example.org"] and data["hostname"] == "mx3.example.org"
    main_cf = data["plans"]["debian12"]["files"][0]["content"]
    assert main_cf == "myhostname = mx3.example.org\n"


def test_a_backup_without_backup_rendering_is_refused_as_input(
    fleet: spec_mod.Spec, monkeypatch: pytest.MonkeyPatch
) -> None:
    from provisioner import render as render_mod

    monkeypatch.setattr(render_mod, "render", lambda spec, profile: {})
    with pytest.raises(UsageError, match=r"^mailprov_hostname: mx2\.example\.org is a backup MX"):
        apply_mod.role_input(fleet, "mx2.example.org")
