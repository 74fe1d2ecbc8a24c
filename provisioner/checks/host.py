"""Host checks through a pytest-testinfra host object (SSH or local): packages, services, sockets,
`postfix check`, `doveconf -n`, file modes, queue, firewalld, SELinux, and drift from the rendered spec.

They only read: commands run are queries (`postconf`, `doveconf`, `postqueue -j`, `firewall-cmd --list-*`).
The same functions run inside pytest through provisioner/checks/test_mailprov_host.py.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from provisioner import profiles
from provisioner.checks.base import CATALOG, Result, Skip, Status, aggregate, check
from provisioner.checks.context import Context
from provisioner.checks.parsers import (
    HIDDEN,
    diff_settings,
    judge_firewall,
    judge_listening,
    judge_mode,
    old_deferred,
    parse_dovecot_conf,
    parse_firewalld_zone,
    parse_listening,
    parse_main_cf,
    parse_master_cf,
    parse_postqueue_json,
)
from provisioner.errors import MailprovError

_REDHAT = ("rhel", "redhat", "centos", "almalinux", "rocky", "fedora", "ol", "oracle")
_DEBIAN = ("debian", "ubuntu")
#: The state file apply writes on each run; its mtime is "the last apply" for SELinux denials.
APPLY_STAMP = "/etc/mailprov/applied.json"
MAIL_FIREWALL_SERVICES = {"smtp", "smtps", "smtp-submission", "submission", "imap", "imaps", "pop3", "pop3s"}


@contextlib.contextmanager
def ssh_host(
    user: str,
    hostname: str,
    port: int | None = None,
    key: Path | None = None,
    config: Path | None = None,
    timeout: float = 10,
) -> Iterator[Any]:
    """A testinfra SSH host whose commands share one multiplexed connection, closed on exit.

    Host checks run many short commands concurrently; without a shared master connection each pays a
    full SSH handshake. The master lives in a private temporary directory and is stopped afterwards.
    """
    import testinfra

    control_dir = Path(tempfile.mkdtemp(prefix="mailprov-ssh-"))
    spec = f"ssh://{user}@{hostname}" + (f":{port}" if port else "")
    kwargs: dict[str, Any] = {
        "timeout": max(1, int(timeout)),
        "ssh_extra_args": "-o BatchMode=yes",
        "controlpath": str(control_dir / "master"),  # one host per run; testinfra %-formats this
        "controlpersist": 30,
    }
    if key is not None:
        kwargs["ssh_identity_file"] = str(key)
    if config is not None:
        kwargs["ssh_config"] = str(config)
    try:
        yield testinfra.get_host(spec, **kwargs)
    finally:
        for socket_path in control_dir.iterdir():
            subprocess.run(
                ["ssh", "-o", f"ControlPath={socket_path}", "-O", "exit", hostname],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                timeout=10,
                check=False,
            )
        shutil.rmtree(control_dir, ignore_errors=True)


class HostUnreachable(Exception):
    """SSH to the host failed: one clear reason for every host check of the run."""


def ssh_failure(stderr: str, target: str) -> str:
    """One line saying why SSH failed and what to pass, from ssh's stderr (exit 255)."""
    text = " ".join(stderr.split())
    lowered = text.lower()
    if "host key verification failed" in lowered or "host identification has changed" in lowered:
        return (
            f"SSH to {target}: the host key is unknown or changed; add it to known_hosts, or pass "
            "--ssh-config with StrictHostKeyChecking accept-new (or a UserKnownHostsFile that has it)"
        )
    if "permission denied" in lowered or "too many authentication failures" in lowered:
        return (
            f"SSH to {target}: authentication refused; pass --ssh-key with a key the host accepts "
            "(BatchMode: no password prompt)"
        )
    for marker in (
        "connection refused",
        "timed out",
        "no route to host",
        "could not resolve",
        "network is unreachable",
        "connection closed",
    ):
        if marker in lowered:
            return f"SSH to {target}: unreachable ({marker}); check --ssh USER@HOST[:PORT] and the network"
    first = next((line.strip() for line in stderr.splitlines() if line.strip()), "no message")
    return f"SSH to {target} failed: {first}"


def _target(ctx: Context) -> str:
    spec = getattr(getattr(ctx.host, "backend", None), "host", None)
    name = getattr(spec, "name", None)
    user = getattr(spec, "user", None)
    if name:
        return f"{user}@{name}" if user else str(name)
    return "the host"


