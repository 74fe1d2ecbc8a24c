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
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import jinja2

from provisioner import TEMPLATES_DIR, outdir, renderguard
from provisioner.errors import RenderError
from provisioner.profiles import Profile
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


#: Templates rendered only when the spec signs with DKIM (dkim.private_key).
DKIM_TEMPLATES = ("etc/opendkim.conf.j2", "etc/opendkim/")
#: Rendered only when the spec names resolvers for OpenDKIM.
DKIM_RESOLVER_TEMPLATE = "etc/opendkim/resolver.conf.j2"
#: OpenDKIM's milter port on 127.0.0.1 (labelled milter_port_t by the SELinux policy).
DKIM_MILTER_PORT = 8891

#: Rendered only when fail2ban is on (spec fail2ban.enabled).
FAIL2BAN_TEMPLATE = "etc/fail2ban/jail.d/mailprov.local.j2"

#: Postfix lookup tables (sources) that need `postmap` with the profile's map type.
POSTFIX_MAPS = (
    "etc/postfix/vdomains",
    "etc/postfix/vmailbox",
    "etc/postfix/virtual",
    "etc/postfix/sender_login",
    "etc/postfix/sender_access",
    "etc/postfix/helo_access",
)


def file_meta(path: str, profile: Profile) -> FileMeta:
    """Owner, group and mode for a rendered path (the password file is not world-readable)."""
    if path == "etc/dovecot/users":
        return FileMeta("root", profile.dovecot_group, "0640")
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


def dovecot_user_extra(box: Mailbox) -> str:
    """The extra-fields column of a mailbox's passwd-file line (its quota rule, or nothing)."""
    return f"userdb_quota_rule=*:storage={format_size(box.quota)}" if box.quota else ""


def _dovecot_users(spec: Spec) -> list[str]:
    return [f"{box.address}:{box.password_hash}::::::{dovecot_user_extra(box)}" for box in spec.mailboxes]


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
        "fail2ban_ignoreip": " ".join(["127.0.0.1/8", "::1", *spec.fail2ban.ignore_ip]),
    }


def wanted(name: str, spec: Spec) -> bool:
    """Whether a template applies to the spec (OpenDKIM's files only when signing)."""
    if name == FAIL2BAN_TEMPLATE:
        return spec.fail2ban.enabled
    if name == DKIM_RESOLVER_TEMPLATE:
        return spec.dkim.signing and bool(spec.dkim.resolvers)
    return spec.dkim.signing or not name.startswith(DKIM_TEMPLATES)


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
        renderguard.check_rendered(out, spec, profile)
    return out


def tree_digest(files: dict[str, str]) -> str:
    """A digest of the whole rendered tree (apply skips work when it is unchanged on the host)."""
    h = hashlib.sha256()
    for path in sorted(files):
        h.update(path.encode() + b"\0" + files[path].encode() + b"\0")
    return h.hexdigest()


def rendered_paths() -> list[str]:
    """Every path any render may produce (relative, as render() keys them)."""
    return [name.removesuffix(".j2") for name in template_names()]


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
    return results


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
