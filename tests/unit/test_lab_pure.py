"""The lab's pure parts: names, address allocation, inventory, DNS records and unbound config."""

from __future__ import annotations

import ipaddress
import json
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from provisioner import lab
from provisioner.dns import Record
from provisioner.dnsserver import unbound_config
from provisioner.errors import LabError, UsageError


def net(text: str) -> ipaddress.IPv4Network:
    return ipaddress.IPv4Network(text)


def test_bridge_name_is_short_stable_and_per_directory(tmp_path: Path) -> None:
    a, b = lab.bridge_name(tmp_path / "a"), lab.bridge_name(tmp_path / "b")
    assert a == lab.bridge_name(tmp_path / "a")
    assert a != b
    assert a.startswith("mp-") and len(a) <= 15


def test_machine_names_differ_between_labs(tmp_path: Path) -> None:
    # nspawn names the host-side veth after the machine: equal names in two labs would collide.
    assert lab.machine_name("mx1", tmp_path / "a") != lab.machine_name("mx1", tmp_path / "b")


def test_allocate_subnet_skips_taken_ranges_and_ignores_default_route() -> None:
    first = lab.allocate_subnet([], "seed")
    assert first.prefixlen == 24 and first.subnet_of(net("10.0.0.0/8"))
    assert lab.allocate_subnet([net("0.0.0.0/0")], "seed") == first
    second = lab.allocate_subnet([first], "seed")
    assert second != first and not second.overlaps(first)
    # A wider route covering the first candidate pushes it out too.
    wide = first.supernet(new_prefix=16)
    assert not lab.allocate_subnet([wide], "seed").overlaps(wide)


def test_allocate_subnet_is_seeded_and_fails_when_everything_is_taken() -> None:
    assert lab.allocate_subnet([], "one") != lab.allocate_subnet([], "two")
    with pytest.raises(LabError):
        lab.allocate_subnet([net("10.0.0.0/8")], "seed")


def test_taken_networks_reads_ip_json_and_resolv_conf() -> None:
    addr = json.dumps(
        [
            {"ifname": "lo", "addr_info": [{"family": "inet", "local": "127.0.0.1", "prefixlen": 8}]},
            {"ifname": "eth0", "addr_info": [{"family": "inet", "local": "192.0.2.2", "prefixlen": 24}]},
            {"ifname": "eth1", "addr_info": [{"family": "inet6", "local": "fe80::1", "prefixlen": 64}]},
        ]
    )
    route = json.dumps(
        [{"dst": "default", "gateway": "192.0.2.1"}, {"dst": "10.220.0.0/16"}, {"dst": "10.9.9.9"}]
    )
    nets = lab.taken_networks(addr, route, "search x\nnameserver 10.255.255.53\nnameserver ::1\n")
    assert set(nets) == {
        net("127.0.0.0/8"),
        net("192.0.2.0/24"),
        net("10.220.0.0/16"),
        net("10.9.9.9/32"),
        net("10.255.255.53/32"),
    }


def test_host_addresses_start_after_the_gateway_and_skip_used() -> None:
    subnet = "10.210.3.0/24"
    assert lab.gateway(subnet) == "10.210.3.1"
    assert lab.next_host_address(subnet, []) == "10.210.3.2"
    assert lab.next_host_address(subnet, ["10.210.3.2", "10.210.3.4"]) == "10.210.3.3"
    with pytest.raises(LabError):
        lab.next_host_address(subnet, [f"10.210.3.{i}" for i in range(2, 255)])


def test_inventory_text_has_hosts_and_connection_vars() -> None:
    text = lab.inventory_text([("mx1", "10.210.3.2"), ("mx2", "10.210.3.3")], "/lab/ssh/id_ed25519")
    lines = text.splitlines()
    assert "mx1 ansible_host=10.210.3.2" in lines and "mx2 ansible_host=10.210.3.3" in lines
    for var in (
        "ansible_user=root",
        "ansible_ssh_private_key_file=/lab/ssh/id_ed25519",
        "ansible_python_interpreter=/usr/bin/python3",
        "ansible_ssh_common_args='-o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null'",
        "mailprov_apt_update_cache=false",
    ):
        assert var in lines
    assert lines.index("[all:vars]") > lines.index("mx2 ansible_host=10.210.3.3")


def test_lab_records_default_ptr_gives_way_to_loaded_ptr() -> None:
    hosts = {"mx1": "10.210.3.2", "mx2": "10.210.3.3"}
    loaded = {
        "mx1": [
            Record("example.test", "MX", "10 mail.example.test"),
            Record("2.3.210.10.in-addr.arpa", "PTR", "mail.example.test"),
        ]
    }
    records = lab.lab_records(hosts, loaded)
    ptrs = {r.name: r.value for r in records if r.type == "PTR"}
    assert ptrs == {"2.3.210.10.in-addr.arpa": "mail.example.test", "3.3.210.10.in-addr.arpa": "mx2.lab.test"}
    assert Record("mx1.lab.test", "A", "10.210.3.2", 300) in records
    assert Record("example.test", "MX", "10 mail.example.test") in records


def test_lab_zones_cover_lab_domain_reverse_zone_and_loaded_domains() -> None:
    records = [
        Record("example.test", "MX", "10 mail.example.test"),
        Record("_dmarc.other.test", "TXT", "v=DMARC1"),
    ]
    assert lab.lab_zones("10.210.3.0/24", records) == [
        "3.210.10.in-addr.arpa",
        "example.test",
        "lab.test",
        "other.test",
    ]


