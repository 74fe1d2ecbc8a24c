"""Apply: render the spec for every OS profile, run playbooks/site.yml, and parse its events into a recap.

The control machine renders (Python, `render.render`), Ansible converges. Rendering happens for all
profiles up front, into one directory per profile, so a single playbook run serves a mixed inventory: each
host picks its profile from its own facts (`ansible_os_family` + major version) and loads that directory's
plan. That costs a few milliseconds of Jinja per profile instead of a separate fact-gathering pass over
SSH. What Ansible installs is byte for byte what `mailprov render` shows.

Pure parts (plan building, command line, environment, event parsing, recap) are module functions with
unit tests; `run()` is the only place that starts a process.
"""

from __future__ import annotations

import datetime
import hashlib
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

from provisioner import PLAYBOOKS_DIR
from provisioner import profiles as profiles_mod
from provisioner import render as render_mod
from provisioner.errors import ApplyError, UsageError
from provisioner.profiles import Profile
from provisioner.spec import Spec

PLAYBOOK = PLAYBOOKS_DIR / "site.yml"
ANSIBLE_CFG = PLAYBOOKS_DIR / "ansible.cfg"
CALLBACK_DIR = PLAYBOOKS_DIR / "callback_plugins"
CALLBACK_NAME = "mailprov_events"
#: Rendered paths whose content is secret (password hashes): never logged, never shown in a diff.
SECRET_PATHS = frozenset({"etc/dovecot/users"})
#: Greeting kind of each port for the post-activation probe.
PORT_KINDS = {25: "smtp", 587: "smtp", 465: "tls", 143: "imap", 993: "tls", 110: "pop3", 995: "tls"}
#: What the SELinux tasks run (semanage fcontext); restorecon comes with the base system.
SELINUX_PACKAGES = ("policycoreutils-python-utils",)
#: Sockets Dovecot creates for Postfix (LMTP delivery, SASL).
SOCKETS = ("/var/spool/postfix/private/dovecot-lmtp", "/var/spool/postfix/private/auth")

#: mailprov's own bookkeeping on the host (the applied-state record), not configuration.
RECORD_DIRS = ("/etc/mailprov/",)

Transform = Callable[[dict[str, str]], dict[str, str]]


# ---------------------------------------------------------------------------------------------------------
# Plan: what the playbook needs, as data
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


def plan(
    spec: Spec,
    profile: Profile,
    files: Mapping[str, str],
    tls_cert_src: str | None = None,
    tls_key_src: str | None = None,
    dkim_key_src: str | None = None,
    dkim_key_sha256: str = "",
) -> dict[str, Any]:
    """The playbook's `mailprov_plan` for one profile: rendered files with ownership, and the host facts.

    The DKIM private key travels as a path on the control machine and a digest (to tell whether the
    host's copy is current), never as content.
    """
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
    served = spec.open_ports
    services = [profile.firewalld_services[p] for p in served if p in profile.firewalld_services]
    signing = spec.dkim.signing
    probe_ports: list[dict[str, Any]] = [
        {"port": p, "kind": PORT_KINDS[p]} for p in served if p in PORT_KINDS
    ]
    if signing:
        # OpenDKIM's milter answers only after the client speaks: a TCP connect on loopback is the probe.
        probe_ports.append({"port": render_mod.DKIM_MILTER_PORT, "kind": "tcp", "host": "127.0.0.1"})
    return {
        "profile": profile.name,
        "title": profile.title,
        # semanage (SELinux file contexts) comes with the EL profile's packages.
        "packages": list(profile.packages)
        + (list(profile.dkim_packages) if signing else [])
        + (list(SELINUX_PACKAGES) if profile.selinux else []),
        "map_type": profile.map_type,
        "maps": ["/" + m for m in render_mod.POSTFIX_MAPS if m in files],
        "files": entries,
        "secret_contents": secrets,
        "digest": render_mod.tree_digest(dict(files)),
        "hostname": spec.hostname,
        "mail_root": spec.mail_root,
        "vmail_user": render_mod.VMAIL_USER,
        "vmail_uid": render_mod.VMAIL_UID,
        "selinux": profile.selinux,
        "mta_alternative": profile.mta_alternative,
        "tls": {
            "mode": spec.tls.mode,
            "cert": profile.tls_cert,
            "key": profile.tls_key,
            "cert_src": tls_cert_src or "",
            "key_src": tls_key_src or "",
        },
        "dkim": {
            "signing": signing,
            "key": profile.dkim_key,
            "key_dir": profile.dkim_key_dir,
            "key_src": dkim_key_src or "",
            "key_sha256": dkim_key_sha256 if signing else "",
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
            "sockets": list(SOCKETS),
        },
    }


