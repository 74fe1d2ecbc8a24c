"""DNS checks: MX, null MX, A, forward-confirmed PTR, SPF, DMARC, DKIM, MTA-STS (and its policy), TLS-RPT.

Every lookup goes through the context's dnspython resolver (--resolver, else the system's), never the
libc resolver, so lab and split-horizon names work. Domains come from --domain, the spec, or the host name.
"""

from __future__ import annotations

from collections.abc import Callable

from provisioner.checks.base import Result, Skip, Status, aggregate, check, worst
from provisioner.checks.context import Context, PolicyFetchError
from provisioner.checks.parsers import (
    LookupFailed,
    StsPolicy,
    evaluate_spf,
    judge_dkim,
    judge_dmarc,
    judge_mta_sts,
    judge_null_mx,
    judge_spf_all,
    judge_sts_policy,
    judge_tlsrpt,
    parse_spf,
    parse_sts_policy,
    parse_tags,
    spf_limit_problems,
    spf_text,
    sts_records,
    walk_spf,
)

Judge = Callable[[Context, str], tuple[Status, str, object]]


def _per_domain(ctx: Context, id: str, judge: Judge) -> Result:
    """Run judge(ctx, domain) -> (status, reason, evidence) for each domain and combine."""
    parts: dict[str, tuple[Status, str]] = {}
    evidence: dict[str, object] = {}
    for domain in ctx.require_domains():
        try:
            status, reason, ev = judge(ctx, domain)
        except LookupFailed as exc:
            status, reason, ev = "fail", str(exc), None
        parts[domain] = (status, reason)
        evidence[domain] = ev
    result = aggregate(id, parts, evidence)
    if ctx.domains_inferred():
        result.reason += f" (domain inferred from {ctx.hostname()}; pass --domain to choose)"
    return result


def _is_null_mx(ctx: Context, domain: str) -> bool:
    mx = ctx.mx(domain)
    return bool(mx) and all(host == "." for _, host in mx)


@check("dns.mx", "MX records exist and their hosts resolve", needs=("dns",), severity="high")
def mx(ctx: Context) -> Result:
    """The domain has MX records, each host has an address, and (with a spec) our host is among them."""

    def judge(ctx: Context, domain: str) -> tuple[Status, str, object]:
        records = ctx.mx(domain)
        shown = [f"{pref} {host}" for pref, host in records]
        if not records:
            return "fail", "no MX records", shown
        if _is_null_mx(ctx, domain):
            return "pass", "null MX: accepts no mail (see dns.null_mx)", shown
        unresolved = [host for _, host in records if host != "." and not ctx.addresses_of(host)]
        if unresolved:
            return "fail", f"MX host without A/AAAA: {', '.join(unresolved)}", shown
        unsafe = [
            reason
            for _, host in records
            if host != "."
            for reason in [ctx.unsafe_reason(a, host) for a in ctx.addresses_of(host)]
            if reason
        ]
        if unsafe:
            return "fail", "; ".join(unsafe), shown
        if ctx.spec is not None and ctx.spec.hostname not in {h for _, h in records}:
            return "fail", f"{ctx.spec.hostname} is not among the MX hosts ({', '.join(shown)})", shown
        return "pass", ", ".join(shown), shown

    return _per_domain(ctx, "dns.mx", judge)


@check("dns.null_mx", "A null MX stands alone", needs=("dns",), severity="low")
def null_mx(ctx: Context) -> Result:
    """A null MX ('0 .', RFC 7505) is the only MX record of its domain."""

    def judge(ctx: Context, domain: str) -> tuple[Status, str, object]:
        status, reason = judge_null_mx(ctx.mx(domain))
        return status, reason, None

    return _per_domain(ctx, "dns.null_mx", judge)


@check("dns.a", "The mail host name resolves", needs=("dns",), severity="high")
def a_record(ctx: Context) -> Result:
    """The mail host name has A/AAAA records (and, when TARGET is an address, includes it)."""
    name = ctx.require_hostname()
    found = ctx.addresses_of(name)
    if not found:
        return Result("dns.a", "fail", f"{name} has no A or AAAA record", [])
    unsafe = [reason for reason in (ctx.unsafe_reason(a, name) for a in found) if reason]
    if unsafe:
        return Result("dns.a", "fail", "; ".join(unsafe), found)
    if ctx.target_is_ip and ctx.address() not in found:
        return Result("dns.a", "warn", f"{name} resolves to {', '.join(found)}, not {ctx.address()}", found)
    return Result("dns.a", "pass", f"{name} -> {', '.join(found)}", found)


