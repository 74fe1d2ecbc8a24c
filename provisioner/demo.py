"""`mailprov demo`: lab up (mx1, mx2) -> apply two domains -> lab DNS -> verify -> a real email by MX.

Passwords are made up for each run and only their hashes reach the specs; with --keep they are written,
mode 0600, into the lab directory so the user can log in afterwards.
"""

from __future__ import annotations

import io
import os
import secrets
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table
from ruamel.yaml import YAML

from provisioner import PROJECT_ROOT, mailflow
from provisioner import spec as spec_mod
from provisioner.passwords import hash_password
from provisioner.spec import Spec

EXAMPLES = PROJECT_ROOT / "examples" / "demo"
#: (lab host, example spec, sender or recipient mailbox)
DEMO_HOSTS = (("mx1", "example.test.yml"), ("mx2", "example.net.yml"))


def with_passwords(text: str, passwords: dict[str, str]) -> str:
    """The spec text with each listed mailbox's password_hash replaced by a fresh hash of its password."""
    yaml = YAML()
    yaml.indent(mapping=2, sequence=4, offset=2)
    yaml.width = 4096  # long hashes stay on one line
    data = yaml.load(text)
    for domain in data["domains"]:
        for box in domain.get("mailboxes", []):
            if box["address"] in passwords:
                box["password_hash"] = hash_password(passwords[box["address"]])
    out = io.StringIO()
    yaml.dump(data, out)
    return out.getvalue()


def with_dkim(text: str, private_key: Path, resolvers: list[str]) -> str:
    """The spec text signing with `private_key` (selector kept), OpenDKIM asking `resolvers` when verifying."""
    yaml = YAML()
    yaml.indent(mapping=2, sequence=4, offset=2)
    yaml.width = 4096
    data = yaml.load(text)
    dkim = data.get("dkim") or {}
    dkim["private_key"] = str(private_key)
    if resolvers:
        dkim["resolvers"] = list(resolvers)
    data["dkim"] = dkim
    out = io.StringIO()
    yaml.dump(data, out)
    return out.getvalue()


def demo_specs(
    examples: Path = EXAMPLES, dkim_dir: Path | None = None, resolvers: list[str] | None = None
) -> tuple[dict[str, Spec], dict[str, str]]:
    """Specs per lab host with fresh passwords, and the passwords (address -> password).

    With `dkim_dir`, each host gets a DKIM signing key made for this run (DIR/HOST.key, mode 0600).
    """
    from provisioner import dkimkeys

    specs: dict[str, Spec] = {}
    passwords: dict[str, str] = {}
    for host, name in DEMO_HOSTS:
        text = (examples / name).read_text(encoding="utf-8")
        base = spec_mod.loads(text, name)
        made = {box.address: secrets.token_urlsafe(18) for box in base.mailboxes}
        passwords.update(made)
        text = with_passwords(text, made)
        if dkim_dir is not None:
            key = dkimkeys.write_key(dkim_dir / f"{host}.key", force=True)
            text = with_dkim(text, key, resolvers or [])
        specs[host] = spec_mod.loads(text, name)
    return specs, passwords


@dataclass
class Step:
    """One line of the demo's result."""

    name: str
    ok: bool
    detail: str = ""


