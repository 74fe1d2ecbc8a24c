"""Benchmark: `lab up` of 2 hosts with a warm cache, `lab down`, and (with --cold) a first base build.

Targets on our machine (2 cores): warm `up` of 2 hosts under 20 s, `down` under 5 s, cold first build
(debootstrap + packages, then the 2-host `up`) under 3 min. Prints the figures; asserts nothing.
Needs root. --cold builds into a temporary cache directory so the shared cache is left alone.

    sudo python benchmarks/lab.py [--cold] [--repeat 2] [--acme]
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from provisioner.lab import Lab, ensure_base

HOSTS = ["bench1", "bench2"]


def timed(label: str, fn) -> float:  # type: ignore[no-untyped-def]
    """Run fn, print and return its wall time."""
    start = time.perf_counter()
    fn()
    elapsed = time.perf_counter() - start
    print(f"{label:<34} {elapsed:7.2f} s", flush=True)
    return elapsed


def main() -> None:
    """Measure and print."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cold", action="store_true", help="also time a first build into a temporary cache")
    parser.add_argument("--repeat", type=int, default=2, help="warm up/down cycles")
    parser.add_argument("--acme", action="store_true", help="also time starting pebble (`lab up --acme`)")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="mailprov-bench-"))
    try:
        if args.cold:
            os.environ["MAILPROV_CACHE_DIR"] = str(work / "cache")
            lab = Lab(work / "cold")
            try:
                build = timed("cold: build base image", lambda: ensure_base("debian12"))
                up = timed("cold: lab up (2 hosts)", lambda: lab.up(HOSTS))
                print(f"{'cold: total (target < 180 s)':<34} {build + up:7.2f} s")
            finally:
                lab.down()
        else:
            timed("ensure warm cache", lambda: ensure_base("debian12"))
        for i in range(args.repeat):
            lab = Lab(work / f"warm{i}")
            try:
                timed(f"warm: lab up (2 hosts) #{i + 1} (< 20 s)", partial(lab.up, HOSTS))
                timed(f"warm: lab up again #{i + 1}", partial(lab.up, HOSTS))
                if args.acme:
                    # Hosts already up: what --acme adds (listener CA, pebble start, directory and root fetched).
                    timed(f"warm: lab up --acme (pebble) #{i + 1}", partial(lab.up, HOSTS, acme=True))
            finally:
                timed(f"lab down #{i + 1} (< 5 s)", lab.down)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
