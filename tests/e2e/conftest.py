"""The `lab` fixture: one lab (own state dir, bridge, resolver) for the whole e2e session.

Tests ask for the hosts they need with ``lab.up([...])`` (additive, idempotent: a host another test
already started is reused). The lab is always torn down at the end of the session. The tests skip,
with the reason, only when not root or when systemd-nspawn/debootstrap/unbound are missing; CI
installs them, so there they run.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from provisioner.errors import UsageError
from provisioner.lab import Lab, check_prerequisites


def lab_skip_reason() -> str | None:
    """Why the lab cannot run here (not root, tools missing), or None."""
    try:
        check_prerequisites()
    except UsageError as exc:
        return str(exc)
    return None


@pytest.fixture(scope="session")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    """A Lab in its own temporary state directory; `down()` always runs at the end."""
    reason = lab_skip_reason()
    if reason:
        pytest.skip(f"lab unavailable: {reason}")
    the_lab = Lab(tmp_path_factory.mktemp("lab"))
    try:
        yield the_lab
    finally:
        the_lab.down()
