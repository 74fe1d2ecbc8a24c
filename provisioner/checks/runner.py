"""Run checks concurrently, each under its own deadline; never raise, never hang.

Every selected check runs in its own daemon thread at once (they mostly wait on the network), inside a
`bounded.Scope` whose deadline (start + timeout x the check's timeout_scale) covers its whole exchange.
The runner waits for each until that deadline; a check still running then is reported as
`fail: timed out after Ns` and its scope is expired, which shuts down every socket it holds, so its
thread ends at once instead of lingering (and daemon threads never keep the process alive).
A check whose needs are not met is `skip` with the reason, without running.
Every result leaves the runner cleaned: reasons one line, control characters escaped, sizes capped.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field

from provisioner.checks import bounded
from provisioner.checks.base import STATUSES, Check, Result, Skip, Status
from provisioner.checks.context import Context, describe
from provisioner.checks.parsers import LookupFailed, clean_evidence, clean_reason

_MISSING = {
    "ssh": "needs host access: pass --ssh USER@HOST or --local",
    "spec": "needs --spec to know what to expect",
    "creds": "needs test credentials: pass --user and --password-file",
}


@dataclass
class Report:
    """All results of one verify run against one target."""

    target: str
    results: list[Result] = field(default_factory=list)
    duration: float = 0.0

    @property
    def summary(self) -> dict[str, int]:
        """Count of results per status (all four keys always present)."""
        counts: dict[str, int] = {status: 0 for status in STATUSES}
        for result in self.results:
            counts[result.status] += 1
        return counts

    @property
    def failed(self) -> bool:
        """Whether any check failed (exit 1)."""
        return any(r.status == "fail" for r in self.results)


def unmet_need(check: Check, ctx: Context) -> str | None:
    """The reason a check cannot run with what the context has, or None."""
    have = {
        "dns": True,
        "net": True,
        "ssh": ctx.host is not None,
        "spec": ctx.spec is not None,
        "creds": ctx.has_creds,
    }
    for need in check.needs:
        if not have.get(need, False):
            return _MISSING.get(need, f"needs {need}")
    return None


def run_one(check: Check, ctx: Context) -> Result:
    """Run one check synchronously; exceptions become fail (Skip becomes skip) with a one-line reason."""
    start = time.monotonic()
    try:
        result = check.fn(ctx)
    except Skip as exc:
        result = Result(check.id, "skip", str(exc))
    except LookupFailed as exc:
        result = Result(check.id, "fail", str(exc))
    except Exception as exc:
        result = Result(check.id, "fail", describe(exc))
    result.id = check.id
    result.duration = round(time.monotonic() - start, 3)
    return clean(result)


def clean(result: Result) -> Result:
    """The result with its reason and evidence safe to print anywhere (untrusted text stays text)."""
    result.reason = clean_reason(str(result.reason))
    result.evidence = clean_evidence(result.evidence)
    return result


def run(checks: Iterable[Check], ctx: Context, timeout: float | None = None) -> Report:
    """Run the checks against the context's target concurrently; results in the given order."""
    timeout = ctx.timeout if timeout is None else timeout
    started = time.monotonic()
    checks = list(checks)
    ctx.selected = {c.id for c in checks}
    slots: list[Result | None] = [None] * len(checks)
    threads: list[tuple[int, threading.Thread, bounded.Scope]] = []
    # Checks that wait on the server on purpose (logins behind the failed-login delay, the roundtrip)
    # are the longest: start them first so they are not queued behind the quick probes.
    order = sorted(range(len(checks)), key=lambda i: -checks[i].timeout_scale)
    for index in order:
        check = checks[index]
        reason = unmet_need(check, ctx)
        if reason is not None:
            slots[index] = Result(check.id, "skip", reason)
            continue

        scope = bounded.Scope(timeout * check.timeout_scale)

        def work(index: int = index, check: Check = check, scope: bounded.Scope = scope) -> None:
            bounded.enter(scope)
            slots[index] = run_one(check, ctx)

        thread = threading.Thread(target=work, name=f"verify:{check.id}", daemon=True)
        thread.start()
        threads.append((index, thread, scope))
    final = list(slots)
    for index, thread, scope in threads:
        thread.join(scope.hard_remaining())
        # An abandoned thread may still write its slot later; `final` is what we report.
        final[index] = slots[index]
        if thread.is_alive() or final[index] is None:
            scope.expire()
            limit = timeout * checks[index].timeout_scale
            status: Status = "fail"
            final[index] = Result(checks[index].id, status, f"timed out after {limit:g}s", None, limit)
    # Helper threads a finished check left behind (abandoned probes) lose their sockets too.
    for _, _, scope in threads:
        scope.expire()
    results = [r for r in final if r is not None]
    return Report(ctx.options.target, results, round(time.monotonic() - started, 3))
