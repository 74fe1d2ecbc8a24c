"""Pure rendering: (spec, profile) -> {relative target path: file text}.

No I/O besides reading templates; `write_tree()` and `check_tree()` are the separate steps that touch
disk and run the real programs. What `render` returns is exactly what `apply` installs.
"""

from __future__ import annotations

import hashlib
import re
import shutil
import subprocess
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import jinja2

from provisioner import TEMPLATES_DIR, outdir, renderguard
from provisioner.errors import RenderError
from provisioner.profiles import MOZILLA_INTERMEDIATE, Profile
from provisioner.spec import Mailbox, Spec, format_size, paused_gc

HEADER = "Managed by mailprov: local changes are overwritten on the next apply."
VMAIL_USER = "vmail"
VMAIL_UID = 5000


@dataclass(frozen=True)
class FileMeta:
    """Ownership and mode a rendered file gets on the host."""

    owner: str
    group: str
    mode: str


#: OpenDKIM's milter port on 127.0.0.1 (labelled milter_port_t by the SELinux policy).
DKIM_MILTER_PORT = 8891
#: rspamd's proxy worker in milter mode on 127.0.0.1 (antispam).
RSPAMD_MILTER_PORT = 11332
#: Dovecot runs this for quota warnings (service quota-warning).
QUOTA_WARNING_SCRIPT = "/usr/local/bin/mailprov-quota-warning"
#: The certificate transaction on the host (apply and ACME renewals run it).
TLS_DEPLOY_SCRIPT = "/usr/local/sbin/mailprov-tls-deploy"
#: The smarthost's CA when the spec names one (relay_host.ca).
RELAY_CA_FILE = "/etc/postfix/relay-ca.pem"

#: Templates (or template directories) rendered only when the spec asks for what they configure; every
#: other template is always rendered.
CONDITIONAL_TEMPLATES: tuple[tuple[str, Callable[[Spec], bool]], ...] = (
    ("etc/opendkim/resolver.conf.j2", lambda s: s.dkim.signing and bool(s.dkim.resolvers)),
    ("etc/opendkim.conf.j2", lambda s: s.dkim.signing),
    ("etc/opendkim/", lambda s: s.dkim.signing),
    ("etc/fail2ban/", lambda s: s.fail2ban.enabled),
    ("etc/postfix/sasl_passwd.j2", lambda s: s.relay_host is not None and s.relay_host.authenticated),
    ("etc/postfix/tls_policy.j2", lambda s: s.relay_host is not None and s.relay_host.authenticated),
    ("etc/postfix/relay-ca.pem.j2", lambda s: s.relay_host is not None and s.relay_host.ca_pem is not None),
    ("etc/dovecot/sieve/spam-to-junk.sieve.j2", lambda s: s.sieve.enabled and s.antispam.enabled),
    ("etc/dovecot/sieve/before.sieve.j2", lambda s: s.sieve.enabled and s.sieve.before is not None),
    ("etc/dovecot/sieve/after.sieve.j2", lambda s: s.sieve.enabled and s.sieve.after is not None),
    ("etc/rspamd/", lambda s: s.antispam.enabled),
    ("etc/nginx/conf.d/mailprov.conf.j2", lambda s: s.web_served),
    ("etc/nginx/mailprov/mta-sts.txt.j2", lambda s: s.mta_sts_served),
    ("etc/mailprov/acme-ca.pem.j2", lambda s: s.tls.ca_pem is not None),
)

#: Generated (not templated) files: each mailbox's own Sieve script from the spec.
MAILBOX_SIEVE_DIR = "etc/dovecot/sieve/mailbox/"

#: Rendered files whose content is secret (password hashes, the relay password): never logged or shown
#: in a diff, installed readable by root (and the daemon that needs them) only.
SECRET_PATHS = frozenset({"etc/dovecot/users", "etc/postfix/sasl_passwd"})

#: Postfix lookup tables (sources) that need `postmap` with the profile's map type.
POSTFIX_MAPS = (
    "etc/postfix/vdomains",
    "etc/postfix/vmailbox",
    "etc/postfix/virtual",
    "etc/postfix/sender_login",
    "etc/postfix/sender_access",
    "etc/postfix/helo_access",
    "etc/postfix/sasl_passwd",
    "etc/postfix/tls_policy",
)


