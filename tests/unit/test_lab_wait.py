"""The lab waits for state other processes create (nspawn's veth, the container's init, sshd) with a deadline.

No root needed: the poller runs on a fake clock, and the nspawn-facing helpers run against fake programs
and ordinary child processes.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from provisioner import lab
from provisioner.errors import LabError


class FakeClock:
    """A monotonic clock that only moves when the poller sleeps."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        assert seconds >= 0
        self.sleeps.append(seconds)
        self.now += seconds


def test_value_that_appears_late_is_waited_for() -> None:
    clock = FakeClock()
    calls = []

    def probe() -> str | None:
        calls.append(clock.now)
        return "vb-mx1" if len(calls) == 4 else None

    assert lab.wait_for("host0", probe, timeout=30, clock=clock, sleep=clock.sleep) == "vb-mx1"
    assert len(calls) == 4
    assert len(clock.sleeps) == 3
    assert clock.sleeps == sorted(clock.sleeps), "the interval backs off, never shrinks"


def test_falsy_values_other_than_none_count_as_found() -> None:
    clock = FakeClock()
    assert lab.wait_for("pid", lambda: 0, timeout=1, clock=clock, sleep=clock.sleep) == 0
    assert clock.sleeps == []


def test_timeout_is_a_lab_error_naming_what_and_the_last_reason() -> None:
    clock = FakeClock()
    calls = []

    def probe() -> None:
        calls.append(clock.now)
        raise lab.NotReady(f'Device "host0" does not exist (try {len(calls)})')

    with pytest.raises(LabError) as err:
        lab.wait_for("host0 in the container", probe, timeout=5, clock=clock, sleep=clock.sleep)
    message = str(err.value)
    assert "timed out after 5s waiting for host0 in the container" in message
    assert f"(try {len(calls)})" in message, "the reason reported is the last one seen"
    assert calls[-1] == pytest.approx(1005.0), "the last look happens at the deadline"
    assert clock.now == pytest.approx(1005.0), "no sleep past the deadline"
    assert max(clock.sleeps) <= 1.0


def test_probe_runs_once_even_with_no_time_left() -> None:
    clock = FakeClock()
    assert lab.wait_for("x", lambda: "here", timeout=0, clock=clock, sleep=clock.sleep) == "here"
    with pytest.raises(LabError, match="timed out after 0s waiting for x"):
        lab.wait_for("x", lambda: None, timeout=0, clock=clock, sleep=clock.sleep)


def test_abort_ends_the_wait_at_once_with_its_reason() -> None:
    clock = FakeClock()
    looks = []

    def probe() -> None:
        looks.append(1)

    def abort() -> str | None:
        return "the container exited" if len(looks) >= 2 else None

    with pytest.raises(LabError, match=r"^sshd on 10\.0\.0\.2: the container exited$"):
        lab.wait_for("sshd on 10.0.0.2", probe, timeout=90, abort=abort, clock=clock, sleep=clock.sleep)
    assert len(looks) == 2
    assert clock.now < 1001.0


def test_other_exceptions_from_the_probe_propagate() -> None:
    clock = FakeClock()

    def probe() -> None:
        raise ValueError("a bug, not a not-yet")

    with pytest.raises(ValueError):
        lab.wait_for("x", probe, timeout=5, clock=clock, sleep=clock.sleep)


def _fake_program(directory: Path, name: str, body: str) -> None:
    path = directory / name
    path.write_text(f"#!{sys.executable}\n{body}")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)


def test_container_veth_polls_until_nspawn_has_moved_host0(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The reported failure: `ip link show host0` right after the container starts says it does not exist."""
    lo_index = int(Path("/sys/class/net/lo/ifindex").read_text())
    counter = tmp_path / "count"
    # Fails twice the way iproute2 does before nspawn has moved the interface, then shows host0
    # with its peer's ifindex (here: lo, an interface that exists on any machine).
    _fake_program(
        tmp_path,
        "nsenter",
        f"""import pathlib, sys
c = pathlib.Path({str(counter)!r})
n = int(c.read_text()) + 1 if c.exists() else 1
c.write_text(str(n))
if n < 3:
    print('Device "host0" does not exist.', file=sys.stderr)
    sys.exit(1)
print({json.dumps(json.dumps([{"ifname": "host0", "link_index": lo_index}]))})
""",
    )
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    assert lab.container_veth(os.getpid(), timeout=30) == "lo"
    assert counter.read_text() == "3"


def test_container_veth_times_out_with_the_reason(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_program(
        tmp_path,
        "nsenter",
        "import sys\nprint('Device \"host0\" does not exist.', file=sys.stderr)\nsys.exit(1)\n",
    )
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    with pytest.raises(LabError, match=r'waiting for host0 .*Device "host0" does not exist'):
        lab.container_veth(os.getpid(), timeout=0.3)


def test_container_init_stops_when_nspawn_exits() -> None:
    proc = subprocess.Popen(["true"])
    try:
        with pytest.raises(LabError, match="systemd-nspawn exited before the container started"):
            lab.container_init(proc.pid, timeout=30)
    finally:
        proc.wait()


def test_container_init_times_out_when_no_container_appears() -> None:
    proc = subprocess.Popen(["sleep", "30"])  # alive, but has no child in another PID namespace
    try:
        with pytest.raises(
            LabError, match=r"timed out after 0\.3s waiting for the container of systemd-nspawn"
        ):
            lab.container_init(proc.pid, timeout=0.3)
    finally:
        proc.kill()
        proc.wait()
