"""Commands that need no host: init, render, dns, hash-password, dkim-keygen.

Every option value is checked here like a spec field, before anything is read or written: a bad one is
one line on stderr naming the option, exit 2, nothing written. Values are taken as text and parsed here
(not by the option parser) so that their errors have that same one-line form.
"""

from __future__ import annotations

import contextlib
import getpass
import os
import re
import sys
import tempfile
import unicodedata
from pathlib import Path

import typer

from provisioner import dkimkeys, dns, outdir, profiles, render, spec, starter
from provisioner.cli.common import handle_errors
from provisioner.errors import UsageError
from provisioner.passwords import hash_password

DNS_FORMATS = ("zone", "json")
#: Longer input on stdin is refused rather than read without end (and no client sends more).
PASSWORD_MAX_BYTES = 1024


def _nearest_existing(path: Path) -> Path:
    while not os.path.lexists(path):
        path = path.parent
    return path


def check_output_file(path: Path, label: str, force: bool) -> Path:
    """A file path a command may create, or with --force replace (by rename, never writing through a link)."""
    shown = outdir.show(path)
    if path.is_dir():
        raise UsageError(f"{label}: {shown} is a directory; expected a file path")
    if os.path.lexists(path):
        if not force:
            raise UsageError(f"{label}: {shown} exists; use --force to replace it")
        if not path.is_symlink() and not path.is_file():
            raise UsageError(f"{label}: {shown} is not a regular file; expected a file path")
    base = _nearest_existing(path.absolute().parent)
    if not base.is_dir():
        raise UsageError(f"{label}: {outdir.show(base)} is not a directory; expected a file path")
    if not os.access(base, os.W_OK | os.X_OK):
        raise UsageError(f"{label}: {outdir.show(base)} is not writable")
    return path


def write_files(items: list[tuple[Path, str, str]]) -> None:
    """Write (path, text, option label) files all or none: temporary siblings first, then renames."""
    umask = os.umask(0o022)
    os.umask(umask)
    made: list[Path] = []
    temps: list[tuple[str, Path, str]] = []
    label = ""
    try:
        for path, text, option in items:
            label = option
            missing = []
            parent = path.absolute().parent
            while not os.path.lexists(parent):
                missing.append(parent)
                parent = parent.parent
            for directory in reversed(missing):
                directory.mkdir()
                made.append(directory)
            fd, tmp = tempfile.mkstemp(dir=path.absolute().parent, prefix=f".{path.name}.", suffix=".tmp")
            temps.append((tmp, path, option))
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                handle.write(text)
                handle.flush()
                os.fsync(handle.fileno())
            os.chmod(tmp, 0o666 & ~umask)
        for tmp, path, option in temps:
            label = option
            os.replace(tmp, path)
    except OSError as exc:
        for tmp, _, _ in temps:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
        for directory in reversed(made):
            with contextlib.suppress(OSError):
                directory.rmdir()
        where = outdir.show(exc.filename) if exc.filename else "it"
        raise UsageError(f"{label}: cannot write {where}: {exc.strerror}") from None


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
    text, inv = starter.starter_files(domain, hostname)
    check_output_file(output, "-o/--output", force)
    check_output_file(inventory, "--inventory", force)
    if os.path.abspath(output) == os.path.abspath(inventory) or (
        output.exists() and inventory.exists() and output.samefile(inventory)
    ):
        raise UsageError(f"--inventory: {outdir.show(inventory)} is the same file as -o/--output")
    write_files([(output, text, "-o/--output"), (inventory, inv, "--inventory")])
    print(f"wrote {output} and {inventory}; replace the placeholder password hash (mailprov hash-password)")


@handle_errors
def render_cmd(
    spec_file: Path = typer.Argument(..., help="The mail.yml to render."),
    os_name: str = typer.Option("debian12", "--os", help="OS profile: el9, el10 or debian12."),
    out: Path = typer.Option(
        Path("build"),
        "-o",
        "--out",
        help="Output directory (paths mirror the target). It is replaced whole, so it must be new, "
        "empty or an earlier render's output.",
    ),
    check: bool = typer.Option(
        False, "--check", help="Validate with the real postconf/doveconf when installed."
    ),
) -> None:
    """Render the Postfix and Dovecot configuration for one OS profile into a directory (no side effects).

    Example: mailprov render mail.yml --os el9 -o build/ --check
    """
    profile = profiles.get(os_name)
    outdir.check_out_dir(out, render.rendered_paths())  # before the spec is read: a bad --out costs nothing
    model = spec.load(spec_file)
    files = render.render(model, profile)
    render.write_tree(files, out)
    for rel in sorted(files):
        print(out / rel)
    if check:
        # The tree judged is the one just swapped in whole: nothing from an earlier render is left in it.
        failed = bad_input = False
        for result in render.check_tree(out, profile):
            status = "ok" if result.ok else ("not run" if not result.ran else "FAILED")
            print(f"{result.tool}: {status}: {result.output}")
            failed |= result.ran and not result.ok
            if result.input_error and not result.ok:
                print(f"mailprov: error: {result.output}", file=sys.stderr)
                bad_input = True
        if failed:
            raise typer.Exit(2 if bad_input else 1)


