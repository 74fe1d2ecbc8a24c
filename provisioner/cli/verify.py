"""`mailprov verify`: check a mail server from outside (DNS, SMTP, TLS, IMAP/POP3) and inside (testinfra)."""

from __future__ import annotations

import contextlib
import ipaddress
import os
import stat
import sys
import tempfile
from collections.abc import Iterator
from enum import StrEnum
from pathlib import Path
from typing import Any

import typer

from provisioner.cli.common import handle_errors
from provisioner.errors import UsageError
from provisioner.spec import check_address, check_domain


class ReportFormat(StrEnum):
    table = "table"
    json = "json"
    junit = "junit"


def parse_resolver(value: str) -> tuple[str, int]:
    """'IP', 'IP:PORT', '[IPv6]:PORT' or a bare IPv6 address -> (address, port)."""
    text = value.strip()
    host, port = text, "53"
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        if rest.startswith(":"):
            port = rest[1:]
    elif text.count(":") == 1:
        host, port = text.split(":")
    try:
        address = str(ipaddress.ip_address(host))
        number = int(port)
        if not 0 < number < 65536:
            raise ValueError
    except ValueError:
        raise UsageError(
            f"--resolver: expected IP[:PORT] such as 192.0.2.53 or 127.0.0.1:5353, got {value!r}"
        ) from None
    return address, number


def parse_ssh(value: str) -> tuple[str, str, int | None]:
    """'USER@HOST[:PORT]' -> (user, host, port)."""
    user, at, rest = value.rpartition("@")
    if not at or not user or not rest:
        raise UsageError(f"--ssh: expected USER@HOST[:PORT] such as root@mail.example.org, got {value!r}")
    host, port = rest, None
    if rest.startswith("["):
        host, _, tail = rest[1:].partition("]")
        port = tail[1:] if tail.startswith(":") else None
    elif rest.count(":") == 1:
        host, port = rest.split(":")
    try:
        number = int(port) if port is not None else None
    except ValueError:
        raise UsageError(f"--ssh: port must be a number, got {port!r}") from None
    return user, host, number


def _target(value: str) -> str:
    try:
        return str(ipaddress.ip_address(value.strip()))
    except ValueError:
        pass
    try:
        return check_domain(value)
    except ValueError:
        raise UsageError(f"TARGET: expected a host name or IP address, got {value!r}") from None


def check_output(path: Path) -> Path:
    """Validate --output before the run: an existing, writable directory; no symlink, no non-file."""
    shown = str(path)
    if not shown.strip() or shown.endswith(("/", os.sep)):
        raise UsageError(f"--output: expected a file path, got {shown!r}")
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise UsageError(f"--output: directory {parent} does not exist (create it first)")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise UsageError(f"--output: directory {parent} is not writable")
    try:
        info = path.lstat()
    except FileNotFoundError:
        return path
    except OSError as exc:
        raise UsageError(f"--output: cannot use {shown}: {exc.strerror}") from None
    if stat.S_ISLNK(info.st_mode):
        raise UsageError(
            f"--output: {shown} is a symbolic link; refusing to write through it (give a file path)"
        )
    if stat.S_ISDIR(info.st_mode):
        raise UsageError(f"--output: {shown} is a directory (give a file path)")
    if not stat.S_ISREG(info.st_mode):
        raise UsageError(f"--output: {shown} exists and is not a regular file")
    return path


