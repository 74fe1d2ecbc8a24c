"""The verify host checks as plain pytest-testinfra tests, for people who prefer pytest directly.

Run against a server over SSH (or this machine with --hosts=local://)::

    MAILPROV_SPEC=mail.yml pytest --hosts=ssh://root@mail.example.org --pyargs provisioner.checks.pytest_host

One test per host check id (host.packages, host.services, ... host.drift). A check's `skip` becomes a
pytest skip, `warn` a pytest warning, `fail` a test failure with the check's reason. MAILPROV_SPEC is
optional; without it host.drift is skipped and the others expect the defaults (port 25).
testinfra options apply as usual (--ssh-config, --ssh-identity-file, --sudo, -n for parallel hosts).
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any

import pytest

from provisioner.checks import CATALOG, Context, Options
from provisioner.checks.runner import run_one, unmet_need

HOST_CHECK_IDS = [cid for cid, check in CATALOG.items() if check.area == "host"]


class HostCheckWarning(UserWarning):
    """A host check ended in `warn`."""


@pytest.fixture(scope="module")
def mailprov_spec() -> Any:
    """The spec named by $MAILPROV_SPEC, or None."""
    from provisioner import spec

    path = os.environ.get("MAILPROV_SPEC")
    return spec.load(Path(path)) if path else None


@pytest.mark.parametrize("check_id", HOST_CHECK_IDS)
def test_mail_host(host: Any, check_id: str, mailprov_spec: Any) -> None:
    """Run one mailprov host check on the testinfra host."""
    check = CATALOG[check_id]
    target = getattr(host.backend, "hostname", None) or "localhost"
    ctx = Context(Options(target=target, spec=mailprov_spec, host=host))
    reason = unmet_need(check, ctx)
    if reason is not None:
        pytest.skip(reason.replace("--spec", "MAILPROV_SPEC=mail.yml"))
    result = run_one(check, ctx)
    if result.status == "skip":
        pytest.skip(result.reason)
    if result.status == "warn":
        warnings.warn(HostCheckWarning(f"{check_id}: {result.reason}"), stacklevel=1)
    assert result.status != "fail", f"{check_id}: {result.reason}"