def _fcrdns(ctx: Context, address: str) -> tuple[Status, str]:
    names = ctx.ptr_names(address)
    if not names:
        return "fail", f"{address} has no PTR record"
    for name in names:
        if address in ctx.addresses_of(name):
            return "pass", f"{address} -> {name} -> {address}"
    return "fail", f"{address} -> {', '.join(names)}, which does not resolve back to {address}"


@check("dns.ptr", "Forward-confirmed reverse DNS of the mail addresses", needs=("dns",), severity="high")
def ptr(ctx: Context) -> Result:
    """Each MX address (and the target's) has a PTR whose name resolves back to it."""
    addresses: list[str] = []
    try:
        addresses += ctx.target_addresses()
    except LookupFailed as exc:
        return Result("dns.ptr", "fail", str(exc))
    for domain in ctx.domains():
        for _, host in ctx.mx(domain):
            if host != ".":
                addresses += ctx.addresses_of(host)
    unique = list(dict.fromkeys(addresses))
    if not unique:
        raise Skip("no mail host address known")
    parts = {addr: _fcrdns(ctx, addr) for addr in unique}
    return aggregate("dns.ptr", parts, {a: r for a, (_, r) in parts.items()})


@check("dns.spf", "SPF: one record, no +all/?all, within lookup limits, authorises the host", needs=("dns",))
def spf(ctx: Context) -> Result:
    """Exactly one v=spf1; no +all/?all; <= 10 DNS terms; <= 2 void lookups; the mail host passes."""

    def judge(ctx: Context, domain: str) -> tuple[Status, str, object]:
        text, problems = spf_text(domain, ctx.lookup)
        if text is None or problems:
            return "fail", problems[0], text
        record = parse_spf(text)
        if record.errors:
            return "fail", f"syntax: {'; '.join(record.errors)}", text
        verdicts: list[tuple[Status, str]] = [judge_spf_all(record)]
        walk = walk_spf(domain, ctx.lookup)
        limits = spf_limit_problems(walk)
        verdicts += [("fail", p) for p in limits]
        verdicts += [("fail", e) for e in walk.errors]
        if not limits:
            verdicts += _authorises_host(ctx, domain)
        status = worst(s for s, _ in verdicts)
        if status == "pass":
            return "pass", f"{text} ({walk.lookups} lookups)", text
        return status, "; ".join(r for s, r in verdicts if s == status), text

    return _per_domain(ctx, "dns.spf", judge)


def _authorises_host(ctx: Context, domain: str) -> list[tuple[Status, str]]:
    """Evaluate the domain's SPF for each address of the mail host; say so when that is not possible."""
    try:
        addresses = ctx.target_addresses()
    except LookupFailed as exc:
        return [("fail", f"cannot evaluate SPF for the mail host: {exc}")]
    if not addresses:
        return [("fail", f"cannot evaluate SPF for the mail host: {ctx.options.target} has no address")]
    out: list[tuple[Status, str]] = []
    for address in addresses:
        try:
            result = evaluate_spf(address, domain, ctx.lookup)
        except LookupFailed as exc:
            out.append(("fail", f"cannot evaluate SPF for the mail host {address} (temperror: {exc})"))
            continue
        if result != "pass":
            out.append(("fail", f"does not authorise the mail host {address} (result {result})"))
    return out


@check("dns.dmarc", "DMARC policy quarantine or reject", needs=("dns",))
def dmarc(ctx: Context) -> Result:
    """Exactly one v=DMARC1 at _dmarc.DOMAIN with p=quarantine or reject (none = warn)."""

    def judge(ctx: Context, domain: str) -> tuple[Status, str, object]:
        txts = ctx.lookup(f"_dmarc.{domain}", "TXT") or []
        status, reason = judge_dmarc(txts)
        return status, reason, txts

    return _per_domain(ctx, "dns.dmarc", judge)


@check("dns.dkim", "DKIM public key published", needs=("dns", "spec"))
def dkim(ctx: Context) -> Result:
    """SELECTOR._domainkey.DOMAIN holds a parseable key, the spec's key when it names one."""
    assert ctx.spec is not None
    selector = ctx.spec.dkim.selector
    expected = ctx.spec.dkim.public_key_b64

    def judge(ctx: Context, domain: str) -> tuple[Status, str, object]:
        name = f"{selector}._domainkey.{domain}"
        txts = [t for t in ctx.lookup(name, "TXT") or [] if "p=" in t]
        if not txts:
            if expected is None:
                return "warn", f"no key at {name}, and the spec sets no DKIM key", None
            return "fail", f"no DKIM key at {name}", None
        if len(txts) > 1:
            return "fail", f"{len(txts)} DKIM records at {name}", txts
        status, reason = judge_dkim(txts[0], expected)
        return status, f"{name}: {reason}", txts[0]

    return _per_domain(ctx, "dns.dkim", judge)


