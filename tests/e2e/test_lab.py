"""End to end: real booted lab hosts (systemd-nspawn), SSH, the lab resolver, and a clean `down`."""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import signal
import ssl
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from cryptography import x509

from provisioner import spec as spec_mod
from provisioner.errors import UsageError
from provisioner.lab import Lab, pid_matches

pytestmark = pytest.mark.e2e

# Host names of this module only, so records it publishes never replace another test's.
HOST1, HOST2 = "labt1", "labt2"
HASH = (
    "{SHA512-CRYPT}$6$wS5qFv6gH6eWpZYc$CWN4Y.K75r8CcEwmbGrEYDoDjJpy0Yiyv6WgUWMchTaZjFub/"
    "qVo33twQi9Dlk3mKe16jjf64k3/XAbldkurH0"
)


@pytest.fixture(scope="module")
def two_hosts(lab: Lab) -> dict:
    """Two running lab hosts; returns the status dict."""
    return lab.up([HOST1, HOST2])


def _host(status: dict, name: str) -> dict:
    return next(h for h in status["hosts"] if h["name"] == name)


def test_both_hosts_answer_ssh_with_systemd_running(lab: Lab, two_hosts: dict) -> None:
    for name in (HOST1, HOST2):
        host = _host(two_hosts, name)
        assert host["state"] == "running"
        assert host["ssh_user"] == "root" and Path(host["ssh_key"]).is_file()
        assert ipaddress.ip_address(host["ip"]) in ipaddress.ip_network(two_hosts["subnet"])
        result = lab.run(name, "systemctl is-system-running --wait", timeout=90)
        assert result.stdout.strip() in ("running", "degraded"), result.stdout + result.stderr
        assert lab.run(name, "hostname").stdout.strip() == name
    inventory = Path(two_hosts["inventory"]).read_text()
    assert f"{HOST1} ansible_host={_host(two_hosts, HOST1)['ip']}" in inventory
    assert "mailprov_apt_update_cache=false" in inventory


def test_firewalld_runs_by_default(lab: Lab, two_hosts: dict) -> None:
    assert lab.run(HOST1, "firewall-cmd --state").stdout.strip() == "running"


def test_up_again_changes_nothing(lab: Lab, two_hosts: dict) -> None:
    state_before = json.loads((lab.dir / "state.json").read_text())
    inventory_mtime = lab.inventory_path.stat().st_mtime_ns
    again = lab.up([HOST1, HOST2])
    assert json.loads((lab.dir / "state.json").read_text()) == state_before
    assert lab.inventory_path.stat().st_mtime_ns == inventory_mtime
    assert {h["name"]: h["ip"] for h in again["hosts"]} == {h["name"]: h["ip"] for h in two_hosts["hosts"]}


def test_host1_reaches_host2_on_tcp(lab: Lab, two_hosts: dict) -> None:
    ip2 = _host(two_hosts, HOST2)["ip"]
    result = lab.run(HOST1, f"timeout 5 bash -c 'exec 3<>/dev/tcp/{ip2}/22 && head -c 4 <&3'")
    assert result.returncode == 0 and result.stdout == "SSH-", result.stderr


def test_lab_resolver_answers_published_mx_and_ptr(lab: Lab, two_hosts: dict, tmp_path: Path) -> None:
    spec_file = tmp_path / "mail.yml"
    spec_file.write_text(
        "hostname: mail.alpha.test\n"
        "domains:\n"
        "  - name: alpha.test\n"
        "    mailboxes:\n"
        "      - address: alice@alpha.test\n"
        f'        password_hash: "{HASH}"\n'
    )
    lab.dns_load(spec_mod.load(spec_file), HOST2)
    ip2 = _host(two_hosts, HOST2)["ip"]
    resolver = two_hosts["resolver"]
    # Through the host's own resolv.conf: it points at the lab resolver.
    assert lab.run(HOST1, "dig +short MX alpha.test").stdout.strip() == "10 mail.alpha.test."
    assert lab.run(HOST1, f"dig +short @{resolver} A mail.alpha.test").stdout.strip() == ip2
    assert lab.run(HOST1, f"dig +short -x {ip2}").stdout.strip() == "mail.alpha.test."
    dmarc = lab.run(HOST1, "dig +short TXT _dmarc.alpha.test").stdout
    assert "v=DMARC1" in dmarc
    # Anything outside the lab is refused, never looked up.
    assert "status: REFUSED" in lab.run(HOST1, "dig +tries=1 +time=2 A example.com").stdout


