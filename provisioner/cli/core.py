"""Commands that need no host: init, render, dns, hash-password, dkim-keygen."""

from __future__ import annotations

import getpass
import sys
from enum import StrEnum
from pathlib import Path

import typer

from provisioner import dkimkeys, dns, profiles, render, spec, starter
from provisioner.cli.common import handle_errors
from provisioner.errors import UsageError
from provisioner.passwords import hash_password


class DnsFormat(StrEnum):
    zone = "zone"
    json = "json"


@handle_errors
def init(
    domain: str = typer.Argument(..., help="The mail domain, e.g. example.org."),
    hostname: str = typer.Option(None, "--hostname", help="The mail host name (default: mail.DOMAIN)."),
    output: Path = typer.Option(Path("mail.yml"), "-o", "--output", help="Where to write the spec."),
    inventory: Path = typer.Option(
        Path("inventory.ini"), "--inventory", help="Where to write the inventory."
    ),
    force: bool = typer.Option(False, "--force", help="Overwrite existing files."),
) -> None:
    """Write a commented starter mail.yml and an example Ansible inventory.

    Example: mailprov init example.org --hostname mx1.example.org
    """
    try:
        text = starter.starter_spec(domain, hostname)
        inv = starter.starter_inventory(domain, hostname)
    except ValueError as exc:
        option = "--hostname" if hostname and repr(hostname) in str(exc) else "DOMAIN"
        raise UsageError(f"{option}: {exc}") from None
    for path in (output, inventory):
        if path.exists() and not force:
            raise UsageError(f"{path} exists; use --force to overwrite it")
    output.write_text(text)
    inventory.write_text(inv)
    print(f"wrote {output} and {inventory}; replace the placeholder password hash (mailprov hash-password)")


@handle_errors
def render_cmd(
    spec_file: Path = typer.Argument(..., help="The mail.yml to render."),
    os_name: str = typer.Option("debian12", "--os", help="OS profile: el9, el10 or debian12."),
    out: Path = typer.Option(
        Path("build"), "-o", "--out", help="Output directory (paths mirror the target)."
    ),
    check: bool = typer.Option(
        False, "--check", help="Validate with the real postconf/doveconf when installed."
    ),
) -> None:
    """Render the Postfix and Dovecot configuration for one OS profile into a directory (no side effects).

    Example: mailprov render mail.yml --os el9 -o build/ --check
    """
    profile = profiles.get(os_name)
    model = spec.load(spec_file)
    files = render.render(model, profile)
    render.write_tree(files, out)
    for rel in sorted(files):
        print(out / rel)
    if check:
        failed = False
        for result in render.check_tree(out, profile):
            status = "ok" if result.ok else ("not run" if not result.ran else "FAILED")
            print(f"{result.tool}: {status}: {result.output}")
            failed |= result.ran and not result.ok
        if failed:
            raise typer.Exit(1)


@handle_errors
def dns_cmd(
    spec_file: Path = typer.Argument(..., help="The mail.yml."),
    fmt: DnsFormat = typer.Option(DnsFormat.zone, "--format", help="zone (zone-file snippet) or json."),
    ip: str = typer.Option(None, "--ip", help="The mail server's IPv4 address (adds A and PTR)."),
    ipv6: str = typer.Option(None, "--ipv6", help="The mail server's IPv6 address (adds AAAA and PTR)."),
) -> None:
    """Print the DNS records the spec's domains must publish: MX, A/AAAA, SPF, DKIM, DMARC, MTA-STS, TLS-RPT, PTR.

    Example: mailprov dns mail.yml --ip 192.0.2.25 --format json
    """
    model = spec.load(spec_file)
    text = dns.to_json(model, ip, ipv6) if fmt == DnsFormat.json else dns.to_zone(model, ip, ipv6)
    sys.stdout.write(text)


@handle_errors
def hash_password_cmd(
    stdin: bool = typer.Option(False, "--stdin", help="Read the password from standard input."),
) -> None:
    """Print a Dovecot-compatible {SHA512-CRYPT} hash of a password (prompted, or --stdin).

    Example: mailprov hash-password  (then paste the hash into mail.yml)
    """
    if stdin or not sys.stdin.isatty():
        password = sys.stdin.readline().rstrip("\n")
    else:
        password = getpass.getpass("Password: ")
        if getpass.getpass("Again: ") != password:
            raise UsageError("the passwords differ")
    if not password:
        raise UsageError("empty password")
    print(hash_password(password))


@handle_errors
def dkim_keygen_cmd(
    output: Path = typer.Option(
        Path("dkim/mail.key"), "-o", "--output", help="Where to write the private key (mode 0600)."
    ),
    bits: int = typer.Option(dkimkeys.DEFAULT_BITS, "--bits", help="RSA key size: 2048, 3072 or 4096."),
    force: bool = typer.Option(False, "--force", help="Replace an existing key."),
) -> None:
    """Generate an RSA DKIM signing key (PEM, mode 0600) for dkim.private_key in mail.yml.

    Example: mailprov dkim-keygen -o dkim/mail.key  (then `mailprov dns mail.yml` shows the record)
    """
    path = dkimkeys.write_key(output, bits, force)
    print(f"wrote {path} ({bits}-bit RSA, mode 0600; keep it private)")
    print(f"use it in mail.yml:  dkim: {{selector: mail, private_key: {path}}}")
    print("then publish the record `mailprov dns mail.yml` prints, and apply: OpenDKIM signs with it")


def register(app: typer.Typer) -> None:
    """Add init, render, dns, hash-password and dkim-keygen to the main app."""
    app.command("init")(init)
    app.command("render")(render_cmd)
    app.command("dns")(dns_cmd)
    app.command("hash-password")(hash_password_cmd)
    app.command("dkim-keygen")(dkim_keygen_cmd)
