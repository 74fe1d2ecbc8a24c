"""The collection and playbooks as Ansible sees them (syntax check, ansible-lint, galaxy build/install),
and the tree module on real files.

The tree module runs here as Ansible runs it on a host (a JSON arguments file), against a scratch
directory instead of /etc, with the machine's real postmap.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from provisioner import PROJECT_ROOT
from provisioner import apply as apply_mod

pytestmark = pytest.mark.integration

TREE_MODULE = apply_mod.COLLECTION_DIR / "plugins" / "modules" / "tree.py"


def test_site_playbook_passes_the_syntax_check() -> None:
    argv = [apply_mod.ansible_playbook_path(), "--syntax-check", "-i", "localhost,", str(apply_mod.PLAYBOOK)]
    proc = subprocess.run(argv, capture_output=True, text=True, env=apply_mod.ansible_env(), timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_collection_and_playbooks_pass_ansible_lint_production() -> None:
    lint = shutil.which("ansible-lint") or str(Path(sys.executable).parent / "ansible-lint")
    if not Path(lint).exists():
        pytest.skip("ansible-lint is not installed (pip install ansible-lint)")
    collection = str(apply_mod.COLLECTION_DIR.relative_to(PROJECT_ROOT))
    proc = subprocess.run(
        [lint, "--offline", "--profile", "production", collection, "playbooks/"],
        capture_output=True,
        text=True,
        cwd=PROJECT_ROOT,
        env={**os.environ, "ANSIBLE_COLLECTIONS_PATH": str(apply_mod.COLLECTIONS_DIR)},
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "Profile 'production' was required, and it passed" in proc.stdout + proc.stderr


def _galaxy() -> str:
    return str(Path(apply_mod.ansible_playbook_path()).with_name("ansible-galaxy"))


def test_collection_builds_and_installs_offline(tmp_path: Path) -> None:
    build = subprocess.run(
        [_galaxy(), "collection", "build", str(apply_mod.COLLECTION_DIR), "--output-path", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert build.returncode == 0, build.stdout + build.stderr
    tarball = tmp_path / "mailprov-mail-0.1.0.tar.gz"
    assert tarball.is_file()
    target = tmp_path / "installed"
    install = subprocess.run(
        [_galaxy(), "collection", "install", "--offline", str(tarball), "-p", str(target)],
        capture_output=True,
        text=True,
        timeout=300,
        # No Galaxy server is reachable: an install that tried one would fail here.
        env={**os.environ, "ANSIBLE_GALAXY_SERVER": "http://127.0.0.1:9/"},
    )
    assert install.returncode == 0, install.stdout + install.stderr
    role = target / "ansible_collections/mailprov/mail/roles/server"
    assert (role / "meta/argument_specs.yml").is_file() and (role / "handlers/main.yml").is_file()
    assert (role.parents[1] / "plugins/action/render.py").is_file()
    # The installed collection is what a plain playbook finds by its FQCN.
    playbook = tmp_path / "site.yml"
    playbook.write_text("- hosts: all\n  gather_facts: false\n  roles:\n    - role: mailprov.mail.server\n")
    check = subprocess.run(
        [apply_mod.ansible_playbook_path(), "--syntax-check", "-i", "localhost,", str(playbook)],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "ANSIBLE_COLLECTIONS_PATH": str(target)},
    )
    assert check.returncode == 0, check.stdout + check.stderr


def _run_module(tmp: Path, args: dict, check: bool = False) -> dict:
    payload = {"ANSIBLE_MODULE_ARGS": {**args, "_ansible_check_mode": check, "_ansible_diff": True}}
    args_file = tmp / "args.json"
    args_file.write_text(json.dumps(payload))
    proc = subprocess.run(
        [sys.executable, str(TREE_MODULE), str(args_file)], capture_output=True, text=True, timeout=60
    )
    result: dict = json.loads(proc.stdout)
    return result


@pytest.mark.skipif(os.geteuid() != 0, reason="the module sets root ownership on the files it writes")
@pytest.mark.skipif(shutil.which("postmap") is None, reason="postmap is not installed (Debian: postfix)")
def test_tree_module_stages_activates_with_backup_and_restores(tmp_path: Path) -> None:
    live = tmp_path / "live"
    (live / "etc/postfix").mkdir(parents=True)
    main_cf = live / "etc/postfix/main.cf"
    main_cf.write_text("inet_interfaces = all\nmyhostname = old.example\n")
    vmailbox = str(live / "etc/postfix/vmailbox")
    new_main = "inet_interfaces = all\nmyhostname = new.example\n"
    files = [
        {"path": str(main_cf), "content": new_main, "owner": "root", "group": "root", "mode": "0644"},
        {"path": vmailbox, "content": None, "owner": "root", "group": "root", "mode": "0640"},
    ]
    common = {"maps": [vmailbox], "map_type": "hash", "stage": str(tmp_path / "stage")}
    secret = {vmailbox: "a@example.test example.test/a/\n"}

    preview = _run_module(
        tmp_path, {"state": "staged", "files": files, "secret_contents": secret, **common}, True
    )
    assert preview["changed"] and sorted(preview["differs"]) == sorted([str(main_cf), vmailbox])
    assert not (tmp_path / "stage").exists()
    hidden = next(d for d in preview["diff"] if d["after_header"] == vmailbox)
    assert "example.test/a/" not in json.dumps(hidden)

    staged = _run_module(tmp_path, {"state": "staged", "files": files, "secret_contents": secret, **common})
    assert not staged["changed"] and not staged["up_to_date"]
    assert (tmp_path / "stage" / str(main_cf).lstrip("/")).read_text() == new_main
    assert main_cf.read_text().endswith("old.example\n")

    backups = tmp_path / "backups"
    active = _run_module(tmp_path, {"state": "active", "run_id": "R1", "backup_root": str(backups), **common})
    assert active["changed"] and active["postfix_action"] == "reload"
    assert main_cf.read_text() == new_main
    assert Path(vmailbox + ".db").is_file()
    assert oct(Path(vmailbox).stat().st_mode & 0o777) == "0o640"
    assert (backups / "R1" / str(main_cf).lstrip("/")).read_text().endswith("old.example\n")

    again = _run_module(tmp_path, {"state": "staged", "files": files, "secret_contents": secret, **common})
    assert again["up_to_date"]

    restored = _run_module(tmp_path, {"state": "restored", "backup_dir": str(backups / "R1")})
    assert restored["changed"]
    assert main_cf.read_text().endswith("old.example\n")
    assert not Path(vmailbox).exists() and not Path(vmailbox + ".db").exists()


@pytest.mark.skipif(shutil.which("vagrant") is None, reason="vagrant is not installed (Debian: vagrant)")
def test_vagrantfile_validates_offline(tmp_path: Path) -> None:
    env = {
        **os.environ,
        "VAGRANT_HOME": str(tmp_path / "vagrant.d"),
        "VAGRANT_DOTFILE_PATH": str(tmp_path / "dot-vagrant"),
        "VAGRANT_CHECKPOINT_DISABLE": "1",
    }
    for box in ("", "rockylinux/9", "debian/bookworm64"):
        run_env = {**env, "MAILPROV_BOX": box} if box else env
        proc = subprocess.run(
            # No provider plugin on a fresh machine: validate everything but the provider blocks.
            ["vagrant", "validate", "--ignore-provider"],
            capture_output=True,
            text=True,
            cwd=PROJECT_ROOT,
            env=run_env,
            timeout=300,
        )
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert "validated successfully" in proc.stdout


def test_invalid_input_fails_in_validation_before_any_host_task() -> None:
    """The collection's tests_invalid_input.yml: every bad input stops at an input check (runs on localhost)."""
    playbook = apply_mod.COLLECTION_DIR / "tests" / "tests_invalid_input.yml"
    proc = subprocess.run(
        [apply_mod.ansible_playbook_path(), "-i", "localhost,", "-c", "local", str(playbook)],
        capture_output=True,
        text=True,
        timeout=300,
        env={
            **os.environ,
            "ANSIBLE_COLLECTIONS_PATH": str(apply_mod.COLLECTIONS_DIR),
            "ANSIBLE_NOCOLOR": "1",
        },
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    recap = proc.stdout[proc.stdout.index("PLAY RECAP") :]
    assert "failed=0" in recap and "rescued=8" in recap, recap


def test_execution_environment_definition_builds_a_context(tmp_path: Path) -> None:
    builder = shutil.which("ansible-builder") or str(Path(sys.executable).parent / "ansible-builder")
    if not Path(builder).exists():
        pytest.skip("ansible-builder is not installed (pip install ansible-builder)")
    proc = subprocess.run(
        [
            builder,
            "create",
            "-f",
            str(PROJECT_ROOT / "execution-environment.yml"),
            "-c",
            str(tmp_path / "ctx"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    context = tmp_path / "ctx" / "_build" / "mailprov"
    assert (context / "collections/ansible_collections/mailprov/mail/galaxy.yml").is_file()
    assert (context / "provisioner/render.py").is_file() and (context / "templates").is_dir()
    containerfile = next((tmp_path / "ctx").glob("[CD]*file")).read_text()
    assert "pip install --no-cache-dir -e /opt/mailprov" in containerfile


def test_apply_refuses_a_host_that_is_no_server_of_the_spec(tmp_path: Path) -> None:
    """mailprov_hostname naming no server is bad input (exit 2), found before any host is contacted."""
    inventory = tmp_path / "inventory.ini"
    # 127.0.0.9 has no SSH server: a run that tried to connect would fail as unreachable, not as bad input.
    inventory.write_text("mx9 ansible_host=127.0.0.9 mailprov_hostname=mx9.example.test\n")
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "provisioner",
            "apply",
            str(PROJECT_ROOT / "examples" / "mail.yml"),
            "-i",
            str(inventory),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=PROJECT_ROOT,
    )
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "mailprov_hostname: mx9.example.test is neither the spec's hostname" in proc.stderr
    assert "Traceback" not in proc.stderr and "unreachable" not in proc.stdout + proc.stderr