def test_published_records_survive_a_resolver_crash(lab: Lab, two_hosts: dict) -> None:
    state = json.loads((lab.dir / "state.json").read_text())
    assert any(r["type"] == "MX" for r in state["loads"].get(HOST2, [])), "run after the dns_load test"
    os.kill(state["dns"]["pid"], signal.SIGKILL)
    _wait_gone([state["dns"]["pid"]])
    assert lab.status()["dns"] == "stopped"
    assert lab.up([])["dns"] == "running"  # `up` restarts what is down, with the loaded records
    assert lab.run(HOST1, "dig +short MX alpha.test").stdout.strip() == "10 mail.alpha.test."


def test_second_lab_coexists_and_down_leaves_nothing(
    lab: Lab, two_hosts: dict, tmp_path_factory: pytest.TempPathFactory
) -> None:
    other = Lab(tmp_path_factory.mktemp("lab-other"))
    try:
        status = other.up(["solo"], firewall=False)
        assert status["bridge"] != two_hosts["bridge"]
        assert status["subnet"] != two_hosts["subnet"]
        assert other.run("solo", "systemctl is-active firewalld").stdout.strip() != "active"
        state = json.loads((other.dir / "state.json").read_text())
        pids = [(h["pid"], h["pid_start"]) for h in state["hosts"].values()]
        pids += [(h["init_pid"], h["init_start"]) for h in state["hosts"].values()]
        pids.append((state["dns"]["pid"], state["dns"]["pid_start"]))
        assert all(pid_matches(pid, start) for pid, start in pids)
    finally:
        other.down()
    assert not any(pid_matches(pid, start) for pid, start in pids)
    assert not Path(f"/sys/class/net/{status['bridge']}").exists()
    assert not _processes_mentioning(str(other.dir))
    assert not list((other.dir).glob("hosts/*"))
    # The session lab is untouched.
    assert lab.status()["hosts"] and all(h["state"] == "running" for h in lab.status()["hosts"])


def _processes_mentioning(fragment: str) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if fragment in (entry / "cmdline").read_bytes().decode(errors="replace"):
                    found.append(int(entry.name))
            except OSError:
                pass
    return found


def test_taken_address_range_is_refused(
    lab: Lab, two_hosts: dict, tmp_path_factory: pytest.TempPathFactory
) -> None:
    other = Lab(tmp_path_factory.mktemp("lab-clash"))
    try:
        with pytest.raises(UsageError, match="is taken"):
            other.up(["clash"], subnet=two_hosts["subnet"])
        assert not Path(f"/sys/class/net/{other.bridge}").exists()
    finally:
        other.down()


