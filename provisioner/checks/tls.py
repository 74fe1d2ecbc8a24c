"""TLS checks on every TLS port (25 and 587 via STARTTLS, 465, 993, 995): versions and the certificate.

The certificate of each port is fetched once (by the shared SMTP/IMAP/POP3 probes). Chain trust is
verified with time checks off, so an expired certificate fails tls.cert.expiry, not tls.cert.chain.
"""

from __future__ import annotations

import datetime as dt
import ssl
from typing import Any

from provisioner.checks import bounded
from provisioner.checks.base import Result, Status, aggregate, check
from provisioner.checks.context import SMTP_PORTS, TLS_PORTS, Context, TlsInfo, client_context, describe
from provisioner.checks.parsers import (
    CertFacts,
    cert_facts,
    dovecot_cert_path,
    judge_cert_key,
    judge_cert_name,
    judge_cert_on_disk,
    judge_expiry,
    pem_fingerprints,
    postfix_cert_paths,
)

PROBED_VERSIONS = (
    ("TLSv1", ssl.TLSVersion.TLSv1),
    ("TLSv1.1", ssl.TLSVersion.TLSv1_1),
    ("TLSv1.2", ssl.TLSVersion.TLSv1_2),
    ("TLSv1.3", ssl.TLSVersion.TLSv1_3),
)


def tls_ports(ctx: Context, served_only: bool = False) -> tuple[dict[int, TlsInfo], dict[int, str]]:
    """TLS facts per answering TLS port, and errors of ports that should speak TLS but did not.

    With served_only, errors only of ports that accept TCP (a closed port is the port checks' finding).
    """
    infos: dict[int, TlsInfo] = {}
    errors: dict[int, str] = {}
    ctx.address()  # an address verify will not probe fails every TLS check with that reason
    for port in TLS_PORTS:
        expected = ctx.port_expected(port)
        if expected is False:
            continue
        try:
            infos[port] = ctx.tls(port)
        except Exception as exc:
            if port in SMTP_PORTS:
                closed = not ctx.smtp(port).tcp
            else:
                closed = isinstance(exc, ConnectionRefusedError) or not ctx.tcp_open(port)
            if closed and (expected is None or served_only):
                continue
            errors[port] = describe(exc)
    return infos, errors


def _certs(ctx: Context, id: str) -> tuple[dict[int, TlsInfo], dict[int, CertFacts]]:
    infos, errors = tls_ports(ctx)
    if not infos:
        shown = "; ".join(f"{p}: {e}" for p, e in errors.items()) or "no TLS port open"
        raise ConnectionError(f"no TLS port answered ({shown})")
    # Five tls.cert.* checks read the same certificates: parse each distinct one once per run.
    return infos, {port: _facts(ctx, info.der) for port, info in infos.items() if info.der}


def _served_ports_fail(ctx: Context, result: Result) -> Result:
    """Fail the result for every served TLS port whose TLS did not work: no port passes unseen."""
    _, errors = tls_ports(ctx, served_only=True)
    if not errors:
        return result
    failed = "; ".join(f"port {p}: no TLS ({e})" for p, e in sorted(errors.items()))
    if result.status == "fail":
        return Result(result.id, "fail", f"{failed}; {result.reason}", result.evidence)
    return Result(
        result.id, "fail", f"{failed} (other ports: {result.status}: {result.reason})", result.evidence
    )


def _tls_check(id: str, title: str, severity: str = "high", needs: tuple[str, ...] = ("net",)) -> Any:
    """Register a tls.* check that also fails for every served port whose TLS did not work."""

    def register(fn: Any) -> Any:
        def wrapped(ctx: Context) -> Result:
            return _served_ports_fail(ctx, fn(ctx))

        wrapped.__doc__ = fn.__doc__
        check(id, title, needs=needs, severity=severity)(wrapped)  # type: ignore[arg-type]
        return fn

    return register


def _facts(ctx: Context, der: bytes) -> CertFacts:
    return ctx.memo(("cert_facts", der), lambda: cert_facts(der))


def _by_certificate(id: str, facts: dict[int, CertFacts], judge: object, evidence: object = None) -> Result:
    """Judge each distinct certificate once and name the ports that serve it."""
    groups: dict[str, list[int]] = {}
    for port, fact in facts.items():
        groups.setdefault(fact.sha256, []).append(port)
    parts: dict[str, tuple[Status, str]] = {}
    for ports in groups.values():
        parts["port " + ", ".join(map(str, ports))] = judge(facts[ports[0]])  # type: ignore[operator]
    if len(parts) == 1:
        ((_, (status, reason)),) = parts.items()
        return Result(id, status, reason, evidence)
    return aggregate(id, parts, evidence)


