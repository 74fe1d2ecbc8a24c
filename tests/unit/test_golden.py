"""Golden-file tests: every case under tests/golden renders exactly as recorded, for every profile.

How to add a case or regenerate after an intended change: see tests/golden/README.md
(`MAILPROV_REGEN_GOLDEN=1 python -m pytest tests/unit/test_golden.py`, then review `git diff`).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from provisioner import profiles, render, spec

GOLDEN = Path(__file__).resolve().parent.parent / "golden"
CASES = sorted(p.name for p in GOLDEN.iterdir() if (p / "mail.yml").is_file())
REGEN = os.environ.get("MAILPROV_REGEN_GOLDEN") == "1"


@pytest.mark.parametrize("profile_name", sorted(profiles.PROFILES))
@pytest.mark.parametrize("case", CASES)
def test_render_matches_golden(case: str, profile_name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    # Key files named in a case (tests/golden/dkim) are relative to the repository root, like a user's CWD.
    monkeypatch.chdir("/")  # relative paths in mail.yml resolve against the file, not the working directory
    files = render.render(spec.load(GOLDEN / case / "mail.yml"), profiles.get(profile_name))
    expected_dir = GOLDEN / case / "expected" / profile_name
    if REGEN:
        shutil.rmtree(expected_dir, ignore_errors=True)
        render.write_tree(files, expected_dir)
    expected = {
        # bytes as written: the MTA-STS policy's CRLF line ends are part of what is compared
        str(p.relative_to(expected_dir)): p.read_bytes().decode()
        for p in expected_dir.rglob("*")
        if p.is_file()
    }
    assert sorted(files) == sorted(expected), "set of rendered files differs from the golden tree"
    for rel, text in files.items():
        assert text == expected[rel], (
            f"{case}/{profile_name}/{rel} differs from golden (see tests/golden/README.md)"
        )


def test_there_are_at_least_three_cases() -> None:
    assert {"minimal", "multi_domain", "smarthost"} <= set(CASES)