def test_unbound_config_for_the_lab_refuses_everything_else(tmp_path: Path) -> None:
    long_txt = "v=DKIM1; k=rsa; p=" + "A" * 400
    records = [
        *lab.lab_records({"mx1": "10.210.3.2"}, {}),
        Record("m._domainkey.example.test", "TXT", long_txt),
    ]
    text = unbound_config(tmp_path, "10.210.3.1", 53, lab.lab_zones("10.210.3.0/24", records), records)
    assert '    local-zone: "." refuse' in text
    assert "    interface: 10.210.3.1" in text
    assert '    local-zone: "3.210.10.in-addr.arpa." static' in text
    assert '"2.3.210.10.in-addr.arpa. 300 IN PTR mx1.lab.test."' in text
    txt_line = next(line for line in text.splitlines() if "_domainkey" in line)
    strings = txt_line.split("IN TXT ", 1)[1].rstrip("'").split('" "')
    assert len(strings) == 2 and all(len(s.strip('"')) <= 255 for s in strings)
    assert "forward-zone" not in text and "root-hints" not in text


def test_host_names_from_count_and_names() -> None:
    assert lab.host_names(2, []) == ["mx1", "mx2"]
    assert lab.host_names(1, ["mx1", "relay"]) == ["mx1", "relay"]
    assert lab.host_names(None, []) == []
    for bad in ("MX1", "1mx", "a_b", "x" * 21, "../etc"):
        with pytest.raises(UsageError, match="--host"):
            lab.host_names(None, [bad])
    with pytest.raises(UsageError, match="--hosts"):
        lab.host_names(0, [])


def test_prerequisites_name_the_debian_packages() -> None:
    with pytest.raises(UsageError, match="root"):
        lab.check_prerequisites(euid=lambda: 1000, which=lambda tool: tool)
    with pytest.raises(UsageError) as exc:
        lab.check_prerequisites(
            euid=lambda: 0, which=lambda tool: None if tool in ("systemd-nspawn", "unbound") else tool
        )
    message = str(exc.value)
    assert "systemd-container" in message and "unbound" in message and "debootstrap" not in message
    lab.check_prerequisites(euid=lambda: 0, which=lambda tool: tool)


def test_distro_el9_is_refused_with_the_reason() -> None:
    assert lab.check_distro("debian12") == "debian12"
    with pytest.raises(UsageError, match="RHEL-family"):
        lab.check_distro("el9")
    with pytest.raises(UsageError, match="unknown distro"):
        lab.check_distro("plan9")


def test_cache_key_changes_with_the_package_list(monkeypatch: pytest.MonkeyPatch) -> None:
    before = lab.cache_key("debian12")
    assert before.startswith("debian12-")
    monkeypatch.setattr(lab, "MAIL_PACKAGES", (*lab.MAIL_PACKAGES, "postfix-pcre"))
    assert lab.cache_key("debian12") != before


def test_base_image_carries_the_packages_of_the_certificate_and_mailbox_work() -> None:
    # apt inside a booted host installs these offline only if the base image downloaded them.
    for package in ("nginx", "certbot", "dovecot-sieve", "dovecot-managesieved", "fail2ban", "rspamd"):
        assert package in lab.MAIL_PACKAGES


def test_status_of_an_empty_lab(tmp_path: Path) -> None:
    status = lab.Lab(tmp_path).status()
    assert status["hosts"] == [] and status["resolver"] is None
    assert status["inventory"] == str(tmp_path.resolve() / "inventory.ini")


def test_lab_dir_from_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("MAILPROV_LAB_DIR", str(tmp_path))
    assert lab.Lab().dir == tmp_path.resolve()
    monkeypatch.delenv("MAILPROV_LAB_DIR")
    assert lab.Lab().dir == lab.DEFAULT_LAB_DIR


def test_unknown_host_is_a_usage_error(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="unknown lab host 'nope'"):
        lab.Lab(tmp_path).ssh_argv("nope")


def _fake_build(calls: list[str], fail: bool = False):  # type: ignore[no-untyped-def]
    def build(rootfs: Path, distro: str) -> None:
        calls.append(distro)
        (rootfs / "etc").mkdir(parents=True)
        time.sleep(0.3)  # long enough for a concurrent caller to queue on the lock
        if fail:
            raise KeyboardInterrupt
        (rootfs / "etc/os-release").write_text("ID=debian\n")

    return build


def test_base_image_is_built_once_under_the_lock(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    calls: list[str] = []
    monkeypatch.setattr(lab, "build_base", _fake_build(calls))
    with ThreadPoolExecutor(max_workers=3) as pool:
        roots = list(pool.map(lambda _: lab.ensure_base("debian12", tmp_path), range(3)))
    assert calls == ["debian12"]
    assert len(set(roots)) == 1 and roots[0] == tmp_path / lab.cache_key("debian12") / "rootfs"
    assert not list(tmp_path.glob(".build-*"))


def test_interrupted_build_leaves_no_cache_entry(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(lab, "build_base", _fake_build([], fail=True))
    with pytest.raises(KeyboardInterrupt):
        lab.ensure_base("debian12", tmp_path)
    assert not (tmp_path / lab.cache_key("debian12")).exists()
    assert not list(tmp_path.glob(".build-*"))


def test_inotify_limit_is_raised_but_never_lowered(tmp_path: Path) -> None:
    from provisioner.lab import raise_inotify_limit

    sysctl = tmp_path / "max_user_instances"
    sysctl.write_text("128\n")
    raise_inotify_limit(3, sysctl)
    assert int(sysctl.read_text()) == 1024
    sysctl.write_text("8192\n")
    raise_inotify_limit(3, sysctl)
    assert int(sysctl.read_text()) == 8192
