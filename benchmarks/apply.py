"""Benchmark: no-change re-apply of one and ten lab hosts, beside Ansible's own floor and controller CPU.

In one run: the floor (a one-task playbook, `ansible.builtin.ping`, over SSH with mailprov's ansible.cfg, the
same connection settings apply uses), the first apply on fresh hosts (packages pre-cached), and the no-change
re-apply (median of --repeat runs) of one host and of ten hosts, each with the controller's CPU seconds
(user + system of ansible-playbook and its ssh children: on 2 cores that is what bounds a fleet run).
Targets (issue 11): one host at most 2.0 s and at most 1.5x the floor; ten hosts at most 2.5x one host.
Prints the figures and met/MISSED; asserts nothing. Needs root; uses its own lab directory, torn down after.

    sudo python benchmarks/apply.py [--repeat 5] [--hosts 10] [--keep]
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from provisioner import apply as apply_mod
from provisioner import spec as spec_mod
from provisioner.lab import Lab

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "mail.yml"
FLOOR_PLAYBOOK = """\
- name: Ansible's floor
  hosts: all
  gather_facts: false
  tasks:
    - name: One module round trip
      ansible.builtin.ping:
"""


def children_cpu() -> float:
    """CPU seconds (user + system) used so far by finished child processes."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def timed(action: Callable[[], None]) -> tuple[float, float]:
    """(wall seconds, controller CPU seconds of child processes) of one action."""
    cpu, started = children_cpu(), time.perf_counter()
    action()
    return time.perf_counter() - started, children_cpu() - cpu


def floor(lab: Lab, hosts: list[str], workdir: Path) -> None:
    """Run the one-task playbook once over hosts; exit on failure."""
    playbook = workdir / "floor.yml"
    playbook.write_text(FLOOR_PLAYBOOK, encoding="utf-8")
    argv = [apply_mod.ansible_playbook_path(), "-i", str(lab.inventory_path), "--limit", ",".join(hosts)]
    env = {**apply_mod.ansible_env(), "ANSIBLE_STDOUT_CALLBACK": "ansible.builtin.minimal"}
    proc = subprocess.run([*argv, str(playbook)], capture_output=True, text=True, env=env, timeout=300)
    if proc.returncode != 0:
        sys.exit(f"floor playbook failed on {hosts}: {proc.stdout[-2000:]}{proc.stderr[-2000:]}")


def apply_once(lab: Lab, spec: spec_mod.Spec, hosts: list[str], no_change: bool) -> None:
    """One apply run limited to hosts; exits on failure, or on a change where none was expected."""
    request = apply_mod.ApplyRequest(inventory=lab.inventory_path, spec=spec, limit=",".join(hosts))
    result = apply_mod.run(request)
    if not result.ok:
        reasons = {name: apply_mod.final_failure(h) for name, h in result.hosts.items()}
        sys.exit(f"apply on {hosts} failed: {reasons}")
    if no_change and result.changed:
        sys.exit(f"re-apply on {hosts} changed {result.changed} task(s): not idempotent")


def median_of(repeat: int, action: Callable[[], None]) -> tuple[float, float]:
    """Median wall and median controller CPU seconds over repeat runs."""
    runs = [timed(action) for _ in range(repeat)]
    return statistics.median(r[0] for r in runs), statistics.median(r[1] for r in runs)


def verdict(ok: bool) -> str:
    """met or MISSED."""
    return "met" if ok else "MISSED"


def main() -> None:
    """Run the benchmark and print the figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5, help="runs per case (median reported)")
    parser.add_argument("--hosts", type=int, default=10, help="size of the fleet case")
    parser.add_argument("--keep", action="store_true", help="leave the benchmark lab running")
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("benchmarks/apply.py boots lab hosts: run it as root")
    spec = spec_mod.load(EXAMPLE)
    single = ["bench1"]
    fleet = [f"bench{i}" for i in range(2, args.hosts + 2)]
    lab = Lab(Path(tempfile.mkdtemp(prefix="mailprov-bench-apply-")))
    work = Path(tempfile.mkdtemp(prefix="mailprov-bench-work-"))
    figures: dict[str, tuple[float, float]] = {}
    try:
        wall, _ = timed(lambda: lab.up(single + fleet))
        print(f"lab up, {1 + len(fleet)} fresh hosts: {wall:.1f}s", flush=True)
        figures["first 1"] = timed(lambda: apply_once(lab, spec, single, False))
        figures["first N"] = timed(lambda: apply_once(lab, spec, fleet, False))
        # Floors and re-applies alternate host sets the same way, so SSH master connections are equally warm.
        figures["floor 1"] = median_of(args.repeat, lambda: floor(lab, single, work))
        figures["noop 1"] = median_of(args.repeat, lambda: apply_once(lab, spec, single, True))
        figures["floor N"] = median_of(args.repeat, lambda: floor(lab, fleet, work))
        figures["noop N"] = median_of(args.repeat, lambda: apply_once(lab, spec, fleet, True))
    finally:
        if not args.keep:
            lab.down()
            shutil.rmtree(lab.dir, ignore_errors=True)
        shutil.rmtree(work, ignore_errors=True)
    n = len(fleet)
    print()
    print(f"{'case':<38} {'1 host':>16} {f'{n} hosts':>16}")
    print(f"{'':<38} {'wall / ctrl CPU':>16} {'wall / ctrl CPU':>16}")
    for key, label in (
        ("floor", f"Ansible floor (ping, median of {args.repeat})"),
        ("first", "first apply (fresh hosts)"),
        ("noop", f"no-change re-apply (median of {args.repeat})"),
    ):
        cells = []
        for size in ("1", "N"):
            wall, cpu = figures[f"{key} {size}"]
            cells.append(f"{wall:5.2f}s / {cpu:5.2f}s")
        print(f"{label:<38} {cells[0]:>16} {cells[1]:>16}")
    one, many, base = figures["noop 1"][0], figures["noop N"][0], figures["floor 1"][0]
    print()
    print(f"no-change, 1 host: {one:.2f}s <= 2.0 s: {verdict(one <= 2.0)}")
    print(
        f"no-change, 1 host: {one / base:.2f}x the floor ({base:.2f}s) <= 1.5x: {verdict(one <= 1.5 * base)}"
    )
    print(f"no-change, {n} hosts: {many / one:.2f}x one host <= 2.5x: {verdict(many <= 2.5 * one)}")
    print(
        f"controller CPU per host, no-change: {figures['noop N'][1] / n:.2f}s ({n} hosts), "
        f"{figures['noop 1'][1]:.2f}s (1 host); cores: {os.cpu_count()}"
    )


if __name__ == "__main__":
    main()
