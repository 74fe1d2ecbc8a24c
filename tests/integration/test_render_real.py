"""Rendered trees judged by the real Postfix and Dovecot programs installed on this machine.

Every golden case for every profile goes through postmap, `postconf -n`, `postconf -M` and `doveconf -n`
(el profiles too: their paths are mapped to stand-ins, and el10's lmdb tables need postfix-lmdb).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from provisioner import profiles, render, spec

pytestmark = pytest.mark.integration
GOLDEN = Path(__file__).resolve().parent.parent / "golden"
CASES = sorted(p.name for p in GOLDEN.iterdir() if (p / "mail.yml").is_file())

needs_tools = pytest.mark.skipif(
    not (shutil.which("postconf") or Path("/usr/sbin/postconf").exists()) or not shutil.which("doveconf"),
    reason="postfix/dovecot not installed (apt-get install postfix postfix-lmdb dovecot-core)",
)


@needs_tools
@pytest.mark.parametrize("profile_name", sorted(profiles.PROFILES))
@pytest.mark.parametrize("case", CASES)
def test_real_programs_accept_rendered_tree(
    case: str, profile_name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Key files named in a case (tests/golden/dkim) are relative to the repository root, like a user's CWD.
    monkeypatch.chdir("/")  # relative paths in mail.yml resolve against the file, not the working directory
    profile = profiles.get(profile_name)
    render.write_tree(render.render(spec.load(GOLDEN / case / "mail.yml"), profile), tmp_path)
    model = spec.load(GOLDEN / case / "mail.yml")
    results = render.check_tree(tmp_path, profile)
    expected = ["postconf", "doveconf"]
    if model.sieve.enabled:
        expected.append("sievec")
    if model.fail2ban.enabled:
        expected.append("fail2ban")
    if model.web_served:
        expected.append("nginx")
    assert [r.tool for r in results] == expected
    for result in results:
        assert result.ran, result.output
        assert result.ok, f"{result.tool}: {result.output}"


@needs_tools
def test_check_reports_an_invalid_parameter(tmp_path: Path) -> None:
    profile = profiles.get("debian12")
    render.write_tree(render.render(spec.load(GOLDEN / "minimal" / "mail.yml"), profile), tmp_path)
    with (tmp_path / "etc/postfix/main.cf").open("a") as fh:
        fh.write("smtpd_tls_security_levle = may\n")
    with (tmp_path / "etc/dovecot/dovecot.conf").open("a") as fh:
        fh.write("ssl_protocolz = TLSv1.2\n")
    postconf, doveconf = render.check_tree(tmp_path, profile)[:2]
    assert not postconf.ok and "smtpd_tls_security_levle" in postconf.output
    assert not doveconf.ok and "ssl_protocolz" in doveconf.output


@needs_tools
def test_postconf_sees_the_values_we_meant(tmp_path: Path) -> None:
    """Read the effective values back through postconf, as Postfix itself parses them."""
    import subprocess

    profile = profiles.get("debian12")
    render.write_tree(render.render(spec.load(GOLDEN / "multi_domain" / "mail.yml"), profile), tmp_path)
    conf = tmp_path / "etc/postfix"
    out = subprocess.run(
        [
            "postconf",
            "-c",
            str(conf),
            "-h",
            "smtpd_tls_auth_only",
            "smtpd_relay_restrictions",
            "message_size_limit",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.splitlines()
    assert out[0] == "yes"
    assert "reject_unauth_destination" in out[1]
    assert out[2] == str(25 * 1024**2)
    services = subprocess.run(
        ["postconf", "-c", str(conf), "-M"], capture_output=True, text=True, check=True
    ).stdout
    assert "submission inet" in services
    assert "465" not in services  # implicit_tls_465: false in this case


@needs_tools
def test_sieve_script_that_does_not_compile_is_bad_input(tmp_path: Path) -> None:
    """render --check compiles every Sieve script with the real sievec; a broken one is exit 2 naming it."""
    import shutil as sh
    import subprocess
    import sys

    case = tmp_path / "case"
    sh.copytree(GOLDEN / "mailbox_features", case, ignore=sh.ignore_patterns("expected"))
    (case / "relay.password").chmod(0o600)
    (case / "alice.sieve").write_text('require ["fileinto"];\nif true {\n  fileintoo "x";\n}\n')
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "provisioner",
            "render",
            str(case / "mail.yml"),
            "--os",
            "el9",
            "-o",
            str(tmp_path / "out"),
            "--check",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "alice@features.test.sieve: line 3" in proc.stderr and "fileintoo" in proc.stderr
    assert "Traceback" not in proc.stderr
