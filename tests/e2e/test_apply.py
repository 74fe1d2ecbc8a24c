"""End to end: `mailprov apply` converges real lab hosts, and real mail moves through them.

Two lab hosts of this module only (HOST1 serves example.test, HOST2 example.net), passwords made up per
run. The tests run in file order and share the hosts: each one leaves them converged for the next.
Traffic goes only to the lab hosts' addresses.
"""

from __future__ import annotations

import io
import json
import os
import secrets
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from ruamel.yaml import YAML

from provisioner import apply as apply_mod
from provisioner import mailflow, profiles
from provisioner import render as render_mod
from provisioner import spec as spec_mod
from provisioner.demo import EXAMPLES, with_passwords
from provisioner.lab import Lab
from provisioner.passwords import hash_password
from provisioner.spec import Spec

pytestmark = pytest.mark.e2e

HOST1, HOST2 = "apply1", "apply2"
ALICE, BOB, CAROL = "alice@example.test", "bob@example.net", "carol@example.test"
LIVE_FILES = (
    "/etc/postfix/main.cf",
    "/etc/postfix/master.cf",
    "/etc/dovecot/dovecot.conf",
    "/etc/dovecot/users",
)


@dataclass
class World:
    """The module's lab hosts, their specs (as files too, for the CLI) and the passwords."""

    lab: Lab
    tmp: Path
    passwords: dict[str, str]
    spec_files: dict[str, Path]
    first: apply_mod.ApplyResult | None = None

    def ip(self, host: str) -> str:
        """A lab host's address."""
        return self.lab.ip(host)

    def spec(self, host: str) -> Spec:
        """The spec currently meant for a host."""
        return spec_mod.load(self.spec_files[host])

    def write_spec(self, name: str, text: str) -> Path:
        """Write a spec variant into the module's temporary directory."""
        path = self.tmp / name
        path.write_text(text, encoding="utf-8")
        spec_mod.load(path)
        return path


def cli_apply(world: World, spec_file: Path, host: str, *extra: str) -> tuple[int, dict, str]:
    """Run `mailprov apply ... --format json` for one lab host; (exit code, recap, stderr)."""
    exe = shutil.which("mailprov")
    argv = [exe] if exe else [sys.executable, "-c", "from provisioner.cli import main; main()"]
    argv += [
        "apply",
        str(spec_file),
        "-i",
        str(world.lab.inventory_path),
        "--limit",
        host,
        "--format",
        "json",
    ]
    proc = subprocess.run([*argv, *extra], capture_output=True, text=True, timeout=600)
    recap = json.loads(proc.stdout) if proc.stdout.strip().startswith("{") else {}
    return proc.returncode, recap, proc.stderr


def live_state(world: World, host: str) -> str:
    """Checksums and mtimes of the live configuration files and the applied-state record."""
    files = " ".join([*LIVE_FILES, "/etc/mailprov/applied.json"])
    result = world.lab.run(host, f"sha256sum {files}; stat -c '%n %Y %a %U:%G' {files}")
    assert result.returncode == 0, result.stderr
    return result.stdout