@handle_errors
def dns_cmd(
    spec_file: Path = typer.Argument(..., help="The mail.yml."),
    fmt: str = typer.Option("zone", "--format", help="zone (zone-file snippet) or json."),
    ip: str = typer.Option(None, "--ip", help="The mail server's IPv4 address (adds A and PTR)."),
    ipv6: str = typer.Option(None, "--ipv6", help="The mail server's IPv6 address (adds AAAA and PTR)."),
) -> None:
    """Print the DNS records the spec's domains must publish: MX, A/AAAA, SPF, DKIM, DMARC, MTA-STS, TLS-RPT, PTR.

    Example: mailprov dns mail.yml --ip 192.0.2.25 --format json
    """
    if fmt not in DNS_FORMATS:
        raise UsageError(f"--format: expected one of {', '.join(DNS_FORMATS)}, got {fmt!r}")
    ipv4 = None if ip is None else dns.check_server_address(ip, 4, "--ip")
    ipv6 = None if ipv6 is None else dns.check_server_address(ipv6, 6, "--ipv6")
    model = spec.load(spec_file)
    text = dns.to_json(model, ipv4, ipv6) if fmt == "json" else dns.to_zone(model, ipv4, ipv6)
    sys.stdout.write(text)


def _read_password_line() -> str:
    """One line of stdin as the password: bounded, UTF-8, without its line ending."""
    stream = getattr(sys.stdin, "buffer", None)
    if stream is not None:
        raw = stream.readline(PASSWORD_MAX_BYTES + 3)
    else:
        raw = sys.stdin.readline(PASSWORD_MAX_BYTES + 3).encode("utf-8", "surrogateescape")
    line = raw.removesuffix(b"\n").removesuffix(b"\r")
    if len(line) > PASSWORD_MAX_BYTES:
        raise UsageError(f"--stdin: the password is longer than {PASSWORD_MAX_BYTES} bytes")
    try:
        return line.decode("utf-8")
    except UnicodeDecodeError:
        raise UsageError("--stdin: the password is not UTF-8 text") from None


def check_password(password: str, label: str) -> str:
    """A password hash-password accepts: not empty, no control characters (no client could send them)."""
    if not password:
        raise UsageError(f"{label}: empty password")
    if len(password.encode("utf-8", "surrogatepass")) > PASSWORD_MAX_BYTES:
        raise UsageError(f"{label}: the password is longer than {PASSWORD_MAX_BYTES} bytes")
    bad = next((char for char in password if unicodedata.category(char) in ("Cc", "Cs")), None)
    if bad is not None:
        raise UsageError(
            f"{label}: the password contains a control character ({bad!r}); expected printable text on one line"
        )
    return password


@handle_errors
def hash_password_cmd(
    stdin: bool = typer.Option(False, "--stdin", help="Read the password from standard input."),
) -> None:
    """Print a Dovecot-compatible {SHA512-CRYPT} hash of a password (prompted, or --stdin).

    Example: mailprov hash-password  (then paste the hash into mail.yml)
    """
    if stdin or not sys.stdin.isatty():
        password = check_password(_read_password_line(), "--stdin")
    else:
        password = check_password(getpass.getpass("Password: "), "password")
        if getpass.getpass("Again: ") != password:
            raise UsageError("password: the two entries differ")
    print(hash_password(password))


@handle_errors
def dkim_keygen_cmd(
    output: Path = typer.Option(
        Path("dkim/mail.key"), "-o", "--output", help="Where to write the private key (mode 0600)."
    ),
    bits: str = typer.Option(str(dkimkeys.DEFAULT_BITS), "--bits", help="RSA key size: 2048, 3072 or 4096."),
    force: bool = typer.Option(False, "--force", help="Replace an existing key."),
) -> None:
    """Generate an RSA DKIM signing key (PEM, mode 0600) for dkim.private_key in mail.yml.

    Example: mailprov dkim-keygen -o dkim/mail.key  (then `mailprov dns mail.yml` shows the record)
    """
    allowed = dkimkeys.ALLOWED_BITS
    if not re.fullmatch(r"[0-9]{1,5}", bits) or int(bits) not in allowed:
        raise UsageError(f"--bits: expected one of {', '.join(map(str, allowed))}, got {bits!r}")
    check_output_file(output, "-o/--output", force)
    try:
        path = dkimkeys.write_key(output, int(bits), force)
    except OSError as exc:
        where = outdir.show(exc.filename) if exc.filename else outdir.show(output)
        raise UsageError(f"-o/--output: cannot write {where}: {exc.strerror}") from None
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