def file_meta(path: str, profile: Profile) -> FileMeta:
    """Owner, group and mode for a rendered path (the password file is not world-readable)."""
    if path == "etc/dovecot/users":
        return FileMeta("root", profile.dovecot_group, "0640")
    if path == "etc/postfix/sasl_passwd":
        return FileMeta("root", "root", "0600")
    if path in (QUOTA_WARNING_SCRIPT.lstrip("/"), TLS_DEPLOY_SCRIPT.lstrip("/")):
        return FileMeta("root", "root", "0755")
    return FileMeta("root", "root", "0644")


@lru_cache(maxsize=1)
def _environment() -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(TEMPLATES_DIR)),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
        autoescape=False,
    )


def template_names() -> list[str]:
    """All templates, as paths relative to templates/ (ending in .j2)."""
    return sorted(str(p.relative_to(TEMPLATES_DIR)) for p in TEMPLATES_DIR.rglob("*.j2") if p.is_file())


def dovecot_user_extra(spec: Spec, box: Mailbox) -> str:
    """The extra-fields column of a mailbox's passwd-file line: its quota rule and its own Sieve script."""
    fields = []
    if box.quota:
        fields.append(f"userdb_quota_rule=*:storage={format_size(box.quota)}")
    sieve = spec.mailbox_sieve(box)
    if sieve is not None:
        fields.append(f"userdb_{sieve[0]}={sieve[1]}")
    return " ".join(fields)


def _dovecot_users(spec: Spec) -> list[str]:
    return [
        f"{box.address}:{box.password_hash}::::::{dovecot_user_extra(spec, box)}" for box in spec.mailboxes
    ]


def context(spec: Spec, profile: Profile) -> dict[str, object]:
    """Everything templates may use: the model, the profile, and a few derived constants."""
    mynetworks = "127.0.0.0/8" + (" [::1]/128" if spec.network.ipv6 else "")
    return {
        "spec": spec,
        "profile": profile,
        "header": HEADER,
        "vmail_user": VMAIL_USER,
        "vmail_uid": VMAIL_UID,
        "mynetworks": mynetworks,
        "default_scheme": "SHA512-CRYPT",
        "dovecot_users": _dovecot_users(spec),
        "dkim_milter_port": DKIM_MILTER_PORT,
        "rspamd_milter_port": RSPAMD_MILTER_PORT,
        "fail2ban_ignoreip": " ".join(["127.0.0.1/8", "::1", *spec.fail2ban.ignore_ip]),
        "quota_warning_script": QUOTA_WARNING_SCRIPT,
        "relay_sasl": spec.relay_host is not None and spec.relay_host.authenticated,
        "relay_ca_file": RELAY_CA_FILE
        if spec.relay_host is not None and spec.relay_host.ca_pem is not None
        else profile.ca_bundle,
        **_milters(spec),
        "tables": spec.tables(),
        "tls_deploy": tls_deploy_config(spec, profile),
        "web_listen": _web_listen(spec),
    }


#: Where apply and ACME renewals stage a new certificate, and keep the ones they replaced.
TLS_STAGE_DIR = "/etc/mailprov/tls-stage"
TLS_BACKUP_DIR = "/var/backups/mailprov/tls"
#: The ACME CA bundle on the host (tls.ca_bundle), and where HTTP-01 challenges are answered from.
ACME_CA_FILE = "/etc/mailprov/acme-ca.pem"
ACME_WEBROOT = "/var/lib/mailprov/acme"
#: How each TLS port is probed: implicit TLS, or STARTTLS in its protocol.
_TLS_PROBES = {
    25: "smtp",
    587: "smtp",
    465: None,
    143: "imap",
    993: None,
    110: "pop3",
    995: None,
    4190: "sieve",
}


