#!/usr/bin/python3
"""Ansible module mailprov.mail.host_state: read, in one round trip, which parts of a mail host match the plan."""

from __future__ import annotations

import grp
import hashlib
import os
import pwd
import stat

from ansible.module_utils.basic import AnsibleModule

DOCUMENTATION = r"""
---
module: host_state
short_description: Report which parts of a mail host already match the mailprov plan (read-only)
description:
  - Lets the play skip the tasks whose work is already done, so that a re-apply on an unchanged host costs
    a handful of round trips. It changes nothing; every task it lets the play skip is itself idempotent.
options:
  packages:
    description: Packages that must be installed.
    type: list
    elements: str
    default: []
  vmail_user:
    description: Owner of the mail store.
    type: str
    default: vmail
  vmail_uid:
    description: Its uid and gid.
    type: int
    default: 5000
  mail_root:
    description: The mail store directory.
    type: path
    default: ""
  tls_cert:
    description: Certificate path.
    type: path
    default: ""
  tls_key:
    description: Private key path.
    type: path
    default: ""
  hostname:
    description: Name the certificate must cover.
    type: str
    default: ""
  renew_days:
    description: A certificate expiring within this many days is not good enough.
    type: int
    default: 30
  services:
    description: systemd units that must be enabled and active.
    type: list
    elements: str
    default: [postfix, dovecot]
  aliases_db:
    description: The indexed aliases file that must exist.
    type: path
    default: /etc/aliases.db
  dkim_key:
    description: Where the DKIM signing key must be ('' when the spec does not sign).
    type: path
    default: ""
  dkim_key_sha256:
    description: SHA-256 of the key the spec names (the key itself never passes through here).
    type: str
    default: ""
  dkim_user:
    description: Owner of the DKIM key (OpenDKIM's user).
    type: str
    default: opendkim
  dkim_service:
    description: OpenDKIM's systemd unit, reported whether or not the spec signs ('' to skip).
    type: str
    default: ""
  firewalld_services:
    description: firewalld services the spec serves (opened).
    type: list
    elements: str
    default: []
  firewalld_managed:
    description: All mail services the role manages; those not served are to be closed.
    type: list
    elements: str
    default: []
  firewalld_zone:
    description: Zone to read; the default zone when empty.
    type: str
    default: ""
  firewalld_offline:
    description: A stopped firewalld is still configured (permanent configuration, EL).
    type: bool
    default: false
  profiles:
    description:
      - Per OS (keys C(FAMILY-MAJOR), e.g. C(Debian-12)), values for the OS-dependent options above (packages,
        tls_cert, tls_key, aliases_db, dkim_key, dkim_user, dkim_service, firewalld_services, firewalld_managed,
        firewalld_offline). The module detects the OS itself and uses that entry, so the play needs no separate
        fact-gathering round trip. Without it, the options above are used as given.
    type: dict
    default: {}
author: mailprov
"""

RETURN = r"""
ansible_facts:
  description: >-
    The distribution facts the role needs (os_family, distribution, distribution_version,
    distribution_major_version, selinux.status), from /etc/os-release and selinuxfs.
  type: dict
  returned: always
profile_key:
  description: "FAMILY-MAJOR of this host (e.g. Debian-12); state is reported only when it is in O(profiles)."
  type: str
  returned: always
firewall:
  description: >-
    firewalld's state (running, stopped, absent), the zone, the runtime and permanent services, and C(todo):
    the services whose state must change, as dicts with service and state (enabled or disabled).
  type: dict
  returned: always
"""


