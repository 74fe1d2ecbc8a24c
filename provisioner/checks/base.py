"""The verify vocabulary: a check's metadata, its result, and the catalog that registers checks by id.

A check is one small function `fn(ctx) -> Result`, registered with `@check(id, title, needs=..., ...)`.
Inside a check, `raise Skip("why")` when it cannot run; any other exception becomes a `fail` in the runner.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from provisioner.checks.context import Context

Status = Literal["pass", "warn", "fail", "skip"]
STATUSES: tuple[Status, ...] = ("pass", "warn", "fail", "skip")
#: What a check may need: a resolver, TCP to the server, a testinfra host, the spec, test credentials.
NEEDS = ("dns", "net", "ssh", "spec", "creds")
Severity = Literal["high", "medium", "low"]
_RANK = {"pass": 0, "skip": 1, "warn": 2, "fail": 3}


@dataclass
class Result:
    """The outcome of one check: status, a one-line reason, and evidence (JSON-serialisable)."""

    id: str
    status: Status
    reason: str
    evidence: Any = None
    duration: float = 0.0


class Skip(Exception):
    """Raised inside a check that cannot run; the message is the reason."""


@dataclass(frozen=True)
class Check:
    """A registered check: stable id, title, area, what it needs, severity, and the function."""

    id: str
    title: str
    area: str
    needs: tuple[str, ...]
    severity: Severity
    fn: Callable[[Context], Result] = field(compare=False, repr=False)
    #: Multiplier of the per-check timeout for checks that wait on purpose (smtp.roundtrip).
    timeout_scale: float = 1.0


CATALOG: dict[str, Check] = {}


def check(
    id: str,
    title: str,
    *,
    needs: Iterable[str],
    severity: Severity = "medium",
    timeout_scale: float = 1.0,
) -> Callable[[Callable[[Context], Result]], Callable[[Context], Result]]:
    """Register the decorated function in CATALOG under `id` (area = the id's first part)."""
    needs = tuple(needs)
    unknown = set(needs) - set(NEEDS)
    if unknown:
        raise ValueError(f"{id}: unknown needs {sorted(unknown)}")

    def register(fn: Callable[[Context], Result]) -> Callable[[Context], Result]:
        if id in CATALOG:
            raise ValueError(f"check id {id} registered twice")
        CATALOG[id] = Check(id, title, id.split(".")[0], needs, severity, fn, timeout_scale)
        return fn

    return register


def worst(statuses: Iterable[Status]) -> Status:
    """The most severe status of several (fail > warn > skip > pass); pass when empty."""
    out: Status = "pass"
    for status in statuses:
        if _RANK[status] > _RANK[out]:
            out = status
    return out


def select(patterns: Iterable[str], catalog: dict[str, Check] | None = None) -> list[Check]:
    """Checks whose id matches any pattern: an exact id, a prefix (`smtp`, `smtp.port`) or a glob (`smtp.*`).

    Raises ValueError naming a pattern that matches nothing.
    """
    catalog = CATALOG if catalog is None else catalog
    chosen: set[str] = set()
    for raw in patterns:
        pattern = raw.strip()
        if not pattern:
            continue
        if any(ch in pattern for ch in "*?["):
            hits = {cid for cid in catalog if fnmatch.fnmatchcase(cid, pattern)}
        else:
            hits = {cid for cid in catalog if cid == pattern or cid.startswith(pattern.rstrip(".") + ".")}
        if not hits:
            raise ValueError(pattern)
        chosen |= hits
    return [c for cid, c in catalog.items() if cid in chosen]


def aggregate(id: str, parts: dict[str, tuple[Status, str]], evidence: Any = None) -> Result:
    """Combine per-item verdicts (e.g. per domain or per port) into one Result; reasons of the worst first."""
    status = worst(s for s, _ in parts.values())
    if not parts:
        return Result(id, "skip", "nothing to check", evidence)
    if len(parts) == 1:
        ((_, (_, reason)),) = parts.items()
        return Result(id, status, reason, evidence)
    ordered = sorted(parts.items(), key=lambda kv: -_RANK[kv[1][0]])
    if status == "pass":
        reason = "; ".join(f"{name}: {reason}" for name, (_, reason) in ordered)
    else:
        reason = "; ".join(f"{name}: {reason}" for name, (s, reason) in ordered if s == status)
    return Result(id, status, reason, evidence)