@_tls_check("tls.versions", "TLS 1.2+ offered, 1.0/1.1 refused", severity="high")
def versions(ctx: Context) -> Result:
    """On each TLS port, TLS 1.2 or 1.3 is offered and TLS 1.0 and 1.1 are refused.

    The version the shared probe negotiated shows what is offered at the top; only the old versions
    are probed separately (a refusal costs the server no certificate signature).
    """
    infos, _ = _certs(ctx, "tls.versions")
    jobs = [(port, name, version) for port in infos for name, version in PROBED_VERSIONS[:2]]

    def probe(job: tuple[int, str, ssl.TLSVersion]) -> tuple[int, str, bool, str]:
        port, name, version = job
        try:
            ctx.tls_handshake(port, client_context(version=version))
            return port, name, True, ""
        except (ssl.SSLError, ConnectionResetError, BrokenPipeError):
            return port, name, False, ""  # the server refused the handshake: the version is not offered
        except Exception as exc:
            return port, name, False, describe(exc)

    outcomes = bounded.parallel(probe, jobs)
    offered: dict[int, list[str]] = {port: [info.version] for port, info in infos.items()}
    unconfirmed: dict[int, list[str]] = {}
    for port, name, ok, error in outcomes:
        if ok:
            offered[port].insert(0, name)
        elif error:
            unconfirmed.setdefault(port, []).append(f"{name}: {error}")
    parts: dict[str, tuple[Status, str]] = {}
    for port, names in offered.items():
        old = [n for n in names if n in ("TLSv1", "TLSv1.1")]
        modern = [n for n in names if n in ("TLSv1.2", "TLSv1.3")]
        if port in unconfirmed and not old:
            parts[f"port {port}"] = (
                "fail",
                f"could not confirm that old versions are refused ({'; '.join(unconfirmed[port])})",
            )
        elif old:
            parts[f"port {port}"] = ("fail", f"accepts {' and '.join(old)}")
        elif not modern:
            parts[f"port {port}"] = (
                "fail",
                f"offers neither TLS 1.2 nor 1.3 (negotiated {names[-1] or '?'})",
            )
        else:
            parts[f"port {port}"] = ("pass", f"{modern[0]}; TLSv1 and TLSv1.1 refused")
    statuses = {s for s, _ in parts.values()}
    if statuses == {"pass"} and len({r for _, r in parts.values()}) == 1:
        ((_, (_, reason)), *_) = parts.items()
        return Result("tls.versions", "pass", f"{reason} on {', '.join(map(str, offered))}", offered)
    return aggregate("tls.versions", parts, offered)


@_tls_check("tls.cert.name", "The certificate covers the host name", severity="high")
def cert_name(ctx: Context) -> Result:
    """Every TLS port's certificate covers the mail host name (SAN, wildcard one label)."""
    hostname = ctx.require_hostname()
    _, facts = _certs(ctx, "tls.cert.name")
    names = {p: f.dns_names or f.common_names for p, f in facts.items()}
    return _by_certificate("tls.cert.name", facts, lambda f: judge_cert_name(f, hostname), names)


@_tls_check("tls.cert.chain", "The certificate chain is trusted", severity="high")
def cert_chain(ctx: Context) -> Result:
    """The chain verifies against the system store or --ca (self-signed = warn)."""
    infos, facts = _certs(ctx, "tls.cert.chain")
    store = f"--ca {ctx.options.ca}" if ctx.options.ca else "the system trust store"
    parts: dict[str, tuple[Status, str]] = {}
    for port, info in infos.items():
        fact = facts.get(port)
        if info.verify_error is None:
            parts[f"port {port}"] = ("pass", f"verified against {store}")
        elif fact is not None and fact.self_issued:
            parts[f"port {port}"] = ("warn", f"self-signed ({fact.subject}); pass --ca to trust it")
        else:
            parts[f"port {port}"] = ("fail", f"not trusted by {store}: {info.verify_error}")
    issuers = {p: f.issuer for p, f in facts.items()}
    if len({v for v in parts.values()}) == 1:
        ((_, (status, reason)), *_) = parts.items()
        return Result("tls.cert.chain", status, reason, issuers)
    return aggregate("tls.cert.chain", parts, issuers)


@_tls_check("tls.cert.expiry", "The certificate is not about to expire", severity="high")
def cert_expiry(ctx: Context) -> Result:
    """More than 14 days left (under 14 = warn; under 3 or expired = fail)."""
    _, facts = _certs(ctx, "tls.cert.expiry")
    now = dt.datetime.now(dt.UTC)
    dates = {p: f.not_after.isoformat() for p, f in facts.items()}
    return _by_certificate("tls.cert.expiry", facts, lambda f: judge_expiry(f.not_after, now), dates)


