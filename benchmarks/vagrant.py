"""Benchmark: `vagrant up` with the local box to a verified server, in phases (box, boot, apply, verify),
then `vagrant provision` (changed=0) and `vagrant destroy -f`.

Target on our machines (2 cores, qemu/TCG, no KVM): from `vagrant up` to a verified server at most
10 minutes. Prints the figures and met/MISSED; asserts nothing. Needs root; boots a VM, so run it under
the lab lock:

    sudo flock /tmp/mailprov-lab.lock python3 benchmarks/vagrant.py [--spec examples/mail.yml]

Phases are cut at Vagrant's own output lines: "Uploading base box image" (first use of a box version only:
vagrant-libvirt copies it into the storage pool), "Running trigger: mailprov" (the VM booted and answers
SSH), and apply's "converged in" line (apply done, verify starts).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from provisioner import vagrantbox

ROOT = Path(__file__).resolve().parent.parent
TARGET = 600.0


def run_streamed(argv: list[str], env: dict[str, str], log: Path) -> tuple[int, list[tuple[float, str]]]:
    """Run a command, keeping each output line with the time (since start) it was read."""
    start = time.perf_counter()
    lines: list[tuple[float, str]] = []
    with open(log, "w") as out:
        proc = subprocess.Popen(
            argv, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1
        )
        assert proc.stdout is not None
        for line in proc.stdout:
            out.write(line)
            lines.append((time.perf_counter() - start, line.rstrip("\n")))
        code = proc.wait()
    lines.append((time.perf_counter() - start, ""))
    return code, lines


def first(lines: list[tuple[float, str]], needle: str) -> float | None:
    """Time of the first line containing `needle`."""
    return next((at for at, text in lines if needle in text), None)


def main() -> None:
    """Measure and print."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spec", default=str(ROOT / "examples/mail.yml"), help="the mail.yml to apply")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="mailprov-bench-vagrant-"))
    env = {
        **os.environ,
        "MAILPROV_BOX": vagrantbox.BOX_NAME,
        "MAILPROV_SPEC": str(Path(args.spec).resolve()),
        "VAGRANT_DOTFILE_PATH": str(work / "dot"),
        "VAGRANT_NO_COLOR": "1",
    }
    print(f"logs in {work}", flush=True)
    start = time.perf_counter()
    build = subprocess.run(["make", "-s", "vagrant-box"], cwd=ROOT, capture_output=True, text=True)
    print(
        f"{'make vagrant-box':<40} {time.perf_counter() - start:7.1f} s  ({build.stdout.strip().splitlines()[-1:]})"
    )
    if build.returncode != 0:
        print(build.stdout + build.stderr)
        sys.exit(1)
    try:
        code, lines = run_streamed(["vagrant", "up", "--provider=libvirt"], env, work / "up.log")
        total = lines[-1][0]
        upload_start = first(lines, "Uploading base box image")
        upload_end = first(lines, "Creating image (snapshot")
        booted = first(lines, "Running trigger: mailprov")
        # The table recap ends with "converged in N s"; verify follows at once.
        verify_start = first(lines, "converged in")
        upload = (upload_end - upload_start) if upload_start is not None and upload_end is not None else 0.0
        if booted is not None:
            print(f"{'box copy into the libvirt pool (first use)':<40} {upload:7.1f} s")
            print(f"{'boot (up to SSH, hostname, networks)':<40} {booted - upload:7.1f} s")
        if booted is not None and verify_start is not None:
            print(f"{'mailprov apply':<40} {verify_start - booted:7.1f} s")
            print(f"{'mailprov verify':<40} {total - verify_start:7.1f} s")
        print(f"{'vagrant up total (exit ' + str(code) + ')':<40} {total:7.1f} s")
        to_verified = total - upload
        verdict = "met" if code == 0 and to_verified <= TARGET else "MISSED"
        print(
            f"{'up to verified server, without box copy':<40} {to_verified:7.1f} s  target <= {TARGET:.0f} s: {verdict}"
        )
        code, lines = run_streamed(["vagrant", "provision"], env, work / "provision.log")
        print(f"{'vagrant provision (exit ' + str(code) + ')':<40} {lines[-1][0]:7.1f} s")
    finally:
        code, lines = run_streamed(["vagrant", "destroy", "-f"], env, work / "destroy.log")
        print(f"{'vagrant destroy -f (exit ' + str(code) + ')':<40} {lines[-1][0]:7.1f} s")


if __name__ == "__main__":
    main()