def missing_packages(module: AnsibleModule, packages: list[str]) -> list[str]:
    """Packages not installed, asked of dpkg or rpm (much cheaper than the apt/dnf modules)."""
    if not packages:
        return []
    if module.get_bin_path("dpkg-query"):
        _, out, _ = module.run_command(
            ["dpkg-query", "-W", "-f", "${Package} ${db:Status-Status}\n", *packages]
        )
        installed = {line.split()[0] for line in out.splitlines() if line.endswith(" installed")}
    else:
        _, out, _ = module.run_command(["rpm", "-q", "--qf", "%{NAME}\n", *packages])
        installed = {line.strip() for line in out.splitlines() if line.strip() and " " not in line.strip()}
    return [p for p in packages if p not in installed]


def vmail_ok(user: str, uid: int, mail_root: str) -> bool:
    """The vmail user and group have the pinned ids and own the mail store (0750)."""
    try:
        pw = pwd.getpwnam(user)
        gr = grp.getgrnam(user)
        st = os.stat(mail_root)
    except (KeyError, FileNotFoundError):
        return False
    return (
        pw.pw_uid == uid
        and gr.gr_gid == uid
        and pw.pw_gid == uid
        and stat.S_ISDIR(st.st_mode)
        and st.st_uid == uid
        and st.st_gid == uid
        and stat.S_IMODE(st.st_mode) == 0o750
    )


def cert_ok(module: AnsibleModule, cert: str, key: str, hostname: str, renew_days: int) -> bool:
    """The certificate and key exist, the certificate covers hostname and outlives renew_days."""
    if not (os.path.isfile(key) and os.path.getsize(key) > 0 and os.path.isfile(cert)):
        return False
    if not module.get_bin_path("openssl"):
        return False
    # Two runs: openssl stops after -checkend and would never answer -checkhost.
    rc, _, _ = module.run_command(
        ["openssl", "x509", "-in", cert, "-noout", "-checkend", str(renew_days * 86400)]
    )
    if rc != 0:
        return False
    rc, out, _ = module.run_command(["openssl", "x509", "-in", cert, "-noout", "-checkhost", hostname])
    return rc == 0 and "does match" in out


def services_state(module: AnsibleModule, units: list[str]) -> dict[str, dict[str, str]]:
    """Each unit's is-active and is-enabled answers."""
    if not module.get_bin_path("systemctl"):
        return {u: {"active": "unknown", "enabled": "unknown"} for u in units}
    _, active, _ = module.run_command(["systemctl", "is-active", *units])
    _, enabled, _ = module.run_command(["systemctl", "is-enabled", *units])
    act, ena = active.split(), enabled.split()
    return {
        u: {"active": act[i] if i < len(act) else "unknown", "enabled": ena[i] if i < len(ena) else "unknown"}
        for i, u in enumerate(units)
    }


def dkim_key_ok(path: str, sha256: str, user: str) -> bool:
    """The host's DKIM key is the spec's key (same digest), owned by the OpenDKIM user, mode 0600."""
    if not path or not sha256:
        return False
    try:
        st = os.stat(path)
        uid = pwd.getpwnam(user).pw_uid
        with open(path, "rb") as handle:
            digest = hashlib.sha256(handle.read()).hexdigest()
    except (KeyError, OSError):
        return False
    return digest == sha256 and st.st_uid == uid and stat.S_IMODE(st.st_mode) == 0o600


def unit_state(module: AnsibleModule, unit: str) -> dict[str, str]:
    """One unit's is-active and is-enabled answers ('unknown' when systemd cannot say)."""
    if not unit or not module.get_bin_path("systemctl"):
        return {"active": "unknown", "enabled": "unknown"}
    _, active, _ = module.run_command(["systemctl", "is-active", unit])
    _, enabled, _ = module.run_command(["systemctl", "is-enabled", unit])
    return {"active": active.strip() or "unknown", "enabled": enabled.strip() or "unknown"}


def firewall_todo(
    runtime: list[str] | None, permanent: list[str], wanted: list[str], managed: list[str]
) -> list[dict[str, str]]:
    """The services to enable or disable so that runtime (None: not running) and permanent match the plan."""
    views = [permanent] if runtime is None else [runtime, permanent]
    todo = []
    for service in dict.fromkeys([*wanted, *managed]):
        want = service in wanted
        if any((service in view) != want for view in views):
            todo.append({"service": service, "state": "enabled" if want else "disabled"})
    return todo


