"""Defense in depth: parse the rendered files back and compare them with the model.

Validation at load is the first wall; this is the second. Every table must hold exactly the model's
entries, one per line; every configuration file may only set the parameters its template can set, each once,
and the parameters fed by the spec must hold exactly the model's value. A value that smuggled a line break,
a field separator or a second parameter past validation would show up here as an extra line, an extra field
or a wrong value, and rendering stops with an internal error before anything is written.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable

from provisioner import TEMPLATES_DIR
from provisioner.errors import RenderError
from provisioner.profiles import Profile
from provisioner.spec import Spec, Tables

_PARAM_RE = re.compile(r"([A-Za-z0-9_]+) =(?: (.*))?")
_SECTION_RE = re.compile(r"([A-Za-z0-9_-]+)(?: ([^\s{}]+))? \{")
_DKIM_PARAM_RE = re.compile(r"([A-Za-z]+) +(\S.*)")


#: The reply text of the port-25 own-sender refusal (templates/etc/postfix/sender_access.j2).
SENDER_REFUSAL = "5.7.1 Sender address belongs to this server; submit with authentication on port 587 or 465"


class Mismatch(RenderError):
    """A rendered file says something the model does not."""


def _fail(path: str, problem: str) -> Mismatch:
    return Mismatch(
        f"internal error: rendered {path} does not match the spec ({problem}); nothing was written"
    )


def _entries(path: str, text: str) -> Iterable[tuple[int, str]]:
    """Non-blank, non-comment lines of a table with their line numbers."""
    for number, line in enumerate(text.split("\n"), 1):
        if line and not line.startswith("#"):
            yield number, line


def _table(path: str, text: str) -> dict[str, str]:
    """A Postfix table source as {key: value}: one 'key value' per line, keys unique."""
    out: dict[str, str] = {}
    for number, line in _entries(path, text):
        key, sep, value = line.partition(" ")
        if not sep or not key or not value or value != value.strip() or line != line.strip():
            raise _fail(path, f"line {number} is not 'key value'")
        if key in out:
            raise _fail(path, f"key {key} appears twice (line {number})")
        out[key] = value
    return out


def _lines(text: str) -> list[str]:
    """The non-blank, non-comment lines of a rendered file."""
    return [line for line in text.split("\n") if line and not line.startswith("#")]


def _expect_table(path: str, text: str, expected: dict[str, str]) -> None:
    """Exactly one 'key value' line per expected entry, in order; anything else is a mismatch."""
    clean = not any(" " in key or "\n" in key for key in expected)
    if clean and _lines(text) == [f"{key} {value}" for key, value in expected.items()]:
        return  # each line splits at its first space into exactly the expected key and value
    found = _table(path, text)
    if found != expected:
        extra = sorted(set(found) - set(expected))[:3]
        missing = sorted(set(expected) - set(found))[:3]
        wrong = sorted(k for k in set(found) & set(expected) if found[k] != expected[k])[:3]
        raise _fail(path, f"extra {extra}, missing {missing}, different {wrong}")


def _passwd_file(path: str, text: str, expected: dict[str, tuple[str, str]]) -> None:
    """Dovecot passwd-file: user:password:uid:gid:gecos:home:shell:extra, exactly one line per mailbox."""
    clean = not any(":" in user or ":" in password for user, (password, _) in expected.items())
    if clean and _lines(text) == [
        f"{user}:{password}::::::{extra}" for user, (password, extra) in expected.items()
    ]:
        return  # each line splits at its colons into exactly the expected fields
    seen: set[str] = set()
    for number, line in _entries(path, text):
        fields = line.split(":", 7)  # the extra-fields column may hold colons (quota rules)
        if len(fields) != 8 or any(fields[2:7]):
            raise _fail(path, f"line {number} does not have the form user:hash::::::extra")
        user, password, extra = fields[0], fields[1], fields[7]
        if user in seen or expected.get(user) != (password, extra):
            raise _fail(path, f"line {number} (user {user!r}) is not one of the spec's mailboxes")
        seen.add(user)
    if seen != set(expected):
        raise _fail(path, f"{len(set(expected) - seen)} mailboxes missing")


@functools.lru_cache(maxsize=16)
def _template_params(name: str, pattern: str) -> frozenset[tuple[str, str]]:
    """The (section, parameter) pairs a template can produce, read from its text."""
    text = (TEMPLATES_DIR / name).read_text()
    return frozenset(_params(name, text, re.compile(pattern), lenient=True))


def _params(path: str, text: str, param_re: re.Pattern[str], lenient: bool = False) -> list[tuple[str, str]]:
    """(section path, parameter) for every setting in a 'name = value' file with { } sections."""
    out: list[tuple[str, str]] = []
    sections: list[str] = []
    for number, raw in _entries(path, text):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if lenient and line.startswith(("{%", "{#")):
            continue
        if line == "}":
            if not sections:
                raise _fail(path, f"line {number} closes a section that is not open")
            sections.pop()
            continue
        section = _SECTION_RE.fullmatch(line)
        if section:
            sections.append(f"{section.group(1)} {section.group(2) or ''}".strip())
            continue
        param = param_re.fullmatch(line)
        if not param:
            if lenient:
                continue
            raise _fail(path, f"line {number} is neither a setting nor a section")
        out.append(("/".join(sections), param.group(1)))
    if sections and not lenient:
        raise _fail(path, f"section {sections[-1]!r} is never closed")
    return out


def _values(path: str, text: str, param_re: re.Pattern[str]) -> dict[str, str]:
    """Parameter values by 'section/name' ('name' at the top level) of a 'name = value' file."""
    out: dict[str, str] = {}
    sections: list[str] = []
    for _number, raw in _entries(path, text):
        line = raw.strip()
        section = _SECTION_RE.fullmatch(line)
        if section:
            sections.append(f"{section.group(1)} {section.group(2) or ''}".strip())
        elif line == "}":
            sections.pop()
        else:
            match = param_re.fullmatch(line)
            if match:
                out["/".join([*sections, match.group(1)])] = match.group(2) or ""
    return out


def _config(
    path: str,
    text: str,
    template: str,
    pattern: str,
    expected: dict[str, str],
    generated: frozenset[tuple[str, str]] = frozenset(),
) -> None:
    """Only the template's parameters (and `generated`, made by a loop), each once per section, and the
    spec-fed ones equal to the model."""
    param_re = re.compile(pattern)
    found = _params(path, text, param_re)
    allowed = _template_params(template, pattern) | generated
    seen: set[tuple[str, str]] = set()
    for item in found:
        if item not in allowed:
            raise _fail(
                path, f"parameter {item[1]!r} (section {item[0] or 'top'!r}) is not one the template sets"
            )
        if item in seen:
            raise _fail(path, f"parameter {item[1]!r} is set twice")
        seen.add(item)
    values = _values(path, text, param_re)
    for name, value in expected.items():
        if values.get(name) != value:
            raise _fail(path, f"{name} is {values.get(name)!r}, the spec says {value!r}")


_INI_SECTION_RE = re.compile(r"\[([A-Za-z0-9_-]+)\]")
_INI_PARAM_RE = re.compile(r"([a-z_]+) = (\S.*)")


def _ini(path: str, text: str, lenient: bool = False) -> dict[tuple[str, str], str]:
    """An INI file (fail2ban jails) as {(section, key): value}; each key once per section."""
    out: dict[tuple[str, str], str] = {}
    section = ""
    for number, line in _entries(path, text):
        if lenient and line.startswith(("{%", "{#")):
            continue
        header = _INI_SECTION_RE.fullmatch(line)
        if header:
            section = header.group(1)
            continue
        param = _INI_PARAM_RE.fullmatch(line)
        if not param or not section:
            if lenient:
                continue
            raise _fail(path, f"line {number} is neither a [section] nor 'key = value' in a section")
        if (section, param.group(1)) in out:
            raise _fail(path, f"{param.group(1)} is set twice in [{section}]")
        out[(section, param.group(1))] = param.group(2)
    return out


def _jails(path: str, text: str, spec: Spec) -> None:
    found = _ini(path, text)
    allowed = set(_ini(path, (TEMPLATES_DIR / (path + ".j2")).read_text(), lenient=True))
    extra = sorted(set(found) - allowed)
    if extra:
        raise _fail(path, f"settings the template does not make: {extra[:3]}")
    ignoreip = " ".join(["127.0.0.1/8", "::1", *spec.fail2ban.ignore_ip])
    for section in ("mailprov-postfix-sasl", "mailprov-dovecot"):
        expected = {
            "ignoreip": ignoreip,
            "maxretry": str(spec.fail2ban.maxretry),
            "findtime": spec.fail2ban.findtime,
            "bantime": spec.fail2ban.bantime,
        }
        for key, value in expected.items():
            if found.get((section, key)) != value:
                raise _fail(
                    path, f"[{section}] {key} is {found.get((section, key))!r}, the spec says {value!r}"
                )


def _same(path: str, files: dict[str, str], expected: str | None) -> None:
    """A file rendered verbatim from what was read at load (a Sieve script, a CA bundle)."""
    if expected is None:
        if path in files:
            raise _fail(path, "present although the spec has no such file")
        return
    if files.get(path, "").rstrip("\n") != expected.rstrip("\n"):
        raise _fail(path, "differs from the file the spec names")


def _sieve_and_relay(files: dict[str, str], spec: Spec) -> None:
    """Sieve scripts are the spec's files; the relay tables hold exactly the relay's one line."""
    sieve_on = spec.sieve.enabled
    _same("etc/dovecot/sieve/before.sieve", files, spec.sieve.text("before") if sieve_on else None)
    _same("etc/dovecot/sieve/after.sieve", files, spec.sieve.text("after") if sieve_on else None)
    mailbox_scripts = {p for p in files if p.startswith("etc/dovecot/sieve/mailbox/")}
    expected_scripts = set()
    for box in spec.mailboxes:
        where = spec.mailbox_sieve(box)
        if where is not None:
            expected_scripts.add(where[1].lstrip("/"))
            _same(where[1].lstrip("/"), files, box.sieve_text)
    if mailbox_scripts != expected_scripts:
        raise _fail("etc/dovecot/sieve/mailbox/", "scripts other than the spec's mailboxes' own")
    relay = spec.relay_host
    if relay is not None and relay.authenticated:
        _expect_table(
            "etc/postfix/sasl_passwd",
            files["etc/postfix/sasl_passwd"],
            {spec.relayhost: f"{relay.username}:{relay.password}"},
        )
        _expect_table("etc/postfix/tls_policy", files["etc/postfix/tls_policy"], {spec.relayhost: "secure"})
    else:
        for path in ("etc/postfix/sasl_passwd", "etc/postfix/tls_policy"):
            if path in files:
                raise _fail(path, "present although the relay needs no login")
    _same("etc/postfix/relay-ca.pem", files, relay.ca_pem if relay is not None else None)


_NGINX_LINE_RE = re.compile(
    r"(?:[a-z_]+(?: [^;{}#]+)?;|(?:server|events|http|types|location(?: [=^~]{1,2})? [^;{}#\s]+) ?\{|\}|types \{ \})"
)


def _nginx(path: str, text: str, spec: Spec, web_listen: list[str]) -> None:
    """Only directives and blocks; server_name and listen lines exactly the model's names and addresses."""
    for number, raw in _entries(path, text):
        line = raw.strip()
        if line and not line.startswith("#") and not _NGINX_LINE_RE.fullmatch(line):
            raise _fail(path, f"line {number} is not a directive or block")
    names = [ln.strip() for ln in text.split("\n") if ln.strip().startswith("server_name ")]
    expected = []
    if spec.tls.mode == "acme":
        expected.append("server_name " + " ".join(spec.certificate_names) + ";")
    if spec.mta_sts_served:
        expected.append("server_name " + " ".join(spec.mta_sts_names) + ";")
    if names != expected:
        raise _fail(path, f"server names {names}, the spec says {expected}")
    listens = {ln.strip() for ln in text.split("\n") if ln.strip().startswith("listen ")}
    allowed = {f"listen {a}:{p};" for a in web_listen for p in (80,)} | {
        f"listen {a}:443 ssl;" for a in web_listen
    }
    if not listens <= allowed:
        raise _fail(path, f"listen lines {sorted(listens - allowed)} are not the spec's addresses")