@dataclass
class DemoResult:
    """All the steps, in order."""

    steps: list[Step] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when every step passed."""
        return bool(self.steps) and all(step.ok for step in self.steps)


def _timed(result: DemoResult, console: Console, name: str, fn: Callable[[], tuple[bool, str]]) -> bool:
    console.print(f"[bold]==>[/] {name}")
    started = time.monotonic()
    try:
        ok, detail = fn()
    except Exception as exc:  # a demo step reports every failure as a result line, never a traceback
        ok, detail = False, f"{type(exc).__name__}: {exc}"
    detail = f"{detail} ({time.monotonic() - started:.1f}s)".strip()
    result.steps.append(Step(name, ok, detail))
    console.print(f"    {'[green]ok[/]' if ok else '[red]FAILED[/]'} {detail}", soft_wrap=True)
    return ok


def _verify(lab: Any, host: str, spec: Spec, user: str, password: str) -> tuple[bool, str]:
    """Run the `mailprov verify` catalog against a lab host, trusting that host's self-signed certificate."""
    try:
        from provisioner.checks import Options, verify
    except ImportError:
        return True, "verify is not available in this build: the mail checks above stand in"
    import tempfile

    import testinfra

    status = lab.status()
    cert = lab.run(host, "cat /etc/ssl/certs/mailprov.pem")
    if cert.returncode != 0:
        return False, f"cannot read the certificate of {host}: {cert.stderr.strip()}"
    ssh_host = testinfra.get_host(
        f"ssh://root@{lab.ip(host)}",
        ssh_identity_file=str(lab.key_path),
        ssh_extra_args="-o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o BatchMode=yes -o LogLevel=ERROR",
    )
    with tempfile.NamedTemporaryFile("w", suffix=".pem") as ca:
        ca.write(cert.stdout)
        ca.flush()
        options = Options(
            target=spec.hostname,
            spec=spec,
            resolver=(status["resolver"], 53),
            ca=Path(ca.name),
            user=user,
            password=password,
            host=ssh_host,
        )
        report = verify(options)
    counts = ", ".join(f"{n} {state}" for state, n in report.summary.items() if n)
    warned = [f"{r.id}: {r.reason}" for r in report.results if r.status == "warn"]
    warnings = f"; warnings: {'; '.join(warned[:4])}" if warned else ""
    if report.failed:
        failed = [f"{r.id}: {r.reason}" for r in report.results if r.status == "fail"]
        return False, f"{counts}; failed: " + "; ".join(failed[:8]) + warnings
    return True, counts + warnings