@_tls_check("tls.cert.key", "Strong certificate key and signature", severity="medium")
def cert_key(ctx: Context) -> Result:
    """RSA >= 2048 or ECDSA >= 256; signature hash SHA-256 or better."""
    _, facts = _certs(ctx, "tls.cert.key")
    keys = {p: f"{f.key_type} {f.key_bits} {f.signature_hash}" for p, f in facts.items()}
    return _by_certificate("tls.cert.key", facts, judge_cert_key, keys)


def _files_on_disk(ctx: Context) -> dict[str, str]:
    """Certificate files the host's Postfix and Dovecot are configured with: {path: content}."""
    host = ctx.host
    paths: list[str] = []
    for cmd in ("postconf -h smtpd_tls_cert_file", "postconf -h smtpd_tls_chain_files"):
        out = host.run(cmd)
        if out.rc == 0:
            paths += [p for p in out.stdout.replace(",", " ").split() if p.startswith("/")]
    out = host.run("doveconf -h ssl_cert")
    if out.rc == 0 and out.stdout.strip().startswith("<"):
        paths.append(out.stdout.strip()[1:].strip())
    files = {}
    for path in dict.fromkeys(paths):
        f = host.file(path)
        if f.exists:
            text = f.content_string
            if "BEGIN CERTIFICATE" in text:
                files[path] = text
    return files


@_tls_check("tls.cert.same", "Every TLS port serves the same certificate", severity="low")
def cert_same(ctx: Context) -> Result:
    """All TLS ports serve one certificate; with --ssh/--local, the one in the configured files."""
    _, facts = _certs(ctx, "tls.cert.same")
    prints = {port: f.sha256 for port, f in facts.items()}
    distinct = set(prints.values())
    evidence: dict[str, object] = {str(p): fp[:16] for p, fp in prints.items()}
    if len(distinct) > 1:
        groups = {fp: [p for p, x in prints.items() if x == fp] for fp in distinct}
        shown = "; ".join(f"{fp[:16]}… on {', '.join(map(str, ps))}" for fp, ps in groups.items())
        return Result("tls.cert.same", "fail", f"{len(distinct)} different certificates: {shown}", evidence)
    reason = f"one certificate on {', '.join(map(str, prints))}"
    if ctx.host is None:
        return Result(
            "tls.cert.same", "pass", reason + " (files on disk not compared without --ssh/--local)", evidence
        )
    files = _files_on_disk(ctx)
    evidence["files"] = sorted(files)
    if not files:
        return Result(
            "tls.cert.same", "warn", reason + "; no certificate file found in postconf/doveconf", evidence
        )
    served = distinct.pop()
    stale = [path for path, text in files.items() if (pem_fingerprints(text) or [""])[0] != served]
    if stale:
        return Result(
            "tls.cert.same", "fail", f"served certificate differs from {', '.join(stale)}", evidence
        )
    return Result("tls.cert.same", "pass", reason + f", equal to {', '.join(files)}", evidence)


def _first_cert_fingerprint(ctx: Context, path: str) -> str | None:
    f = ctx.host.file(path)
    if not f.exists:
        return None
    try:
        prints = pem_fingerprints(f.content_string)
    except ValueError:
        return None
    return prints[0] if prints else None


def configured_cert_files(ctx: Context) -> dict[int, list[str]]:
    """The certificate files each TLS port's daemon is configured with (Postfix: 25/587/465, Dovecot: 993/995)."""

    def value(cmd: str) -> str:
        out = _host_run(ctx, cmd)
        return str(out.stdout) if out.rc == 0 else ""

    files = postfix_cert_paths(
        value("postconf -h smtpd_tls_cert_file"),
        value("postconf -h smtpd_tls_chain_files"),
        value("postconf -P"),
    )
    dovecot = dovecot_cert_path(value("doveconf -h ssl_cert"))
    for port in (993, 995):
        files[port] = [dovecot] if dovecot else []
    return files


def _host_run(ctx: Context, cmd: str) -> Any:
    from provisioner.checks.host import _warm  # the host module registers checks: import on use

    _warm(ctx)
    return ctx.host.run(cmd)


@_tls_check("tls.cert.disk", "Each TLS port serves the certificate on disk", needs=("net", "ssh"))
def cert_disk(ctx: Context) -> Result:
    """With --ssh/--local: each TLS port serves the certificate in the file its daemon is configured with.

    Postfix's `smtpd_tls_chain_files`/`smtpd_tls_cert_file` (per master.cf service) for 25, 587 and 465,
    Dovecot's `ssl_cert` for 993 and 995; compared by SHA-256 fingerprint. A difference means a new
    certificate was installed but the daemon still serves the old one (a missed reload).
    """
    _, facts = _certs(ctx, "tls.cert.disk")
    configured = configured_cert_files(ctx)
    parts: dict[str, tuple[Status, str]] = {}
    evidence: dict[str, object] = {}
    for port, fact in sorted(facts.items()):
        paths = configured.get(port, [])
        files = {path: _first_cert_fingerprint(ctx, path) for path in paths}
        parts[f"port {port}"] = judge_cert_on_disk(fact.sha256, files)
        evidence[str(port)] = {"served": fact.sha256, "files": files}
    return aggregate("tls.cert.disk", parts, evidence)


