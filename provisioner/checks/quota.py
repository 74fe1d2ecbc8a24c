"""Pure parsers for what the mailbox-feature checks read over IMAP: QUOTA answers (RFC 9208, formerly
RFC 2087) and their judge, LIST lines, spam headers. No I/O here.

    C: a1 GETQUOTAROOT INBOX
    S: * QUOTAROOT INBOX "User quota"
    S: * QUOTA "User quota" (STORAGE 10 512 MESSAGE 3 1000)
    S: a1 OK Getquotaroot completed

STORAGE usage and limit are in units of 1024 octets (Dovecot, Cyrus and the RFC agree).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from provisioner.checks.base import Status
from provisioner.spec import format_size

_TOKEN = re.compile(r'\s*(?:(\()|(\))|"((?:[^"\\\r\n]|\\["\\])*)"|([^\s()"{}]+))')
_NUMBER = re.compile(r"[0-9]{1,19}")


class QuotaSyntaxError(ValueError):
    """A QUOTA or QUOTAROOT answer that does not follow RFC 9208's grammar."""


def _tokens(text: str) -> list[str | None]:
    """Atoms and strings as str; '(' and ')' as themselves; None never (kept for typing clarity)."""
    out: list[str | None] = []
    i = 0
    text = text.rstrip()
    while i < len(text):
        match = _TOKEN.match(text, i)
        if not match or match.end() == i:
            raise QuotaSyntaxError(f"unexpected {text[i : i + 20]!r}")
        paren_open, paren_close, quoted, atom = match.groups()
        if paren_open:
            out.append("(")
        elif paren_close:
            out.append(")")
        elif quoted is not None:
            out.append('"' + re.sub(r"\\(.)", r"\1", quoted))
        else:
            out.append(atom)
        i = match.end()
    return out


def _name(token: str | None) -> str:
    if token is None or token in ("(", ")"):
        raise QuotaSyntaxError("expected a quota root name")
    return token[1:] if token.startswith('"') else token


def flatten(items: list[bytes | tuple[bytes, bytes]]) -> list[str]:
    """imaplib's untagged data items -> one text line each, literals ({N} + data) folded in as quoted strings."""
    lines: list[str] = []
    pending: str | None = None
    for item in items:
        if isinstance(item, tuple):
            head = item[0].decode("utf-8", "replace")
            literal = item[1].decode("utf-8", "replace").replace("\\", "\\\\").replace('"', '\\"')
            pending = re.sub(r"\{\d+\+?\}$", f'"{literal}"', head)
            continue
        text = item.decode("utf-8", "replace") if isinstance(item, bytes) else str(item)
        if pending is not None:
            text, pending = pending + text, None
        lines.append(text)
    if pending is not None:
        lines.append(pending)
    return lines


def parse_quotaroot(text: str) -> tuple[str, list[str]]:
    """`INBOX "User quota"` (after `* QUOTAROOT`) -> (mailbox, [root names])."""
    tokens = _tokens(text)
    if not tokens:
        raise QuotaSyntaxError("QUOTAROOT without a mailbox")
    return _name(tokens[0]), [_name(t) for t in tokens[1:]]


@dataclass
class Quota:
    """One quota root: {RESOURCE: (usage, limit)}."""

    root: str
    resources: dict[str, tuple[int, int]] = field(default_factory=dict)

    @property
    def storage_kib(self) -> int | None:
        """The STORAGE limit in KiB, or None when the root has none."""
        found = self.resources.get("STORAGE")
        return found[1] if found else None


def parse_quota(text: str) -> Quota:
    """`"User quota" (STORAGE 10 512 MESSAGE 3 1000)` (after `* QUOTA`) -> Quota; strict."""
    tokens = _tokens(text)
    if len(tokens) < 3 or tokens[1] != "(" or tokens[-1] != ")":
        raise QuotaSyntaxError(f"expected ROOT (RESOURCE USAGE LIMIT ...), got {text[:80]!r}")
    quota = Quota(_name(tokens[0]))
    inner = tokens[2:-1]
    if len(inner) % 3:
        raise QuotaSyntaxError(f"resource list is not triples of name, usage, limit: {text[:80]!r}")
    for i in range(0, len(inner), 3):
        name, usage, limit = inner[i : i + 3]
        if name is None or name in ("(", ")") or name.startswith('"'):
            raise QuotaSyntaxError(f"bad resource name {name!r}")
        for value in (usage, limit):
            if value is None or not _NUMBER.fullmatch(value):
                raise QuotaSyntaxError(f"{name}: {value!r} is not a number")
        quota.resources[name.upper()] = (int(usage or 0), int(limit or 0))
    return quota


def kib(size: int) -> str:
    """A size in KiB as the spec writes sizes (512M, 1G, 1500k)."""
    return format_size(size * 1024) if size else "0"


def judge_quota(
    has_capability: bool, quotas: list[Quota], expected: int | None, spec_knows: bool, user: str
) -> tuple[Status, str]:
    """Judge GETQUOTAROOT INBOX's answer for the test user.

    expected: the spec's quota for the user in bytes (None: the spec sets none); spec_knows: whether a spec
    describes this user at all. A limit matches when it is the spec's quota in KiB, rounded either way.
    """
    limits = [(q.root, q.storage_kib) for q in quotas if q.storage_kib is not None]
    shown = ", ".join(
        f'"{root}" {kib(limit)} (used {kib(q.resources["STORAGE"][0])})'
        for (root, limit), q in zip(limits, [q for q in quotas if q.storage_kib is not None], strict=True)
    )
    if not has_capability:
        if expected is not None:
            return (
                "fail",
                f"no QUOTA capability after login, but the spec sets {format_size(expected)} for {user}",
            )
        raise_skip = "server has no quota (no QUOTA capability after login)"
        return "skip", raise_skip
    if expected is not None:
        want = {expected // 1024, -(-expected // 1024)}
        if any(limit in want for _, limit in limits):
            return "pass", f"STORAGE limit {shown} is the spec's {format_size(expected)} for {user}"
        if not limits:
            return "fail", f"no STORAGE limit for {user}, but the spec sets {format_size(expected)}"
        return "fail", f"STORAGE limit {shown}, but the spec sets {format_size(expected)} for {user}"
    if limits:
        if spec_knows:
            return "warn", f"STORAGE limit {shown}, but the spec sets no quota for {user}"
        return "pass", f"STORAGE limit {shown}"
    if spec_knows:
        return "pass", f"no STORAGE limit, as the spec sets no quota for {user}"
    return "skip", f"no STORAGE limit for {user} (QUOTA is supported; no spec says one is expected)"


def parse_list_name(line: bytes) -> str | None:
    """The mailbox name of one LIST answer (`(\\HasNoChildren) "/" "Junk"`), None when unusable."""
    try:
        tokens = _tokens(line.decode("utf-8", "replace"))
    except QuotaSyntaxError:
        return None
    if ")" not in tokens:
        return None
    rest = tokens[tokens.index(")") + 1 :]
    if len(rest) != 2 or rest[1] is None:
        return None
    return rest[1][1:] if rest[1].startswith('"') else rest[1]


_SPAM_HEADER = re.compile(r"^(X-Spam(?:-Flag|-Status)?)[ \t]*:[ \t]*(yes|true)\b", re.I | re.M)


def spam_tag(header: str) -> str | None:
    """The spam verdict header a filter added (`X-Spam: Yes`, `X-Spam-Flag: YES`, `X-Spam-Status: Yes, ...`)."""
    match = _SPAM_HEADER.search(header.replace("\r\n", "\n"))
    return f"{match.group(1)}: {match.group(2)}" if match else None
