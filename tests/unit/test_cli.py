"""CLI: every command has help; bad input exits 2 with one line naming the option; nothing half-written."""

from __future__ import annotations

from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from provisioner import passwords, spec
from provisioner.cli import app

runner = CliRunner()
GOLDEN = Path(__file__).resolve().parent.parent / "golden"


def all_commands(group: typer.Typer, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    out = []
    for info in group.registered_commands:
        out.append((*prefix, info.name or info.callback.__name__))  # type: ignore[union-attr]
    for sub in group.registered_groups:
        name = sub.name or ""
        out.append((*prefix, name))
        out += all_commands(sub.typer_instance, (*prefix, name))  # type: ignore[arg-type]
    return out


def test_core_commands_registered() -> None:
    names = {c[0] for c in all_commands(app)}
    assert {"init", "render", "dns", "hash-password"} <= names


@pytest.mark.parametrize("command", all_commands(app), ids=lambda c: " ".join(c))
def test_every_command_has_help(command: tuple[str, ...]) -> None:
    result = runner.invoke(app, [*command, "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage" in result.output
    lines = [line for line in result.output.splitlines() if line.strip() and "Usage" not in line]
    assert lines, "help text is empty"


def test_init_then_render_then_dns(tmp_path: Path) -> None:
    target = tmp_path / "mail.yml"
    result = runner.invoke(
        app, ["init", "example.org", "-o", str(target), "--inventory", str(tmp_path / "inv.ini")]
    )
    assert result.exit_code == 0, result.output
    model = spec.load(target)
    assert model.hostname == "mail.example.org"
    out = tmp_path / "build"
    result = runner.invoke(app, ["render", str(target), "--os", "el10", "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert "lmdb:/etc/postfix/vmailbox" in (out / "etc/postfix/main.cf").read_text()
    result = runner.invoke(app, ["dns", str(target), "--ip", "192.0.2.1"])
    assert result.exit_code == 0
    assert "example.org.\t3600\tIN\tMX\t10 mail.example.org." in result.output


def test_init_refuses_to_overwrite(tmp_path: Path) -> None:
    target = tmp_path / "mail.yml"
    target.write_text("keep me")
    result = runner.invoke(
        app, ["init", "example.org", "-o", str(target), "--inventory", str(tmp_path / "i")]
    )
    assert result.exit_code == 2
    assert target.read_text() == "keep me"


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["render", "SPEC", "--os", "el11"], "--os"),
        (["dns", "SPEC", "--ip", "not-an-ip"], "--ip"),
        (["dns", "SPEC", "--format", "xml"], "--format"),
        (["render", "/nonexistent/mail.yml"], "file not found"),
        (["init", "not a domain"], "DOMAIN"),
    ],
)
def test_bad_options_exit_2_without_traceback(argv: list[str], needle: str, tmp_path: Path) -> None:
    argv = [str(GOLDEN / "minimal" / "mail.yml") if a == "SPEC" else a for a in argv]
    out = tmp_path / "out"
    if argv[0] == "render":
        argv += ["-o", str(out)]
    result = runner.invoke(app, argv)
    assert result.exit_code == 2, result.output
    assert needle in result.output
    assert "Traceback" not in result.output
    assert not out.exists(), "nothing may be written on bad input"


def test_bad_spec_writes_nothing(tmp_path: Path) -> None:
    bad = tmp_path / "mail.yml"
    bad.write_text("hostname: mail.example.test\ndomains:\n  - name: example.test\n    mailboxes: []\n")
    out = tmp_path / "out"
    result = runner.invoke(app, ["render", str(bad), "-o", str(out)])
    assert result.exit_code == 2
    assert "mailbox" in result.output
    assert not out.exists()


def test_hash_password_from_stdin() -> None:
    result = runner.invoke(app, ["hash-password", "--stdin"], input="s3cret\n")
    assert result.exit_code == 0, result.output
    hashed = result.output.strip()
    assert hashed.startswith("{SHA512-CRYPT}$6$")
    assert passwords.verify_password("s3cret", hashed)
    assert not passwords.verify_password("wrong", hashed)
    assert "s3cret" not in result.output


def test_hash_password_refuses_empty() -> None:
    result = runner.invoke(app, ["hash-password", "--stdin"], input="\n")
    assert result.exit_code == 2
