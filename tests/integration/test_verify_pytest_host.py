"""The host checks run as plain pytest-testinfra tests (`pytest --hosts=... --pyargs provisioner.checks.pytest_host`).

Runs pytest in a subprocess against this machine (local://), where postfix and dovecot are installed.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(
        not shutil.which("postconf") or not shutil.which("doveconf"), reason="postfix/dovecot not installed"
    ),
]


def test_host_checks_as_testinfra_tests(tmp_path: Path) -> None:
    report = tmp_path / "junit.xml"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "--hosts=local://",
            "--pyargs",
            "provisioner.checks.pytest_host",
            "-p",
            "no:cacheprovider",
            f"--junitxml={report}",
            "-q",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    assert proc.returncode in (0, 1), (
        proc.stdout + proc.stderr
    )  # 1: some checks fail on a machine that is no server
    cases = {c.get("name"): c for c in ET.parse(report).getroot().iter("testcase")}
    names = sorted(n.split("[", 1)[1].rstrip("]").removeprefix("local-") for n in cases if n)
    assert names == sorted(
        [
            "host.packages",
            "host.services",
            "host.listening",
            "host.postfix_check",
            "host.doveconf",
            "host.file_modes",
            "host.queue",
            "host.firewall",
            "host.selinux",
            "host.drift",
        ]
    )
    outcome = {
        n.split("[", 1)[1].rstrip("]").removeprefix("local-"): (
            "failed"
            if c.find("failure") is not None
            else "skipped"
            if c.find("skipped") is not None
            else "passed"
        )
        for n, c in cases.items()
        if n
    }
    assert outcome["host.packages"] == "passed"
    assert outcome["host.drift"] == "skipped"  # no MAILPROV_SPEC
    skipped = cases["test_mail_host[local-host.drift]"].find("skipped")
    assert skipped is not None and "MAILPROV_SPEC" in skipped.get("message", "")