def _dbus_services(zone: str) -> tuple[str, list[str], list[str]] | None:
    """(zone, runtime, permanent) through firewalld's own client when it runs (no firewall-cmd start-up)."""
    try:
        from firewall.client import FirewallClient  # type: ignore[import-not-found]
    except ImportError:
        return None
    try:
        client = FirewallClient()
        if not client.connected:
            return None
        zone = zone or client.getDefaultZone()
        runtime = list(client.getServices(zone))
        permanent = list(client.config().getZoneByName(zone).getSettings().getServices())
    except Exception:  # any D-Bus failure means: ask firewall-cmd instead
        return None
    return zone, runtime, permanent


def firewall_state(module: AnsibleModule) -> dict:
    """firewalld's state, zone and services, and the changes the plan needs (none when absent)."""
    p = module.params
    wanted, managed = p["firewalld_services"], p["firewalld_managed"]
    cmd = module.get_bin_path("firewall-cmd")
    if cmd is None:
        return {"state": "absent", "todo": [], "reason": "firewalld is not installed on this host"}
    found = _dbus_services(p["firewalld_zone"])
    if found is not None:
        zone, runtime, permanent = found
        todo = firewall_todo(runtime, permanent, wanted, managed)
        return {"state": "running", "zone": zone, "runtime": runtime, "permanent": permanent, "todo": todo}
    rc, out, _ = module.run_command([cmd, "--state"])
    running = rc == 0 and out.strip() == "running"
    offline_cmd = module.get_bin_path("firewall-offline-cmd")
    if not running and not (p["firewalld_offline"] and offline_cmd):
        return {"state": "stopped", "todo": [], "reason": "firewalld is installed but not running"}
    base = [cmd] if running else [offline_cmd]
    zone = p["firewalld_zone"]
    if not zone:
        rc, out, err = module.run_command([*base, "--get-default-zone"])
        if rc != 0:
            module.fail_json(msg=f"firewall-cmd --get-default-zone: {(err or out).strip()}")
        zone = out.strip()
    # firewall-offline-cmd only knows the permanent configuration (and takes no --permanent).
    permanent_args = [*base, "--permanent"] if running else base
    rc, out, err = module.run_command([*permanent_args, f"--zone={zone}", "--list-services"])
    if rc != 0:
        module.fail_json(msg=f"firewall-cmd --list-services: {(err or out).strip()}")
    permanent = out.split()
    runtime = None
    if running:
        rc, out, err = module.run_command([cmd, f"--zone={zone}", "--list-services"])
        if rc != 0:
            module.fail_json(msg=f"firewall-cmd --list-services: {(err or out).strip()}")
        runtime = out.split()
    todo = firewall_todo(runtime, permanent, wanted, managed)
    state = "running" if running else "stopped"
    return {"state": state, "zone": zone, "runtime": runtime or [], "permanent": permanent, "todo": todo}


#: /etc/os-release IDs by Ansible os_family (the families mailprov has profiles for, and their relatives).
OS_FAMILIES = {
    "Debian": ("debian", "ubuntu", "raspbian", "linuxmint", "devuan", "kali", "pop"),
    "RedHat": (
        "rhel",
        "centos",
        "almalinux",
        "rocky",
        "ol",
        "fedora",
        "amzn",
        "cloudlinux",
        "eurolinux",
        "virtuozzo",
    ),
}


def parse_os_release(text: str) -> dict[str, str]:
    """KEY=value pairs of an os-release file (quotes removed)."""
    out = {}
    for line in text.splitlines():
        key, sep, value = line.strip().partition("=")
        if sep and key and not key.startswith("#"):
            out[key] = value.strip().strip("'\"")
    return out