def tls_deploy_config(spec: Spec, profile: Profile) -> dict[str, object]:
    """Settings of the host's certificate transaction (mailprov-tls-deploy) and of ACME issuance."""
    acme = spec.tls.mode == "acme"
    if acme:
        names = spec.certificate_names
    elif spec.tls.mode == "self-signed":
        names = [spec.hostname]
    else:
        names = spec.mta_sts_names if spec.mta_sts_served else []
    probes: list[dict[str, object]] = [
        {"port": port, "starttls": _TLS_PROBES[port]} for port in spec.open_ports if port in _TLS_PROBES
    ]
    if spec.mta_sts_served:
        probes.append({"port": 443, "starttls": None, "sni": spec.mta_sts_names[0]})
    reload = [["postfix", "reload"], ["doveadm", "reload"]]
    if spec.web_served:
        reload.append(["systemctl", "reload", "nginx"])
    config: dict[str, object] = {
        "mode": spec.tls.mode,
        "cert": profile.tls_cert,
        "key": profile.tls_key,
        "names": names,
        "min_days": 7 if acme else 0,
        "ca_file": (ACME_CA_FILE if spec.tls.ca_pem is not None else profile.ca_bundle) if acme else None,
        "probe_host": probe_address(spec),
        "probes": probes,
        "probe_seconds": 20,
        "reload": reload,
        "stage": TLS_STAGE_DIR,
        "backup_dir": TLS_BACKUP_DIR,
    }
    if acme:
        config["acme"] = {
            "email": spec.tls.email,
            "directory": spec.tls.directory,
            "names": spec.certificate_names,
            "webroot": ACME_WEBROOT,
            "ca_bundle": ACME_CA_FILE if spec.tls.ca_pem is not None else None,
        }
    return config


def probe_address(spec: Spec) -> str:
    """Where the host probes its own services: loopback, or the first listen address when listed."""
    if isinstance(spec.network.interfaces, list):
        return spec.network.interfaces[0]
    return "127.0.0.1" if spec.network.ipv4 else "::1"


def _web_listen(spec: Spec) -> list[str]:
    """nginx listen addresses (without the port)."""
    if isinstance(spec.network.interfaces, list):
        return [f"[{a}]" if ":" in a else a for a in spec.network.interfaces]
    loopback = spec.network.interfaces == "loopback-only"
    out = []
    if spec.network.ipv4:
        out.append("127.0.0.1" if loopback else "0.0.0.0")
    if spec.network.ipv6:
        out.append("[::1]" if loopback else "[::]")
    return out


def _milters(spec: Spec) -> dict[str, object]:
    """Postfix's milters: rspamd scans (and verifies SPF/DKIM/DMARC) inbound, OpenDKIM signs."""
    smtpd: list[str] = []
    purposes: list[str] = []
    if spec.antispam.enabled:
        smtpd.append(f"inet:127.0.0.1:{RSPAMD_MILTER_PORT}")
        purposes.append("rspamd scores spam and verifies SPF, DKIM and DMARC")
    if spec.dkim.signing:
        smtpd.append(f"inet:127.0.0.1:{DKIM_MILTER_PORT}")
        purposes.append(
            "OpenDKIM signs submitted and local mail"
            + ("" if spec.antispam.enabled else ", verifies inbound mail")
        )
    return {
        "smtpd_milters": smtpd,
        "non_smtpd_milters": [m for m in smtpd if m.endswith(f":{DKIM_MILTER_PORT}")],
        "milter_purpose": "; ".join(purposes),
        "dkim_mode": "s" if spec.antispam.enabled else "sv",
    }


def wanted(name: str, spec: Spec) -> bool:
    """Whether a template applies to the spec (the first matching rule of CONDITIONAL_TEMPLATES decides)."""
    for prefix, rule in CONDITIONAL_TEMPLATES:
        if name == prefix or (prefix.endswith("/") and name.startswith(prefix)):
            return rule(spec)
    return True


def _mailbox_sieve_scripts(spec: Spec) -> dict[str, str]:
    """Each mailbox's own Sieve script from the spec, byte for byte (sievec's line numbers are the user's)."""
    out = {}
    for box in spec.mailboxes:
        where = spec.mailbox_sieve(box)
        if where is not None and box.sieve_text is not None:
            out[where[1].lstrip("/")] = box.sieve_text
    return out