def test_recovers_from_a_crash(tmp_path_factory: pytest.TempPathFactory, lab: Lab) -> None:
    crashed = Lab(tmp_path_factory.mktemp("lab-crash"))
    try:
        crashed.up(["crash1"])
        state = json.loads((crashed.dir / "state.json").read_text())
        info = state["hosts"]["crash1"]
        # Processes die, the bridge and the overlay mount stay behind: the records are now stale.
        for pid in (info["init_pid"], info["pid"], state["dns"]["pid"]):
            os.kill(pid, signal.SIGKILL)
        _wait_gone([info["pid"], state["dns"]["pid"]])
        assert crashed.status()["hosts"][0]["state"] == "stopped"
        again = crashed.up(["crash1"])
        assert again["hosts"][0]["state"] == "running" and again["dns"] == "running"
        assert crashed.run("crash1", "true").returncode == 0
        # Records lost altogether: `down` still finds what this lab started, by its own paths and names.
        (crashed.dir / "state.json").unlink()
    finally:
        crashed.down()
    assert not _processes_mentioning(str(crashed.dir))
    assert not Path(f"/sys/class/net/{crashed.bridge}").exists()
    assert str(crashed.dir) not in Path("/proc/self/mountinfo").read_text()


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _wait_gone(pids: list[int], timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for pid in pids:
            with contextlib.suppress(ChildProcessError, OSError):
                os.waitpid(pid, os.WNOHANG)  # our children when started from this process
        if not any(_alive(pid) for pid in pids):
            return
        time.sleep(0.1)
    raise AssertionError(f"processes {pids} still running")


# ---- lab up --acme: pebble -----------------------------------------------------------------------------

ACME_HOST = "acmet1"


def _ssh_input(lab: Lab, host: str, command: str, data: bytes, timeout: float = 60) -> None:
    argv = [*lab.ssh_argv(host), command]
    proc = subprocess.run(argv, input=data, capture_output=True, timeout=timeout)
    assert proc.returncode == 0, proc.stderr


def test_acme_pebble_issues_over_real_http01_and_down_stops_it(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    acme_lab = Lab(tmp_path_factory.mktemp("lab-acme"))
    pebble: tuple[int, int | None] = (0, None)
    try:
        status = acme_lab.up([ACME_HOST], acme=True)
        acme = status["acme"]
        resolver = status["resolver"]
        assert acme["directory"] == f"https://{resolver}:14000/dir" and acme["state"] == "running"
        bundle = Path(acme["ca_bundle"])
        assert bundle.is_relative_to(acme_lab.dir) and bundle.read_text().count("BEGIN CERTIFICATE") == 2
        state = json.loads((acme_lab.dir / "state.json").read_text())
        pebble = (state["acme"]["pid"], state["acme"]["pid_start"])
        assert pid_matches(*pebble)
        environ = Path(f"/proc/{pebble[0]}/environ").read_bytes().split(b"\0")
        assert b"PEBBLE_VA_NOSLEEP=1" in environ
        assert not any(item.startswith(b"PEBBLE_VA_ALWAYS_VALID") for item in environ)
        assert f"-dnsserver {resolver}:53" in " ".join(_cmdline_of(pebble[0]))
        # `up` again keeps the same pebble (a restart would make a new root and orphan issued certificates).
        bundle_text = bundle.read_text()
        assert acme_lab.up([ACME_HOST], acme=True)["acme"] == acme
        assert json.loads((acme_lab.dir / "state.json").read_text())["acme"]["pid"] == pebble[0]
        assert bundle.read_text() == bundle_text

        # The CLI's JSON carries it too.
        cli = subprocess.run(
            [
                sys.executable,
                "-m",
                "provisioner",
                "lab",
                "status",
                "--format",
                "json",
                "--lab-dir",
                str(acme_lab.dir),
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert json.loads(cli.stdout)["acme"] == acme

        # From the control machine, a client trusting only the bundle talks to the directory.
        context = ssl.create_default_context(cafile=str(bundle))
        opener = urllib.request.build_opener(
            urllib.request.ProxyHandler({}), urllib.request.HTTPSHandler(context=context)
        )
        with opener.open(acme["directory"], timeout=10) as answer:
            assert "newOrder" in json.loads(answer.read())

        # certbot inside the lab host (installed offline from the base image's apt cache), HTTP-01 on port 80.
        install = acme_lab.run(
            ACME_HOST, "DEBIAN_FRONTEND=noninteractive apt-get install -y -q certbot >/dev/null", timeout=300
        )
        assert install.returncode == 0, install.stderr
        _ssh_input(acme_lab, ACME_HOST, "cat > /root/lab-acme.pem", bundle.read_bytes())
        name = f"{ACME_HOST}.lab.test"
        certbot = (
            "REQUESTS_CA_BUNDLE=/root/lab-acme.pem timeout 150 certbot certonly --standalone --non-interactive "
            f"--agree-tos --no-eff-email -m admin@lab.test --server {acme['directory']} -d {name} "
            "--preferred-challenges http --force-renewal"
        )
        # firewalld blocks port 80 (a fresh closed host): pebble's real validation cannot reach certbot.
        refused = acme_lab.run(ACME_HOST, certbot, timeout=180)
        assert refused.returncode != 0, refused.stdout
        assert acme_lab.run(ACME_HOST, "firewall-cmd --add-service=http").returncode == 0
        issued = acme_lab.run(ACME_HOST, certbot, timeout=180)
        assert issued.returncode == 0, issued.stdout + issued.stderr
        assert "authenticate" in refused.stdout + refused.stderr, refused.stdout + refused.stderr
        # The challenge was fetched from the host's port 80 by pebble, from the bridge address.
        served = acme_lab.run(
            ACME_HOST, "grep -h 'acme-challenge' /var/log/letsencrypt/letsencrypt.log*"
        ).stdout
        assert any(
            resolver in line and "GET /.well-known/acme-challenge/" in line for line in served.splitlines()
        ), served[-2000:]
        assert name in (acme_lab.dir / "acme" / "pebble.log").read_text()

        # The issued chain verifies against the bundle (pebble's root), for the host's name.
        live = f"/etc/letsencrypt/live/{name}"
        workdir = tmp_path_factory.mktemp("acme-certs")
        for item in ("cert.pem", "chain.pem"):
            (workdir / item).write_text(acme_lab.run(ACME_HOST, f"cat {live}/{item}").stdout)
        check = subprocess.run(
            [
                "openssl",
                "verify",
                "-CAfile",
                str(bundle),
                "-untrusted",
                str(workdir / "chain.pem"),
                str(workdir / "cert.pem"),
            ],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert check.returncode == 0, check.stdout + check.stderr
        cert = x509.load_pem_x509_certificate((workdir / "cert.pem").read_bytes())
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        assert san.get_values_for_type(x509.DNSName) == [name]

        # verify's dns.mta_sts against a real policy host: nginx on the lab host with a pebble certificate
        # for mta-sts.DOMAIN, the domain's records (MX, A, _mta-sts id) published from a spec in acme mode.
        spec_file = workdir / "sts.yml"
        spec_file.write_text(
            "hostname: mail.ststest.test\n"
            "domains:\n  - name: ststest.test\n    mailboxes:\n"
            f'      - address: alice@ststest.test\n        password_hash: "{HASH}"\n'
            f"tls: {{mode: acme, email: hostmaster@ststest.test, directory: '{acme['directory']}'}}\n"
            "dns: {mta_sts: {mode: enforce, max_age: 86400}}\n"
        )
        sts_spec = spec_mod.load(spec_file)
        acme_lab.dns_load(sts_spec, ACME_HOST)
        names = "-d mail.ststest.test -d mta-sts.ststest.test --cert-name sts"
        issued = acme_lab.run(ACME_HOST, certbot.replace(f"-d {name}", names), timeout=180)
        assert issued.returncode == 0, issued.stdout + issued.stderr
        install = acme_lab.run(
            ACME_HOST, "DEBIAN_FRONTEND=noninteractive apt-get install -y -q nginx", timeout=300
        )
        assert install.returncode == 0, install.stderr
        _ssh_input(acme_lab, ACME_HOST, "cat > /var/www/mta-sts.txt", sts_spec.mta_sts_policy.encode())
        site = (
            "server {\n listen 443 ssl;\n server_name mta-sts.ststest.test;\n"
            " ssl_certificate /etc/letsencrypt/live/sts/fullchain.pem;\n"
            " ssl_certificate_key /etc/letsencrypt/live/sts/privkey.pem;\n"
            " location = /.well-known/mta-sts.txt { default_type text/plain; alias /var/www/mta-sts.txt; }\n}\n"
        )
        _ssh_input(acme_lab, ACME_HOST, "cat > /etc/nginx/sites-enabled/mta-sts", site.encode())
        reload = acme_lab.run(
            ACME_HOST, "nginx -t && systemctl reload nginx && firewall-cmd --add-service=https"
        )
        assert reload.returncode == 0, reload.stdout + reload.stderr

        def verify_sts() -> dict:
            argv = [
                sys.executable,
                "-m",
                "provisioner",
                "verify",
                "mail.ststest.test",
                "--domain",
                "ststest.test",
            ]
            argv += ["--resolver", resolver, "--ca", str(bundle), "--spec", str(spec_file)]
            argv += ["--only", "dns.mta_sts", "--format", "json", "--timeout", "10"]
            run = subprocess.run(argv, capture_output=True, text=True, timeout=60)
            assert "Traceback" not in run.stderr, run.stderr
            result: dict = json.loads(run.stdout)["results"][0]
            return result

        result = verify_sts()
        assert result["status"] == "pass", result["reason"]
        assert (
            "mode enforce, max_age 86400, mx mail.ststest.test covers mail.ststest.test" in result["reason"]
        )
        # A stale policy on the host: verify names what differs from the spec.
        _ssh_input(
            acme_lab,
            ACME_HOST,
            "cat > /var/www/mta-sts.txt",
            sts_spec.mta_sts_policy.replace("enforce", "testing").encode(),
        )
        result = verify_sts()
        assert result["status"] == "fail" and "serves mode testing, the spec says enforce" in result["reason"]
    finally:
        acme_lab.down()
    assert not pid_matches(*pebble)
    assert acme_lab.status()["acme"] is None
    assert not _processes_mentioning(str(acme_lab.dir))
    assert not (acme_lab.dir / "acme").exists()
    assert not Path(f"/sys/class/net/{status['bridge']}").exists()


def _cmdline_of(pid: int) -> list[str]:
    return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
