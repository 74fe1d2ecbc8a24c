"""Apply: the role's controller side (spec -> per-profile plans) and `mailprov apply`, a thin runner.

The collection `mailprov.mail` (collections/ansible_collections/mailprov/mail) is the one place where host
work is described; its role `mailprov.mail.server` takes the spec (`mailprov_spec` or `mailprov_spec_file`)
and its action plugin `mailprov.mail.render` calls `role_input()` here, on the controller: the spec is
validated by the same model as `mailprov render`, and rendered for every OS profile, so a mixed inventory
needs no extra fact-gathering pass and what Ansible installs is byte for byte what `mailprov render` shows.

`mailprov apply` only writes the spec where the role reads it, points Ansible at the collection in this
tree, runs playbooks/site.yml, and folds the JSON-lines events into a recap. Pure parts (plans, command
line, environment, event parsing, recap) are module functions with unit tests; `run()` is the only place
that starts a process.
"""

from __future__ import annotations

import datetime
import hashlib
import inspect
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ruamel.yaml import YAML

from provisioner import PLAYBOOKS_DIR, PROJECT_ROOT
from provisioner import profiles as profiles_mod
from provisioner import render as render_mod
from provisioner import spec as spec_mod
from provisioner.errors import ApplyError, SpecError, UsageError
from provisioner.profiles import Profile
from provisioner.spec import Spec

PLAYBOOK = PLAYBOOKS_DIR / "site.yml"
ANSIBLE_CFG = PLAYBOOKS_DIR / "ansible.cfg"
CALLBACK_DIR = PLAYBOOKS_DIR / "callback_plugins"
CALLBACK_NAME = "mailprov_events"
#: The collection tree in this repository: ANSIBLE_COLLECTIONS_PATH points here (no Galaxy, no network).
COLLECTIONS_DIR = PROJECT_ROOT / "collections"
COLLECTION_DIR = COLLECTIONS_DIR / "ansible_collections" / "mailprov" / "mail"
ROLE_DIR = COLLECTION_DIR / "roles" / "server"
#: Rendered paths whose content is secret (password hashes, the relay password): never logged or diffed.
SECRET_PATHS = render_mod.SECRET_PATHS


def check_applicable(spec: Spec) -> None:
    """Refuse spec features whose host work apply does not do yet (render and verify support them).

    Installing their configuration without their packages and services would leave Dovecot unable to
    start (Sieve), a milter nobody answers (rspamd) or no certificate (ACME): refused before any host
    changes, naming the field. See docs/spec.md.
    """
    unsupported = (
        ("sieve.enabled", spec.sieve.enabled, "Pigeonhole (Sieve, ManageSieve)"),
        ("antispam.enabled", spec.antispam.enabled, "rspamd"),
        ("tls.mode", spec.tls.mode == "acme", "certbot and nginx (ACME)"),
    )
    for field_name, used, what in unsupported:
        if used:
            raise SpecError(
                field_name,
                f"apply does not install {what} on hosts yet; `mailprov render` shows and checks the"
                " configuration, and `mailprov verify` checks a server that has it. Expected: turn it off to"
                " apply this spec",
            )


#: Greeting kind of each port for the post-activation probe.
PORT_KINDS = {25: "smtp", 587: "smtp", 465: "tls", 143: "imap", 993: "tls", 110: "pop3", 995: "tls"}
#: What the SELinux tasks need (semanage and its Python bindings); restorecon comes with the base system.
SELINUX_PACKAGES = ("policycoreutils-python-utils",)
#: Sockets Dovecot creates for Postfix (LMTP delivery, SASL).
SOCKETS = ("/var/spool/postfix/private/dovecot-lmtp", "/var/spool/postfix/private/auth")

#: mailprov's own bookkeeping on the host (the applied-state record), not configuration.
RECORD_DIRS = ("/etc/mailprov/",)

Transform = Callable[[dict[str, str]], dict[str, str]]


# ---------------------------------------------------------------------------------------------------------
# Plan: what the role needs, as data
# ---------------------------------------------------------------------------------------------------------


def profile_map() -> dict[str, str]:
    """`OS family-major version` -> profile name, for the play to pick a profile from facts."""
    return {
        f"{p.family}-{major}": p.name for p in profiles_mod.PROFILES.values() for major in p.major_versions
    }