def render(spec: Spec, profile: Profile) -> dict[str, str]:
    """Render every template for the spec and profile; keys mirror target paths (etc/postfix/main.cf)."""
    env = _environment()
    ctx = context(spec, profile)
    out: dict[str, str] = {}
    with paused_gc():
        for name in template_names():
            if not wanted(name, spec):
                continue
            try:
                out[name.removesuffix(".j2")] = env.get_template(name).render(ctx)
            except jinja2.TemplateError as exc:
                raise RenderError(f"template {name}: {exc}") from exc
        out.update(_mailbox_sieve_scripts(spec))
        renderguard.check_rendered(out, spec, profile, ctx["tables"])  # type: ignore[arg-type]
    return out


def tree_digest(files: dict[str, str]) -> str:
    """A digest of the whole rendered tree (apply skips work when it is unchanged on the host)."""
    h = hashlib.sha256()
    for path in sorted(files):
        h.update(path.encode() + b"\0" + files[path].encode() + b"\0")
    return h.hexdigest()


def rendered_paths() -> list[str]:
    """Every path any render may produce (relative, as render() keys them)."""
    return [name.removesuffix(".j2") for name in template_names()] + [MAILBOX_SIEVE_DIR]


def write_tree(files: dict[str, str], out_dir: Path, label: str = "--out") -> list[Path]:
    """Make out_dir hold exactly the rendered files, swapped in whole (provisioner.outdir); return the paths.

    An out_dir that is a file, a symlink, unwritable or holds anything but an earlier render is a
    UsageError naming `label`, with nothing written.
    """
    return outdir.replace_tree(files, out_dir, rendered_paths(), label)


@dataclass
class CheckResult:
    """The outcome of one validation program run on a rendered tree.

    `ran` is False only when the program is not installed; a program that is installed but cannot do
    its job (no table type, cannot start, times out) is ran=True, ok=False with the reason.
    """

    tool: str
    ran: bool
    ok: bool
    output: str
    #: The failure is in the user's input (a Sieve script that does not compile): exit 2, not 1.
    input_error: bool = False


#: Exit status _run reports when the program could not be started or did not finish.
NOT_RUN = -1


def _run(argv: list[str]) -> tuple[int, str]:
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        return NOT_RUN, f"{Path(argv[0]).name} did not finish within 60 s"
    except (OSError, ValueError) as exc:
        return NOT_RUN, f"{Path(argv[0]).name} could not be started: {exc}"
    return proc.returncode, (proc.stdout + proc.stderr).strip()


def check_tree(tree: Path, profile: Profile) -> list[CheckResult]:
    """Validate a rendered tree with the real postconf/postfix/doveconf, where they are installed.

    Paths that only exist on the target (daemon_directory, certificates) are pointed at stand-ins in a
    scratch copy so that the programs judge the syntax and the values rather than this machine's layout.
    """
    results: list[CheckResult] = []
    postconf = shutil.which("postconf") or (
        "/usr/sbin/postconf" if Path("/usr/sbin/postconf").exists() else None
    )
    doveconf = shutil.which("doveconf") or (
        "/usr/bin/doveconf" if Path("/usr/bin/doveconf").exists() else None
    )
    with tempfile.TemporaryDirectory(prefix="mailprov-check-") as scratch_name:
        scratch = Path(scratch_name)
        cert, key = _scratch_cert(scratch)
        postfix_dir = tree / "etc/postfix"
        if postconf is None:
            results.append(CheckResult("postconf", False, False, "postconf not installed (Debian: postfix)"))
        elif postfix_dir.is_dir() and not postfix_dir.is_symlink():
            results.append(_check_postfix(postconf, postfix_dir, scratch, cert, key, profile))
        else:
            results.append(CheckResult("postconf", True, False, f"{postfix_dir}: not a directory"))
        dovecot_conf = tree / "etc/dovecot/dovecot.conf"
        if doveconf is None:
            results.append(
                CheckResult("doveconf", False, False, "doveconf not installed (Debian: dovecot-core)")
            )
        elif dovecot_conf.is_file() and not dovecot_conf.is_symlink():
            results.append(_check_dovecot(doveconf, dovecot_conf, scratch, cert, key, profile))
        else:
            results.append(CheckResult("doveconf", True, False, f"{dovecot_conf}: not a regular file"))
        scripts = sorted(p for p in (tree / "etc/dovecot/sieve").rglob("*.sieve") if p.is_file())
        if scripts:
            results.append(_check_sieve(scripts, tree, scratch))
        jail = tree / "etc/fail2ban/jail.d/mailprov.local"
        if jail.is_file():
            results.append(_check_fail2ban(jail, scratch))
        site = tree / "etc/nginx/conf.d/mailprov.conf"
        if site.is_file():
            results.append(_check_nginx(site, scratch, cert, key, profile))
    return results


