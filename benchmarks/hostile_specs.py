"""Benchmark: hostile specs of at most 1 MB are refused or rendered in under 2 s and 300 MB peak (issue 8).

Each spec is loaded, validated and rendered (all three profiles) in a fresh interpreter, whose wall time and
peak RSS (ru_maxrss) are measured; the floor printed beside them is a fresh interpreter that only imports
provisioner, measured in the same run. Prints the figures and the worst case; asserts nothing.

    python benchmarks/hostile_specs.py
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

MB = 1_000_000
HASH = (
    "{SHA512-CRYPT}$6$wS5qFv6gH6eWpZYc$CWN4Y.K75r8CcEwmbGrEYDoDjJpy0Yiyv6WgUWMchTaZjFub/"
    "qVo33twQi9Dlk3mKe16jjf64k3/XAbldkurH0"
)
HEAD = (
    "hostname: mail.h.test\ndomains:\n  - name: h.test\n    mailboxes:\n"
    f'      - address: a@h.test\n        password_hash: "{HASH}"\n'
)


def fill(prefix: str, unit: str, suffix: str = "") -> str:
    """prefix + unit repeated to about 1 MB + suffix."""
    return prefix + unit * ((MB - len(prefix) - len(suffix)) // len(unit)) + suffix


def cases() -> dict[str, str]:
    """Hostile specs of at most 1 MB each."""
    bomb = ['b0: &b0 ["x","x","x","x","x","x","x","x","x"]']
    bomb += [f"b{i}: &b{i} [" + ",".join([f"*b{i - 1}"] * 9) + "]" for i in range(1, 9)]
    budget_edge = ['c0: &c0 ["x","x","x","x","x","x","x","x","x","x"]']
    budget_edge += [f"c{i}: &c{i} [" + ",".join([f"*c{i - 1}"] * 10) + "]" for i in range(1, 6)]
    chain = "".join(f"      x{i}@h.test: [x{i + 1}@h.test]\n" for i in range(20_000))
    return {
        "alias bomb (9^9 values)": HEAD + "\n".join(bomb) + "\n",
        "aliases at the expansion budget (10^5 values)": HEAD + "\n".join(budget_edge) + "\n",
        "block nesting 1 MB deep": HEAD + "x:\n" + "".join("  " * i + f"k{i}:\n" for i in range(1, 700)),
        "flow nesting": HEAD + "x: " + "[" * 400_000 + "]" * 400_000 + "\n",
        "one 1 MB string": HEAD + 'x: "' + "a" * (MB - 200) + '"\n',
        "1 MB password hash": fill(HEAD.replace(f'"{HASH}"', f'"{HASH}'), "A", '"\n'),
        "size regex worst case, under the string limit": HEAD
        + 'message_size_limit: "1'
        + " " * 4000
        + 'x"\n',
        "size regex worst case": HEAD + 'message_size_limit: "1' + " " * (MB - 300) + 'x"\n',
        "20,000-deep alias chain": HEAD + "    aliases:\n" + chain + "      x20000@h.test: [a@h.test]\n",
        "5,000 mailboxes (valid)": HEAD
        + "".join(f'      - address: u{i}@h.test\n        password_hash: "{HASH}"\n' for i in range(5000)),
        "control characters everywhere": fill(
            HEAD + "    aliases:\n", '      "a\\u0000@h.test": [a@h.test]\n'
        ),
        "many unknown keys": fill(HEAD, "k", ": 1\n"),
        "10,000 domains without mailboxes": "hostname: mail.h.test\ndomains:\n"
        + "".join(f"  - name: d{i}.h.test\n" for i in range(10_000))
        + f'  - name: h.test\n    mailboxes:\n      - address: a@h.test\n        password_hash: "{HASH}"\n',
        "huge integers": HEAD + "message_size_limit: " + "9" * 4000 + "\n",
    }


CHILD = """
import json, resource, sys, time
start = time.perf_counter()
from provisioner import profiles, render, spec
from provisioner.errors import MailprovError
outcome = "rendered"
try:
    model = spec.load(sys.argv[1])
    for name in sorted(profiles.PROFILES):
        render.render(model, profiles.get(name))
except MailprovError as exc:
    outcome = "refused: " + str(exc)[:110]
except BaseException as exc:
    outcome = "CRASH: " + type(exc).__name__
print(json.dumps({"seconds": time.perf_counter() - start, "outcome": outcome,
                  "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def run_child(path: Path | None) -> dict:
    """Run the loader in a fresh interpreter; path None only imports (the floor)."""
    code = (
        CHILD
        if path
        else "import json,resource,time;s=time.perf_counter();import provisioner.render;"
        + (
            "print(json.dumps({'seconds': time.perf_counter()-s, 'outcome': 'import only',"
            " 'rss_mb': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss/1024}))"
        )
    )
    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-c", code, *([str(path)] if path else [])],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=Path(__file__).resolve().parent.parent,
    )
    wall = time.perf_counter() - start
    if proc.returncode != 0 or not proc.stdout.strip():
        return {"wall": wall, "seconds": wall, "outcome": f"CRASH (exit {proc.returncode})", "rss_mb": 0.0}
    data = json.loads(proc.stdout.strip().splitlines()[-1])
    data["wall"] = wall
    return data


def main() -> None:
    """Measure every hostile case and print them with the floor."""
    floor = min((run_child(None) for _ in range(3)), key=lambda d: d["wall"])
    print(
        f"floor (fresh interpreter importing provisioner): {floor['wall']:.2f} s wall, {floor['rss_mb']:.0f} MB"
    )
    worst_time = worst_rss = ("", 0.0)
    with tempfile.TemporaryDirectory() as tmp:
        for label, text in cases().items():
            path = Path(tmp) / "mail.yml"
            path.write_text(text)
            size = path.stat().st_size
            data = run_child(path)
            over = data["wall"] >= 2 or data["rss_mb"] >= 300 or data["outcome"].startswith("CRASH")
            print(
                f"{'MISSED' if over else 'met   '} {label:<46} {size / MB:5.2f} MB  {data['wall']:5.2f} s wall"
                f" ({data['seconds']:.2f} s in process)  {data['rss_mb']:6.1f} MB peak  {data['outcome'][:90]}"
            )
            if data["wall"] > worst_time[1]:
                worst_time = (label, data["wall"])
            if data["rss_mb"] > worst_rss[1]:
                worst_rss = (label, data["rss_mb"])
    print(f"worst time: {worst_time[1]:.2f} s ({worst_time[0]}); target < 2 s")
    print(f"worst peak: {worst_rss[1]:.0f} MB ({worst_rss[0]}); target < 300 MB")
    print(f"this machine: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB in the driver")


if __name__ == "__main__":
    main()
