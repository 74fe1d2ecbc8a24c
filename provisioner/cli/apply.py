"""CLI commands `apply` (converge hosts with the playbooks) and `demo` (lab + apply + verify, end to end)."""

from __future__ import annotations

import json
import sys
from enum import StrEnum
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.table import Table

from provisioner.cli.common import handle_errors
from provisioner.errors import UsageError

STATUS_STYLE = {
    "ok": "green",
    "changed": "yellow",
    "failed": "bold red",
    "unreachable": "bold red",
    "skipped": "dim",
}


DIFF_STYLE = {"+": "green", "-": "red", "@": "cyan"}


class RecapFormat(StrEnum):
    table = "table"
    json = "json"


def _task_name(name: str) -> str:
    # Role tasks arrive as "mailprov : Section | what"; the role prefix says nothing to the reader.
    return name.split(" : ", 1)[1] if " : " in name else name


class Progress:
    """Live progress on stderr: one line per host and task result, diffs when asked."""

    def __init__(self, console: Console, show_diff: bool) -> None:
        self.console = console
        self.show_diff = show_diff

    def __call__(self, event: dict[str, Any]) -> None:
        """Print one event."""
        if event.get("event") == "warning":
            self.console.print(f"[yellow]warning:[/] {event.get('msg', '')}")
            return
        if event.get("event") != "result" or event.get("status") == "skipped":
            return
        status = event["status"]
        line = (
            f"[{STATUS_STYLE.get(status, '')}]{status:<11}[/] {event['host']:<16} {_task_name(event['task'])}"
        )
        if event.get("files") and status == "changed":
            line += f" [dim]({', '.join(event['files'])})[/]"
        self.console.print(line, highlight=False, soft_wrap=True)
        if status in ("failed", "unreachable") and event.get("msg") and not event.get("ignored"):
            self.console.print(f"            [red]{event['msg']}[/]", highlight=False, soft_wrap=True)
        if self.show_diff and event.get("diff"):
            for text in event["diff"].rstrip("\n").splitlines():
                style = DIFF_STYLE.get(text[:1], "") if not text.startswith(("+++", "---")) else "bold"
                self.console.print(text, style=style, markup=False, highlight=False, soft_wrap=True)


def print_recap(result: Any, console: Console) -> None:
    """The per-host recap table, then each failed host's reason."""
    from provisioner.apply import final_failure

    title = "apply recap" + (" (check mode: nothing was changed)" if result.check else "")
    table = Table(title=title, title_justify="left")
    for column in ("host", "ok", "changed", "failed", "unreachable", "files changed"):
        table.add_column(column, justify="right" if column not in ("host", "files changed") else "left")
    for name, host in sorted(result.hosts.items()):
        bad = host.failed or host.unreachable
        table.add_row(
            f"[red]{name}[/]" if bad else name,
            str(host.ok),
            f"[yellow]{host.changed}[/]" if host.changed else "0",
            f"[red]{host.failed}[/]" if host.failed else "0",
            f"[red]{host.unreachable}[/]" if host.unreachable else "0",
            "\n".join(host.files_changed) or "-",
        )
    console.print(table)
    for name, host in sorted(result.hosts.items()):
        if host.failed or host.unreachable:
            console.print(f"[red]{name}: {final_failure(host)}[/]", highlight=False, soft_wrap=True)
    if not result.ok:
        verdict = "[red]FAILED[/]"
    elif result.check:
        verdict = (
            f"[yellow]{result.changed} change(s) pending[/]"
            if result.changed
            else "[green]no changes needed[/]"
        )
    else:
        verdict = "[green]converged[/]"
    console.print(f"{verdict} in {result.elapsed:.1f}s", highlight=False)


@handle_errors
def apply_cmd(
    spec_file: Path = typer.Argument(..., metavar="SPEC", help="The mail.yml to apply."),
    inventory: Path = typer.Option(..., "-i", "--inventory", help="Ansible inventory of the mail hosts."),
    check: bool = typer.Option(False, "--check", help="Dry run: report what would change, change nothing."),
    diff: bool = typer.Option(
        False, "--diff", help="Show the changes to each file (password hashes hidden)."
    ),
    limit: str = typer.Option(None, "--limit", help="Only these hosts (Ansible pattern, e.g. mx1,mx2)."),
    fmt: RecapFormat = typer.Option(RecapFormat.table, "--format", help="Recap format: table or json."),
    serial: int = typer.Option(
        None,
        "--serial",
        min=1,
        help="Converge this many hosts at a time (rolling: with 1, the other MX hosts accept mail meanwhile).",
    ),
    build_dir: Path = typer.Option(
        None, "--build-dir", help="Keep the rendered plans here (default: a temporary directory)."
    ),
) -> None:
    """Converge the inventory's hosts to SPEC: packages, vmail store, TLS, staged+validated config, firewall.

    A configuration that fails validation is never activated; one that breaks a service is rolled back
    from the timestamped backup. Re-running on an unchanged spec changes nothing. Exit 0 converged,
    1 a host failed or was unreachable, 2 bad input. JSON recap (--format json):
    {"hosts": {"NAME": {"ok": N, "changed": N, "failed": N, "unreachable": N, "files_changed": [...]}}}

    Fleets: a host's inventory variable mailprov_hostname says which server of the spec it is (its hostname,
    the default, or one of backup_mx); --serial 1 converges one host at a time.

    Example: mailprov apply mail.yml -i inventory.ini --check --diff
    """
    from provisioner import apply as apply_mod
    from provisioner import spec as spec_mod

    model = spec_mod.load(spec_file)
    progress_console = Console(stderr=True, highlight=False)
    request = apply_mod.ApplyRequest(
        inventory=inventory,
        spec=model,
        check=check,
        diff=diff,
        limit=limit,
        build_dir=build_dir,
        serial=serial,
    )
    result = apply_mod.run(request, on_event=Progress(progress_console, diff))
    if result.bad_input:
        # The role refused its input before touching any host (e.g. mailprov_hostname names no server).
        raise UsageError(sorted(set(result.bad_input))[0])
    if fmt == RecapFormat.json:
        sys.stdout.write(json.dumps(result.to_dict(), indent=2) + "\n")
    else:
        print_recap(result, Console(highlight=False))
    if not result.ok:
        raise typer.Exit(1)


@handle_errors
def demo_cmd(
    keep: bool = typer.Option(False, "--keep", help="Leave the lab running afterwards (mailprov lab down)."),
    lab_dir: Path = typer.Option(
        None,
        "--lab-dir",
        envvar="MAILPROV_LAB_DIR",
        help="Lab state directory. [default: /var/lib/mailprov/lab]",
    ),
) -> None:
    """The whole story on this machine: two lab hosts, two domains, apply, DNS, verify, a real email by MX.

    Boots mx1 and mx2 (needs root), applies examples/demo/example.test.yml to mx1 and example.net.yml to
    mx2 with passwords made up for this run, publishes their DNS in the lab resolver, verifies both, and
    sends alice@example.test -> bob@example.net over 587 (STARTTLS+AUTH), read back over IMAPS.

    Example: sudo mailprov demo --keep
    """
    from provisioner import demo

    console = Console(stderr=True, highlight=False)
    ok = demo.run(lab_dir=lab_dir, keep=keep, console=console)
    if not ok:
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    """Add apply and demo to the main app."""
    app.command("apply")(apply_cmd)
    app.command("demo")(demo_cmd)