def distribution_facts(release: dict[str, str], selinux_enabled: bool) -> dict:
    """Ansible-style facts (os_family, distribution, versions, selinux.status) from os-release data."""
    ident = release.get("ID", "").lower()
    like = release.get("ID_LIKE", "").lower().split()
    family = next((f for f, ids in OS_FAMILIES.items() if ident in ids), "")
    if not family:
        family = next(
            (f for f, ids in OS_FAMILIES.items() if any(i in ids for i in like)), ident.capitalize()
        )
    version = release.get("VERSION_ID", "")
    return {
        "os_family": family,
        "distribution": release.get("NAME", ident).split(" ")[0] or "unknown",
        "distribution_version": version,
        "distribution_major_version": version.split(".")[0],
        "selinux": {"status": "enabled" if selinux_enabled else "disabled"},
    }


def host_facts() -> dict:
    """This host's distribution facts, read from /etc/os-release and selinuxfs (no setup module needed)."""
    release: dict[str, str] = {}
    for path in ("/etc/os-release", "/usr/lib/os-release"):
        try:
            with open(path, encoding="utf-8") as handle:
                release = parse_os_release(handle.read())
            break
        except OSError:
            continue
    return distribution_facts(release, os.path.exists("/sys/fs/selinux/enforce"))


def main() -> None:
    """Module entry point."""
    module = AnsibleModule(
        argument_spec={
            "packages": {"type": "list", "elements": "str", "default": []},
            "vmail_user": {"type": "str", "default": "vmail"},
            "vmail_uid": {"type": "int", "default": 5000},
            "mail_root": {"type": "path", "default": ""},
            "tls_cert": {"type": "path", "default": ""},
            "tls_key": {"type": "path", "default": ""},
            "hostname": {"type": "str", "default": ""},
            "renew_days": {"type": "int", "default": 30},
            "services": {"type": "list", "elements": "str", "default": ["postfix", "dovecot"]},
            "aliases_db": {"type": "path", "default": "/etc/aliases.db"},
            "dkim_key": {"type": "path", "default": ""},
            "dkim_key_sha256": {"type": "str", "default": ""},
            "dkim_user": {"type": "str", "default": "opendkim"},
            "dkim_service": {"type": "str", "default": ""},
            "firewalld_services": {"type": "list", "elements": "str", "default": []},
            "firewalld_managed": {"type": "list", "elements": "str", "default": []},
            "firewalld_zone": {"type": "str", "default": ""},
            "firewalld_offline": {"type": "bool", "default": False},
            "profiles": {"type": "dict", "default": {}},
        },
        supports_check_mode=True,
    )
    facts = host_facts()
    key = f"{facts['os_family']}-{facts['distribution_major_version']}"
    if module.params["profiles"]:
        if key not in module.params["profiles"]:
            # Unsupported OS: the role reports it from the facts; there is no plan to compare with.
            module.exit_json(changed=False, ansible_facts=facts, profile_key=key, supported=False)
        module.params.update(module.params["profiles"][key])
    p = module.params
    missing = missing_packages(module, p["packages"])
    services = services_state(module, p["services"])
    module.exit_json(
        changed=False,
        ansible_facts=facts,
        profile_key=key,
        supported=True,
        packages_missing=missing,
        vmail_ok=vmail_ok(p["vmail_user"], p["vmail_uid"], p["mail_root"]),
        cert_ok=cert_ok(module, p["tls_cert"], p["tls_key"], p["hostname"], p["renew_days"]),
        services=services,
        services_ok=all(s["active"] == "active" and s["enabled"] == "enabled" for s in services.values()),
        aliases_ok=os.path.exists(p["aliases_db"]),
        dkim_key_ok=dkim_key_ok(p["dkim_key"] or "", p["dkim_key_sha256"], p["dkim_user"]),
        dkim_service=unit_state(module, p["dkim_service"]),
        firewall=firewall_state(module),
    )


if __name__ == "__main__":
    main()