def write_atomically(path: Path, text: str) -> None:
    """Write text to a temporary file beside path, then rename it over path (never following a link)."""
    fd, tmp = tempfile.mkstemp(dir=path.parent if str(path.parent) else ".", prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def testinfra_host(
    ssh: str | None, ssh_key: Path | None, ssh_config: Path | None, local: bool, timeout: float
) -> Iterator[Any]:
    """The pytest-testinfra host for --ssh/--local (None without either), cleaned up afterwards."""
    if ssh and local:
        raise UsageError("--ssh and --local exclude each other: check a remote host or this one")
    if (ssh_key or ssh_config) and not ssh:
        raise UsageError("--ssh-key/--ssh-config: only used with --ssh USER@HOST")
    if local:
        import testinfra

        yield testinfra.get_host("local://")
    elif ssh:
        from provisioner.checks.host import ssh_host

        user, host, port = parse_ssh(ssh)
        with ssh_host(user, host, port, ssh_key, ssh_config, timeout) as connected:
            yield connected
    else:
        yield None


@handle_errors
def verify_cmd(
    target: str = typer.Argument(
        ..., help="The mail host: a name (resolved with --resolver) or an IP address."
    ),
    spec_file: Path = typer.Option(
        None, "--spec", exists=True, dir_okay=False, help="mail.yml: what to expect (domains, ports, users)."
    ),
    domain: list[str] = typer.Option(
        [], "--domain", help="Mail domain to check (repeatable; default: spec/inferred)."
    ),
    resolver: str = typer.Option(None, "--resolver", help="DNS server IP[:PORT] (default: the system's)."),
    ca: Path = typer.Option(
        None, "--ca", exists=True, dir_okay=False, help="Extra CA certificate(s) to trust (PEM)."
    ),
    user: str = typer.Option(None, "--user", help="Test mailbox address for the login and roundtrip checks."),
    password_file: Path = typer.Option(
        None, "--password-file", exists=True, dir_okay=False, help="File holding the --user password."
    ),
    ssh: str = typer.Option(None, "--ssh", help="Host checks over SSH: USER@HOST[:PORT]."),
    ssh_key: Path = typer.Option(
        None, "--ssh-key", exists=True, dir_okay=False, help="SSH private key for --ssh."
    ),
    ssh_config: Path = typer.Option(
        None, "--ssh-config", exists=True, dir_okay=False, help="ssh_config for --ssh."
    ),
    local: bool = typer.Option(False, "--local", help="Host checks on this machine instead of over SSH."),
    only: str = typer.Option(None, "--only", help="Comma list of check ids or prefixes: dns.spf,smtp.*,tls"),
    fmt: ReportFormat = typer.Option(ReportFormat.table, "--format", help="Report format."),
    output: Path = typer.Option(
        None, "--output", "-o", help="Write the report here (the table still prints)."
    ),
    timeout: float = typer.Option(
        10.0, "--timeout", help="Seconds per check (network waits inside it are shorter)."
    ),
    allow_loopback: bool = typer.Option(
        False,
        "--allow-loopback",
        help="Allow TARGET/MX addresses on this machine (loopback, 0.0.0.0, link-local): testing a local server.",
    ),
    expect_antispam: bool = typer.Option(
        False,
        "--expect-antispam",
        help="A spam filter is expected (as with antispam.enabled in the spec): smtp.spam_filter sends GTUBE.",
    ),
) -> None:
    """Check a mail server: DNS, SMTP, TLS, IMAP/POP3 from outside; packages, services, config with --ssh.

    Exit 0 when no check failed (warnings allowed), 1 when one did, 2 for bad usage.
    Example: mailprov verify mail.example.org --spec mail.yml --resolver 192.0.2.53 --format junit -o verify.xml
    """
    from provisioner import spec as spec_mod
    from provisioner.checks import Options, select, verify
    from provisioner.checks.report import print_table, render_report

    if not timeout > 0 or timeout > 3600:
        raise UsageError(f"--timeout: expected a positive number of seconds (at most 3600), got {timeout:g}")
    if output is not None:
        output = check_output(output)
    if bool(user) != bool(password_file):
        raise UsageError("--user and --password-file: give both (test credentials) or neither")
    patterns = [p for p in (only or "").split(",") if p.strip()]
    if only is not None and not patterns:
        raise UsageError("--only: expected a comma list of check ids such as dns.spf,smtp.*")
    for pattern in patterns:
        try:
            select([pattern])
        except ValueError:
            raise UsageError(f"--only: no check matches {pattern!r} (see the catalog in the docs)") from None
    try:
        domains = [check_domain(d) for d in domain]
    except ValueError as exc:
        raise UsageError(f"--domain: {exc}") from None
    password = None
    if user:
        try:
            user = check_address(user)
        except ValueError as exc:
            raise UsageError(f"--user: {exc}") from None
        password = password_file.read_text(encoding="utf-8").rstrip("\r\n")
        if not password:
            raise UsageError(f"--password-file: {password_file} is empty")
    with testinfra_host(ssh, ssh_key, ssh_config, local, timeout) as host:
        options = Options(
            target=_target(target),
            spec=spec_mod.load(spec_file) if spec_file else None,
            domains=domains,
            resolver=parse_resolver(resolver) if resolver else None,
            ca=ca,
            user=user,
            password=password,
            host=host,
            timeout=timeout,
            allow_loopback=allow_loopback,
            expect_antispam=expect_antispam,
        )
        report = verify(options, patterns or None)
    if output is not None:
        rendered = render_report(report, fmt.value)
        try:
            write_atomically(output, rendered)
        except OSError as exc:
            # The run is done: keep its report on stdout rather than lose it.
            if fmt is ReportFormat.table:
                print_table(report)
            else:
                sys.stdout.write(rendered)
            sys.stdout.flush()
            raise UsageError(
                f"--output: could not write {output}: {exc.strerror or exc}; the report is on stdout instead"
            ) from None
        print_table(report)
        print(f"report written to {output}", file=sys.stderr)
    elif fmt is ReportFormat.table:
        print_table(report)
    else:
        sys.stdout.write(render_report(report, fmt.value))
    raise typer.Exit(1 if report.failed else 0)


def register(app: typer.Typer) -> None:
    """Add this area's commands to the main app."""
    app.command("verify")(verify_cmd)