@pytest.fixture(scope="module")
def world(lab: Lab, tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    """Both hosts booted and applied once (one playbook run, both hosts in parallel), DNS published."""
    lab.up([HOST1, HOST2])
    tmp = tmp_path_factory.mktemp("apply")
    passwords = {address: secrets.token_urlsafe(16) for address in (ALICE, BOB, CAROL)}
    files = {}
    for host, name in ((HOST1, "example.test.yml"), (HOST2, "example.net.yml")):
        text = with_passwords((EXAMPLES / name).read_text(encoding="utf-8"), passwords)
        files[host] = tmp / name
        files[host].write_text(text, encoding="utf-8")
    the_world = World(lab, tmp, passwords, files)
    request = apply_mod.ApplyRequest(
        inventory=lab.inventory_path, host_specs={h: the_world.spec(h) for h in (HOST1, HOST2)}
    )
    started = time.monotonic()
    result = apply_mod.run(request)
    print(f"first apply of two fresh hosts: {time.monotonic() - started:.1f}s")
    the_world.first = result
    for host in (HOST1, HOST2):
        lab.dns_load(the_world.spec(host), host)
    yield the_world


def test_fresh_hosts_converge_with_postfix_and_dovecot_running(world: World) -> None:
    result = world.first
    assert result is not None and result.ok, {h: apply_mod.final_failure(r) for h, r in result.hosts.items()}
    for host in (HOST1, HOST2):
        recap = result.hosts[host]
        assert recap.failed == 0 and recap.unreachable == 0 and recap.changed > 0
        assert "/etc/postfix/main.cf" in recap.files_changed
        active = world.lab.run(host, "systemctl is-active postfix dovecot firewalld").stdout.split()
        assert active == ["active", "active", "active"]
        assert world.lab.run(host, "postfix status").returncode == 0
        # The vmail user has exactly the uid/gid the Dovecot configuration pins.
        assert world.lab.run(host, "id -u vmail; id -g vmail").stdout.split() == ["5000", "5000"]
        modes = world.lab.run(host, "stat -c '%a %U:%G' /etc/ssl/private/mailprov.key /etc/dovecot/users")
        assert modes.stdout.split("\n")[:2] == ["600 root:root", "640 root:dovecot"]


def test_served_ports_answer_through_the_firewall(world: World) -> None:
    for host in (HOST1, HOST2):
        for port in world.spec(host).open_ports:
            assert mailflow.port_open(world.ip(host), port), f"{host}:{port} does not answer"
    # example.net does not serve POP3: firewalld keeps 110 closed and nothing listens.
    assert not mailflow.port_open(world.ip(HOST2), 110, timeout=3)
    services = world.lab.run(HOST2, "firewall-cmd --list-services").stdout.split()
    assert "smtp" in services and "pop3" not in services and "pop3s" not in services


def test_message_on_587_is_read_back_over_imaps_and_alias_delivers(world: World) -> None:
    ip = world.ip(HOST1)
    direct = mailflow.submit(ip, ALICE, world.passwords[ALICE], ALICE)
    via_alias = mailflow.submit(ip, ALICE, world.passwords[ALICE], "abuse@example.test")
    assert mailflow.wait_for_message(ip, ALICE, world.passwords[ALICE], direct, timeout=60)
    assert mailflow.wait_for_message(ip, ALICE, world.passwords[ALICE], via_alias, timeout=60)


def test_relaying_to_an_outside_domain_without_auth_is_refused(world: World) -> None:
    refused, reply = mailflow.relay_refused(world.ip(HOST1))
    assert refused, reply
    assert "Relay access denied" in reply


def test_mail_between_two_hosts_goes_by_mx(world: World) -> None:
    subject = mailflow.submit(world.ip(HOST1), ALICE, world.passwords[ALICE], BOB)
    assert mailflow.wait_for_message(world.ip(HOST2), BOB, world.passwords[BOB], subject, timeout=90)
    # HOST1's Postfix found HOST2 through the MX record and delivered on port 25.
    log = world.lab.run(HOST1, "journalctl -u 'postfix*' --no-pager -o cat | grep 'to=<bob@example.net>'")
    assert "status=sent" in log.stdout and "mail.example.net" in log.stdout, log.stdout


def test_second_apply_changes_nothing(world: World) -> None:
    started = time.monotonic()
    code, recap, stderr = cli_apply(world, world.spec_files[HOST1], HOST1)
    elapsed = time.monotonic() - started
    print(f"no-change re-apply of one host: {elapsed:.1f}s")
    assert code == 0, stderr
    host = recap["hosts"][HOST1]
    assert (host["changed"], host["failed"], host["unreachable"]) == (0, 0, 0), host
    assert host["ok"] > 0 and host["files_changed"] == []


def test_check_diff_on_a_converged_host_reports_and_changes_nothing(world: World) -> None:
    before = live_state(world, HOST1)
    code, recap, stderr = cli_apply(world, world.spec_files[HOST1], HOST1, "--check", "--diff")
    assert code == 0, stderr
    assert recap["check"] is True
    assert recap["hosts"][HOST1]["changed"] == 0
    assert "+++" not in stderr
    assert live_state(world, HOST1) == before


def test_check_diff_shows_a_pending_change_without_making_it(world: World) -> None:
    text = world.spec_files[HOST1].read_text().replace("message_size_limit: 25M", "message_size_limit: 30M")
    variant = world.write_spec("example.test-30M.yml", text)
    before = live_state(world, HOST1)
    code, recap, stderr = cli_apply(world, variant, HOST1, "--check", "--diff")
    assert code == 0, stderr
    assert recap["hosts"][HOST1]["changed"] >= 1
    assert "+message_size_limit = 31457280" in stderr
    assert live_state(world, HOST1) == before


def test_adding_a_mailbox_changes_only_what_it_must(world: World) -> None:
    yaml = YAML()
    data = yaml.load(world.spec_files[HOST1].read_text())
    data["domains"][0]["mailboxes"].append(
        {"address": CAROL, "password_hash": hash_password(world.passwords[CAROL])}
    )
    out = io.StringIO()
    yaml.dump(data, out)
    variant = world.write_spec("example.test-carol.yml", out.getvalue())
    # Exactly the rendered files that differ (for the lab's Debian profile), and the tables built from them.
    debian = profiles.get("debian12")
    before_files = render_mod.render(world.spec(HOST1), debian)
    after_files = render_mod.render(spec_mod.load(variant), debian)
    differs = sorted(rel for rel in after_files if before_files.get(rel) != after_files[rel])
    expected = {"/" + rel for rel in differs} | {
        "/" + rel + ".db" for rel in differs if rel in render_mod.POSTFIX_MAPS
    }
    assert {"/etc/dovecot/users", "/etc/postfix/vmailbox"} <= expected
    assert not expected & {"/etc/postfix/main.cf", "/etc/postfix/master.cf", "/etc/dovecot/dovecot.conf"}
    code, recap, stderr = cli_apply(world, variant, HOST1)
    assert code == 0, stderr
    host = recap["hosts"][HOST1]
    assert set(host["files_changed"]) == expected
    subject = mailflow.submit(world.ip(HOST1), ALICE, world.passwords[ALICE], CAROL)
    assert mailflow.wait_for_message(world.ip(HOST1), CAROL, world.passwords[CAROL], subject, timeout=60)
    world.spec_files[HOST1] = variant
    code, recap, _ = cli_apply(world, variant, HOST1)
    assert code == 0 and recap["hosts"][HOST1]["changed"] == 0


def test_config_failing_validation_is_refused_and_mail_still_flows(world: World) -> None:
    before = live_state(world, HOST1)
    request = apply_mod.ApplyRequest(
        inventory=world.lab.inventory_path,
        spec=world.spec(HOST1),
        limit=HOST1,
        append={"etc/postfix/main.cf": "mailprov_injected_bogus_parameter = yes\n"},
    )
    result = apply_mod.run(request)
    assert not result.ok
    reason = apply_mod.final_failure(result.hosts[HOST1])
    assert "failed validation" in reason and "mailprov_injected_bogus_parameter" in reason, reason
    assert result.hosts[HOST1].files_changed == []
    assert live_state(world, HOST1) == before
    assert world.lab.run(HOST1, "grep -c mailprov_injected /etc/postfix/main.cf").stdout.strip() == "0"
    subject = mailflow.submit(world.ip(HOST1), ALICE, world.passwords[ALICE], ALICE)
    assert mailflow.wait_for_message(world.ip(HOST1), ALICE, world.passwords[ALICE], subject, timeout=60)


def test_change_that_breaks_a_service_is_rolled_back_by_the_probe(world: World) -> None:
    # Something else holds port 110 on HOST2; turning POP3 on validates but Dovecot cannot start.
    squat = "systemd-run --unit=mailprov-test-squat110 python3 -m http.server 110 --bind 0.0.0.0"
    assert world.lab.run(HOST2, squat).returncode == 0
    try:
        deadline = time.monotonic() + 15
        while ":110 " not in world.lab.run(HOST2, "ss -ltnH").stdout:
            assert time.monotonic() < deadline, "the squatter on port 110 did not come up"
            time.sleep(0.5)
        pop3_on = world.write_spec(
            "example.net-pop3.yml", world.spec_files[HOST2].read_text().replace("pop3: false", "pop3: true")
        )
        code, recap, stderr = cli_apply(world, pop3_on, HOST2)
        assert code == 1, stderr
        host = recap["hosts"][HOST2]
        assert host["failed"] >= 1
        reason = host["failures"][-1]["msg"]
        assert "rolled back" in reason and "Address already in use" in reason, reason
        assert "serving again" in reason, reason
        # The previous configuration is live and serving: no POP3, mail still arrives.
        assert world.lab.run(HOST2, "systemctl is-active postfix dovecot").stdout.split() == ["active"] * 2
        assert world.lab.run(HOST2, "doveconf -h protocols").stdout.split() == ["imap", "lmtp"]
        subject = mailflow.submit(world.ip(HOST1), ALICE, world.passwords[ALICE], BOB)
        assert mailflow.wait_for_message(world.ip(HOST2), BOB, world.passwords[BOB], subject, timeout=90)
    finally:
        world.lab.run(HOST2, "systemctl stop mailprov-test-squat110")
    # The spec that was live before still matches the host exactly.
    code, recap, stderr = cli_apply(world, world.spec_files[HOST2], HOST2)
    assert code == 0, stderr
    assert recap["hosts"][HOST2]["changed"] == 0, recap


def test_unknown_inventory_is_bad_input(world: World) -> None:
    code, _, stderr = cli_apply(world, world.spec_files[HOST1], HOST1, "-i", os.devnull + "-missing")
    assert code == 2
    assert "inventory" in stderr and "Traceback" not in stderr


def test_demo_runs_end_to_end(lab: Lab, tmp_path: Path) -> None:
    """`mailprov demo` in a lab of its own (the session lab only gates on root and tools); always torn down."""
    from rich.console import Console

    from provisioner import demo

    console = Console(stderr=True, width=160)
    assert demo.run(lab_dir=tmp_path / "demo-lab", keep=False, console=console)
    assert not (tmp_path / "demo-lab" / "state.json").exists()