def _check_nginx(site: Path, scratch: Path, cert: Path, key: Path, profile: Profile) -> CheckResult:
    """nginx -t on a scratch nginx.conf holding the rendered server blocks (certificates stood in)."""
    nginx = shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None)
    if nginx is None:
        return CheckResult("nginx", False, False, "nginx not installed (Debian: nginx)")
    conf = scratch / "nginx"
    conf.mkdir()
    text = site.read_text().replace(profile.tls_cert, str(cert)).replace(profile.tls_key, str(key))
    # EL's PROFILE=SYSTEM exists only in RHEL's OpenSSL: judge the rest with this OpenSSL's list.
    text = text.replace(profile.tls_mandatory_ciphers, MOZILLA_INTERMEDIATE)
    (conf / "mailprov.conf").write_text(text)
    (conf / "nginx.conf").write_text(
        f"pid {conf}/nginx.pid;\nerror_log stderr;\nevents {{}}\n"
        f"http {{\n  access_log off;\n  include {conf}/mailprov.conf;\n}}\n"
    )
    code, out = _run([nginx, "-t", "-q", "-p", str(conf), "-c", str(conf / "nginx.conf")])
    if code != 0:
        return CheckResult("nginx", True, False, "nginx -t: " + " ".join(out.split())[-400:])
    return CheckResult("nginx", True, True, "nginx -t: syntax is ok")


def _check_sieve(scripts: list[Path], tree: Path, scratch: Path) -> CheckResult:
    """Compile every Sieve script with Pigeonhole's sievec; a script that does not compile is bad input."""
    sievec = shutil.which("sievec")
    if sievec is None:
        return CheckResult("sievec", False, False, "sievec not installed (Debian: dovecot-sieve)")
    problems = []
    for script in scripts:
        code, out = _run([sievec, str(script), str(scratch / "check.svbin")])
        if code != 0:
            errors = [line.strip() for line in out.splitlines() if ": line " in line or "error:" in line]
            first = errors[0] if errors else out.strip().splitlines()[-1] if out.strip() else f"exit {code}"
            # sievec names the script by its stem; the rendered file is the spec's file byte for byte.
            problems.append(f"{script.relative_to(tree)}: {first.split(': ', 1)[-1]}")
    if problems:
        return CheckResult("sievec", True, False, "; ".join(problems), input_error=True)
    return CheckResult("sievec", True, True, f"{len(scripts)} Sieve script(s) compile")


def _check_fail2ban(jail: Path, scratch: Path) -> CheckResult:
    """fail2ban-client -t on the distribution's configuration plus the rendered jail file."""
    client = shutil.which("fail2ban-client")
    if client is None or not Path("/etc/fail2ban/jail.conf").is_file():
        return CheckResult("fail2ban", False, False, "fail2ban not installed (Debian: fail2ban)")
    conf = scratch / "fail2ban"
    shutil.copytree("/etc/fail2ban", conf, symlinks=True)
    # The jails this machine enables are not the target's: judge the distribution's defaults plus ours.
    shutil.rmtree(conf / "jail.d", ignore_errors=True)
    (conf / "jail.d").mkdir()
    shutil.copyfile(jail, conf / "jail.d" / jail.name)
    code, out = _run([client, "-c", str(conf), "-t"])
    errors = [line for line in out.splitlines() if "ERROR" in line]
    if code != 0 or errors:
        return CheckResult("fail2ban", True, False, "; ".join(errors) or out.strip()[-300:])
    return CheckResult("fail2ban", True, True, "fail2ban-client -t: configuration test is successful")


def _scratch_cert(scratch: Path) -> tuple[Path, Path]:
    from provisioner.tlsutil import self_signed

    cert, key = scratch / "cert.pem", scratch / "key.pem"
    cert_pem, key_pem = self_signed("check.invalid")
    cert.write_bytes(cert_pem)
    key.write_bytes(key_pem)
    key.chmod(0o600)
    return cert, key


