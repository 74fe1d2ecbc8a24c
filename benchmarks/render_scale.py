"""Benchmark: load + validate + render a large generated spec (issue 2's performance target).

Targets on our machine (2 cores): 1,000 domains x 20 mailboxes (20,000 mailboxes, 5,000 aliases) in
under 1 s for one profile, and 10x the input in at most 12x the time. Prints the figures; asserts nothing.

    python benchmarks/render_scale.py [--profile debian12] [--repeat 3]
"""

from __future__ import annotations

import argparse
import gc
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from provisioner import profiles, render, spec

HASH = (
    "{SHA512-CRYPT}$6$wS5qFv6gH6eWpZYc$CWN4Y.K75r8CcEwmbGrEYDoDjJpy0Yiyv6WgUWMchTaZjFub/"
    "qVo33twQi9Dlk3mKe16jjf64k3/XAbldkurH0"
)


def generate(domains: int, per_domain: int, aliases_total: int) -> str:
    """A mail.yml with the given counts (aliases spread evenly across domains)."""
    lines = ["hostname: mail.bench.test", "domains:"]
    per_alias = max(1, aliases_total // domains)
    made = 0
    for d in range(domains):
        name = f"d{d}.bench.test"
        lines += [f"  - name: {name}", "    mailboxes:"]
        for m in range(per_domain):
            lines += [
                f"      - address: u{m}@{name}",
                f'        password_hash: "{HASH}"',
                "        quota: 1G",
            ]
        lines.append("    aliases:")
        for a in range(per_alias):
            if made >= aliases_total:
                break
            lines.append(f"      a{a}@{name}: [u{a % per_domain}@{name}, ext{a}@outside.example]")
            made += 1
        if made >= aliases_total or per_alias == 0:
            lines[-1:] = lines[-1:] if lines[-1] != "    aliases:" else ["    aliases: {}"]
    return "\n".join(lines) + "\n"


def measure(path: Path, profile: profiles.Profile, repeat: int) -> tuple[float, int]:
    """Best-of-N seconds for load + validate + render; and the rendered byte count."""
    times = []
    size = 0
    for _ in range(repeat):
        gc.collect()  # start each run from the same heap: the previous run's model is garbage now
        start = time.perf_counter()
        model = spec.load(path)
        files = render.render(model, profile)
        times.append(time.perf_counter() - start)
        size = sum(len(text) for text in files.values())
        del model, files
    return min(times), size


def measure_in_fresh_process(domains: int, aliases: int, profile: str, repeat: int, tmp: Path) -> dict:
    """Generate and measure one size in a new interpreter, so one size's heap does not bias the other."""
    out = subprocess.run(
        [
            sys.executable,
            __file__,
            "--one",
            str(domains),
            str(aliases),
            "--profile",
            profile,
            "--repeat",
            str(repeat),
            "--tmp",
            str(tmp),
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    """Run the benchmark and print the figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default="debian12")
    parser.add_argument("--repeat", type=int, default=3, help="best of N runs per size")
    parser.add_argument("--one", nargs=2, type=int, metavar=("DOMAINS", "ALIASES"), help=argparse.SUPPRESS)
    parser.add_argument("--tmp", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        domains, aliases = args.one
        path = args.tmp / f"spec-{domains}.yml"
        path.write_text(generate(domains, 20, aliases))
        seconds, size = measure(path, profiles.get(args.profile), args.repeat)
        print(json.dumps({"seconds": seconds, "spec_bytes": path.stat().st_size, "config_bytes": size}))
        return
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for label, domains, aliases in (("1x", 1000, 5000), ("10x", 10000, 50000)):
            figures = measure_in_fresh_process(domains, aliases, args.profile, args.repeat, Path(tmp))
            results[label] = figures["seconds"]
            print(
                f"{label:>4}: {domains} domains, {domains * 20} mailboxes, {aliases} aliases "
                f"({figures['spec_bytes'] / 1e6:.1f} MB spec -> {figures['config_bytes'] / 1e6:.1f} MB config): "
                f"load+validate+render {figures['seconds']:.3f} s (best of {args.repeat}, profile {args.profile})"
            )
    ratio = results["10x"] / results["1x"]
    print(f"target 1x < 1 s: {'met' if results['1x'] < 1 else 'MISSED'} ({results['1x']:.3f} s)")
    print(f"target 10x <= 12x time: {'met' if ratio <= 12 else 'MISSED'} (ratio {ratio:.2f})")


if __name__ == "__main__":
    main()