# ---- cipher suites (trust work) ----------------------------------------------------------------------

#: Ports where TLS is mandatory (implicit TLS or STARTTLS required): weak suites fail there, warn on 25.
MANDATORY_TLS = (587, 465, 993, 995)
#: Families OpenSSL 3 cannot offer at all (RC4, 3DES, EXPORT): this client cannot probe them either.
UNPROBED = "RC4, 3DES and EXPORT suites are not probed (this OpenSSL has none)"
_FAMILIES: dict[str, str] = {}


def weak_families() -> dict[str, str]:
    """Cipher strings per weak TLS 1.2 suite family this OpenSSL can offer: CBC, NULL, anonymous."""
    if _FAMILIES:
        return _FAMILIES
    probe = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    probe.set_ciphers("ALL:COMPLEMENTOFALL:@SECLEVEL=0")
    suites = [c for c in probe.get_ciphers() if c["protocol"] != "TLSv1.3"]
    # PSK and SRP suites need a shared secret the client does not have: a server cannot pick them.
    usable = [c for c in suites if c.get("auth") not in ("auth-psk", "auth-srp") and "PSK" not in c["name"]]
    families = {
        "CBC": [
            c["name"]
            for c in usable
            if not c["aead"] and "cbc" in str(c.get("symmetric")) and c.get("auth") != "auth-null"
        ],
        "NULL": [
            c["name"] for c in usable if c.get("symmetric") in (None, "None") and c.get("auth") != "auth-null"
        ],
        "anonymous": [c["name"] for c in usable if c.get("auth") == "auth-null"],
    }
    _FAMILIES.update({name: ":".join(names) for name, names in families.items() if names})
    return _FAMILIES


def family_context(ciphers: str) -> ssl.SSLContext:
    """A client context offering only the given TLS 1.0-1.2 suites."""
    import warnings

    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        context.minimum_version = ssl.TLSVersion.TLSv1
        context.maximum_version = ssl.TLSVersion.TLSv1_2
    context.set_ciphers(f"{ciphers}:@SECLEVEL=0")
    return bounded.bound_context(context)


@_tls_check("tls.ciphers", "Mandatory-TLS ports offer AEAD suites only", severity="high")
def ciphers(ctx: Context) -> Result:
    """Per TLS port, CBC, NULL or anonymous suites are refused (mandatory-TLS ports: fail; port 25: warn)."""
    infos, _ = _certs(ctx, "tls.ciphers")
    families = weak_families()
    jobs = [(port, family) for port in infos for family in families]

    def probe(job: tuple[int, str]) -> tuple[int, str, str | None, str]:
        port, family = job
        try:
            info = ctx.tls_handshake(port, family_context(families[family]))
            return port, family, info.cipher, ""
        except (ssl.SSLError, ConnectionResetError, BrokenPipeError):
            return port, family, None, ""  # refused: not offered
        except Exception as exc:
            return port, family, None, describe(exc)

    outcomes = bounded.parallel(probe, jobs)
    offered: dict[int, dict[str, str]] = {port: {} for port in infos}
    unconfirmed: dict[int, list[str]] = {}
    for port, family, cipher, error in outcomes:
        if cipher:
            offered[port][family] = cipher
        elif error:
            unconfirmed.setdefault(port, []).append(f"{family}: {error}")
    parts: dict[str, tuple[Status, str]] = {}
    for port in infos:
        weak = offered[port]
        shown = ", ".join(f"{family} ({cipher})" for family, cipher in weak.items())
        if weak:
            status: Status = "fail" if port in MANDATORY_TLS else "warn"
            parts[f"port {port}"] = (status, f"offers {shown}")
        elif port in unconfirmed:
            parts[f"port {port}"] = ("fail", f"could not confirm the suites ({'; '.join(unconfirmed[port])})")
        else:
            parts[f"port {port}"] = (
                "pass",
                f"AEAD only: {', '.join(families)} refused; negotiated {infos[port].cipher}",
            )
    evidence = {
        "offered": {str(p): w for p, w in offered.items()},
        "negotiated": {str(p): i.cipher for p, i in infos.items()},
        "note": UNPROBED,
    }
    return aggregate("tls.ciphers", parts, evidence)
