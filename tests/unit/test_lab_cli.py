"""`mailprov lab` at the command line: errors are one line and exit 2, JSON status is stable."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from provisioner.cli import app

runner = CliRunner()


def invoke(*args: str):  # type: ignore[no-untyped-def]
    return runner.invoke(app, list(args))


def test_every_lab_command_has_help() -> None:
    for command in ("up", "down", "status", "dns-load", "ssh"):
        result = invoke("lab", command, "--help")
        assert result.exit_code == 0, result.output
        assert "Example" in result.output


def test_el9_is_refused_with_exit_2(tmp_path: Path) -> None:
    result = invoke("lab", "up", "--distro", "el9", "--lab-dir", str(tmp_path))
    assert result.exit_code == 2
    assert "RHEL-family" in result.output and "Traceback" not in result.output


def test_not_root_is_exit_2(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("os.geteuid", lambda: 1000)
    for args in (("up",), ("down",)):
        result = invoke("lab", *args, "--lab-dir", str(tmp_path))
        assert result.exit_code == 2, result.output
        assert "needs root" in result.output


def test_unknown_host_is_exit_2(tmp_path: Path) -> None:
    result = invoke("lab", "ssh", "nope", "--lab-dir", str(tmp_path))
    assert result.exit_code == 2
    assert "unknown lab host 'nope'" in result.output


def test_bad_host_name_is_exit_2(tmp_path: Path) -> None:
    result = invoke("lab", "up", "--host", "Bad_Name", "--lab-dir", str(tmp_path))
    assert result.exit_code == 2 and "--host" in result.output


def test_status_json_of_an_empty_lab(tmp_path: Path) -> None:
    result = invoke("lab", "status", "--format", "json", "--lab-dir", str(tmp_path))
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["hosts"] == [] and data["resolver"] is None and data["inventory"].endswith("inventory.ini")
