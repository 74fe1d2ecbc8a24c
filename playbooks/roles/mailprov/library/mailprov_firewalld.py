#!/usr/bin/python3
"""Ansible module: open exactly the mail services the spec serves in firewalld (runtime and permanent)."""

from __future__ import annotations

from ansible.module_utils.basic import AnsibleModule

DOCUMENTATION = r"""
---
module: mailprov_firewalld
short_description: Open the served mail services in firewalld and close the managed ones not served
description:
  - Where firewalld runs, adds the wanted services to the zone (runtime and permanent) and removes the managed
    mail services that the spec does not serve. Where firewalld is installed but not running and
    C(offline=true) (EL), writes the permanent configuration with firewall-offline-cmd. Where firewalld is
    absent, changes nothing and says so.
  - Uses firewall-cmd from the system, so it needs no collection and no Python bindings.
options:
  services:
    description: firewalld services to open.
    type: list
    elements: str
    required: true
  managed:
    description: All mail services this module manages; those not in C(services) are removed.
    type: list
    elements: str
    default: []
  zone:
    description: Zone to change; the default zone when empty.
    type: str
    default: ""
  offline:
    description: Configure a stopped firewalld with firewall-offline-cmd.
    type: bool
    default: false
author: mailprov
"""


def plan(current: list[str], wanted: list[str], managed: list[str]) -> tuple[list[str], list[str]]:
    """(services to add, services to remove) to go from current to wanted."""
    add = [s for s in wanted if s not in current]
    remove = [s for s in managed if s in current and s not in wanted]
    return add, remove


def _dbus_client():  # type: ignore[no-untyped-def]
    """firewalld's own Python client (D-Bus), when the system Python has it and firewalld runs."""
    try:
        from firewall.client import FirewallClient  # type: ignore[import-not-found]
    except ImportError:
        return None
    try:
        client = FirewallClient()
    except Exception:  # dbus errors of every kind mean: not usable
        return None
    return client if client.connected else None


def via_dbus(module: AnsibleModule, client, wanted: list[str], managed: list[str], zone: str) -> dict:  # type: ignore[no-untyped-def]
    """Plan and apply the change through D-Bus (one process, no firewall-cmd start-up per call)."""
    zone = zone or client.getDefaultZone()
    runtime_current = list(client.getServices(zone))
    config_zone = client.config().getZoneByName(zone)
    settings = config_zone.getSettings()
    permanent_current = list(settings.getServices())
    report = {}
    changed = False
    add, remove = plan(runtime_current, wanted, managed)
    report["runtime"] = {"added": add, "removed": remove}
    if not module.check_mode:
        for service in add:
            client.addService(zone, service, 0)
        for service in remove:
            client.removeService(zone, service)
    changed |= bool(add or remove)
    add, remove = plan(permanent_current, wanted, managed)
    report["permanent"] = {"added": add, "removed": remove}
    if (add or remove) and not module.check_mode:
        for service in add:
            settings.addService(service)
        for service in remove:
            settings.removeService(service)
        config_zone.update(settings)
    changed |= bool(add or remove)
    return {"changed": changed, "zone": zone, "running": True, "firewall": report}


def main() -> None:
    """Module entry point."""
    module = AnsibleModule(
        argument_spec={
            "services": {"type": "list", "elements": "str", "required": True},
            "managed": {"type": "list", "elements": "str", "default": []},
            "zone": {"type": "str", "default": ""},
            "offline": {"type": "bool", "default": False},
        },
        supports_check_mode=True,
    )
    params = module.params
    wanted = list(dict.fromkeys(params["services"]))
    client = _dbus_client()
    if client is not None:
        module.exit_json(**via_dbus(module, client, wanted, params["managed"], params["zone"]))
    cmd = module.get_bin_path("firewall-cmd")
    if cmd is None:
        module.exit_json(changed=False, skipped=True, skip_reason="firewalld is not installed on this host")
    rc, out, _ = module.run_command([cmd, "--state"])
    running = rc == 0 and out.strip() == "running"
    if running:
        tools = [("runtime", [cmd]), ("permanent", [cmd, "--permanent"])]
    elif params["offline"] and module.get_bin_path("firewall-offline-cmd"):
        tools = [("permanent", [module.get_bin_path("firewall-offline-cmd")])]
    else:
        module.exit_json(changed=False, skipped=True, skip_reason="firewalld is installed but not running")
    zone = params["zone"]
    if not zone:
        rc, out, err = module.run_command(tools[0][1] + ["--get-default-zone"])
        if rc != 0:
            module.fail_json(msg=f"firewall-cmd --get-default-zone: {(err or out).strip()}")
        zone = out.strip()
    report = {}
    changed = False
    for name, base in tools:
        rc, out, err = module.run_command([*base, f"--zone={zone}", "--list-services"])
        if rc != 0:
            module.fail_json(msg=f"firewall-cmd ({name}) --list-services: {(err or out).strip()}")
        add, remove = plan(out.split(), wanted, params["managed"])
        report[name] = {"added": add, "removed": remove}
        if (add or remove) and not module.check_mode:
            args = [f"--add-service={s}" for s in add] + [f"--remove-service={s}" for s in remove]
            rc, out, err = module.run_command([*base, f"--zone={zone}", *args])
            if rc != 0:
                module.fail_json(msg=f"firewall-cmd ({name}) {' '.join(args)}: {(err or out).strip()}")
        changed |= bool(add or remove)
    module.exit_json(changed=changed, zone=zone, running=running, firewall=report)


if __name__ == "__main__":
    main()
