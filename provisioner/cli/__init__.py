"""The `mailprov` command: a thin Typer layer over the library modules.

Each area registers its commands from its own module (core, lab, apply, verify), so the command layer
stays short and every command's docstring is its help text.
"""

from __future__ import annotations

import typer

from provisioner import __version__
from provisioner.cli import apply as apply_cmds
from provisioner.cli import core as core_cmds
from provisioner.cli import lab as lab_cmds
from provisioner.cli import verify as verify_cmds

app = typer.Typer(
    name="mailprov",
    help="Provision and verify Postfix + Dovecot mail servers from one declarative mail.yml.",
    no_args_is_help=True,
    rich_markup_mode="rich",
    pretty_exceptions_enable=False,
)


def _version(value: bool) -> None:
    if value:
        print(f"mailprov {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version."
    ),
) -> None:
    """Provision and verify Postfix + Dovecot mail servers from one declarative mail.yml."""


for _module in (core_cmds, lab_cmds, apply_cmds, verify_cmds):
    _module.register(app)


def main() -> None:
    """Console-script entry point: usage errors are one line on stderr and exit 2, like every other refusal."""
    import sys
    from typing import Any

    click_exceptions: Any
    try:
        from typer._click import exceptions as click_exceptions  # typer >= 0.29 vendors click
    except ImportError:  # pragma: no cover - older typer uses click itself
        from click import exceptions as click_exceptions

    try:
        code = app(prog_name="mailprov", standalone_mode=False)
    except click_exceptions.UsageError as exc:
        if not exc.format_message():  # no_args_is_help: the help is the answer
            sys.exit(2)
        where = exc.ctx.command_path if exc.ctx is not None else "mailprov"
        print(f"mailprov: error: {exc.format_message()} (see '{where} --help')", file=sys.stderr)
        sys.exit(2)
    except click_exceptions.Abort:
        print("mailprov: error: interrupted", file=sys.stderr)
        sys.exit(130)
    sys.exit(code if isinstance(code, int) else 0)
