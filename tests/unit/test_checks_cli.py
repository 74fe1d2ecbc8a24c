"""`mailprov verify` command layer: option parsing, usage errors (exit 2), exit codes, output formats.

Network use is limited to loopback: a UDP socket that never answers stands in for a dead resolver.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from provisioner.cli import app
from provisioner.cli.verify import parse_resolver, parse_ssh
from provisioner.errors import UsageError

runner = CliRunner()


def invoke(*args: str) -> tuple[int, str, str]:
    result = runner.invoke(app, ["verify", *args])
    return result.exit_code, result.stdout, result.stderr


def test_help_documents_options() -> None:
    code, out, _ = invoke("--help")
    assert code == 0
    for option in (
        "--spec",
        "--domain",
        "--resolver",
        "--ca",
        "--user",
        "--password-file",
        "--ssh",
        "--ssh-key",
        "--local",
        "--only",
        "--format",
        "--output",
        "--timeout",
    ):
        assert option in out


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("192.0.2.53", ("192.0.2.53", 53)),
        ("127.0.0.1:5353", ("127.0.0.1", 5353)),
        ("::1", ("::1", 53)),
        ("[::1]:5353", ("::1", 5353)),
    ],
)
def test_parse_resolver(value: str, expected: tuple[str, int]) -> None:
    assert parse_resolver(value) == expected


@pytest.mark.parametrize("value", ["dns.example.org", "127.0.0.1:0", "127.0.0.1:x", "[::1]:70000"])
def test_parse_resolver_rejects(value: str) -> None:
    with pytest.raises(UsageError, match="--resolver"):
        parse_resolver(value)


def test_parse_ssh() -> None:
    assert parse_ssh("root@mail.example.org") == ("root", "mail.example.org", None)
    assert parse_ssh("admin@10.0.0.5:2222") == ("admin", "10.0.0.5", 2222)
    assert parse_ssh("root@[fd00::5]:22") == ("root", "fd00::5", 22)
    with pytest.raises(UsageError, match="--ssh"):
        parse_ssh("mail.example.org")
    with pytest.raises(UsageError, match="--ssh"):
        parse_ssh("root@host:ssh")


@pytest.mark.parametrize(
    ("args", "option"),
    [
        (["not a host!"], "TARGET"),
        (["127.0.0.1", "--only", "nope.*"], "--only"),
        (["127.0.0.1", "--only", ","], "--only"),
        (["127.0.0.1", "--resolver", "resolver.example.org"], "--resolver"),
        (["127.0.0.1", "--domain", "not_a_domain"], "--domain"),
        (["127.0.0.1", "--timeout", "0"], "--timeout"),
        (["127.0.0.1", "--user", "alice@example.org"], "--user and --password-file"),
        (["127.0.0.1", "--ssh", "root@h", "--local"], "--ssh and --local"),
    ],
)
def test_usage_errors_exit_2_with_one_line(args: list[str], option: str) -> None:
    code, out, err = invoke(*args)
    assert code == 2
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("mailprov: error: ") and option in lines[0], err
    assert "Traceback" not in out + err


def test_bad_user_address(tmp_path: Path) -> None:
    secret = tmp_path / "pw"
    secret.write_text("x\n")
    code, _, err = invoke("127.0.0.1", "--user", "alice", "--password-file", str(secret))
    assert code == 2 and "--user" in err
    empty = tmp_path / "empty"
    empty.write_text("\n")
    code, _, err = invoke("127.0.0.1", "--user", "a@example.org", "--password-file", str(empty))
    assert code == 2 and "--password-file" in err


def test_missing_spec_file_is_usage_error(tmp_path: Path) -> None:
    code, _, err = invoke("127.0.0.1", "--spec", str(tmp_path / "missing.yml"))
    assert code == 2 and "--spec" in err


def test_invalid_spec_is_usage_error(tmp_path: Path) -> None:
    bad = tmp_path / "mail.yml"
    bad.write_text("hostname: x\n")
    code, _, err = invoke("127.0.0.1", "--spec", str(bad))
    assert code == 2 and err.startswith("mailprov: error: mail.yml")


def test_only_skipped_checks_exit_0_json() -> None:
    code, out, _ = invoke("127.0.0.1", "--only", "smtp.auth,host.*", "--format", "json")
    report = json.loads(out)
    assert code == 0
    assert report["target"] == "127.0.0.1"
    assert report["summary"] == {"pass": 0, "warn": 0, "fail": 0, "skip": 11}
    assert report["results"][0]["id"] == "smtp.auth"


def test_dead_resolver_fails_with_reason_and_exit_1(dead_resolver: str, tmp_path: Path) -> None:
    out_file = tmp_path / "report.xml"
    code, out, _ = invoke(
        "mail.example.test",
        "--domain",
        "example.test",
        "--resolver",
        dead_resolver,
        "--only",
        "dns.mx,dns.a",
        "--timeout",
        "1",
        "--format",
        "junit",
        "--output",
        str(out_file),
    )
    assert code == 1
    xml = out_file.read_text()
    assert xml.count("<failure") == 2 and "did not answer" in xml
    assert "dns.mx" in out  # the table is printed too


def test_output_to_missing_directory_is_refused_before_the_run(tmp_path: Path) -> None:
    code, out, err = invoke("127.0.0.1", "--only", "host.*", "--output", str(tmp_path / "no" / "r.json"))
    assert code == 2 and err.count("\n") == 1 and "--output" in err and "does not exist" in err
    assert out == ""  # nothing ran, nothing printed


def test_output_to_a_directory_is_refused(tmp_path: Path) -> None:
    code, _, err = invoke("127.0.0.1", "--only", "host.*", "--output", str(tmp_path))
    assert code == 2 and "--output" in err and "directory" in err


def test_output_symlink_is_not_followed(tmp_path: Path) -> None:
    target = tmp_path / "precious"
    target.write_text("keep\n")
    link = tmp_path / "report.json"
    link.symlink_to(target)
    code, _, err = invoke("127.0.0.1", "--only", "host.*", "--format", "json", "--output", str(link))
    assert code == 2 and "--output" in err and "symbolic link" in err
    assert target.read_text() == "keep\n" and link.is_symlink()


def test_output_written_atomically_and_replaces_a_file(tmp_path: Path) -> None:
    out_file = tmp_path / "report.json"
    out_file.write_text("old")
    code, out, _ = invoke("127.0.0.1", "--only", "host.*", "--format", "json", "--output", str(out_file))
    assert code == 0 and json.loads(out_file.read_text())["summary"]["skip"] == 10
    assert "host.drift" in out  # the table still prints
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.json"]


def test_late_output_error_keeps_the_report_on_stdout(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from provisioner.cli import verify as verify_cli

    def broken(path: Path, text: str) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(verify_cli, "write_atomically", broken)
    code, out, err = invoke(
        "127.0.0.1", "--only", "host.*", "--format", "json", "--output", str(tmp_path / "r")
    )
    assert code == 2 and "--output" in err and "No space left" in err and "Traceback" not in err
    assert json.loads(out)["summary"]["skip"] == 10


def test_loopback_target_needs_allow_loopback() -> None:
    code, out, _ = invoke("127.0.0.1", "--only", "smtp.port.25", "--format", "json", "--timeout", "2")
    result = json.loads(out)["results"][0]
    assert code == 1 and result["status"] == "fail" and "--allow-loopback" in result["reason"]
    assert "--allow-loopback" in runner.invoke(app, ["verify", "--help"]).stdout


def test_ssh_unreachable_is_one_clear_line() -> None:
    # The real ssh client against a closed loopback port: one reason, naming what to check.
    code, out, _ = invoke(
        "127.0.0.1", "--only", "host.packages,host.services", "--ssh", "root@127.0.0.1:1", "--format", "json"
    )
    results = json.loads(out)["results"]
    assert code == 1 and {r["status"] for r in results} == {"fail"}
    (reason,) = {r["reason"] for r in results}
    assert reason.startswith("SSH to root@127.0.0.1: unreachable") and "--ssh" in reason
    assert "CommandResult" not in reason