def run(lab_dir: Path | None = None, keep: bool = False, console: Console | None = None) -> bool:
    """The whole demo; prints progress and a result table; True when every step passed."""
    from provisioner import apply as apply_mod
    from provisioner.cli.apply import Progress
    from provisioner.lab import Lab

    console = console or Console(stderr=True)
    result = DemoResult()
    lab = Lab(lab_dir, log=lambda message: console.print(f"    [dim]lab: {message}[/]"))
    specs: dict[str, Spec] = {}
    passwords: dict[str, str] = {}
    alice, bob = "alice@example.test", "bob@example.net"
    try:
        if not _timed(result, console, "lab up: mx1 and mx2", lambda: _lab_up(lab)):
            return _finish(result, console, lab, keep, passwords)
        # A DKIM key per host and run, in the lab directory (removed by `lab down`); OpenDKIM verifies
        # inbound signatures through the lab resolver.
        dkim_dir = Path(lab.dir) / "dkim"
        dkim_dir.mkdir(mode=0o700, exist_ok=True)
        specs, passwords = demo_specs(dkim_dir=dkim_dir, resolvers=[lab.status()["resolver"]])

        def dns() -> tuple[bool, str]:
            for host, _ in DEMO_HOSTS:
                lab.dns_load(specs[host], host)
            return (
                True,
                "MX, A, PTR, SPF, DKIM (the run's keys), DMARC for example.test (mx1) and example.net (mx2)",
            )

        _timed(result, console, "lab DNS: publish both domains", dns)

        def apply() -> tuple[bool, str]:
            request = apply_mod.ApplyRequest(inventory=lab.inventory_path, host_specs=specs)
            outcome = apply_mod.run(request, on_event=Progress(console, False))
            parts = [f"{name}: changed={h.changed} failed={h.failed}" for name, h in outcome.hosts.items()]
            if not outcome.ok:
                reasons = [apply_mod.final_failure(h) for h in outcome.hosts.values() if h.failed]
                parts += reasons
            return outcome.ok, "; ".join(parts)

        if not _timed(result, console, "apply example.test -> mx1, example.net -> mx2", apply):
            return _finish(result, console, lab, keep, passwords)

        def ports() -> tuple[bool, str]:
            closed = [
                f"{host}:{port}"
                for host, _ in DEMO_HOSTS
                for port in specs[host].open_ports
                if not mailflow.port_open(lab.ip(host), port)
            ]
            return not closed, "closed: " + ", ".join(closed) if closed else "every served port answers"

        _timed(result, console, "ports answer through the firewall", ports)

        def by_mx() -> tuple[bool, str]:
            subject = mailflow.submit(lab.ip("mx1"), alice, passwords[alice], bob)
            arrived = mailflow.wait_for_message(lab.ip("mx2"), bob, passwords[bob], subject, timeout=90)
            if not arrived:
                return False, f"'{subject}' did not reach {bob} within 90s"
            raw = mailflow.fetch_message(lab.ip("mx2"), bob, passwords[bob], subject) or b""
            # mx1's OpenDKIM signed it (d=example.test), mx2's verified it against the lab DNS.
            signed = b"d=example.test" in raw and b"dkim=pass" in raw
            return signed, (
                f"{alice} -> 587 on mx1 (STARTTLS+AUTH, DKIM-signed) -> MX example.net -> mx2:25 (dkim=pass)"
                f" -> LMTP -> IMAPS as {bob}"
                if signed
                else "delivered, but without a DKIM signature that mx2 verified (no dkim=pass)"
            )

        _timed(result, console, "a real email by MX: alice@example.test -> bob@example.net", by_mx)

        def relay() -> tuple[bool, str]:
            refused, reply = mailflow.relay_refused(lab.ip("mx1"))
            return refused, f"relay without AUTH: {reply}"

        _timed(result, console, "no open relay", relay)
        for host, _ in DEMO_HOSTS:
            _timed(
                result,
                console,
                f"verify {host} ({specs[host].hostname})",
                _verifier(lab, host, specs, passwords),
            )
        return _finish(result, console, lab, keep, passwords)
    except BaseException:
        if not keep:
            _down(lab)
        raise


def _down(lab: Any) -> None:
    """Tear the lab down and remove the run's DKIM keys (made in the lab directory)."""
    lab.down()
    shutil.rmtree(Path(lab.dir) / "dkim", ignore_errors=True)


def _verifier(
    lab: Any, host: str, specs: dict[str, Spec], passwords: dict[str, str]
) -> Callable[[], tuple[bool, str]]:
    user = specs[host].mailboxes[0].address
    return lambda: _verify(lab, host, specs[host], user, passwords[user])


def _lab_up(lab: Any) -> tuple[bool, str]:
    status = lab.up([host for host, _ in DEMO_HOSTS])
    hosts = ", ".join(f"{h['name']} {h['ip']}" for h in status["hosts"])
    return all(h["state"] == "running" for h in status["hosts"]), f"{hosts}; resolver {status['resolver']}"


def _finish(result: DemoResult, console: Console, lab: Any, keep: bool, passwords: dict[str, str]) -> bool:
    table = Table(title="mailprov demo", title_justify="left")
    table.add_column("step")
    table.add_column("result")
    table.add_column("detail", overflow="fold")
    for step in result.steps:
        table.add_row(step.name, "[green]ok[/]" if step.ok else "[red]FAILED[/]", step.detail)
    Console().print(table)
    if keep:
        secret = Path(lab.dir) / "demo-passwords.txt"
        fd = os.open(secret, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.writelines(f"{address} {password}\n" for address, password in passwords.items())
        console.print(
            f"lab kept: `mailprov lab status`, `mailprov lab ssh mx1`; passwords in {secret}; "
            "`mailprov lab down` when done"
        )
    else:
        _down(lab)
        console.print("lab is down (use --keep to explore it)")
    return result.ok
