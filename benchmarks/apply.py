"""Benchmark: `mailprov apply` on fresh lab hosts (packages pre-cached) and a no-change re-apply, 1 and 3 hosts.

Targets on our machine (2 cores): no-change re-apply of one host under 10 s; three hosts at most 1.5x one
host. Prints the figures; asserts nothing. Needs root; uses its own lab directory and tears it down.

    sudo python benchmarks/apply.py [--repeat 3] [--keep]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from provisioner import apply as apply_mod
from provisioner import spec as spec_mod
from provisioner.lab import Lab

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "mail.yml"
SINGLE = ["bench1"]
TRIPLE = ["bench2", "bench3", "bench4"]


def apply_once(lab: Lab, spec: spec_mod.Spec, hosts: list[str]) -> tuple[float, apply_mod.ApplyResult]:
    """One apply run limited to hosts: (seconds, result); exits on failure."""
    request = apply_mod.ApplyRequest(inventory=lab.inventory_path, spec=spec, limit=",".join(hosts))
    started = time.perf_counter()
    result = apply_mod.run(request)
    elapsed = time.perf_counter() - started
    if not result.ok:
        reasons = {name: apply_mod.final_failure(h) for name, h in result.hosts.items()}
        sys.exit(f"apply on {hosts} failed: {reasons}")
    return elapsed, result


def measure(lab: Lab, spec: spec_mod.Spec, hosts: list[str], repeat: int) -> dict[str, float]:
    """First apply on fresh hosts, then `repeat` no-change re-applies (median reported)."""
    first, _ = apply_once(lab, spec, hosts)
    again = []
    for _ in range(repeat):
        seconds, result = apply_once(lab, spec, hosts)
        changed = result.changed
        if changed:
            sys.exit(f"re-apply on {hosts} changed {changed} task(s): not idempotent")
        again.append(seconds)
    return {"first": first, "noop_median": statistics.median(again), "noop_min": min(again)}


def main() -> None:
    """Run the benchmark and print the figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3, help="no-change re-applies per case (median)")
    parser.add_argument("--keep", action="store_true", help="leave the benchmark lab running")
    args = parser.parse_args()
    spec = spec_mod.load(EXAMPLE)
    lab = Lab(Path(tempfile.mkdtemp(prefix="mailprov-bench-apply-")))
    try:
        started = time.perf_counter()
        lab.up(SINGLE + TRIPLE)
        print(f"lab up, 4 fresh hosts: {time.perf_counter() - started:.1f}s")
        one = measure(lab, spec, SINGLE, args.repeat)
        three = measure(lab, spec, TRIPLE, args.repeat)
    finally:
        if not args.keep:
            lab.down()
            shutil.rmtree(lab.dir, ignore_errors=True)
    print()
    print(f"{'case':<34} {'1 host':>8} {'3 hosts':>8} {'ratio':>6}")
    for key, label in (("first", "first apply (fresh host)"), ("noop_median", "no-change re-apply (median)")):
        ratio = three[key] / one[key]
        print(f"{label:<34} {one[key]:>7.1f}s {three[key]:>7.1f}s {ratio:>5.2f}x")
    print(f"{'no-change re-apply (best)':<34} {one['noop_min']:>7.1f}s {three['noop_min']:>7.1f}s")
    verdict = "ok" if one["noop_median"] < 10 else "MISSED"
    scale = "ok" if three["noop_median"] <= 1.5 * one["noop_median"] else "MISSED"
    print(f"targets: 1-host no-change < 10 s: {verdict}; 3 hosts <= 1.5x 1 host: {scale}")


if __name__ == "__main__":
    main()