def _check_postfix(
    postconf: str, src: Path, scratch: Path, cert: Path, key: Path, profile: Profile
) -> CheckResult:
    conf = scratch / "postfix"
    shutil.copytree(src, conf, symlinks=True)
    main_cf = conf / "main.cf"
    if not main_cf.is_file() or main_cf.is_symlink():
        return CheckResult("postconf", True, False, f"{src}/main.cf: missing or not a regular file")
    # Every postconf call reads the scratch copy (-c): this machine's /etc/postfix/main.cf may not exist.
    local_daemon_dir, reason = _local_daemon_directory(postconf, conf)
    if local_daemon_dir is None:
        return CheckResult("postconf", True, False, reason)
    text = main_cf.read_text()
    text = text.replace(profile.tls_cert, str(cert)).replace(profile.tls_key, str(key))
    text = re.sub(r"^daemon_directory = .*$", f"daemon_directory = {local_daemon_dir}", text, flags=re.M)
    # The target's addresses are not on this machine; Postfix would refuse to even read its tables.
    text = re.sub(r"^inet_interfaces = .*$", "inet_interfaces = loopback-only", text, flags=re.M)
    # Lookup tables live in the scratch copy, not in /etc/postfix.
    text = text.replace("/etc/postfix/", f"{conf}/").replace(":/etc/aliases", f":{conf}/aliases")
    main_cf.write_text(text)
    (conf / "aliases").write_text("postmaster: root\n")
    outputs = []
    ok = True
    code, out = _run([postconf, "-c", str(conf), "-m"])
    if code != 0:
        return CheckResult("postconf", True, False, f"postconf -m could not run: {out}")
    if profile.map_type not in out.split():
        return CheckResult(
            "postconf",
            True,
            False,
            f"cannot check: this Postfix lacks the {profile.map_type} table type "
            f"(Debian: postfix-{profile.map_type})",
        )
    postmap = str(Path(postconf).with_name("postmap"))
    for rel in (*POSTFIX_MAPS, "aliases"):
        name = Path(rel).name
        if not (conf / name).is_file():  # conditional tables (the relay's) are absent when unused
            continue
        code, out = _run([postmap, "-c", str(conf), f"{profile.map_type}:{conf}/{name}"])
        if code != 0:
            ok = False
            outputs.append(f"postmap {name}: {out}")
    code, out = _run([postconf, "-c", str(conf), "-n"])
    warnings = [line for line in out.splitlines() if "warning" in line or "fatal" in line]
    if code != 0 or warnings:
        ok = False
        outputs.append("postconf -n: " + "; ".join(warnings or [out]))
    code, out = _run([postconf, "-c", str(conf), "-M"])
    if code != 0 or "warning" in out:
        ok = False
        outputs.append("postconf -M: " + out)
    return CheckResult("postconf", True, ok, "\n".join(outputs) or "postconf -n and -M: no complaints")


def _local_daemon_directory(postconf: str, conf: Path) -> tuple[str | None, str]:
    """This machine's compiled-in daemon_directory, or None and the reason it could not be read."""
    code, out = _run([postconf, "-c", str(conf), "-h", "-d", "daemon_directory"])
    lines = [line for line in out.splitlines() if not line.startswith("postconf: warning:")]
    if code != 0 or len(lines) != 1 or not Path(lines[0]).is_dir():
        return None, f"postconf -h -d daemon_directory could not run: {out or f'exit {code}'}"
    return lines[0], ""


def _check_dovecot(
    doveconf: str, src: Path, scratch: Path, cert: Path, key: Path, profile: Profile
) -> CheckResult:
    conf = scratch / "dovecot.conf"
    text = src.read_text().replace(profile.tls_cert, str(cert)).replace(profile.tls_key, str(key))
    conf.write_text(text)
    code, out = _run([doveconf, "-n", "-c", str(conf)])
    complaints = [
        line
        for line in out.splitlines()
        if line.startswith(("doveconf: Warning", "doveconf: Fatal", "doveconf: Error"))
    ]
    ok = code == 0 and not complaints
    return CheckResult(
        "doveconf", True, ok, "\n".join(complaints) or ("doveconf -n: no complaints" if ok else out)
    )
