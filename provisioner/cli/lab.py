"""CLI commands for the lab: throwaway booted hosts (systemd-nspawn), a bridge and a lab DNS server."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import typer

from provisioner.cli.common import handle_errors
from provisioner.errors import UsageError

lab_app = typer.Typer(
    name="lab",
    help="Throwaway booted test hosts on this machine (systemd-nspawn, own IPs, SSH, lab DNS). Needs root.",
    no_args_is_help=True,
)

LabDir = typer.Option(
    None,
    "--lab-dir",
    envvar="MAILPROV_LAB_DIR",
    help="Lab state directory (one lab per directory). [default: /var/lib/mailprov/lab]",
)


def _lab(lab_dir: Path | None):  # type: ignore[no-untyped-def]
    # Imported here so `mailprov --help` stays fast and works without the lab's dependencies.
    from provisioner.lab import Lab

    return Lab(lab_dir, log=lambda message: print(f"lab: {message}", file=sys.stderr))


def _print_status(status: dict, fmt: str) -> None:  # type: ignore[type-arg]
    if fmt == "json":
        print(json.dumps(status, indent=2))
        return
    if not status["hosts"]:
        print(f"no lab hosts (lab dir {status['lab_dir']}); start some with `mailprov lab up`")
        return
    print(f"resolver   {status['resolver']}  (bridge {status['bridge']}, {status['subnet']})")
    print(f"inventory  {status['inventory']}")
    print(f"ssh key    {status['hosts'][0]['ssh_key']}")
    if status.get("acme"):
        acme = status["acme"]
        print(f"acme       {acme['directory']}  ({acme['state']}; CA bundle {acme['ca_bundle']})")
    print()
    print(f"{'HOST':<20} {'ADDRESS':<16} {'STATE':<9} FIREWALL")
    for host in status["hosts"]:
        firewall = "firewalld" if host.get("firewall", True) else "none"
        print(f"{host['name']:<20} {host['ip']:<16} {host['state']:<9} {firewall}")


@lab_app.command("up")
@handle_errors
def up(
    hosts: int | None = typer.Option(None, "--hosts", help="Start N hosts named mx1..mxN."),
    host: list[str] = typer.Option([], "--host", help="Start a host with this name (repeatable)."),
    distro: str = typer.Option(
        "debian12", "--distro", help="Root filesystem: debian12 (el9 needs RHEL repos)."
    ),
    no_firewall: bool = typer.Option(False, "--no-firewall", help="New hosts run without firewalld."),
    subnet: str | None = typer.Option(None, "--subnet", help="Use this 10.x.y.0/24 instead of a free one."),
    acme: bool = typer.Option(
        False, "--acme", help="Also run pebble (test ACME CA) on the bridge; status shows its directory."
    ),
    fmt: str = typer.Option("table", "--format", help="table or json."),
    lab_dir: Path | None = LabDir,
) -> None:
    """Boot lab hosts (additive, idempotent) and print their status.

    Builds the base image on first use (a few minutes, then cached). Without --hosts/--host, restarts the
    lab's existing hosts, or starts mx1 and mx2 in a new lab.

    With --acme, pebble (Debian package pebble) serves ACME on the bridge address, validating HTTP-01 on
    the hosts' port 80 and resolving through the lab DNS; `status` gives its directory and CA bundle.

    Example: sudo mailprov lab up --hosts 2 && ansible -i /var/lib/mailprov/lab/inventory.ini all -m ping
    """
    from provisioner.lab import host_names

    names = host_names(hosts, host)
    lab = _lab(lab_dir)
    if not names and not lab.status()["hosts"]:
        names = ["mx1", "mx2"]
    _print_status(lab.up(names, firewall=not no_firewall, distro=distro, subnet=subnet, acme=acme), _fmt(fmt))


@lab_app.command("status")
@handle_errors
def status(
    fmt: str = typer.Option("table", "--format", help="table or json (stable: resolver, inventory, hosts)."),
    lab_dir: Path | None = LabDir,
) -> None:
    """Show the lab's hosts (name, address, state, SSH user and key), resolver and inventory.

    JSON: {"resolver": "10.x.y.1", "inventory": PATH,
    "hosts": [{"name", "ip", "ssh_user", "ssh_key", "state"}],
    "acme": {"directory": URL, "ca_bundle": PATH} or null}

    Example: mailprov lab status --format json | jq -r '.hosts[0].ip'
    """
    _print_status(_lab(lab_dir).status(), _fmt(fmt))


@lab_app.command("down")
@handle_errors
def down(lab_dir: Path | None = LabDir) -> None:
    """Stop every lab host, the lab DNS server and pebble, remove the copies and the bridge.

    Example: sudo mailprov lab down
    """
    _lab(lab_dir).down()
    print("lab is down")


@lab_app.command("dns-load")
@handle_errors
def dns_load(
    spec_path: Path = typer.Argument(..., metavar="SPEC", help="mail.yml whose records to publish."),
    host: str = typer.Option(..., "--host", help="Lab host that serves this spec (its address is used)."),
    lab_dir: Path | None = LabDir,
) -> None:
    """Publish the records of `mailprov dns SPEC` in the lab resolver, with the lab host's address.

    Example: sudo mailprov lab dns-load mail.yml --host mx1 && dig @10.x.y.1 MX example.test
    """
    from provisioner import spec as spec_mod

    spec = spec_mod.load(spec_path)
    lab = _lab(lab_dir)
    lab.dns_load(spec, host)
    print(f"published {', '.join(spec.domain_names)} at {lab.ip(host)} ({host}) in the lab resolver")


@lab_app.command("ssh", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
@handle_errors
def ssh(
    ctx: typer.Context,
    name: str = typer.Argument(..., help="Lab host name."),
    lab_dir: Path | None = LabDir,
) -> None:
    """Log into a lab host as root, or run a command there (after --).

    Example: sudo mailprov lab ssh mx1 -- systemctl is-system-running
    """
    argv = _lab(lab_dir).ssh_argv(name)
    command = list(ctx.args)
    if command:
        # Like ssh itself: the words are joined and the remote shell parses them.
        argv.append(" ".join(command))
    elif sys.stdin.isatty():
        argv.insert(1, "-t")
    sys.stdout.flush()
    os.execvp(argv[0], argv)


def _fmt(value: str) -> str:
    if value not in ("table", "json"):
        raise UsageError(f"--format: expected table or json, got {value!r}")
    return value


def register(app: typer.Typer) -> None:
    """Add the `lab` sub-app to the main app."""
    app.add_typer(lab_app, name="lab")
