"""`mailprov verify`: a catalog of checks (shared/checks.md), a concurrent runner, and reports.

Library use::

    from provisioner.checks import Options, verify
    report = verify(Options(target="mail.example.org", domains=["example.org"]), only=["dns.*"])
    print(report.summary)

Areas: dns, smtp, tls, imap/pop3 (mailbox), sieve, host. Each check is registered in CATALOG by id.
"""

from __future__ import annotations

from collections.abc import Iterable

# Importing the area modules registers their checks, in catalog order.
from provisioner.checks import dns, host, mailbox, sieve, smtp, tls  # noqa: F401
from provisioner.checks.base import CATALOG, Check, Result, Skip, select
from provisioner.checks.context import Context, Options
from provisioner.checks.runner import Report, run, run_one

__all__ = [
    "CATALOG",
    "Check",
    "Context",
    "Options",
    "Report",
    "Result",
    "Skip",
    "run",
    "run_one",
    "select",
    "verify",
]

_ORDER = ("dns", "smtp", "tls", "imap", "pop3", "sieve", "host")


def ordered_catalog() -> list[Check]:
    """All checks, grouped by area in report order."""
    return sorted(CATALOG.values(), key=lambda c: _ORDER.index(c.area) if c.area in _ORDER else len(_ORDER))


def verify(options: Options, only: Iterable[str] | None = None) -> Report:
    """Run the catalog (or the checks matching `only` patterns) against options.target."""
    checks = ordered_catalog()
    if only:
        chosen = {c.id for c in select(only)}
        checks = [c for c in checks if c.id in chosen]
    return run(checks, Context(options))