def _warm(ctx: Context) -> None:
    """Open the SSH connection once before the checks' commands race to do it (the master is shared).

    Raises HostUnreachable when SSH itself fails (exit 255), so every host check says why in one line.
    """

    def connect() -> Any:
        try:
            out = ctx.host.run("true")
        except Exception as exc:
            raise HostUnreachable(ssh_failure(str(exc), _target(ctx))) from None
        if out.rc == 255:
            raise HostUnreachable(ssh_failure(out.stderr or out.stdout or "", _target(ctx)))
        return out

    ctx.memo("host_warm", connect)


def _guard(fn: Any) -> Any:
    """Run a host check only after SSH works (else its one-line reason)."""

    @functools.wraps(fn)
    def guarded(ctx: Context) -> Result:
        _warm(ctx)
        return fn(ctx)  # type: ignore[no-any-return]

    return guarded


def host_family(distribution: str) -> str | None:
    """Ansible's os_family for a testinfra distribution name."""
    name = (distribution or "").lower()
    if name in _REDHAT:
        return "RedHat"
    if name in _DEBIAN:
        return "Debian"
    return None


def host_profile(ctx: Context) -> profiles.Profile | None:
    """The OS profile of the host from its facts, or None when it is not one mailprov knows."""

    def find() -> profiles.Profile | None:
        _warm(ctx)
        info = ctx.host.system_info
        family = host_family(info.distribution)
        if family is None:
            return None
        try:
            return profiles.from_facts(family, str(info.release or "").split(".")[0])
        except MailprovError:
            return None

    return ctx.memo("host_profile", find)


def _run(ctx: Context, cmd: str) -> Any:
    _warm(ctx)
    return ctx.host.run(cmd)


@check("host.packages", "Postfix and Dovecot packages installed", needs=("ssh",), severity="high")
def packages(ctx: Context) -> Result:
    """The profile's packages (postfix, dovecot...) are installed."""
    profile = host_profile(ctx)
    if profile is not None:
        names = [p for p in profile.packages if p != "openssl"]
    else:
        family = host_family(ctx.host.system_info.distribution)
        names = ["postfix", "dovecot-core" if family == "Debian" else "dovecot"]
    missing = [name for name in names if not ctx.host.package(name).is_installed]
    source = f"profile {profile.name}" if profile else "no known profile"
    if missing:
        return Result("host.packages", "fail", f"not installed: {', '.join(missing)} ({source})", names)
    return Result("host.packages", "pass", f"installed: {', '.join(names)} ({source})", names)


@check("host.services", "Postfix and Dovecot enabled and running", needs=("ssh",), severity="high")
def services(ctx: Context) -> Result:
    """postfix and dovecot services are enabled and running (and `postfix status` agrees)."""
    parts: dict[str, tuple[Status, str]] = {}
    for name in ("postfix", "dovecot"):
        service = ctx.host.service(name)
        running, enabled = service.is_running, service.is_enabled
        problems = [w for w, ok in (("not running", running), ("not enabled", enabled)) if not ok]
        parts[name] = ("fail", ", ".join(problems)) if problems else ("pass", "enabled and running")
    status = _run(ctx, "postfix status")
    if status.rc != 0:
        parts["postfix status"] = ("fail", (status.stderr or status.stdout).strip() or f"exit {status.rc}")
    return aggregate("host.services", parts)


def _expected_addresses(ctx: Context) -> list[str] | None:
    if ctx.spec is None:
        return None
    interfaces = ctx.spec.network.interfaces
    if interfaces == "loopback-only":
        return ["127.0.0.1"]
    if isinstance(interfaces, list):
        return list(interfaces)
    return None


@check("host.listening", "Expected ports bound on expected addresses", needs=("ssh",), severity="high")
def listening(ctx: Context) -> Result:
    """Every expected mail port is listening on the expected addresses; switched-off ports are not."""
    expected = dict(ctx.spec.ports) if ctx.spec is not None else {25: True}
    sockets = parse_listening(ctx.host.socket.get_listening_sockets())
    status, reason, evidence = judge_listening(sockets, expected, _expected_addresses(ctx))
    return Result("host.listening", status, reason, evidence)


@check("host.postfix_check", "`postfix check` is clean", needs=("ssh",))
def postfix_check(ctx: Context) -> Result:
    """`postfix check` prints nothing and exits 0."""
    out = _run(ctx, "postfix check")
    text = (out.stdout + out.stderr).strip()
    if out.rc != 0 or text:
        return Result(
            "host.postfix_check", "fail", f"exit {out.rc}: {text.splitlines()[0] if text else ''}", text
        )
    return Result("host.postfix_check", "pass", "postfix check: exit 0, no output")