def probe_host(spec: Spec) -> str:
    """The address the post-activation probe connects to on the host itself."""
    interfaces = spec.network.interfaces
    if isinstance(interfaces, list):
        return interfaces[0]
    return "127.0.0.1" if spec.network.ipv4 else "::1"


def tls_chain_text(spec: Spec) -> str:
    """The certificate followed by its chain (mode files), as installed on the host; '' otherwise."""
    if spec.tls.mode != "files" or spec.tls.cert is None:
        return ""
    chain = spec.tls.cert.read_text(encoding="utf-8")
    if not chain.endswith("\n"):
        chain += "\n"
    if spec.tls.chain is not None:
        chain += spec.tls.chain.read_text(encoding="utf-8")
    return chain


def plan(
    spec: Spec,
    profile: Profile,
    files: Mapping[str, str],
    hostname: str | None = None,
    tls_chain: str | None = None,
) -> dict[str, Any]:
    """The role's plan for one profile: rendered files with ownership, and what the host tasks need.

    `hostname` is the server this plan is for (default: the spec's hostname, the primary); a backup MX
    (one of backup_mx) runs Postfix only: it accepts mail for the spec's domains and queues it for the primary.
    Key material travels as a path on the control machine and a digest (to tell whether the host's copy is
    current), never as content.
    """
    check_applicable(spec)
    server = hostname or spec.hostname
    backup = server != spec.hostname
    entries = []
    secrets = {}
    for rel in sorted(files):
        meta = render_mod.file_meta(rel, profile)
        path = "/" + rel
        entry: dict[str, Any] = {"path": path, "owner": meta.owner, "group": meta.group, "mode": meta.mode}
        if rel in SECRET_PATHS:
            secrets[path] = files[rel]
            entry["content"] = None
        else:
            entry["content"] = files[rel]
        entries.append(entry)
    # A backup serves SMTP on 25 only: no mailboxes (Dovecot), no submission, no signing.
    served = [25] if backup else spec.open_ports
    services = [profile.firewalld_services[p] for p in served if p in profile.firewalld_services]
    signing = spec.dkim.signing and not backup
    daemons = ["postfix"] if backup else ["postfix", "dovecot"]
    packages = [p for p in profile.packages if not (backup and p.startswith("dovecot"))]
    probe_ports: list[dict[str, Any]] = [
        {"port": p, "kind": PORT_KINDS[p]} for p in served if p in PORT_KINDS
    ]
    if signing:
        # OpenDKIM's milter answers only after the client speaks: a TCP connect on loopback is the probe.
        probe_ports.append({"port": render_mod.DKIM_MILTER_PORT, "kind": "tcp", "host": "127.0.0.1"})
    dkim_src, dkim_sha256 = "", ""
    if signing and spec.dkim.private_key is not None:
        dkim_src = str(spec.dkim.private_key.resolve())
        dkim_sha256 = hashlib.sha256(spec.dkim.private_key.read_bytes()).hexdigest()
    files_mode = spec.tls.mode == "files" and spec.tls.key is not None
    return {
        "profile": profile.name,
        "title": profile.title,
        # semanage (SELinux file contexts) comes with the EL profile's packages.
        "role": "backup" if backup else "primary",
        "services": daemons,
        "packages": packages
        + (list(profile.dkim_packages) if signing else [])
        + (list(SELINUX_PACKAGES) if profile.selinux else []),
        "map_type": profile.map_type,
        "maps": ["/" + m for m in render_mod.POSTFIX_MAPS if m in files],
        "files": entries,
        "secret_contents": secrets,
        "digest": render_mod.tree_digest(dict(files)),
        "hostname": server,
        "mail_root": spec.mail_root,
        "vmail_user": render_mod.VMAIL_USER,
        "vmail_uid": render_mod.VMAIL_UID,
        "selinux": profile.selinux,
        "mta_alternative": profile.mta_alternative,
        "tls": {
            "mode": spec.tls.mode,
            "cert": profile.tls_cert,
            "key": profile.tls_key,
            "cert_content": tls_chain_text(spec) if tls_chain is None else tls_chain,
            "key_src": str(spec.tls.key.resolve()) if files_mode and spec.tls.key else "",
        },
        "dkim": {
            "signing": signing,
            "key": profile.dkim_key,
            "key_dir": profile.dkim_key_dir,
            "key_src": dkim_src,
            "key_sha256": dkim_sha256,
            "user": profile.dkim_user,
            "service": profile.dkim_service,
        },
        "firewall": {
            "services": list(dict.fromkeys(services)),
            "managed": sorted(set(profile.firewalld_services.values())),
        },
        "probe": {
            "host": probe_host(spec),
            "ports": probe_ports,
            "sockets": [] if backup else list(SOCKETS),
        },
    }


