"""Pure parsers and judges for verify: text or bytes in, facts or verdicts out. No I/O here.

Everything the checks decide is decided by a function in this module, so it can be unit-tested on
recorded inputs (records, banners, EHLO replies, certificates, command output).
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import ipaddress
import json
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed448, ed25519, rsa

from provisioner.checks.base import Status

# --------------------------------------------------------------------------------------------------
# SPF (RFC 7208)

SPF_DNS_MECHANISMS = ("include", "a", "mx", "ptr", "exists")
SPF_LOOKUP_LIMIT = 10
SPF_VOID_LIMIT = 2
_QUALIFIERS = {"+": "pass", "-": "fail", "~": "softfail", "?": "neutral"}


class LookupFailed(Exception):
    """A DNS lookup failed for a reason other than 'no such record' (timeout, SERVFAIL)."""


#: lookup(name, rdtype) -> record texts, or None when the name has no such record (a void lookup).
Lookup = Callable[[str, str], "list[str] | None"]


@dataclass(frozen=True)
class SpfTerm:
    """One mechanism of an SPF record, e.g. `~all`, `include:_spf.example.org`, `ip4:192.0.2.0/24`."""

    qualifier: str
    mechanism: str
    value: str = ""


@dataclass
class SpfRecord:
    """A parsed v=spf1 record: its mechanisms in order, its modifiers, and syntax errors."""

    terms: list[SpfTerm] = field(default_factory=list)
    modifiers: dict[str, str] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)

    @property
    def all_term(self) -> SpfTerm | None:
        """The `all` mechanism, if present."""
        return next((t for t in self.terms if t.mechanism == "all"), None)

    @property
    def dns_terms(self) -> int:
        """Mechanisms and modifiers in this record alone that cost a DNS lookup."""
        return sum(t.mechanism in SPF_DNS_MECHANISMS for t in self.terms) + ("redirect" in self.modifiers)


def is_spf(text: str) -> bool:
    """Whether TXT text is an SPF record (starts with the exact version tag)."""
    lowered = text.strip().lower()
    return lowered == "v=spf1" or lowered.startswith("v=spf1 ")


def parse_spf(text: str) -> SpfRecord:
    """Parse a v=spf1 record into terms and modifiers; unknown mechanisms go to errors."""
    record = SpfRecord()
    words = text.split()
    if not words or words[0].lower() != "v=spf1":
        record.errors.append("does not start with v=spf1")
        return record
    for word in words[1:]:
        modifier = re.match(r"^([a-zA-Z][a-zA-Z0-9_.-]*)=(.*)$", word)
        if modifier:
            record.modifiers[modifier.group(1).lower()] = modifier.group(2)
            continue
        qualifier = "+"
        if word[0] in _QUALIFIERS:
            qualifier, word = word[0], word[1:]
        name, _, value = word.partition(":")
        if "/" in name and not value:  # a/24, mx/24
            name, _, value = name.partition("/")
            value = "/" + value
        name = name.lower()
        if name not in ("all", "include", "a", "mx", "ptr", "ip4", "ip6", "exists"):
            record.errors.append(f"unknown mechanism {word!r}")
            continue
        if name in ("include", "exists", "ip4", "ip6") and not value:
            record.errors.append(f"{name} needs a value")
            continue
        record.terms.append(SpfTerm(qualifier, name, value))
    return record


def judge_spf_all(record: SpfRecord) -> tuple[Status, str]:
    """+all and ?all let anyone send as the domain; a missing all without redirect is neutral (warn)."""
    term = record.all_term
    if term is None:
        if "redirect" in record.modifiers:
            return "pass", f"no all term; redirect={record.modifiers['redirect']}"
        return "warn", "no 'all' term: mail from other hosts gets a neutral result (add -all or ~all)"
    if term.qualifier in ("+", "?"):
        return "fail", f"'{term.qualifier}all' authorises every host on the Internet"
    return "pass", f"ends with {term.qualifier}all"


def _domain_arg(value: str, default: str) -> str:
    """The domain of an a/mx mechanism value like 'example.org/24' or '/24' (cidr stripped)."""
    name = value.split("/", 1)[0]
    return name or default


@dataclass
class SpfWalk:
    """What a receiver spends evaluating a domain's SPF: DNS-querying terms, void lookups, problems.

    The walk stops as soon as a limit is crossed (as a receiver does, with permerror), so a record tree
    that includes the same names again and again costs at most SPF_LOOKUP_LIMIT + 1 terms, not 2^depth.
    """

    lookups: int = 0
    void: int = 0
    errors: list[str] = field(default_factory=list)
    records: dict[str, str] = field(default_factory=dict)

    @property
    def over_limit(self) -> bool:
        """Whether a receiver would have stopped with permerror (too many lookups or void lookups)."""
        return self.lookups > SPF_LOOKUP_LIMIT or self.void > SPF_VOID_LIMIT


def spf_text(domain: str, lookup: Lookup) -> tuple[str | None, list[str]]:
    """The single SPF record of a domain and a list of problems (none, several)."""
    txts = lookup(domain, "TXT") or []
    spfs = [t for t in txts if is_spf(t)]
    if not spfs:
        return None, [f"{domain} has no v=spf1 record"]
    if len(spfs) > 1:
        return spfs[0], [f"{domain} has {len(spfs)} v=spf1 records (permerror: exactly one allowed)"]
    return spfs[0], []


def walk_spf(domain: str, lookup: Lookup, _walk: SpfWalk | None = None, _depth: int = 0) -> SpfWalk:
    """Count DNS-querying terms through includes and redirects, and the void lookups among them.

    Stops at the first term past RFC 7208's limits (10 DNS-querying terms, 2 void lookups).
    """
    walk = _walk or SpfWalk()
    if walk.over_limit:
        return walk
    if _depth > SPF_LOOKUP_LIMIT + 2:
        walk.errors.append("include/redirect nesting too deep (loop?)")
        return walk
    text, problems = spf_text(domain, lookup)
    walk.errors += problems
    if text is None:
        return walk
    walk.records.setdefault(domain, text)
    record = parse_spf(text)
    walk.errors += [f"{domain}: {e}" for e in record.errors]
    for term in record.terms:
        if term.mechanism not in SPF_DNS_MECHANISMS:
            continue
        walk.lookups += 1
        if walk.over_limit:
            return walk
        if term.mechanism == "include":
            if lookup(term.value, "TXT") is None:
                walk.void += 1
                walk.errors.append(f"include:{term.value} does not exist")
                continue
            walk_spf(term.value, lookup, walk, _depth + 1)
        elif term.mechanism == "a":
            name = _domain_arg(term.value, domain)
            if lookup(name, "A") is None and lookup(name, "AAAA") is None:
                walk.void += 1
        elif term.mechanism == "mx":
            if lookup(_domain_arg(term.value, domain), "MX") is None:
                walk.void += 1
        elif term.mechanism in ("exists", "ptr") and term.value and lookup(term.value, "A") is None:
            walk.void += 1
        if walk.over_limit:
            return walk
    if "redirect" in record.modifiers and record.all_term is None:
        walk.lookups += 1
        if not walk.over_limit:
            walk_spf(record.modifiers["redirect"], lookup, walk, _depth + 1)
    return walk


def spf_limit_problems(walk: SpfWalk) -> list[str]:
    """The RFC 7208 limits a walk crossed, as reasons."""
    out = []
    if walk.lookups > SPF_LOOKUP_LIMIT:
        out.append(
            f"more than {SPF_LOOKUP_LIMIT} DNS-querying terms (RFC 7208 limit {SPF_LOOKUP_LIMIT} lookups: "
            "receivers stop with permerror)"
        )
    if walk.void > SPF_VOID_LIMIT:
        out.append(f"more than {SPF_VOID_LIMIT} void lookups (RFC 7208 limit {SPF_VOID_LIMIT})")
    return out


def _in_cidr(ip: str, addresses: Iterable[str], cidr: str) -> bool:
    addr = ipaddress.ip_address(ip)
    match = re.match(r"^(?:/(\d+))?(?://(\d+))?$", cidr)
    v4, v6 = (match.group(1), match.group(2)) if match else (None, None)
    prefix = v4 if addr.version == 4 else v6
    for other in addresses:
        try:
            network = ipaddress.ip_network(f"{other}/{prefix}" if prefix else other, strict=False)
        except ValueError:
            continue
        if network.version == addr.version and addr in network:
            return True
    return False


class _SpfBudget:
    """Counters shared by one SPF evaluation (RFC 7208 section 4.6.4)."""

    def __init__(self) -> None:
        self.lookups = 0
        self.void = 0

    def term(self) -> bool:
        """Count a DNS-querying term; False once over the limit."""
        self.lookups += 1
        return self.lookups <= SPF_LOOKUP_LIMIT

    def answer(self, value: list[str] | None) -> list[str] | None:
        """Count a void answer."""
        if not value:
            self.void += 1
        return value


class SpfLimitExceeded(Exception):
    """Evaluation crossed an RFC 7208 limit: the result is permerror."""


def evaluate_spf(ip: str, domain: str, lookup: Lookup, _depth: int = 0) -> str:
    """The SPF result (pass, fail, softfail, neutral, none, permerror) for mail from IP as DOMAIN.

    Counts DNS-querying terms and void lookups across includes and redirects and returns permerror past
    the limits, so evaluation costs at most SPF_LOOKUP_LIMIT lookups however the records nest.
    Raises LookupFailed when the resolver fails (a receiver's temperror).
    """
    try:
        return _evaluate(ip, domain, lookup, _SpfBudget(), 0)
    except SpfLimitExceeded:
        return "permerror"


def _evaluate(ip: str, domain: str, lookup: Lookup, budget: _SpfBudget, depth: int) -> str:
    if depth > SPF_LOOKUP_LIMIT:
        raise SpfLimitExceeded
    text, problems = spf_text(domain, lookup)
    if text is None:
        return "none"
    if problems:
        return "permerror"
    record = parse_spf(text)
    if record.errors:
        return "permerror"
    addr = ipaddress.ip_address(ip)
    rdtype = "A" if addr.version == 4 else "AAAA"
    for term in record.terms:
        matched = False
        mech, value = term.mechanism, term.value
        if mech in SPF_DNS_MECHANISMS and not budget.term():
            raise SpfLimitExceeded
        if mech == "all":
            matched = True
        elif mech in ("ip4", "ip6"):
            try:
                matched = addr in ipaddress.ip_network(value, strict=False)
            except (ValueError, TypeError):
                return "permerror"
        elif mech == "a":
            name = _domain_arg(value, domain)
            cidr = "/" + value.split("/", 1)[1] if "/" in value else ""
            matched = _in_cidr(ip, budget.answer(lookup(name, rdtype)) or [], cidr)
        elif mech == "mx":
            name = _domain_arg(value, domain)
            cidr = "/" + value.split("/", 1)[1] if "/" in value else ""
            for mx in (budget.answer(lookup(name, "MX")) or [])[:10]:
                host = mx.split()[-1].rstrip(".")
                if _in_cidr(ip, lookup(host, rdtype) or [], cidr):
                    matched = True
                    break
        elif mech == "include":
            inner = _evaluate(ip, value, lookup, budget, depth + 1)
            if inner in ("permerror", "none"):
                return "permerror"
            matched = inner == "pass"
        elif mech == "exists":
            matched = budget.answer(lookup(value, "A")) is not None
        elif mech == "ptr":
            continue  # deprecated (RFC 7208 5.5); counted, never matched here
        if budget.void > SPF_VOID_LIMIT:
            raise SpfLimitExceeded
        if matched:
            return _QUALIFIERS[term.qualifier]
    if "redirect" in record.modifiers:
        if not budget.term():
            raise SpfLimitExceeded
        inner = _evaluate(ip, record.modifiers["redirect"], lookup, budget, depth + 1)
        return "permerror" if inner == "none" else inner
    return "neutral"


# --------------------------------------------------------------------------------------------------
# Tag=value records: DMARC, DKIM, MTA-STS, TLS-RPT


def parse_tags(text: str) -> dict[str, str]:
    """Parse 'k=v; k2=v2' (DMARC, DKIM, MTA-STS, TLS-RPT) into a dict with lower-case keys."""
    tags: dict[str, str] = {}
    for part in text.split(";"):
        key, sep, value = part.partition("=")
        if sep and key.strip():
            tags[key.strip().lower()] = value.strip()
    return tags


def judge_dmarc(txts: list[str]) -> tuple[Status, str]:
    """Exactly one v=DMARC1 record with p=quarantine or reject (p=none is a warning)."""
    records = [t for t in txts if t.strip().lower().startswith("v=dmarc1")]
    if not records:
        return "fail", "no v=DMARC1 record"
    if len(records) > 1:
        return "fail", f"{len(records)} v=DMARC1 records (exactly one allowed)"
    tags = parse_tags(records[0])
    if not re.match(r"^v=dmarc1\s*(;|$)", records[0].strip().lower()):
        return "fail", "v=DMARC1 must be the first tag"
    policy = tags.get("p", "").lower()
    if not policy:
        return "fail", "no p= tag"
    if policy not in ("none", "quarantine", "reject"):
        return "fail", f"unknown policy p={policy}"
    if policy == "none":
        return "warn", "p=none: receivers only monitor; use quarantine or reject"
    pct = tags.get("pct")
    if pct and pct != "100":
        return "warn", f"p={policy} but only for pct={pct}% of mail"
    return "pass", f"p={policy}" + (f", rua={tags['rua']}" if "rua" in tags else "")


@dataclass
class DkimKey:
    """A parsed DKIM key record."""

    key_type: str = "rsa"
    p: str = ""
    bits: int = 0
    error: str | None = None


def parse_dkim(text: str) -> DkimKey:
    """Parse a 'v=DKIM1; k=rsa; p=...' record and load the public key it holds."""
    tags = parse_tags(text)
    if "v" in tags and tags["v"] != "DKIM1":
        return DkimKey(error=f"v={tags['v']} (expected DKIM1)")
    key = DkimKey(key_type=tags.get("k", "rsa").lower(), p=re.sub(r"\s", "", tags.get("p", "")))
    if "p" not in tags:
        key.error = "no p= tag"
        return key
    if not key.p:
        key.error = "empty p=: the key is revoked"
        return key
    try:
        raw = base64.b64decode(key.p, validate=True)
    except ValueError:
        key.error = "p= is not valid base64"
        return key
    if key.key_type == "ed25519":
        if len(raw) != 32:
            key.error = f"ed25519 key is {len(raw)} bytes, expected 32"
        key.bits = 256
        return key
    if key.key_type != "rsa":
        key.error = f"unknown key type k={key.key_type}"
        return key
    try:
        public = serialization.load_der_public_key(raw)
    except ValueError:
        try:  # some signers publish a bare PKCS#1 RSAPublicKey
            pem = (
                b"-----BEGIN RSA PUBLIC KEY-----\n"
                + base64.encodebytes(raw)
                + b"-----END RSA PUBLIC KEY-----\n"
            )
            public = serialization.load_pem_public_key(pem)
        except ValueError:
            key.error = "p= does not hold a parseable RSA public key"
            return key
    if not isinstance(public, rsa.RSAPublicKey):
        key.error = "k=rsa but p= holds another key type"
        return key
    key.bits = public.key_size
    return key


def judge_dkim(text: str, expected_p: str | None = None) -> tuple[Status, str]:
    """A parseable DKIM key of adequate size; when the expected key is known, the same key."""
    key = parse_dkim(text)
    if key.error:
        return "fail", key.error
    if expected_p is not None and key.p != expected_p:
        return "fail", "published key differs from the spec's dkim.public_key"
    if key.key_type == "rsa" and key.bits < 1024:
        return "fail", f"RSA {key.bits} bits is too weak (at least 1024, 2048 recommended)"
    note = ", matches the spec" if expected_p is not None else ""
    return "pass", f"{key.key_type} {key.bits}-bit key{note}"


#: RFC 8461 section 3.1: `sts-id = 1*32(ALPHA / DIGIT)`.
_STS_ID = re.compile(r"[A-Za-z0-9]{1,32}")
#: RFC 8461 section 3.2: max_age is at most 31557600 seconds (about a year), written as 1*10DIGIT.
STS_MAX_AGE = 31557600
#: RFC 8461 section 3.3: senders SHOULD cap the policy body at 64 KB.
STS_MAX_BYTES = 64 * 1024
STS_MODES = ("enforce", "testing", "none")
_LDH = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_STS_MX = re.compile(rf"(?:\*\.)?{_LDH}(?:\.{_LDH})*")
_STS_FIELD = re.compile(r"([A-Za-z0-9_.-]+):[ \t]*(.*?)[ \t]*")


def valid_sts_id(value: str) -> bool:
    """Whether value is an MTA-STS policy id: 1 to 32 letters or digits."""
    return _STS_ID.fullmatch(value) is not None


def sts_records(txts: list[str]) -> list[str]:
    """The TXT strings that are MTA-STS records (they begin with `v=STSv1`, then `;` or the end)."""
    return [t for t in txts if re.match(r"v=STSv1(;|\s*$)", t.strip())]


def judge_mta_sts(txts: list[str]) -> tuple[Status, str]:
    """_mta-sts TXT: one v=STSv1 record with an id (absent = warn)."""
    records = sts_records(txts)
    if not records:
        return "warn", "no _mta-sts TXT record (MTA-STS not published)"
    if len(records) > 1:
        return "fail", f"{len(records)} v=STSv1 records (exactly one allowed)"
    sts_id = parse_tags(records[0]).get("id", "")
    if not sts_id:
        return "fail", "v=STSv1 record without an id="
    if not valid_sts_id(sts_id):
        return "fail", f"v=STSv1 record with an invalid id={sts_id!r} (expected 1-32 letters or digits)"
    return "pass", f"id={sts_id}"


@dataclass
class StsPolicy:
    """An MTA-STS policy file (RFC 8461 section 3.2), as parsed; errors say what is wrong with it."""

    version: str | None = None
    mode: str | None = None
    max_age: int | None = None
    mx: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


def parse_sts_policy(text: str) -> StsPolicy:
    """Parse a policy body: `key: value` lines (CRLF or LF); unknown keys are ignored as the RFC says."""
    policy = StsPolicy()
    seen: set[str] = set()
    for number, line in enumerate(text.replace("\r\n", "\n").split("\n"), start=1):
        if not line.strip():
            continue
        match = _STS_FIELD.fullmatch(line)
        if match is None:
            policy.errors.append(f"line {number} is not 'key: value': {line[:80]!r}")
            continue
        key, value = match.groups()
        if key in seen and key != "mx":
            policy.errors.append(f"{key} appears more than once")
            continue
        seen.add(key)
        if key == "version":
            policy.version = value
            if value != "STSv1":
                policy.errors.append(f"version {value!r} is not STSv1")
        elif key == "mode":
            policy.mode = value
            if value not in STS_MODES:
                policy.errors.append(f"mode {value!r} is not one of {', '.join(STS_MODES)}")
        elif key == "max_age":
            if re.fullmatch(r"[0-9]{1,10}", value) is None:
                policy.errors.append(f"max_age {value!r} is not a number of seconds")
            elif int(value) > STS_MAX_AGE:
                policy.errors.append(f"max_age {value} is over {STS_MAX_AGE} (RFC 8461's maximum)")
            else:
                policy.max_age = int(value)
        elif key == "mx":
            if _STS_MX.fullmatch(value.rstrip(".")) is None:
                policy.errors.append(f"mx {value!r} is not a host name or *.domain pattern")
            else:
                policy.mx.append(value.lower().rstrip("."))
    for key in ("version", "mode", "max_age"):
        if key not in seen:
            policy.errors.append(f"no {key} field")
    if policy.mode in ("enforce", "testing") and "mx" not in seen:
        policy.errors.append(f"no mx field (required in mode {policy.mode})")
    return policy


def sts_mx_matches(host: str, pattern: str) -> bool:
    """RFC 8461 section 4.1: exact (case-insensitive), or `*.` standing for exactly one left-most label."""
    host, pattern = host.lower().rstrip("."), pattern.lower().rstrip(".")
    if pattern.startswith("*."):
        return "." in host and host.split(".", 1)[1] == pattern[2:]
    return host == pattern


def judge_sts_policy(policy: StsPolicy, mx_hosts: list[str]) -> tuple[Status, str]:
    """A parsed policy against the domain's MX hosts: valid, and its mx patterns cover every MX host."""
    if policy.errors:
        return "fail", "invalid policy: " + "; ".join(policy.errors)
    summary = f"mode {policy.mode}, max_age {policy.max_age}"
    if policy.mode == "none":
        return "warn", f"{summary}: the policy protects nothing (mode none)"
    hosts = [h for h in mx_hosts if h != "."]
    if not hosts:
        return "warn", f"{summary}; the domain has no MX host for the mx patterns to cover"
    uncovered = [h for h in hosts if not any(sts_mx_matches(h, p) for p in policy.mx)]
    if uncovered:
        return (
            "fail",
            f"mx patterns ({', '.join(policy.mx)}) do not cover the MX host(s) {', '.join(uncovered)}",
        )
    return "pass", f"{summary}, mx {', '.join(policy.mx)} covers {', '.join(hosts)}"


def judge_tlsrpt(txts: list[str]) -> tuple[Status, str]:
    """_smtp._tls TXT: one v=TLSRPTv1 with a rua (absent = warn)."""
    records = [t for t in txts if t.strip().startswith("v=TLSRPTv1")]
    if not records:
        return "warn", "no _smtp._tls TXT record (TLS reporting not published)"
    if len(records) > 1:
        return "fail", f"{len(records)} v=TLSRPTv1 records (exactly one allowed)"
    rua = parse_tags(records[0]).get("rua", "")
    if not rua or not all(u.strip().startswith(("mailto:", "https:")) for u in rua.split(",")):
        return "fail", "v=TLSRPTv1 record without a mailto: or https: rua"
    return "pass", f"rua={rua}"


def parse_mx(texts: Iterable[str]) -> list[tuple[int, str]]:
    """MX record texts ('10 mail.example.org.') as (preference, host) sorted by preference."""
    out = []
    for text in texts:
        pref, _, host = text.strip().partition(" ")
        out.append((int(pref), host.strip().rstrip(".").lower() or "."))
    return sorted(out)


def judge_null_mx(mx: list[tuple[int, str]]) -> tuple[Status, str]:
    """A null MX (RFC 7505: '0 .') must be the only MX record."""
    nulls = [m for m in mx if m[1] == "."]
    if not nulls:
        return "pass", "no null MX: the domain accepts mail"
    if len(mx) > 1:
        return "fail", "null MX ('0 .') mixed with other MX records"
    return "pass", "null MX: the domain accepts no mail"


# --------------------------------------------------------------------------------------------------
# SMTP dialogue

REQUIRED_EHLO = ("SIZE", "PIPELINING", "8BITMIME", "ENHANCEDSTATUSCODES")


def text_of(message: bytes | str) -> str:
    """Decode an SMTP reply text."""
    return message.decode("utf-8", "replace") if isinstance(message, bytes) else message


def banner_name(message: bytes | str) -> str:
    """The host name a 220 greeting announces (its first word), lower-cased."""
    words = text_of(message).split()
    return words[0].lower().rstrip(".") if words else ""


def judge_banner(name: str, expected: Iterable[str]) -> tuple[Status, str]:
    """The greeting name should equal the PTR / host name (mismatch = warn)."""
    names = sorted({e.lower().rstrip(".") for e in expected if e})
    if not name:
        return "warn", "greeting names no host"
    if not names:
        return "pass", f"greets as {name} (no PTR or host name to compare)"
    if name in names:
        return "pass", f"greets as {name}"
    return "warn", f"greets as {name}, expected {' or '.join(names)}"


def parse_ehlo(message: bytes | str) -> dict[str, str]:
    """EHLO reply lines after the greeting line -> {KEYWORD: parameters} (AUTH=PLAIN forms folded in)."""
    caps: dict[str, str] = {}
    for line in text_of(message).splitlines()[1:]:
        keyword, _, params = line.strip().partition(" ")
        if keyword.upper().startswith("AUTH="):
            keyword, params = "AUTH", (caps.get("AUTH", "") + " " + keyword[5:]).strip()
        if keyword:
            caps[keyword.upper()] = params.strip()
    return caps


def missing_ehlo(caps: dict[str, str], required: Iterable[str] = REQUIRED_EHLO) -> list[str]:
    """Required EHLO keywords absent from caps."""
    return [kw for kw in required if kw not in caps]


def reply_class(code: int) -> str:
    """'accepted' (2xx/3xx), 'deferred' (4xx), 'refused' (5xx), 'error' otherwise."""
    if 200 <= code < 400:
        return "accepted"
    if 400 <= code < 500:
        return "deferred"
    if 500 <= code < 600:
        return "refused"
    return "error"


_REPLY_LINE = re.compile(rb"^([2-5][0-9][0-9])(?:([ -])(.*))?$", re.S)


class ReplyError(ValueError):
    """A line that is not part of a well-formed SMTP reply (RFC 5321 section 4.2)."""


def shown_bytes(data: bytes, limit: int = 60) -> str:
    """Server bytes for a reason: decoded, control characters escaped, cut at limit characters."""
    text = escape_text(data.decode("utf-8", "replace").rstrip("\r\n"))
    return text if len(text) <= limit else text[:limit] + "…"


def parse_reply_line(line: bytes, code: int | None = None) -> tuple[int, bool, bytes]:
    """One SMTP reply line -> (code, more lines follow, text); strict: three digits 2xx-5xx, ' ' or '-'.

    `code` is the code of the reply's earlier lines: a continuation line must repeat it.
    Raises ReplyError naming what is wrong.
    """
    body = line[:-2] if line.endswith(b"\r\n") else line[:-1] if line.endswith(b"\n") else line
    match = _REPLY_LINE.match(body)
    if not match:
        raise ReplyError(f"malformed SMTP reply '{shown_bytes(body)}' (expected a 2xx-5xx code)")
    value = int(match.group(1))
    if code is not None and value != code:
        raise ReplyError(f"multi-line reply changes its code from {code} to {value}")
    return value, match.group(2) == b"-", (match.group(3) or b"").strip()


#: AUTH before STARTTLS refused as unavailable: unknown/unimplemented command, bad sequence (AUTH not
#: enabled), mechanism not supported, encryption required first (RFC 3207, RFC 4954).
AUTH_UNAVAILABLE = (500, 502, 503, 504, 530, 538)


def judge_plaintext_auth(code: int, text: str) -> tuple[Status, str]:
    """The reply to AUTH (a made-up user) sent before STARTTLS: pass only when refused as unavailable."""
    reply = f"{code} {text}".strip()
    if code in AUTH_UNAVAILABLE:
        return "pass", f"AUTH refused before STARTTLS ({reply})"
    if code == 334:
        return "fail", f"AUTH processed before STARTTLS: the server asked for credentials ({reply})"
    if code == 235:
        return "fail", f"AUTH accepted before STARTTLS for a made-up user ({reply})"
    if code == 535:
        return (
            "fail",
            f"AUTH processed before STARTTLS: a made-up user's password was checked in plaintext ({reply})",
        )
    return "fail", f"AUTH before STARTTLS not refused as unavailable ({reply})"


_PLAINTEXT_REFUSED = re.compile(
    r"privacyrequired|plain ?text|disallowed|not allowed|logindisabled|login (?:is )?disabled"
    r"|(?:ssl|tls|starttls|encryption)\b[^.]*\brequired|requires? (?:ssl|tls|starttls|encryption)",
    re.I,
)
_AUTH_FAILED = re.compile(
    r"authenticationfailed|authentication failed|invalid (?:credentials|password)", re.I
)


def judge_plaintext_login(typ: str, text: str) -> tuple[Status, str]:
    """The reply to IMAP LOGIN (a made-up user) before STARTTLS: pass only on 'plaintext disallowed'."""
    reply = f"{typ} {text}".strip()
    if typ == "OK":
        return "fail", f"plaintext LOGIN accepted before STARTTLS for a made-up user ({reply})"
    if _AUTH_FAILED.search(text) and "PRIVACYREQUIRED" not in text.upper():
        return "fail", f"LOGIN processed before STARTTLS: the password was checked in plaintext ({reply})"
    if typ in ("NO", "BAD") and _PLAINTEXT_REFUSED.search(text):
        return "pass", f"LOGIN refused before STARTTLS ({reply})"
    return "fail", f"LOGIN before STARTTLS not refused as plaintext-disallowed ({reply})"


# --------------------------------------------------------------------------------------------------
# Addresses and untrusted text


def unsafe_address(address: str) -> str | None:
    """Why verify must not connect to an address (this machine or no host at all), or None."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if ip.is_unspecified:
        return "an unspecified address"
    if ip.is_loopback:
        return "a loopback address"
    if ip.is_link_local:
        return "a link-local address"
    if ip.is_multicast:
        return "a multicast address"
    if ip == ipaddress.IPv4Address("255.255.255.255"):
        return "the broadcast address"
    return None


def escape_text(text: str, keep: str = "") -> str:
    """Control and other non-printable characters as visible escapes (\\x1b, \\x00, \\u202e)."""
    if text.isprintable():
        return text
    out = []
    for ch in text:
        if ch.isprintable() or ch in keep:
            out.append(ch)
        elif ord(ch) < 0x100:
            out.append(f"\\x{ord(ch):02x}")
        elif ord(ch) < 0x10000:
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(f"\\U{ord(ch):08x}")
    return "".join(out)


MAX_REASON = 1000


def clean_reason(text: str, limit: int = MAX_REASON) -> str:
    """A one-line reason safe for any output: whitespace collapsed, escapes, truncated with a marker."""
    line = escape_text(" ".join(str(text).split()))
    if len(line) > limit:
        keep = max(0, limit - 40)  # room for the marker, so cleaning twice changes nothing
        line = f"{line[:keep]}… [{len(line) - keep} more characters truncated]"
    return line


MAX_EVIDENCE = 16 * 1024


def clean_evidence(value: Any, limit: int = MAX_EVIDENCE) -> Any:
    """Evidence made JSON-safe, its strings escaped (newlines kept), and its size capped."""

    def walk(item: Any, depth: int) -> Any:
        if isinstance(item, bytes):
            item = item.decode("utf-8", "replace")
        if isinstance(item, str):
            text = escape_text(item, keep="\n\t")
            return text if len(text) <= 4000 else text[:4000] + "… [truncated]"
        if item is None or isinstance(item, bool | int | float):
            return item
        if depth > 6:
            return clean_reason(str(item), 200)
        if isinstance(item, dict):
            return {clean_reason(str(k), 200): walk(v, depth + 1) for k, v in list(item.items())[:200]}
        if isinstance(item, list | tuple | set | frozenset):
            return [walk(v, depth + 1) for v in list(item)[:200]]
        return clean_reason(str(item), 4000)

    cleaned = walk(value, 0)
    text = json.dumps(cleaned)
    if len(text) > limit:
        return text[:limit] + f"… [{len(text) - limit} more characters truncated]"
    return cleaned


# --------------------------------------------------------------------------------------------------
# IMAP / POP3


def judge_login_disabled(caps: Iterable[str]) -> tuple[Status, str]:
    """Before STARTTLS an IMAP server must advertise LOGINDISABLED and no AUTH= mechanisms."""
    upper = {c.upper() for c in caps}
    auth = sorted(c for c in upper if c.startswith("AUTH="))
    if "LOGINDISABLED" in upper and not auth:
        return "pass", "LOGINDISABLED before STARTTLS"
    if "LOGINDISABLED" in upper:
        return "fail", f"LOGINDISABLED but offers {' '.join(auth)} before STARTTLS"
    return "fail", "plaintext LOGIN allowed before STARTTLS (no LOGINDISABLED)"


# --------------------------------------------------------------------------------------------------
# Certificates


@dataclass
class CertFacts:
    """What verify needs to know about a certificate."""

    subject: str
    issuer: str
    common_names: list[str]
    dns_names: list[str]
    ip_addresses: list[str]
    not_before: dt.datetime
    not_after: dt.datetime
    key_type: str
    key_bits: int
    signature_hash: str
    self_issued: bool
    sha256: str

    def evidence(self) -> dict[str, Any]:
        """A JSON-friendly summary."""
        return {
            "subject": self.subject,
            "issuer": self.issuer,
            "dns_names": self.dns_names,
            "not_after": self.not_after.isoformat(),
            "key": f"{self.key_type} {self.key_bits}",
            "signature_hash": self.signature_hash,
            "sha256": self.sha256,
        }


def cert_facts(der: bytes) -> CertFacts:
    """Parse a DER certificate into CertFacts."""
    cert = x509.load_der_x509_certificate(der)
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        dns_names = [n.lower() for n in san.get_values_for_type(x509.DNSName)]
        ips = [str(a) for a in san.get_values_for_type(x509.IPAddress)]
    except x509.ExtensionNotFound:
        dns_names, ips = [], []
    cns = [str(a.value).lower() for a in cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)]
    key = cert.public_key()
    if isinstance(key, rsa.RSAPublicKey):
        key_type, bits = "RSA", key.key_size
    elif isinstance(key, ec.EllipticCurvePublicKey):
        key_type, bits = "ECDSA", key.curve.key_size
    elif isinstance(key, ed25519.Ed25519PublicKey):
        key_type, bits = "Ed25519", 256
    elif isinstance(key, ed448.Ed448PublicKey):
        key_type, bits = "Ed448", 456
    elif isinstance(key, dsa.DSAPublicKey):
        key_type, bits = "DSA", key.key_size
    else:
        key_type, bits = type(key).__name__, 0
    algorithm = cert.signature_hash_algorithm
    return CertFacts(
        subject=cert.subject.rfc4514_string(),
        issuer=cert.issuer.rfc4514_string(),
        common_names=cns,
        dns_names=dns_names,
        ip_addresses=ips,
        not_before=cert.not_valid_before_utc,
        not_after=cert.not_valid_after_utc,
        key_type=key_type,
        key_bits=bits,
        signature_hash=algorithm.name if algorithm is not None else "intrinsic",
        self_issued=cert.subject == cert.issuer,
        sha256=cert.fingerprint(hashes.SHA256()).hex(),
    )


def name_matches(hostname: str, pattern: str) -> bool:
    """RFC 6125 matching: exact, or a wildcard `*.` standing for exactly one left-most label."""
    host, pattern = hostname.lower().rstrip("."), pattern.lower().rstrip(".")
    if host == pattern:
        return True
    if pattern.startswith("*.") and "." in host:
        return host.split(".", 1)[1] == pattern[2:] and pattern.count(".") >= 2
    return False


def judge_cert_name(facts: CertFacts, hostname: str) -> tuple[Status, str]:
    """The certificate covers hostname (SAN DNS names; the CN only when there is no SAN)."""
    names = facts.dns_names or facts.common_names
    if any(name_matches(hostname, n) for n in names):
        return "pass", f"covers {hostname}"
    try:
        if str(ipaddress.ip_address(hostname)) in facts.ip_addresses:
            return "pass", f"covers {hostname}"
    except ValueError:
        pass
    shown = ", ".join(names) or "no names"
    return "fail", f"issued for {shown}, not {hostname}"


def judge_expiry(
    not_after: dt.datetime, now: dt.datetime, warn_days: int = 14, fail_days: int = 3
) -> tuple[Status, str]:
    """More than warn_days left passes; fewer warns; under fail_days (renewal has failed) or expired fails."""
    left = not_after - now
    day = f"{not_after:%Y-%m-%d}"
    if left.total_seconds() <= 0:
        return "fail", f"expired on {day}"
    if left < dt.timedelta(days=fail_days):
        hours = int(left.total_seconds() // 3600)
        return (
            "fail",
            f"expires in {hours} hours ({day}): under {fail_days} days left, renewal has not happened",
        )
    if left < dt.timedelta(days=warn_days):
        return "warn", f"expires in {left.days} days ({day})"
    return "pass", f"{left.days} days left (until {day})"


def judge_cert_key(facts: CertFacts) -> tuple[Status, str]:
    """RSA >= 2048 or ECDSA >= 256 (or EdDSA); signature hash SHA-256 or better."""
    strong = {"RSA": 2048, "ECDSA": 256, "Ed25519": 0, "Ed448": 0}
    minimum = strong.get(facts.key_type)
    desc = f"{facts.key_type} {facts.key_bits}, signed with {facts.signature_hash}"
    if minimum is None or facts.key_bits < minimum:
        return "fail", f"weak key: {desc}"
    if facts.signature_hash not in ("sha256", "sha384", "sha512", "intrinsic"):
        return "fail", f"weak signature hash: {desc}"
    return "pass", desc


def pem_fingerprints(text: str) -> list[str]:
    """SHA-256 fingerprints of the certificates in a PEM bundle, in order (leaf first)."""
    out = []
    for block in re.findall(r"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", text, re.S):
        cert = x509.load_pem_x509_certificate(block.encode())
        out.append(cert.fingerprint(hashes.SHA256()).hex())
    return out


#: master.cf service names of Postfix's TLS-speaking smtpd listeners, by port.
POSTFIX_SERVICE_PORTS = {"smtp": 25, "submission": 587, "smtps": 465, "submissions": 465}


def _cert_paths(cert_file: str, chain_files: str) -> list[str]:
    # smtpd_tls_chain_files, when set, replaces smtpd_tls_cert_file (Postfix >= 3.4).
    chain = [p for p in chain_files.replace(",", " ").split() if p.startswith("/")]
    return chain or [p for p in cert_file.replace(",", " ").split() if p.startswith("/")]


def postfix_cert_paths(cert_file: str, chain_files: str, per_service: str) -> dict[int, list[str]]:
    """Certificate files Postfix serves per TLS port: main.cf's values, overridden per master.cf service.

    per_service is `postconf -P` output (`submission/inet/smtpd_tls_cert_file = /path`); a service is named
    `smtp`, `submission`, `smtps`/`submissions`, or `[ADDR:]PORT`.
    """
    settings: dict[int, dict[str, str]] = {port: {} for port in (25, 587, 465)}
    for line in per_service.splitlines():
        name, _, value = line.partition("=")
        parts = name.strip().split("/")
        if (
            len(parts) != 3
            or parts[1] != "inet"
            or parts[2] not in ("smtpd_tls_cert_file", "smtpd_tls_chain_files")
        ):
            continue
        service = parts[0].rsplit(":", 1)[-1]
        port = POSTFIX_SERVICE_PORTS.get(service) or (int(service) if service.isdigit() else None)
        if port in settings:
            settings[port][parts[2]] = value.strip()
    out: dict[int, list[str]] = {}
    for port, own in settings.items():
        if "smtpd_tls_chain_files" in own:
            paths = _cert_paths("", own["smtpd_tls_chain_files"])
        elif "smtpd_tls_cert_file" in own:
            paths = _cert_paths(own["smtpd_tls_cert_file"], "")
        else:
            paths = _cert_paths(cert_file, chain_files)
        out[port] = paths
    return out


def dovecot_cert_path(ssl_cert: str) -> str | None:
    """The file of `doveconf -h ssl_cert` (`</path`), or None when it names none."""
    value = ssl_cert.strip()
    if value.startswith("<") and value[1:].strip().startswith("/"):
        return value[1:].strip()
    return None


def judge_cert_on_disk(served: str, files: dict[str, str | None]) -> tuple[Status, str]:
    """served: the port's certificate fingerprint; files: configured path -> its first certificate's.

    The first certificate of the configured files (in order) is the leaf the daemon serves.
    """
    if not files:
        return "fail", "no certificate file configured"
    for path, fingerprint in files.items():
        if fingerprint is None:
            continue
        if fingerprint == served:
            return "pass", f"serves {path} ({served[:16]}…)"
        return (
            "fail",
            f"serves {served[:16]}… but {path} holds {fingerprint[:16]}… (not reloaded since the file changed?)",
        )
    return "fail", f"no certificate in {', '.join(files)}"


def sha256_hex(data: bytes) -> str:
    """Hex SHA-256 of bytes."""
    return hashlib.sha256(data).hexdigest()


# --------------------------------------------------------------------------------------------------
# Host: command output


def parse_postqueue_json(text: str) -> list[dict[str, Any]]:
    """`postqueue -j` output (one JSON object per line) -> list of messages."""
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("{"):
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return out


def old_deferred(messages: list[dict[str, Any]], now: float, max_age: float = 3600) -> list[dict[str, Any]]:
    """Deferred messages that arrived more than max_age seconds ago."""
    return [
        m
        for m in messages
        if m.get("queue_name") == "deferred" and now - float(m.get("arrival_time", now)) > max_age
    ]


def parse_listening(sockets: Iterable[str]) -> dict[int, set[str]]:
    """testinfra's listening sockets ('tcp://0.0.0.0:25', 'tcp://:::993') -> {port: {addresses}}."""
    out: dict[int, set[str]] = {}
    for sock in sockets:
        match = re.match(r"^tcp6?://(.*):(\d+)$", sock)
        if not match:
            continue
        addr = match.group(1).strip("[]") or "0.0.0.0"
        out.setdefault(int(match.group(2)), set()).add(addr)
    return out


_WILDCARDS = {"0.0.0.0", "::", "*"}


def judge_listening(
    listening: dict[int, set[str]], expected: dict[int, bool], addresses: list[str] | None
) -> tuple[Status, str, dict[str, Any]]:
    """Every expected port bound (on every expected address, or a wildcard); ports switched off unbound."""
    missing: list[str] = []
    extra: list[int] = []
    for port, wanted in sorted(expected.items()):
        bound = listening.get(port, set())
        if wanted:
            if not bound:
                missing.append(str(port))
            elif addresses:
                for addr in addresses:
                    if addr not in bound and not bound & _WILDCARDS:
                        missing.append(f"{addr}:{port}")
        elif bound:
            extra.append(port)
    evidence = {str(p): sorted(a) for p, a in sorted(listening.items()) if p in expected}
    if missing:
        return "fail", f"not listening on {', '.join(missing)}", evidence
    if extra:
        return "warn", f"listening on {', '.join(map(str, extra))}, which the spec switches off", evidence
    return "pass", "listening on " + ", ".join(str(p) for p, w in sorted(expected.items()) if w), evidence


def judge_mode(path: str, mode: int, kind: str) -> tuple[Status, str]:
    """Private keys at most 0640; password files not readable by others."""
    text = f"{path} is {mode & 0o7777:04o}"
    if mode & 0o007:
        return "fail", f"{text}: world-accessible {kind}"
    if kind == "private key" and mode & 0o130:
        return "fail", f"{text}: a private key must be 0600 or 0640"
    return "pass", text


def parse_main_cf(text: str) -> dict[str, str]:
    """main.cf text or `postconf -n` output -> {parameter: value}, continuation lines joined."""
    out: dict[str, str] = {}
    key: str | None = None
    for line in text.splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        if line[0].isspace() and key is not None:
            out[key] = f"{out[key]} {line.strip()}".strip()
            continue
        name, sep, value = line.partition("=")
        if sep:
            key = name.strip()
            out[key] = value.strip()
    return {k: " ".join(v.split()) for k, v in out.items()}


def parse_master_cf(text: str) -> list[str]:
    """master.cf text or `postconf -M` output -> normalised service lines (fields and -o options)."""
    entries: list[str] = []
    for line in text.splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        if line[0].isspace() and entries:
            entries[-1] += " " + line.strip()
        else:
            entries.append(line.strip())
    return sorted(" ".join(e.split()) for e in entries)


HIDDEN = "<hidden>"


def parse_dovecot_conf(text: str) -> dict[str, str]:
    """Dovecot config text or `doveconf` output -> {'section/sub/key': value}; includes are ignored."""
    out: dict[str, str] = {}
    stack: list[str] = []
    for raw in text.splitlines():
        # doveconf hides secrets ("ssl_key = # hidden, use -P to show it"): keep a marker, not ''.
        raw = raw.replace("# hidden, use -P to show it", HIDDEN)
        line = raw.split("#", 1)[0].strip() if not raw.strip().startswith("#") else ""
        if not line or line.startswith("!include"):
            continue
        if line.endswith("{"):
            stack.append(" ".join(line[:-1].split()))
            continue
        if line == "}":
            if stack:
                stack.pop()
            continue
        key, sep, value = line.partition("=")
        if sep:
            value = " ".join(value.split())
            if len(value) >= 2 and value[0] == value[-1] == '"':  # doveconf quotes values with spaces
                value = value[1:-1].strip()
            out["/".join([*stack, key.strip()])] = value
    return out


def diff_settings(expected: dict[str, str], live: dict[str, str], both_ways: bool = True) -> list[str]:
    """Lines describing differences: changed values, missing settings, and (both_ways) extra settings."""
    out = []
    for key in sorted(expected):
        if key not in live:
            out.append(f"{key}: missing (expected {expected[key]!r})")
        elif live[key] != expected[key]:
            out.append(f"{key}: {live[key]!r} (expected {expected[key]!r})")
    if both_ways:
        out += [
            f"{key}: {live[key]!r} not in the rendered config" for key in sorted(set(live) - set(expected))
        ]
    return out


def parse_firewalld_zone(text: str) -> dict[str, str]:
    """`firewall-cmd --list-all` output -> {'services': 'smtp ssh', 'ports': '8080/tcp', ...}."""
    out: dict[str, str] = {}
    for line in text.splitlines()[1:]:
        key, sep, value = line.strip().partition(":")
        if sep:
            out[key.strip()] = value.strip()
    return out


def judge_firewall(
    services: set[str], ports: set[str], expected: set[str], mail_services: set[str], mail_ports: set[int]
) -> tuple[Status, str]:
    """firewalld opens the expected mail services and no other mail service or mail port."""
    missing = sorted(expected - services)
    extra = sorted((services & mail_services) - expected)
    extra_ports = sorted(p for p in ports if p.split("/")[0].isdigit() and int(p.split("/")[0]) in mail_ports)
    if missing:
        return "fail", f"firewall does not open {', '.join(missing)}"
    if extra or extra_ports:
        return "fail", f"firewall also opens {', '.join(extra + extra_ports)}"
    return "pass", f"firewall opens {', '.join(sorted(expected)) or 'no mail services'}"