@check("host.doveconf", "`doveconf -n` is clean", needs=("ssh",))
def doveconf(ctx: Context) -> Result:
    """`doveconf -n` exits 0 with no warnings."""
    out = _run(ctx, "doveconf -n")
    warnings = [line for line in out.stderr.splitlines() if line.strip()]
    if out.rc != 0:
        first = warnings[0] if warnings else f"exit {out.rc}"
        return Result("host.doveconf", "fail", f"doveconf -n failed: {first}", out.stderr)
    if warnings:
        return Result("host.doveconf", "fail", f"warning: {warnings[0]}", warnings)
    return Result("host.doveconf", "pass", "doveconf -n: exit 0, no warnings")


def _secret_paths(ctx: Context) -> dict[str, str]:
    """Private key and password file paths from the live Postfix and Dovecot configuration."""
    paths: dict[str, str] = {}
    for param in ("smtpd_tls_key_file", "smtpd_tls_chain_files"):
        out = _run(ctx, f"postconf -h {param}")
        if out.rc == 0:
            files = [p for p in out.stdout.replace(",", " ").split() if p.startswith("/")]
            if param == "smtpd_tls_chain_files":
                files = files[:1]  # the key comes first in a chain file list
            for path in files:
                paths[path] = "private key"
    out = _run(ctx, "doveconf -h ssl_key")
    if out.rc == 0 and out.stdout.strip().startswith("<"):
        paths[out.stdout.strip()[1:].strip()] = "private key"
    out = _run(ctx, "doveconf -n")
    if out.rc == 0:
        for key, value in parse_dovecot_conf(out.stdout).items():
            if key.endswith("args") and ("passdb" in key or "userdb" in key):
                for word in value.split():
                    if word.startswith("/"):
                        paths.setdefault(word, "password file")
    return paths


@check(
    "host.file_modes",
    "Private keys and password files are not world-readable",
    needs=("ssh",),
    severity="high",
)
def file_modes(ctx: Context) -> Result:
    """Private keys 0600/0640, password files not world-readable."""
    parts: dict[str, tuple[Status, str]] = {}
    for path, kind in _secret_paths(ctx).items():
        f = ctx.host.file(path)
        if not f.exists:
            parts[path] = ("fail", f"{kind} {path} does not exist")
            continue
        parts[path] = judge_mode(path, f.mode, kind)
    if not parts:
        raise Skip("no TLS key or password file configured")
    return aggregate("host.file_modes", parts, sorted(parts))


@check("host.queue", "No old deferred mail", needs=("ssh",), severity="low")
def queue(ctx: Context) -> Result:
    """The queue holds no deferred messages older than 1 hour (warn)."""
    out = _run(ctx, "postqueue -j")
    if out.rc != 0:
        return Result("host.queue", "fail", f"postqueue -j failed: {(out.stderr or out.stdout).strip()}")
    messages = parse_postqueue_json(out.stdout)
    old = old_deferred(messages, time.time())
    if old:
        ids = [m.get("queue_id", "?") for m in old]
        return Result("host.queue", "warn", f"{len(old)} deferred message(s) older than 1 hour", ids)
    return Result("host.queue", "pass", f"{len(messages)} message(s) queued, none deferred for over an hour")


@check("host.firewall", "firewalld opens exactly the mail services", needs=("ssh",))
def firewall(ctx: Context) -> Result:
    """On firewalld hosts, the expected mail services are open and no other mail service or port."""
    if not ctx.host.exists("firewall-cmd"):
        raise Skip("no firewalld on this host")
    # One invocation: firewall-cmd is slow to start; --list-all fails when firewalld is not running.
    listing = _run(ctx, "firewall-cmd --list-all")
    if listing.rc != 0:
        raise Skip("firewalld is not running on this host")
    zone = parse_firewalld_zone(listing.stdout)
    services, ports = set(zone.get("services", "").split()), set(zone.get("ports", "").split())
    profile = host_profile(ctx) or profiles.get("el9")
    open_ports = ctx.spec.open_ports if ctx.spec is not None else [25]
    expected = {profile.firewalld_services[p] for p in open_ports if p in profile.firewalld_services}
    mail = MAIL_FIREWALL_SERVICES | set(profile.firewalld_services.values())
    status, reason = judge_firewall(services, ports, expected, mail, set(profile.firewalld_services))
    return Result("host.firewall", status, reason, {"services": sorted(services), "ports": sorted(ports)})