def server_names(spec: Spec) -> list[str]:
    """The servers a spec describes: its hostname (the primary), then its backup MX hosts, if any."""
    backups = getattr(spec, "backup_mx", None) or []
    return [spec.hostname, *[str(b) for b in backups]]


def check_server(spec: Spec, mailprov_hostname: str | None) -> str:
    """The server an inventory host is (`mailprov_hostname`, default the spec's hostname); UsageError if unknown."""
    name = (mailprov_hostname or "").strip().lower().rstrip(".") or spec.hostname
    names = server_names(spec)
    if name not in names:
        raise UsageError(
            f"mailprov_hostname: {name} is neither the spec's hostname ({spec.hostname}) nor one of its "
            f"backup_mx ({', '.join(names[1:]) or 'none'}); expected one of {', '.join(names)}"
        )
    return name


def load_role_spec(
    spec_data: Any = None, spec_file: str | Path | None = None, base_dir: Path | None = None
) -> Spec:
    """The role's input as a Spec: exactly one of mailprov_spec (data) or mailprov_spec_file (path).

    Errors name the role variable and the spec field: `mailprov_spec: domains[0].name: ...`.
    """
    has_data = spec_data not in (None, "", {})
    has_file = bool(spec_file)
    if has_data == has_file:
        raise UsageError(
            "mailprov_spec / mailprov_spec_file: expected exactly one of them (the spec as a mapping, "
            f"or the path of mail.yml on the controller); got {'both' if has_data else 'neither'}"
        )
    if has_file:
        path = Path(str(spec_file)).expanduser()
        if not path.is_absolute() and base_dir is not None:
            path = base_dir / path
        try:
            return spec_mod.load(path)
        except SpecError as exc:
            raise UsageError(f"mailprov_spec_file ({path}): {_spec_problem(exc)}") from None
    try:
        return spec_mod.from_data(_plain(spec_data), "mailprov_spec", base_dir)
    except SpecError as exc:
        raise UsageError(f"mailprov_spec: {_spec_problem(exc)}") from None


def _spec_problem(exc: SpecError) -> str:
    where = f"{exc.field}" + (f" (line {exc.line})" if exc.line else "")
    return f"{where}: {exc.message}" if where else exc.message


def _plain(value: Any) -> Any:
    """Ansible's (tagged) containers and strings as plain Python types, for the model."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, bool):
        return bool(value)
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return float(value)
    if isinstance(value, str):
        return str(value)
    return value


def warm() -> None:
    """Compile every template now: Ansible's forked workers then inherit them instead of each compiling."""
    environment = getattr(render_mod, "_environment", None)
    if environment is None:  # only a speed-up: rendering compiles on demand anyway
        return
    env = environment()
    for name in render_mod.template_names():
        env.get_template(name)


def role_input(
    spec: Spec,
    mailprov_hostname: str | None = None,
    append: Mapping[str, str] | None = None,
    profiles: list[Profile] | None = None,
) -> dict[str, Any]:
    """What the role's render step returns for one host: its server name and a plan per OS profile.

    `append` (tests only: the role's internal `__mailprov_append`) adds text to rendered files, to prove
    that a file the real programs reject is never activated.
    """
    server = check_server(spec, mailprov_hostname)
    chain = tls_chain_text(spec)
    plans = {}
    for profile in profiles or list(profiles_mod.PROFILES.values()):
        files = render_server(spec, profile, server)
        if append:
            files = dict(files)
            for rel, text in append.items():
                files[rel] = files.get(rel, "") + text
        plans[profile.name] = plan(spec, profile, files, server, chain)
    return {
        "hostname": server,
        "servers": server_names(spec),
        "plans": plans,
        "profile_map": profile_map(),
        "state_inputs": state_inputs(plans),
    }


