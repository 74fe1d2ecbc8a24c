"""Unit tests for the pure parts of apply: plans, command line, environment, events, recap, module logic."""

from __future__ import annotations

import importlib.util
import json
import stat
import sys
from pathlib import Path
from types import ModuleType

import pytest
from typer.testing import CliRunner

from provisioner import apply as apply_mod
from provisioner import profiles
from provisioner import render as render_mod
from provisioner import spec as spec_mod
from provisioner.cli import app
from provisioner.demo import EXAMPLES, demo_specs, with_passwords
from provisioner.errors import UsageError
from provisioner.passwords import verify_password

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "mail.yml"
LIBRARY = apply_mod.COLLECTION_DIR / "plugins" / "modules"


def _module(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, LIBRARY / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def model() -> spec_mod.Spec:
    return spec_mod.load(EXAMPLE)


# --- plan -------------------------------------------------------------------------------------------------


def test_profile_map_covers_every_profile() -> None:
    assert apply_mod.profile_map() == {"RedHat-9": "el9", "RedHat-10": "el10", "Debian-12": "debian12"}


def test_plan_keeps_secrets_apart_and_matches_the_render(model: spec_mod.Spec) -> None:
    profile = profiles.get("el10")
    files = render_mod.render(model, profile)
    plan = apply_mod.plan(model, profile, files)
    paths = [entry["path"] for entry in plan["files"]]
    assert paths == sorted("/" + rel for rel in files)
    users = next(e for e in plan["files"] if e["path"] == "/etc/dovecot/users")
    assert users["content"] is None and (users["group"], users["mode"]) == ("dovecot", "0640")
    assert plan["secret_contents"] == {"/etc/dovecot/users": files["etc/dovecot/users"]}
    assert model.mailboxes[0].password_hash not in json.dumps(plan["files"])
    main_cf = next(e for e in plan["files"] if e["path"] == "/etc/postfix/main.cf")
    assert main_cf["content"] == files["etc/postfix/main.cf"]
    assert plan["digest"] == render_mod.tree_digest(files)
    assert plan["map_type"] == "lmdb" and "postfix-lmdb" in plan["packages"]
    assert plan["maps"] == ["/" + m for m in render_mod.POSTFIX_MAPS if m in files]
    assert "/etc/postfix/sender_login" in plan["maps"] and "/etc/postfix/virtual" in plan["maps"]
    assert plan["selinux"] is True and plan["mta_alternative"] == "/usr/sbin/sendmail.postfix"


def test_plan_opens_only_the_served_ports(model: spec_mod.Spec) -> None:
    no_pop = model.model_copy(update={"pop3": False})
    el9 = apply_mod.plan(no_pop, profiles.get("el9"), render_mod.render(no_pop, profiles.get("el9")))
    assert el9["firewall"]["services"] == ["smtp", "imap", "smtps", "smtp-submission", "imaps"]
    assert "pop3" in el9["firewall"]["managed"] and "pop3" not in el9["firewall"]["services"]
    el10 = apply_mod.plan(no_pop, profiles.get("el10"), render_mod.render(no_pop, profiles.get("el10")))
    assert "submission" in el10["firewall"]["services"]
    assert [p["port"] for p in el9["probe"]["ports"]] == [25, 143, 465, 587, 993]
    assert {p["port"]: p["kind"] for p in el9["probe"]["ports"]}[465] == "tls"


def test_probe_host_follows_the_listen_addresses(model: spec_mod.Spec) -> None:
    assert apply_mod.probe_host(model) == "127.0.0.1"
    pinned = spec_mod.from_data(
        {**_data(), "network": {"interfaces": ["192.0.2.25"], "ipv4": True, "ipv6": False}}
    )
    assert apply_mod.probe_host(pinned) == "192.0.2.25"


def _data() -> dict:
    from ruamel.yaml import YAML

    return dict(YAML(typ="safe").load(EXAMPLE.read_text()))


def test_write_build_renders_every_profile_privately(model: spec_mod.Spec, tmp_path: Path) -> None:
    build = apply_mod.write_build(model, tmp_path / "b")
    assert stat.S_IMODE(build.stat().st_mode) == 0o700
    for name in profiles.PROFILES:
        plan_file = build / f"{name}.json"
        assert stat.S_IMODE(plan_file.stat().st_mode) == 0o600
        plan = json.loads(plan_file.read_text())["mailprov_plan"]
        assert plan["profile"] == name
        assert (build / name / "tree" / "etc/postfix/main.cf").is_file()


def test_write_build_transform_changes_the_plan(model: spec_mod.Spec, tmp_path: Path) -> None:
    def inject(files: dict[str, str]) -> dict[str, str]:
        files["etc/postfix/main.cf"] += "bogus = 1\n"
        return files

    build = apply_mod.write_build(model, tmp_path, inject, [profiles.get("debian12")])
    plan = json.loads((build / "debian12.json").read_text())["mailprov_plan"]
    main_cf = next(e for e in plan["files"] if e["path"] == "/etc/postfix/main.cf")
    assert main_cf["content"].endswith("bogus = 1\n")


def test_extra_vars() -> None:
    data = apply_mod.extra_vars(Path("/b/spec.json"), {"etc/postfix/main.cf": "x = 1\n"}, run_id="R1")
    assert data == {
        "mailprov_spec_file": "/b/spec.json",
        "__mailprov_append": {"etc/postfix/main.cf": "x = 1\n"},
        "mailprov_run_id": "R1",
    }
    assert set(apply_mod.extra_vars()) == {"mailprov_run_id"}
    assert apply_mod.extra_vars(serial=1)["mailprov_serial"] == 1


def test_host_inventory_gives_hosts_their_own_spec() -> None:
    overlay = apply_mod.host_inventory({"mx2": Path("/b/spec-0.json")})
    assert overlay == {"all": {"hosts": {"mx2": {"mailprov_spec_file": "/b/spec-0.json"}}}}


def test_prepare_writes_private_inputs_the_role_reads_back(model: spec_mod.Spec, tmp_path: Path) -> None:
    other = model.model_copy(update={"hostname": "mx2.example.test"})
    request = apply_mod.ApplyRequest(
        inventory=Path("inv.ini"), spec=model, host_specs={"mx2": other}, append={"a": "b"}
    )
    inventories, vars_file = apply_mod.prepare(request, tmp_path)
    assert inventories[0] == "inv.ini" and len(inventories) == 2
    overlay = json.loads(Path(inventories[1]).read_text())
    default_file = overlay["all"]["vars"]["mailprov_spec_file"]
    host_file = overlay["all"]["hosts"]["mx2"]["mailprov_spec_file"]
    # With per-host specs the default is a group variable (an extra var would override the host's own).
    assert "mailprov_spec_file" not in json.loads(vars_file.read_text())
    assert spec_mod.load(default_file) == model and spec_mod.load(host_file) == other
    for path in (default_file, host_file, vars_file):
        assert stat.S_IMODE(Path(path).stat().st_mode) == 0o600
    only = tmp_path / "only"
    only.mkdir()
    inventories, vars_file = apply_mod.prepare(apply_mod.ApplyRequest(Path("i"), spec=model), only)
    assert inventories == ["i"]
    assert spec_mod.load(json.loads(vars_file.read_text())["mailprov_spec_file"]) == model


def test_role_input_renders_every_profile_for_the_server(model: spec_mod.Spec) -> None:
    data = apply_mod.role_input(model)
    assert data["hostname"] == model.hostname and data["servers"][0] == model.hostname
    assert set(data["plans"]) == set(profiles.PROFILES)
    for name, plan in data["plans"].items():
        files = render_mod.render(model, profiles.get(name))
        assert plan["digest"] == render_mod.tree_digest(files)
    appended = apply_mod.role_input(model, append={"etc/postfix/main.cf": "bogus = 1\n"})
    main_cf = next(e for e in appended["plans"]["debian12"]["files"] if e["path"] == "/etc/postfix/main.cf")
    assert main_cf["content"].endswith("bogus = 1\n")


def test_role_input_refuses_a_host_that_is_no_server_of_the_spec(model: spec_mod.Spec) -> None:
    assert apply_mod.role_input(model, model.hostname.upper() + ".")["hostname"] == model.hostname
    with pytest.raises(UsageError, match=r"^mailprov_hostname: other\.example\.test is neither"):
        apply_mod.role_input(model, "other.example.test")


def test_load_role_spec_names_the_variable_and_the_field(tmp_path: Path) -> None:
    data = _data()
    assert apply_mod.load_role_spec(data).hostname == data["hostname"]
    with pytest.raises(UsageError, match="exactly one"):
        apply_mod.load_role_spec()
    with pytest.raises(UsageError, match="got both"):
        apply_mod.load_role_spec(data, "mail.yml")
    bad = {**data, "domains": [{"name": "not a domain"}]}
    with pytest.raises(UsageError, match=r"^mailprov_spec: domains\[0\]\.name: "):
        apply_mod.load_role_spec(bad)
    (tmp_path / "mail.yml").write_text("hostname: mail.example.test\nbogus: 1\n")
    with pytest.raises(
        UsageError, match=r"^mailprov_spec_file \(.*mail\.yml\): bogus \(line 2\): unknown key"
    ):
        apply_mod.load_role_spec(spec_file="mail.yml", base_dir=tmp_path)


def test_role_os_vars_are_generated_from_the_profiles() -> None:
    """vars/FAMILY-MAJOR.yml match profiles.py; after a profile change: apply.write_role_os_vars()."""
    from ruamel.yaml import YAML

    generated = apply_mod.role_os_vars()
    assert set(generated) == {f"{key}.yml" for key in apply_mod.profile_map()}
    for name, text in generated.items():
        on_disk = apply_mod.ROLE_DIR / "vars" / name
        assert on_disk.read_text() == text, f"{on_disk} is stale: run provisioner.apply.write_role_os_vars()"
        data = YAML(typ="safe").load(text)
        profile = profiles.get(data["__mailprov_profile"])
        assert data["__mailprov_os"]["packages"] == list(profile.packages)


def test_playbook_command() -> None:
    argv = apply_mod.playbook_command("inv.ini", Path("/b/vars.json"))
    assert argv == ["ansible-playbook", "-i", "inv.ini", "-e", "@/b/vars.json", str(apply_mod.PLAYBOOK)]
    argv = apply_mod.playbook_command(
        ["inv.ini", "/b/hosts.yml"],
        Path("/v.json"),
        check=True,
        diff=True,
        limit="mx1,mx2",
        tags="config",
        executable="/x/ap",
    )
    assert argv[:5] == ["/x/ap", "-i", "inv.ini", "-i", "/b/hosts.yml"]
    assert argv[7:13] == ["--check", "--diff", "--limit", "mx1,mx2", "--tags", "config"]


def test_ansible_env_uses_our_config_collection_and_callback() -> None:
    env = apply_mod.ansible_env(
        {"PATH": "/usr/bin", "ANSIBLE_STDOUT_CALLBACK": "yaml", "ANSIBLE_COLLECTIONS_PATH": "/opt/c"}
    )
    assert env["PATH"] == "/usr/bin"
    assert env["ANSIBLE_STDOUT_CALLBACK"] == "mailprov_events"
    assert env["ANSIBLE_COLLECTIONS_PATH"] == f"{apply_mod.COLLECTIONS_DIR}:/opt/c"
    assert (apply_mod.COLLECTIONS_DIR / "ansible_collections/mailprov/mail/galaxy.yml").is_file()
    assert Path(env["ANSIBLE_CONFIG"]).is_file()
    assert (Path(env["ANSIBLE_CALLBACK_PLUGINS"]) / "mailprov_events.py").is_file()
    cfg = Path(env["ANSIBLE_CONFIG"]).read_text()
    assert "pipelining = True" in cfg and "ControlPersist" in cfg


# --- events and recap ---------------------------------------------------------------------------------------


def test_parse_event() -> None:
    assert apply_mod.parse_event('{"event": "task", "name": "x"}\n') == {"event": "task", "name": "x"}
    assert apply_mod.parse_event("[WARNING]: something") is None
    assert apply_mod.parse_event("{not json") is None
    assert apply_mod.parse_event('{"no_event": 1}') is None


def test_recap_folds_events() -> None:
    recap = apply_mod.Recap()
    events = [
        {
            "event": "result",
            "host": "mx1",
            "task": "t1",
            "status": "changed",
            "files": ["/etc/postfix/main.cf"],
        },
        {
            "event": "result",
            "host": "mx1",
            "task": "rec",
            "status": "changed",
            "files": ["/etc/mailprov/applied.json"],
        },
        {"event": "result", "host": "mx2", "task": "probe", "status": "failed", "msg": "port 25: refused"},
        {"event": "result", "host": "mx2", "task": "fail", "status": "failed", "msg": "rolled back: why"},
        {
            "event": "result",
            "host": "mx2",
            "task": "x",
            "status": "failed",
            "msg": "ignored",
            "ignored": True,
        },
        {
            "event": "stats",
            "hosts": {
                "mx1": {"ok": 20, "changed": 2, "failed": 0, "unreachable": 0, "skipped": 5, "rescued": 0},
                "mx2": {"ok": 9, "changed": 1, "failed": 1, "unreachable": 0, "skipped": 3, "rescued": 1},
            },
        },
    ]
    for event in events:
        recap.feed(event)
    result = recap.result
    assert result.hosts["mx1"].files_changed == ["/etc/postfix/main.cf"]
    assert (result.hosts["mx1"].ok, result.hosts["mx1"].changed) == (20, 2)
    assert [f["task"] for f in result.hosts["mx2"].failures] == ["probe", "fail"]
    assert apply_mod.final_failure(result.hosts["mx2"]) == "rolled back: why"
    assert not result.ok and result.changed == 3
    data = result.to_dict()
    assert set(data["hosts"]["mx1"]) >= {"ok", "changed", "failed", "unreachable", "files_changed"}
    assert json.loads(json.dumps(data))["hosts"]["mx2"]["failed"] == 1


def test_result_ok_needs_hosts_and_a_clean_exit() -> None:
    assert not apply_mod.ApplyResult().ok
    result = apply_mod.ApplyResult(hosts={"mx1": apply_mod.HostRecap(ok=3)})
    assert result.ok
    result.returncode = 2
    assert not result.ok


def test_run_refuses_a_missing_inventory(model: spec_mod.Spec, tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="inventory"):
        apply_mod.run(apply_mod.ApplyRequest(inventory=tmp_path / "nope.ini", spec=model))


# --- the Ansible modules' pure logic ------------------------------------------------------------------------


def test_tree_module_decides_reload_or_restart() -> None:
    tree = _module("tree")
    main_old = "inet_interfaces = all\nmyhostname = a\n"
    assert tree.postfix_action({}) == "none"
    assert tree.postfix_action({"/etc/postfix/vmailbox": ("a", "b")}) == "none"
    assert (
        tree.postfix_action(
            {"/etc/postfix/main.cf": (main_old, main_old.replace("myhostname = a", "myhostname = b"))}
        )
        == "reload"
    )
    restart = {"/etc/postfix/main.cf": (main_old, main_old.replace("all", "loopback-only"))}
    assert tree.postfix_action(restart) == "restart"
    assert tree.postfix_action({"/etc/postfix/master.cf": ("x", "y")}) == "restart"
    assert tree.postfix_action({"/etc/postfix/main.cf": (None, main_old)}) == "restart"
    conf = "protocols = imap lmtp\nssl = required\nservice imap-login {\n  inet_listener imap {\n    port = 143\n  }\n}\n"
    assert tree.dovecot_action({"/etc/dovecot/users": ("a", "b")}) == "none"
    assert (
        tree.dovecot_action({"/etc/dovecot/dovecot.conf": (conf, conf.replace("required", "yes"))})
        == "reload"
    )
    assert (
        tree.dovecot_action(
            {"/etc/dovecot/dovecot.conf": (conf, conf.replace("imap lmtp", "imap pop3 lmtp"))}
        )
        == "restart"
    )
    assert (
        tree.dovecot_action({"/etc/dovecot/dovecot.conf": (conf, conf.replace("143", "1143"))}) == "restart"
    )


def test_tree_module_parsers() -> None:
    tree = _module("tree")
    assert tree.parse_main_cf("# c\na = 1\nb = x,\n  y\n") == {"a": "1", "b": "x, y"}
    assert tree.parse_dovecot_top("protocols = imap\nplugin {\n  quota = x\n}\n") == {"protocols": "imap"}
    assert tree.map_file("/etc/postfix/vmailbox", "lmdb") == "/etc/postfix/vmailbox.lmdb"
    assert tree.map_file("/etc/postfix/vmailbox", "hash") == "/etc/postfix/vmailbox.db"


def test_host_state_lists_only_the_firewall_changes_needed() -> None:
    state = _module("host_state")
    wanted, managed = ["smtp", "imaps"], ["smtp", "imaps", "pop3", "pop3s"]
    assert state.firewall_todo(["ssh", "smtp", "imaps"], ["ssh", "smtp", "imaps"], wanted, managed) == []
    todo = state.firewall_todo(["ssh", "smtp", "pop3"], ["smtp", "imaps"], wanted, managed)
    assert todo == [{"service": "imaps", "state": "enabled"}, {"service": "pop3", "state": "disabled"}]
    # A stopped firewalld (None at runtime): only the permanent configuration counts.
    assert state.firewall_todo(None, ["smtp", "imaps"], wanted, managed) == []
    assert state.firewall_todo(None, ["ssh"], [], ["smtp"]) == []


def test_host_state_reads_the_distribution_like_ansible() -> None:
    state = _module("host_state")
    debian = state.parse_os_release(
        'PRETTY_NAME="Debian GNU/Linux 12 (bookworm)"\nNAME="Debian GNU/Linux"\nVERSION_ID="12"\nID=debian\n'
    )
    facts = state.distribution_facts(debian, selinux_enabled=False)
    assert (facts["os_family"], facts["distribution_major_version"]) == ("Debian", "12")
    assert facts["selinux"] == {"status": "disabled"}
    alma = state.parse_os_release(
        'NAME="AlmaLinux"\nVERSION_ID="9.4"\nID="almalinux"\nID_LIKE="rhel centos fedora"\n'
    )
    facts = state.distribution_facts(alma, selinux_enabled=True)
    assert (facts["os_family"], facts["distribution_major_version"], facts["distribution"]) == (
        "RedHat",
        "9",
        "AlmaLinux",
    )
    assert facts["selinux"]["status"] == "enabled"
    other = state.distribution_facts(
        state.parse_os_release("ID=myrhel\nID_LIKE=rhel\nVERSION_ID=10.0\n"), False
    )
    assert (other["os_family"], other["distribution_major_version"]) == ("RedHat", "10")
    assert state.distribution_facts({}, False)["os_family"] == ""


def test_state_inputs_cover_every_supported_os(model: spec_mod.Spec) -> None:
    inputs = apply_mod.role_input(model)["state_inputs"]
    assert set(inputs) == set(apply_mod.profile_map())
    assert (
        inputs["RedHat-10"]["aliases_db"] == "/etc/aliases.lmdb" and inputs["RedHat-10"]["firewalld_offline"]
    )
    assert inputs["Debian-12"]["tls_cert"] == profiles.get("debian12").tls_cert
    assert not inputs["Debian-12"]["firewalld_offline"] and inputs["Debian-12"]["dkim_key"] == ""


def test_recap_tells_bad_input_from_host_failures() -> None:
    recap = apply_mod.Recap()
    recap.feed(
        {
            "event": "result",
            "host": "mx1",
            "task": "mailprov.mail.server : Spec | validate the spec",
            "status": "failed",
            "msg": "mailprov_hostname: x is neither",
        }
    )
    recap.feed({"event": "result", "host": "mx2", "task": "Config | probe", "status": "failed", "msg": "p"})
    assert recap.result.bad_input == ["mailprov_hostname: x is neither"]
    assert apply_mod.is_input_task("mailprov.mail.server : Validating arguments against arg spec 'main'")
    assert not apply_mod.is_input_task("mailprov.mail.server : Config | probe")


def test_rendered_tree_and_plan_agree_for_real_profiles(model: spec_mod.Spec) -> None:
    for profile in profiles.PROFILES.values():
        files = render_mod.render(model, profile)
        plan = apply_mod.plan(model, profile, files)
        assert plan["tls"]["cert"] == profile.tls_cert and plan["tls"]["key"] == profile.tls_key
        relay_only = ("etc/postfix/sasl_passwd", "etc/postfix/tls_policy")
        assert all(p in files for p in render_mod.POSTFIX_MAPS if p not in relay_only)


# --- demo ---------------------------------------------------------------------------------------------------


def test_demo_specs_get_fresh_passwords() -> None:
    specs, passwords = demo_specs()
    assert set(specs) == {"mx1", "mx2"}
    assert set(passwords) == {"alice@example.test", "bob@example.net"}
    for spec in specs.values():
        for box in spec.mailboxes:
            assert verify_password(passwords[box.address], box.password_hash)
    assert passwords["alice@example.test"] != demo_specs()[1]["alice@example.test"]


def test_with_passwords_keeps_other_fields() -> None:
    text = (EXAMPLES / "example.net.yml").read_text()
    out = with_passwords(text, {"bob@example.net": "s3cret-for-test"})
    assert spec_mod.loads(out).pop3 is False
    assert "s3cret-for-test" not in out


# --- CLI ----------------------------------------------------------------------------------------------------


def test_apply_and_demo_have_help() -> None:
    runner = CliRunner()
    for command in ("apply", "demo"):
        result = runner.invoke(app, [command, "--help"])
        assert result.exit_code == 0, result.output
        assert "Example:" in result.output


def test_apply_cli_bad_input_exits_2(tmp_path: Path) -> None:
    runner = CliRunner()
    result = runner.invoke(app, ["apply", str(EXAMPLE), "-i", str(tmp_path / "missing.ini")])
    assert result.exit_code == 2
    bad = tmp_path / "bad.yml"
    bad.write_text("hostname: not a host\n")
    inventory = tmp_path / "inv.ini"
    inventory.write_text("[mail]\n")
    result = runner.invoke(app, ["apply", str(bad), "-i", str(inventory)])
    assert result.exit_code == 2