@check("host.selinux", "SELinux enforcing without mail denials", needs=("ssh",))
def selinux(ctx: Context) -> Result:
    """On SELinux hosts: enforcing, and no AVC denials for postfix/dovecot since the last apply."""
    if not ctx.host.exists("getenforce"):
        raise Skip("no SELinux on this host")
    mode = _run(ctx, "getenforce").stdout.strip()
    if mode == "Disabled":
        raise Skip("SELinux is disabled on this host")
    if mode != "Enforcing":
        return Result("host.selinux", "fail", f"SELinux is {mode}, not Enforcing")
    if not ctx.host.exists("ausearch"):
        return Result("host.selinux", "warn", "enforcing; cannot read AVC denials (no ausearch)")
    stamp = ctx.host.file(APPLY_STAMP)
    since = "today"
    if stamp.exists:
        mtime = stamp.mtime
        since = f"{mtime:%m/%d/%Y} {mtime:%H:%M:%S}"
    out = _run(ctx, f"LC_ALL=C ausearch -m AVC,USER_AVC -i -ts {since}")
    denials = [
        line
        for line in out.stdout.splitlines()
        if "denied" in line and any(word in line for word in ("postfix", "dovecot", "smtpd", "lmtp"))
    ]
    if denials:
        return Result(
            "host.selinux",
            "fail",
            f"{len(denials)} AVC denial(s) for mail daemons since {since}",
            denials[:5],
        )
    return Result("host.selinux", "pass", f"enforcing; no mail AVC denials since {since}")


def _dovecot_subset(expected: dict[str, str], live: dict[str, str]) -> list[str]:
    """Rendered Dovecot settings that differ live; values with $references compare as token subsets."""
    out = []
    for key, value in sorted(expected.items()):
        if live.get(key) == HIDDEN:
            continue  # a secret doveconf will not show; not compared
        if key not in live:
            out.append(f"dovecot {key}: missing (expected {value!r})")
            continue
        if "$" in value:
            wanted = {w for w in value.split() if not w.startswith("$")}
            if not wanted <= set(live[key].split()):
                out.append(f"dovecot {key}: {live[key]!r} (expected {value!r})")
        elif live[key] != value:
            out.append(f"dovecot {key}: {live[key]!r} (expected {value!r})")
    return out


@check("host.drift", "Live config equals what the spec renders", needs=("ssh", "spec"))
def drift(ctx: Context) -> Result:
    """Live `postconf -n`, `postconf -M` and `doveconf` equal the files render produces for the host's profile."""
    from provisioner.render import render

    assert ctx.spec is not None
    profile = host_profile(ctx)
    if profile is None:
        raise Skip(
            f"no mailprov profile for {ctx.host.system_info.distribution} {ctx.host.system_info.release}"
        )
    files = render(ctx.spec, profile)
    differences: list[str] = []
    if "etc/postfix/main.cf" in files:
        live = parse_main_cf(_run(ctx, "postconf -n").stdout)
        differences += [
            f"main.cf {d}" for d in diff_settings(parse_main_cf(files["etc/postfix/main.cf"]), live)
        ]
    if "etc/postfix/master.cf" in files:
        want = parse_master_cf(files["etc/postfix/master.cf"])
        have = parse_master_cf(_run(ctx, "postconf -M").stdout)
        differences += [f"master.cf missing: {line}" for line in want if line not in have]
        differences += [f"master.cf extra: {line}" for line in have if line not in want]
    if "etc/dovecot/dovecot.conf" in files:
        rendered = parse_dovecot_conf(files["etc/dovecot/dovecot.conf"])
        differences += _dovecot_subset(rendered, parse_dovecot_conf(_run(ctx, "doveconf").stdout))
        live_n = parse_dovecot_conf(_run(ctx, "doveconf -n").stdout)
        # doveconf -n also prints empty defaults inside sections (namespace location =, prefix =).
        extra = {key for key, value in live_n.items() if value and key not in rendered}
        differences += [f"dovecot {key}: set live, not in the rendered config" for key in sorted(extra)]
    if differences:
        return Result(
            "host.drift", "fail", f"{len(differences)} difference(s); first: {differences[0]}", differences
        )
    return Result("host.drift", "pass", f"live config matches the {profile.name} rendering")


# Every host check first needs SSH to work: one clear reason per run instead of a command result's repr.
for _id, _check in list(CATALOG.items()):
    if _check.area == "host":
        CATALOG[_id] = dataclasses.replace(_check, fn=_guard(_check.fn))