def render_server(spec: Spec, profile: Profile, server: str) -> dict[str, str]:
    """The files of one server of the spec: the primary's, or a backup MX's (render's `server` argument)."""
    if server == spec.hostname:
        return render_mod.render(spec, profile)
    render_fn: Any = render_mod.render
    if "server" not in inspect.signature(render_fn).parameters:
        raise UsageError(
            f"mailprov_hostname: {server} is a backup MX of the spec, but this version of mailprov cannot "
            "render a backup's configuration yet (relay_domains, relay_recipient_maps); converge only the "
            "primary for now"
        )
    files: dict[str, str] = render_fn(spec, profile, server=server)
    return files


def state_inputs(plans: Mapping[str, Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """host_state's options per `FAMILY-MAJOR`: the module detects the OS and checks against its profile."""
    out = {}
    for key, name in profile_map().items():
        if name not in plans:
            continue
        p = plans[name]
        out[key] = {
            "packages": p["packages"],
            "vmail_user": p["vmail_user"],
            "vmail_uid": p["vmail_uid"],
            "mail_root": p["mail_root"],
            "services": p["services"],
            "tls_cert": p["tls"]["cert"],
            "tls_key": p["tls"]["key"],
            "hostname": p["hostname"],
            "aliases_db": "/etc/aliases." + ("lmdb" if p["map_type"] == "lmdb" else "db"),
            "dkim_key": p["dkim"]["key"] if p["dkim"]["signing"] else "",
            "dkim_key_sha256": p["dkim"]["key_sha256"],
            "dkim_user": p["dkim"]["user"],
            "dkim_service": p["dkim"]["service"],
            "firewalld_services": p["firewall"]["services"],
            "firewalld_managed": p["firewall"]["managed"],
            # EL ships firewalld as the host firewall: configure it even while it is stopped.
            "firewalld_offline": profiles_mod.PROFILES[name].family == "RedHat",
        }
    return out


def role_os_vars() -> dict[str, str]:
    """The role's per-OS vars files (vars/FAMILY-MAJOR.yml), generated from profiles.py: name -> YAML text."""
    out = {}
    for key, name in sorted(profile_map().items()):
        profile = profiles_mod.PROFILES[name]
        facts = {
            "title": profile.title,
            "packages": list(profile.packages),
            "dkim_packages": list(profile.dkim_packages),
            "selinux_packages": list(SELINUX_PACKAGES) if profile.selinux else [],
            "map_type": profile.map_type,
            "daemon_directory": profile.daemon_directory,
            "tls_cert": profile.tls_cert,
            "tls_key": profile.tls_key,
            "dkim_key": profile.dkim_key,
            "dkim_user": profile.dkim_user,
            "dkim_service": profile.dkim_service,
            "firewalld_services": {
                str(port): svc for port, svc in sorted(profile.firewalld_services.items())
            },
            "selinux": profile.selinux,
            "mta_alternative": profile.mta_alternative,
        }
        stream = io.StringIO()
        yaml = YAML(typ="safe", pure=True)
        yaml.default_flow_style = False
        yaml.indent(mapping=2, sequence=4, offset=2)
        yaml.dump({"__mailprov_profile": name, "__mailprov_os": facts}, stream)
        body = stream.getvalue().rstrip("\n")
        out[f"{key}.yml"] = (
            "---\n# Generated from provisioner/profiles.py (profile "
            f"{name}) by provisioner.apply.write_role_os_vars(); do not edit.\n{body}\n"
        )
    return out


def write_role_os_vars(role_dir: Path = ROLE_DIR) -> list[Path]:
    """Regenerate the role's vars/FAMILY-MAJOR.yml from profiles.py (after a profile changes)."""
    written = []
    for name, text in role_os_vars().items():
        target = role_dir / "vars" / name
        target.write_text(text, encoding="utf-8")
        written.append(target)
    return written


def write_build(
    spec: Spec, build_dir: Path, transform: Transform | None = None, profiles: list[Profile] | None = None
) -> Path:
    """Render the spec for every profile into build_dir (PROFILE.json plans + tree/ copies, for reading).

    `mailprov apply --build-dir` keeps this record of a run; `transform` (tests) may alter the rendered
    files before they become the plan.
    """
    build_dir.mkdir(parents=True, exist_ok=True)
    os.chmod(build_dir, 0o700)
    chain = tls_chain_text(spec)
    for profile in profiles or list(profiles_mod.PROFILES.values()):
        files = render_mod.render(spec, profile)
        if transform is not None:
            files = transform(dict(files))
        render_mod.write_tree(files, build_dir / profile.name / "tree")
        data = {"mailprov_plan": plan(spec, profile, files, tls_chain=chain)}
        target = build_dir / f"{profile.name}.json"
        target.write_text(json.dumps(data, indent=1), encoding="utf-8")
        os.chmod(target, 0o600)
    return build_dir


def spec_document(spec: Spec) -> str:
    """The validated spec as a JSON document the role reads back (`mailprov_spec_file`): same model, same files."""
    return json.dumps(spec.model_dump(mode="json"), indent=1)


def extra_vars(
    spec_file: Path | None = None,
    append: Mapping[str, str] | None = None,
    run_id: str | None = None,
    serial: int | None = None,
) -> dict[str, Any]:
    """The playbook's extra variables: the spec file (all hosts), test appends, batch size, the run's timestamp."""
    data: dict[str, Any] = {}
    if spec_file is not None:
        data["mailprov_spec_file"] = str(spec_file)
    if serial:
        data["mailprov_serial"] = serial
    if append:
        data["__mailprov_append"] = dict(append)
    data["mailprov_run_id"] = run_id or datetime.datetime.now(datetime.UTC).strftime("%Y%m%dT%H%M%S%fZ")
    return data


def host_inventory(host_spec_files: Mapping[str, Path]) -> dict[str, Any]:
    """An extra inventory source giving some hosts their own spec (host variable `mailprov_spec_file`)."""
    return {
        "all": {"hosts": {host: {"mailprov_spec_file": str(path)} for host, path in host_spec_files.items()}}
    }


# ---------------------------------------------------------------------------------------------------------
# Command line and environment
# ---------------------------------------------------------------------------------------------------------


def ansible_playbook_path() -> str:
    """ansible-playbook from the Python environment running mailprov (or PATH)."""
    beside = Path(sys.executable).parent / "ansible-playbook"
    if beside.exists():
        return str(beside)
    found = shutil.which("ansible-playbook")
    if found is None:
        raise UsageError(
            "ansible-playbook not found: install ansible-core (pip install 'ansible-core>=2.19,<2.20')"
        )
    return found


def playbook_command(
    inventory: str | list[str],
    extra_vars_file: Path,
    *,
    check: bool = False,
    diff: bool = False,
    limit: str | None = None,
    tags: str | None = None,
    playbook: Path = PLAYBOOK,
    executable: str = "ansible-playbook",
) -> list[str]:
    """The ansible-playbook argv for one apply run (several inventory sources are merged by Ansible)."""
    argv = [executable]
    for source in [inventory] if isinstance(inventory, str) else inventory:
        argv += ["-i", source]
    argv += ["-e", f"@{extra_vars_file}"]
    if check:
        argv.append("--check")
    if diff:
        argv.append("--diff")
    if limit:
        argv += ["--limit", limit]
    if tags:
        argv += ["--tags", tags]
    argv.append(str(playbook))
    return argv


def ansible_env(base: Mapping[str, str] | None = None) -> dict[str, str]:
    """Environment for ansible-playbook: our config, this tree's collection first, the JSON-lines callback."""
    env = dict(os.environ if base is None else base)
    # This tree's collection wins over any installed copy (a fresh clone runs without Galaxy).
    paths = [
        str(COLLECTIONS_DIR),
        *[p for p in env.get("ANSIBLE_COLLECTIONS_PATH", "").split(os.pathsep) if p],
    ]
    env.update(
        {
            "ANSIBLE_CONFIG": str(ANSIBLE_CFG),
            "ANSIBLE_COLLECTIONS_PATH": os.pathsep.join(dict.fromkeys(paths)),
            "ANSIBLE_STDOUT_CALLBACK": CALLBACK_NAME,
            "ANSIBLE_CALLBACK_PLUGINS": str(CALLBACK_DIR),
            "ANSIBLE_NOCOLOR": "1",
            "ANSIBLE_FORCE_COLOR": "0",
            "ANSIBLE_NOCOWS": "1",
            "ANSIBLE_RETRY_FILES_ENABLED": "0",
            "ANSIBLE_DEPRECATION_WARNINGS": "0",
            "PYTHONUNBUFFERED": "1",
        }
    )
    return env


# ---------------------------------------------------------------------------------------------------------
# Events and recap
# ---------------------------------------------------------------------------------------------------------


def parse_event(line: str) -> dict[str, Any] | None:
    """One callback line -> event dict; None for lines that are not events (stray output)."""
    line = line.strip()
    if not line.startswith("{"):
        return None
    try:
        event = json.loads(line)
    except json.JSONDecodeError:
        return None
    return event if isinstance(event, dict) and "event" in event else None


@dataclass
class HostRecap:
    """Counts and details for one host."""

    ok: int = 0
    changed: int = 0
    failed: int = 0
    unreachable: int = 0
    skipped: int = 0
    rescued: int = 0
    files_changed: list[str] = field(default_factory=list)
    failures: list[dict[str, str]] = field(default_factory=list)


@dataclass
class ApplyResult:
    """The outcome of one apply run."""

    hosts: dict[str, HostRecap] = field(default_factory=dict)
    check: bool = False
    returncode: int = 0
    elapsed: float = 0.0
    warnings: list[str] = field(default_factory=list)
    stderr: str = ""

    @property
    def ok(self) -> bool:
        """True when every host converged (no failed or unreachable host) and Ansible agreed."""
        return (
            bool(self.hosts)
            and self.returncode == 0
            and all(h.failed == 0 and h.unreachable == 0 for h in self.hosts.values())
        )

    @property
    def bad_input(self) -> list[str]:
        """Failures caused by the input (spec, role variables), not by a host: exit code 2."""
        return [
            failure["msg"]
            for host in self.hosts.values()
            for failure in host.failures
            if is_input_task(failure.get("task", ""))
        ]

    @property
    def changed(self) -> int:
        """Total changed tasks over all hosts."""
        return sum(h.changed for h in self.hosts.values())

    def to_dict(self) -> dict[str, Any]:
        """The documented JSON recap: {"hosts": {NAME: {"ok", "changed", "failed", "unreachable", ...}}}."""
        return {
            "hosts": {name: asdict(h) for name, h in sorted(self.hosts.items())},
            "ok": self.ok,
            "check": self.check,
            "elapsed": round(self.elapsed, 2),
        }


#: Task names (after the role prefix) of the role's input checks: their failures are bad input.
INPUT_TASKS = ("Spec | ", "Validating arguments against arg spec")


def is_input_task(name: str) -> bool:
    """Whether a task is one of the role's input checks (argument specs, spec validation)."""
    short = name.split(" : ", 1)[1] if " : " in name else name
    return short.startswith(INPUT_TASKS)


class Recap:
    """Folds callback events into an ApplyResult."""

    def __init__(self, check: bool = False) -> None:
        self.result = ApplyResult(check=check)

    def host(self, name: str) -> HostRecap:
        """The recap of a host, created on first sight."""
        return self.result.hosts.setdefault(name, HostRecap())

    def feed(self, event: dict[str, Any]) -> None:
        """Take one event into account."""
        kind = event.get("event")
        if kind == "result":
            recap = self.host(event["host"])
            for path in event.get("files", []):
                if path.startswith(RECORD_DIRS):
                    continue
                if event.get("status") == "changed" and path not in recap.files_changed:
                    recap.files_changed.append(path)
            if event.get("status") in ("failed", "unreachable") and not event.get("ignored"):
                recap.failures.append({"task": event.get("task", ""), "msg": event.get("msg", "")})
        elif kind == "stats":
            for name, counts in event.get("hosts", {}).items():
                recap = self.host(name)
                for key in ("ok", "changed", "failed", "unreachable", "skipped", "rescued"):
                    setattr(recap, key, int(counts.get(key, 0)))
        elif kind == "warning":
            self.result.warnings.append(str(event.get("msg", "")))


def final_failure(recap: HostRecap) -> str:
    """The most telling failure message of a host (the last one: rescue blocks end with the reason)."""
    if not recap.failures:
        return ""
    return recap.failures[-1]["msg"] or recap.failures[-1]["task"]


# ---------------------------------------------------------------------------------------------------------
# Running
# ---------------------------------------------------------------------------------------------------------


@dataclass
class ApplyRequest:
    """What to apply where: a default spec, optional per-host specs, and the run options."""

    inventory: Path
    spec: Spec | None = None
    host_specs: dict[str, Spec] = field(default_factory=dict)
    check: bool = False
    diff: bool = False
    limit: str | None = None
    tags: str | None = None
    build_dir: Path | None = None
    #: Tests only: text appended to rendered files (relative path -> text), see `role_input`.
    append: dict[str, str] = field(default_factory=dict)
    #: Converge this many hosts at a time (rolling; None: all at once).
    serial: int | None = None


def _stream(proc: subprocess.Popen[str]) -> Iterator[str]:
    assert proc.stdout is not None
    yield from proc.stdout


def _write_private(path: Path, text: str) -> Path:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(text)
    return path


def prepare(request: ApplyRequest, root: Path) -> tuple[list[str], Path]:
    """Write the role's inputs into root (specs 0600, extra vars, per-host inventory): (inventories, vars file)."""
    os.chmod(root, 0o700)
    inventories = [str(request.inventory)]
    default_file = None
    if request.spec is not None:
        default_file = _write_private(root / "spec.json", spec_document(request.spec))
    host_files = {
        host: _write_private(root / f"spec-{index}.json", spec_document(spec))
        for index, (host, spec) in enumerate(sorted(request.host_specs.items()))
    }
    if host_files:
        overlay = host_inventory(host_files)
        if default_file is not None:
            # Extra vars would override the per-host files: the default is a group variable instead.
            overlay["all"]["vars"] = {"mailprov_spec_file": str(default_file)}
            default_file = None
        inventories.append(str(_write_private(root / "hosts.yml", json.dumps(overlay, indent=1))))
    variables = extra_vars(default_file, request.append, serial=request.serial)
    vars_file = _write_private(root / "extra-vars.json", json.dumps(variables, indent=1))
    if request.build_dir is not None:
        for name, spec in [("default", request.spec), *request.host_specs.items()]:
            if spec is not None:
                write_build(spec, request.build_dir / name)
    return inventories, vars_file


def run(request: ApplyRequest, on_event: Callable[[dict[str, Any]], None] | None = None) -> ApplyResult:
    """Run the collection's role over the inventory, stream events to `on_event`, and return the recap."""
    if not request.inventory.exists():
        raise UsageError(f"-i/--inventory: {request.inventory} does not exist")
    if request.spec is None and not request.host_specs:
        raise UsageError("nothing to apply: no spec given")
    executable = ansible_playbook_path()
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="mailprov-apply-") as temp:
        root = Path(temp)
        inventories, vars_file = prepare(request, root)
        argv = playbook_command(
            inventories,
            vars_file,
            check=request.check,
            diff=request.diff,
            limit=request.limit or (",".join(request.host_specs) if request.spec is None else None),
            tags=request.tags,
            executable=executable,
        )
        recap = Recap(check=request.check)
        with tempfile.TemporaryFile(mode="w+") as errors:
            proc = subprocess.Popen(
                argv,
                stdout=subprocess.PIPE,
                stderr=errors,
                stdin=subprocess.DEVNULL,
                text=True,
                env=ansible_env(),
                cwd=str(root),
            )
            try:
                for line in _stream(proc):
                    event = parse_event(line)
                    if event is None:
                        continue
                    recap.feed(event)
                    if on_event is not None:
                        on_event(event)
                proc.wait()
            except BaseException:
                proc.terminate()
                proc.wait(timeout=30)
                raise
            errors.seek(0)
            stderr = errors.read()
    result = recap.result
    result.returncode = proc.returncode
    result.stderr = stderr
    result.elapsed = time.monotonic() - started
    if not result.hosts:
        if proc.returncode in (0, 4) or "no hosts matched" in " ".join(result.warnings):
            raise UsageError(f"no hosts matched in {request.inventory} (--limit {request.limit or 'all'})")
        raise ApplyError(f"ansible-playbook failed (exit {proc.returncode}): {_tail(stderr)}")
    return result


def _tail(text: str, lines: int = 5) -> str:
    kept = [line for line in text.strip().splitlines() if line.strip()]
    return " | ".join(kept[-lines:]) or "no output"