@check(
    "dns.mta_sts", "MTA-STS record published and its policy served", needs=("dns", "net"), severity="medium"
)
def mta_sts(ctx: Context) -> Result:
    """_mta-sts TXT with a valid id; then the HTTPS policy is fetched and judged (RFC 8461).

    Absent TXT = warn (fail when the spec says this server serves MTA-STS). A published TXT whose policy
    cannot be fetched (no redirects, verified TLS, text/plain, <= 64 KB) or is invalid, or whose mx
    patterns miss an MX host of the domain, fails: senders that honour MTA-STS would not deliver. With a
    spec that serves MTA-STS, the served mode, max_age and mx and the TXT id must be the spec's.
    """

    def judge(ctx: Context, domain: str) -> tuple[Status, str, object]:
        txts = ctx.lookup(f"_mta-sts.{domain}", "TXT") or []
        status, reason = judge_mta_sts(txts)
        evidence: dict[str, object] = {"txt": txts}
        if not sts_records(txts):
            if ctx.spec is not None and getattr(ctx.spec, "mta_sts_served", False):
                return "fail", f"no _mta-sts TXT record, but the spec serves MTA-STS for {domain}", evidence
            return status, reason, evidence
        verdicts: list[tuple[Status, str]] = [] if status == "pass" else [(status, reason)]
        try:
            fetched = ctx.mta_sts_policy(domain)
        except PolicyFetchError as exc:
            verdicts.append(("fail", f"_mta-sts TXT is published but the policy is unusable: {exc}"))
        else:
            evidence.update(url=fetched.url, address=fetched.address, policy=fetched.text)
            hosts = [host for _, host in ctx.mx(domain)]
            policy = parse_sts_policy(fetched.text)
            policy_status, policy_reason = judge_sts_policy(policy, hosts)
            expected = _spec_policy(ctx)
            if expected is not None:
                if policy_status == "warn" and policy.mode == "none" == expected.mode:
                    policy_status, policy_reason = "pass", f"{policy_reason} (as the spec says)"
                verdicts += _against_spec(ctx, txts, policy, expected)
            if policy_status == "pass":
                reason = f"{reason}; {policy_reason}" if status == "pass" else reason
            else:
                verdicts.append((policy_status, policy_reason))
        if not verdicts:
            return "pass", reason, evidence
        worst_status = worst(s for s, _ in verdicts)
        return worst_status, "; ".join(r for s, r in verdicts if s == worst_status), evidence

    return _per_domain(ctx, "dns.mta_sts", judge)


def _spec_policy(ctx: Context) -> StsPolicy | None:
    """The policy the spec serves (None without a spec, or when it serves no MTA-STS)."""
    if ctx.spec is None or not getattr(ctx.spec, "mta_sts_served", False):
        return None
    return parse_sts_policy(ctx.spec.mta_sts_policy)


def _against_spec(
    ctx: Context, txts: list[str], served: StsPolicy, expected: StsPolicy
) -> list[tuple[Status, str]]:
    """A served policy and TXT that differ from what the spec renders (a stale policy or record)."""
    out: list[tuple[Status, str]] = []
    for name in ("mode", "max_age"):
        if not served.errors and getattr(served, name) != getattr(expected, name):
            out.append(
                ("fail", f"serves {name} {getattr(served, name)}, the spec says {getattr(expected, name)}")
            )
    if not served.errors and sorted(served.mx) != sorted(expected.mx):
        out.append(
            ("fail", f"serves mx {', '.join(served.mx)}, the spec's MX hosts are {', '.join(expected.mx)}")
        )
    records = sts_records(txts)
    published = parse_tags(records[0]).get("id", "") if len(records) == 1 else ""
    want = getattr(ctx.spec, "mta_sts_id", None)
    if published and want and published != want:
        out.append(
            (
                "fail",
                f"_mta-sts id={published}, the spec's policy has id={want} (publish `mailprov dns` again)",
            )
        )
    return out


@check("dns.tlsrpt", "TLS-RPT record published", needs=("dns",), severity="low")
def tlsrpt(ctx: Context) -> Result:
    """_smtp._tls.DOMAIN TXT v=TLSRPTv1 with a rua (absent = warn)."""

    def judge(ctx: Context, domain: str) -> tuple[Status, str, object]:
        txts = ctx.lookup(f"_smtp._tls.{domain}", "TXT") or []
        status, reason = judge_tlsrpt(txts)
        return status, reason, txts

    return _per_domain(ctx, "dns.tlsrpt", judge)
