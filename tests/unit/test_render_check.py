"""`render --check` on a fresh machine: every postconf call reads the scratch copy, and a checker that is
installed but cannot run is a failure with its reason, never a quiet "not run".

Fake postconf/postmap/doveconf (first on PATH) behave like Postfix with no /etc/postfix/main.cf: without
`-c DIR` they die the way the real one does. The real programs judge real trees in
tests/integration/test_render_real.py; these fakes only make the failure modes reachable.
"""

from __future__ import annotations

import json
import os
import stat
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from provisioner import profiles, render, spec
from provisioner.cli import app

GOLDEN = Path(__file__).resolve().parent.parent / "golden"
MINIMAL = GOLDEN / "minimal" / "mail.yml"
runner = CliRunner()

POSTCONF = """
import json, os, pathlib, sys
args = sys.argv[1:]
with open(os.environ["FAKE_LOG"], "a") as log:
    conf = args[args.index("-c") + 1] if "-c" in args else None
    log.write(json.dumps({"prog": pathlib.Path(sys.argv[0]).name, "args": args,
                          "main_cf": bool(conf) and os.path.isfile(os.path.join(conf, "main.cf"))}) + "\\n")
mode = os.environ.get("FAKE_MODE", "fresh")
if mode == "broken":
    print("postconf: fatal: unexpected something", file=sys.stderr)
    sys.exit(1)
if "-c" not in args or not os.path.isfile(os.path.join(args[args.index("-c") + 1], "main.cf")):
    print("postconf: fatal: open /etc/postfix/main.cf: No such file or directory", file=sys.stderr)
    sys.exit(1)
if "-m" in args:
    print("btree\\ncidr\\nhash" + ("" if mode == "no-lmdb" else "\\nlmdb") + "\\nstatic")
elif "-d" in args:
    print(os.environ["FAKE_DAEMON_DIR"])
"""

DOVECONF = """
import sys
sys.exit(0)
"""


def _program(directory: Path, name: str, body: str) -> None:
    path = directory / name
    path.write_text(f"#!{sys.executable}\n{body}")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)


@pytest.fixture
def fakes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A bin directory first on PATH with fake postconf, postmap and doveconf; returns the call log."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    _program(bindir, "postconf", POSTCONF)
    _program(bindir, "postmap", POSTCONF)
    _program(bindir, "doveconf", DOVECONF)
    daemon_dir = tmp_path / "daemon"
    daemon_dir.mkdir()
    log = tmp_path / "calls.jsonl"
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_LOG", str(log))
    monkeypatch.setenv("FAKE_DAEMON_DIR", str(daemon_dir))
    return log


def _tree(tmp_path: Path, profile_name: str = "debian12") -> Path:
    out = tmp_path / "tree"
    render.write_tree(render.render(spec.load(MINIMAL), profiles.get(profile_name)), out)
    return out


def test_every_postconf_call_uses_the_scratch_config(fakes: Path, tmp_path: Path) -> None:
    results = render.check_tree(_tree(tmp_path), profiles.get("debian12"))
    postconf = results[0]
    assert postconf.tool == "postconf" and postconf.ran and postconf.ok, postconf.output
    calls = [json.loads(line) for line in fakes.read_text().splitlines()]
    assert {c["prog"] for c in calls} == {"postconf", "postmap"}
    assert any("-m" in c["args"] for c in calls) and any("-d" in c["args"] for c in calls)
    for call in calls:
        assert "-c" in call["args"], f"{call['prog']} {call['args']} reads this machine's /etc/postfix"
        assert call["main_cf"], "-c names the scratch copy, which holds main.cf"
    scratch_dirs = {c["args"][c["args"].index("-c") + 1] for c in calls}
    assert len(scratch_dirs) == 1 and "/etc/postfix" not in scratch_dirs.pop()


def test_postconf_that_cannot_run_is_a_failure_with_the_reason(
    fakes: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAKE_MODE", "broken")
    postconf, doveconf = render.check_tree(_tree(tmp_path), profiles.get("debian12"))[:2]
    assert postconf.ran and not postconf.ok
    assert "unexpected something" in postconf.output
    assert doveconf.ok


def test_missing_table_type_is_a_failure_not_a_skip(
    fakes: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAKE_MODE", "no-lmdb")
    postconf = render.check_tree(_tree(tmp_path, "el10"), profiles.get("el10"))[0]
    assert postconf.ran and not postconf.ok
    assert "lmdb" in postconf.output and "postfix-lmdb" in postconf.output


def test_doveconf_that_cannot_start_is_a_failure(fakes: Path, tmp_path: Path) -> None:
    doveconf = fakes.parent / "bin" / "doveconf"
    doveconf.write_text("#!/nonexistent/interpreter\n")
    result = render.check_tree(_tree(tmp_path), profiles.get("debian12"))[1]
    assert result.tool == "doveconf" and result.ran and not result.ok
    assert "could not be started" in result.output


def test_cli_exits_1_and_says_failed(fakes: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAKE_MODE", "broken")
    result = runner.invoke(app, ["render", str(MINIMAL), "-o", str(tmp_path / "out"), "--check"])
    assert result.exit_code == 1, result.output
    assert "postconf: FAILED: " in result.stdout
    assert "postconf: not run" not in result.stdout


def test_tree_without_postfix_directory_is_a_failure(fakes: Path, tmp_path: Path) -> None:
    tree = tmp_path / "partial"
    (tree / "etc/dovecot").mkdir(parents=True)
    (tree / "etc/dovecot/dovecot.conf").write_text("protocols = imap\n")
    postconf = render.check_tree(tree, profiles.get("debian12"))[0]
    assert postconf.ran and not postconf.ok and "etc/postfix" in postconf.output
