"""End to end: the collection as Ansible users run it, with no mailprov command on the command line.

The tarball from `ansible-galaxy collection build` is installed offline into a temporary collections path;
a playbook that names only the role's FQCN converges two lab hosts whose specs are inventory variables
(`mailprov_spec` as mappings), mail goes by MX from one to the other, a second run changes nothing, and a bad
spec stops in validation before either host changes. Traffic goes only to the lab hosts' addresses.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from ruamel.yaml import YAML

from provisioner import apply as apply_mod
from provisioner import mailflow
from provisioner import spec as spec_mod
from provisioner.demo import EXAMPLES, with_passwords
from provisioner.lab import Lab

pytestmark = pytest.mark.e2e

HOST1, HOST2 = "coll1", "coll2"
# Domains of this module only: other modules of the session publish example.test/example.net in the lab DNS.
DOMAINS = {"example.test": "colla.test", "example.net": "collb.test"}
ALICE, BOB = "alice@colla.test", "bob@collb.test"
PLAYBOOK = """\
- name: Mail servers
  hosts: all
  gather_facts: false
  roles:
    - role: mailprov.mail.server
"""
LIVE = "/etc/postfix/main.cf /etc/postfix/master.cf /etc/dovecot/dovecot.conf /etc/mailprov/applied.json"


@dataclass
class Site:
    """The lab hosts, the installed collection and the playbook directory."""

    lab: Lab
    dir: Path
    collections: Path
    passwords: dict[str, str]
    specs: dict[str, dict]

    def write_vars(self, specs: dict[str, dict]) -> Path:
        """An inventory source giving each host its spec as the role variable mailprov_spec."""
        path = self.dir / "specs.yml"
        hosts = {host: {"mailprov_spec": spec} for host, spec in specs.items()}
        path.write_text(json.dumps({"all": {"hosts": hosts}}), encoding="utf-8")
        return path

    def play(self, specs: dict[str, dict]) -> subprocess.CompletedProcess[str]:
        """ansible-playbook with the installed collection (plain Ansible, no mailprov configuration)."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("ANSIBLE_")}
        env.update(ANSIBLE_COLLECTIONS_PATH=str(self.collections), ANSIBLE_NOCOLOR="1")
        argv = [apply_mod.ansible_playbook_path(), "-i", str(self.lab.inventory_path)]
        # The session's lab inventory may hold other modules' hosts too: this play is for ours only.
        argv += ["-i", str(self.write_vars(specs)), "--limit", f"{HOST1},{HOST2}", str(self.dir / "site.yml")]
        return subprocess.run(argv, capture_output=True, text=True, cwd=self.dir, env=env, timeout=900)


def recap(output: str) -> dict[str, dict[str, int]]:
    """PLAY RECAP counts per host from the default callback's output."""
    counts = {}
    for match in re.finditer(r"^(\S+)\s+:\s+(.*)$", output.split("PLAY RECAP", 1)[-1], re.M):
        counts[match.group(1)] = {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", match.group(2))}
    return counts


@pytest.fixture(scope="module")
def site(lab: Lab, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    """Two lab hosts, the collection built and installed offline, the specs as plain data."""
    lab.up([HOST1, HOST2])
    work = tmp_path_factory.mktemp("collection")
    galaxy = str(Path(apply_mod.ansible_playbook_path()).with_name("ansible-galaxy"))
    subprocess.run(
        [galaxy, "collection", "build", str(apply_mod.COLLECTION_DIR), "--output-path", str(work)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    installed = work / "collections"
    subprocess.run(
        [
            galaxy,
            "collection",
            "install",
            "--offline",
            str(work / "mailprov-mail-0.1.0.tar.gz"),
            "-p",
            str(installed),
        ],
        check=True,
        capture_output=True,
        timeout=300,
    )
    (work / "site.yml").write_text(PLAYBOOK, encoding="utf-8")
    passwords = {
        "alice@example.test": secrets.token_urlsafe(16),
        "bob@example.net": secrets.token_urlsafe(16),
    }
    specs = {}
    for host, name in ((HOST1, "example.test.yml"), (HOST2, "example.net.yml")):
        text = with_passwords((EXAMPLES / name).read_text(encoding="utf-8"), passwords)
        for old, new in DOMAINS.items():
            text = text.replace(old, new)
        specs[host] = dict(YAML(typ="safe").load(text))
    passwords = {ALICE: passwords["alice@example.test"], BOB: passwords["bob@example.net"]}
    yield Site(lab, work, installed, passwords, specs)


def live_state(site: Site, host: str) -> str:
    """Checksums and mtimes of the live configuration (empty lines for files not there yet)."""
    return site.lab.run(host, f"sha256sum {LIVE} 2>&1; stat -c '%n %Y' {LIVE} 2>&1").stdout


def test_bad_spec_stops_in_validation_before_any_host_changes(site: Site) -> None:
    before = {host: live_state(site, host) for host in (HOST1, HOST2)}
    bad = {**site.specs[HOST2], "domains": [{**site.specs[HOST2]["domains"][0], "name": "not a domain"}]}
    proc = site.play({HOST1: site.specs[HOST1], HOST2: bad})
    assert proc.returncode != 0
    assert "mailprov_spec: domains[0].name" in proc.stdout + proc.stderr, proc.stdout[-3000:]
    # Every host stopped at the controller-side check: no task ever connected to them.
    assert "Preflight | the host's OS" not in proc.stdout, proc.stdout[-3000:]
    assert {host: live_state(site, host) for host in (HOST1, HOST2)} == before


def test_plain_ansible_playbook_converges_and_mail_goes_by_mx(site: Site) -> None:
    proc = site.play(site.specs)
    assert proc.returncode == 0, proc.stdout[-5000:] + proc.stderr[-2000:]
    counts = recap(proc.stdout)
    assert counts[HOST1]["changed"] > 0 and counts[HOST2]["changed"] > 0, counts
    # Password hashes never reach the output, although the specs are plain inventory data.
    for spec in site.specs.values():
        for domain in spec["domains"]:
            for box in domain["mailboxes"]:
                assert box["password_hash"] not in proc.stdout
    for host in (HOST1, HOST2):
        site.lab.dns_load(spec_mod.from_data(site.specs[host]), host)
    ip1, ip2 = site.lab.ip(HOST1), site.lab.ip(HOST2)
    subject = mailflow.submit(ip1, ALICE, site.passwords[ALICE], BOB)
    assert mailflow.wait_for_message(ip2, BOB, site.passwords[BOB], subject, timeout=90)


def test_second_plain_run_changes_nothing(site: Site) -> None:
    proc = site.play(site.specs)
    assert proc.returncode == 0, proc.stdout[-5000:]
    counts = recap(proc.stdout)
    assert counts[HOST1]["changed"] == 0 and counts[HOST2]["changed"] == 0, counts
    assert counts[HOST1]["failed"] == 0 and counts[HOST2]["failed"] == 0