def _web_and_tls(files: dict[str, str], spec: Spec, profile: Profile) -> None:
    """The certificate transaction's settings, the MTA-STS policy, nginx and the ACME CA are the model's."""
    import json

    from provisioner.render import _web_listen, tls_deploy_config

    path = "etc/mailprov/tls-deploy.json"
    try:
        found = json.loads(files[path])
    except (KeyError, ValueError):
        raise _fail(path, "missing or not JSON") from None
    if found != json.loads(json.dumps(tls_deploy_config(spec, profile))):
        raise _fail(path, "settings differ from the model's")
    _same("etc/nginx/mailprov/mta-sts.txt", files, spec.mta_sts_policy if spec.mta_sts_served else None)
    _same("etc/mailprov/acme-ca.pem", files, spec.tls.ca_pem)
    nginx = "etc/nginx/conf.d/mailprov.conf"
    if (nginx in files) != spec.web_served:
        raise _fail(nginx, "present although nothing is served over HTTP" if nginx in files else "missing")
    if nginx in files:
        _nginx(nginx, files[nginx], spec, _web_listen(spec))


def check_rendered(files: dict[str, str], spec: Spec, profile: Profile, tables: Tables | None = None) -> None:
    """Raise Mismatch unless every rendered table and spec-fed parameter says exactly what the model says.

    `tables` are the model's derived tables when the caller has them already (render does).
    """
    tables = tables or spec.tables()
    _expect_table(
        "etc/postfix/vdomains", files["etc/postfix/vdomains"], dict.fromkeys(spec.domain_names, "OK")
    )
    _expect_table(
        "etc/postfix/vmailbox", files["etc/postfix/vmailbox"], {b.address: b.maildir for b in spec.mailboxes}
    )
    _expect_table(
        "etc/postfix/virtual",
        files["etc/postfix/virtual"],
        {e.key: ", ".join(e.targets) for e in tables.alias_entries},
    )
    _expect_table(
        "etc/postfix/sender_login",
        files["etc/postfix/sender_login"],
        {sender: ",".join(logins) for sender, logins in tables.sender_owners.items()},
    )
    _expect_table(
        "etc/postfix/sender_access",
        files["etc/postfix/sender_access"],
        {a: f"REJECT {SENDER_REFUSAL}" for a in tables.own_senders},
    )
    _expect_table(
        "etc/postfix/helo_access",
        files["etc/postfix/helo_access"],
        {name: f"REJECT 5.7.1 You are not {name}" for name in spec.own_helo_names},
    )
    from provisioner.render import VMAIL_USER, dovecot_user_extra

    _passwd_file(
        "etc/dovecot/users",
        files["etc/dovecot/users"],
        {b.address: (b.password_hash, dovecot_user_extra(spec, b)) for b in spec.mailboxes},
    )
    _config(
        "etc/postfix/main.cf",
        files["etc/postfix/main.cf"],
        "etc/postfix/main.cf.j2",
        _PARAM_RE.pattern,
        {
            "myhostname": spec.hostname,
            "mydomain": spec.primary_domain,
            "inet_interfaces": spec.inet_interfaces,
            "inet_protocols": spec.inet_protocols,
            "relayhost": spec.relayhost,
            "message_size_limit": str(spec.message_size_limit),
        },
    )
    sieve_globals = dict(spec.sieve_before + spec.sieve_after)
    _config(
        "etc/dovecot/dovecot.conf",
        files["etc/dovecot/dovecot.conf"],
        "etc/dovecot/dovecot.conf.j2",
        _PARAM_RE.pattern,
        {
            **{f"plugin/{setting}": path for setting, path in sieve_globals.items()},
            "listen": spec.dovecot_listen,
            "protocols": " ".join(spec.dovecot_protocols),
            "userdb/default_fields": f"uid={VMAIL_USER} gid={VMAIL_USER} home={spec.mail_root}/%d/%n",
            "protocol lmtp/postmaster_address": f"postmaster@{spec.primary_domain}",
        },
        frozenset(("plugin", setting) for setting in sieve_globals),
    )
    _sieve_and_relay(files, spec)
    _web_and_tls(files, spec, profile)
    jail = "etc/fail2ban/jail.d/mailprov.local"
    if (jail in files) != spec.fail2ban.enabled:
        raise _fail(jail, "present although fail2ban is off" if jail in files else "missing")
    if jail in files:
        _jails(jail, files[jail], spec)
    if spec.dkim.signing:
        selector = spec.dkim.selector
        _expect_table(
            "etc/opendkim/KeyTable",
            files["etc/opendkim/KeyTable"],
            {f"{selector}._domainkey.{d}": f"{d}:{selector}:{profile.dkim_key}" for d in spec.domain_names},
        )
        _expect_table(
            "etc/opendkim/SigningTable",
            files["etc/opendkim/SigningTable"],
            {f"*@{d}": f"{selector}._domainkey.{d}" for d in spec.domain_names},
        )
        _config(
            "etc/opendkim.conf",
            files["etc/opendkim.conf"],
            "etc/opendkim.conf.j2",
            _DKIM_PARAM_RE.pattern,
            {"AuthservID": spec.hostname},
        )
        resolver = files.get("etc/opendkim/resolver.conf")
        if resolver is not None:
            addrs = [
                line.split(":", 1)[1].strip() for line in resolver.split("\n") if "forward-addr:" in line
            ]
            if addrs != spec.dkim.resolvers:
                raise _fail(
                    "etc/opendkim/resolver.conf", f"forward-addr {addrs}, the spec says {spec.dkim.resolvers}"
                )