def write_build(
    spec: Spec, build_dir: Path, transform: Transform | None = None, profiles: list[Profile] | None = None
) -> Path:
    """Render the spec for every profile into build_dir (PROFILE.json plans + tree/ copies for reading).

    `transform` (tests) may alter the rendered files before they become the plan, e.g. to inject an
    invalid parameter and prove that validation stops it.
    """
    build_dir.mkdir(parents=True, exist_ok=True)
    os.chmod(build_dir, 0o700)
    cert_src = key_src = None
    if spec.tls.mode == "files":
        assert spec.tls.cert is not None and spec.tls.key is not None
        chain = spec.tls.cert.read_text(encoding="utf-8")
        if not chain.endswith("\n"):
            chain += "\n"
        if spec.tls.chain is not None:
            chain += spec.tls.chain.read_text(encoding="utf-8")
        cert_path = build_dir / "tls" / "fullchain.pem"
        cert_path.parent.mkdir(exist_ok=True)
        cert_path.write_text(chain, encoding="utf-8")
        cert_src, key_src = str(cert_path), str(spec.tls.key.resolve())
    dkim_src, dkim_sha256 = None, ""
    if spec.dkim.private_key is not None:
        dkim_src = str(spec.dkim.private_key.resolve())
        dkim_sha256 = hashlib.sha256(spec.dkim.private_key.read_bytes()).hexdigest()
    for profile in profiles or list(profiles_mod.PROFILES.values()):
        files = render_mod.render(spec, profile)
        if transform is not None:
            files = transform(dict(files))
        render_mod.write_tree(files, build_dir / profile.name / "tree")
        data = {"mailprov_plan": plan(spec, profile, files, cert_src, key_src, dkim_src, dkim_sha256)}
        target = build_dir / f"{profile.name}.json"
        target.write_text(json.dumps(data, indent=1), encoding="utf-8")
        os.chmod(target, 0o600)
    return build_dir


def extra_vars(
    default_build: Path | None, host_builds: Mapping[str, Path] | None = None, run_id: str | None = None
) -> dict[str, Any]:
    """The playbook's extra variables: where the plans are, how to pick a profile, the run's timestamp."""
    data: dict[str, Any] = {"mailprov_profile_map": profile_map()}
    if default_build is not None:
        data["mailprov_build"] = str(default_build)
    if host_builds:
        data["mailprov_builds"] = {host: str(path) for host, path in host_builds.items()}
    data["mailprov_run_id"] = run_id or datetime.datetime.now(datetime.UTC).strftime("%Y%m%dT%H%M%S%fZ")
    return data


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
            "ansible-playbook not found: install ansible-core (pip install 'ansible-core>=2.16')"
        )
    return found


def playbook_command(
    inventory: str,
    extra_vars_file: Path,
    *,
    check: bool = False,
    diff: bool = False,
    limit: str | None = None,
    tags: str | None = None,
    playbook: Path = PLAYBOOK,
    executable: str = "ansible-playbook",
) -> list[str]:
    """The ansible-playbook argv for one apply run."""
    argv = [executable, "-i", inventory, "-e", f"@{extra_vars_file}"]
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
    """Environment for ansible-playbook: our config, the JSON-lines callback, no colour, no cowsay."""
    env = dict(os.environ if base is None else base)
    env.update(
        {
            "ANSIBLE_CONFIG": str(ANSIBLE_CFG),
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
    transform: Transform | None = None


def _stream(proc: subprocess.Popen[str]) -> Iterator[str]:
    assert proc.stdout is not None
    yield from proc.stdout


def run(request: ApplyRequest, on_event: Callable[[dict[str, Any]], None] | None = None) -> ApplyResult:
    """Render, run the playbook, stream events to `on_event`, and return the recap."""
    if not request.inventory.exists():
        raise UsageError(f"-i/--inventory: {request.inventory} does not exist")
    if request.spec is None and not request.host_specs:
        raise UsageError("nothing to apply: no spec given")
    executable = ansible_playbook_path()
    temp = None
    root = request.build_dir
    if root is None:
        temp = tempfile.TemporaryDirectory(prefix="mailprov-apply-")
        root = Path(temp.name)
    started = time.monotonic()
    try:
        default_build = None
        if request.spec is not None:
            default_build = write_build(request.spec, root / "default", request.transform)
        host_builds = {
            host: write_build(spec, root / f"host-{host}", request.transform)
            for host, spec in request.host_specs.items()
        }
        variables = extra_vars(default_build, host_builds)
        vars_file = root / "extra-vars.json"
        vars_file.write_text(json.dumps(variables, indent=1), encoding="utf-8")
        argv = playbook_command(
            str(request.inventory),
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
                raise UsageError(
                    f"no hosts matched in {request.inventory} (--limit {request.limit or 'all'})"
                )
            raise ApplyError(f"ansible-playbook failed (exit {proc.returncode}): {_tail(stderr)}")
        return result
    finally:
        if temp is not None:
            temp.cleanup()


def _tail(text: str, lines: int = 5) -> str:
    kept = [line for line in text.strip().splitlines() if line.strip()]
    return " | ".join(kept[-lines:]) or "no output"
