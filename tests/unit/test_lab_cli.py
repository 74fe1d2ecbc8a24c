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


def test_acme_without_pebble_is_exit_2(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from provisioner import lab

    monkeypatch.setattr(lab, "check_prerequisites", lambda *a, **k: None)
    monkeypatch.setattr(lab, "_which", lambda tool: None)
    result = invoke("lab", "up", "--acme", "--host", "mx1", "--lab-dir", str(tmp_path))
    assert result.exit_code == 2, result.output
    assert "--acme: pebble is not installed" in result.output and "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) == 1


def test_status_shows_acme(tmp_path: Path) -> None:
    state = {
        "resolver": "10.210.3.1",
        "subnet": "10.210.3.0/24",
        "hosts": {"mx1": {"ip": "10.210.3.2"}},
        "acme": {"directory": "https://10.210.3.1:14000/dir", "ca_bundle": "/x/acme/ca-bundle.pem"},
    }
    (tmp_path / "state.json").write_text(json.dumps(state))
    table = invoke("lab", "status", "--lab-dir", str(tmp_path))
    assert (
        "acme       https://10.210.3.1:14000/dir  (stopped; CA bundle /x/acme/ca-bundle.pem)" in table.output
    )
    data = json.loads(invoke("lab", "status", "--format", "json", "--lab-dir", str(tmp_path)).output)
    assert data["acme"]["directory"] == "https://10.210.3.1:14000/dir"
    assert data["acme"]["ca_bundle"] == "/x/acme/ca-bundle.pem"
