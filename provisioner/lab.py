"""Throwaway booted test hosts on one machine: systemd-nspawn containers on a Linux bridge, plus a lab DNS.

A lab lives in one state directory (``--lab-dir``, ``MAILPROV_LAB_DIR``, default /var/lib/mailprov/lab).
Its bridge name and the 10.x.y.0/24 it uses derive from (and are recorded in) that directory, so several
labs can run side by side and each one only ever touches what it created. The base root filesystem is
built once by debootstrap into a shared cache (``MAILPROV_CACHE_DIR``, default /var/cache/mailprov) and
every host boots from an overlay (or reflink copy) of it.

State (``state.json``) records everything ``down`` needs to undo: process IDs with their start times,
mounts, the bridge, the DNS server. Pure helpers (address allocation, inventory text, DNS records)
are module functions so they can be tested without root.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import ipaddress
import json
import os
import re
import secrets
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from pathlib import Path
from typing import Any, TypeVar

from provisioner.dns import Record
from provisioner.dns import records as dns_records
from provisioner.dnsserver import DnsServer, zones_for
from provisioner.errors import LabError, UsageError
from provisioner.spec import Spec

DEFAULT_LAB_DIR = Path("/var/lib/mailprov/lab")
DEFAULT_CACHE_DIR = Path("/var/cache/mailprov")
SUPPORTED_DISTROS = ("debian12",)
SUITES = {"debian12": "bookworm"}
# debootstrap --include: what a booted, SSH-reachable host needs.
BOOTSTRAP_PACKAGES = ("systemd", "systemd-sysv", "dbus", "openssh-server", "python3", "iproute2")
# Installed in the base: a fresh RHEL-like closed host (firewalld), Ansible's apt module, test tools.
BASE_PACKAGES = ("firewalld", "python3-apt", "bind9-dnsutils", "openssl", "ca-certificates")
# Only downloaded into the apt cache: the hosts have no internet, apply installs these offline.
MAIL_PACKAGES = (
    "postfix",
    "postfix-lmdb",
    "dovecot-core",
    "dovecot-imapd",
    "dovecot-pop3d",
    "dovecot-lmtpd",
    "opendkim",
    "opendkim-tools",
    # Certificates and MTA-STS: nginx answers HTTP-01 and serves the policy; certbot is the ACME client.
    "nginx",
    "certbot",
    "python3-certbot-nginx",
    # Mailbox features: Sieve/ManageSieve, rspamd, and fail2ban with its journal backend and nftables.
    "dovecot-sieve",
    "dovecot-managesieved",
    "rspamd",
    "fail2ban",
    "python3-systemd",
    "nftables",
)
# Bump when the build recipe changes in a way the package lists do not show.
BUILD_RECIPE = 2
# Timers that would reach for the network or grab the dpkg lock while Ansible runs.
MASKED_UNITS = ("apt-daily.timer", "apt-daily-upgrade.timer")
LAB_DOMAIN = "lab.test"
REQUIRED_TOOLS = {
    "systemd-nspawn": "systemd-container",
    "debootstrap": "debootstrap",
    "unbound": "unbound",
    "ip": "iproute2",
    "nsenter": "util-linux",
    "ssh": "openssh-client",
    "ssh-keygen": "openssh-client",
}
_HOST_RE = re.compile(r"^[a-z][a-z0-9-]{0,19}$")
_NET_LOCK = Path("/run/lock/mailprov-lab-net.lock")
BOOT_TIMEOUT = 90.0
# How long nspawn-made state (the container's init, its host0 veth) may take to appear; generous because a
# loaded 2-core machine was seen to need more than one look.
SPAWN_TIMEOUT = 30.0
T = TypeVar("T")
SSH_OPTIONS = (
    "-o",
    "StrictHostKeyChecking=no",
    "-o",
    "UserKnownHostsFile=/dev/null",
    "-o",
    "LogLevel=ERROR",
    "-o",
    "BatchMode=yes",
    "-o",
    "ConnectTimeout=10",
)


# ---------------------------------------------------------------------------------------------------------
# Pure helpers
# ---------------------------------------------------------------------------------------------------------


def lab_hash(lab_dir: Path) -> str:
    """Six hex digits identifying a lab directory (bridge and machine names derive from it)."""
    return hashlib.sha256(str(Path(lab_dir).resolve()).encode()).hexdigest()[:6]


def bridge_name(lab_dir: Path) -> str:
    """The lab's bridge interface name, `mp-<hash6>` (9 chars, within the kernel's 15)."""
    return f"mp-{lab_hash(lab_dir)}"


def machine_name(host: str, lab_dir: Path) -> str:
    """The nspawn machine name: unique per lab so veth names (`vb-<machine>`) never collide across labs."""
    return f"{host}-{lab_hash(lab_dir)}"


def check_host_name(name: str) -> str:
    """Validate a lab host name (it becomes a hostname, a directory and part of an interface name)."""
    if not _HOST_RE.match(name):
        raise UsageError(
            f"--host: {name!r} is not a valid lab host name "
            "(expected lowercase letters, digits and '-', starting with a letter, at most 20 characters)"
        )
    return name


def host_names(count: int | None, names: Iterable[str]) -> list[str]:
    """Host names from `--hosts N` (mx1..mxN) and `--host NAME` options, deduplicated, in order."""
    out: list[str] = []
    if count is not None:
        if count < 1 or count > 50:
            raise UsageError(f"--hosts: expected a number from 1 to 50, got {count}")
        out += [f"mx{i}" for i in range(1, count + 1)]
    for name in names:
        check_host_name(name)
        if name not in out:
            out.append(name)
    return out


def _candidate_subnets(seed: str) -> Iterator[ipaddress.IPv4Network]:
    # Start at a place derived from the lab so two labs rarely probe the same ranges; 10.200-10.254
    # keeps clear of the low 10.x ranges that VPNs and container runtimes like to use.
    count = 55 * 256
    start = int(hashlib.sha256(seed.encode()).hexdigest(), 16) % count
    for i in range(count):
        n = (start + i) % count
        yield ipaddress.IPv4Network(f"10.{200 + n // 256}.{n % 256}.0/24")


def allocate_subnet(taken: Iterable[ipaddress.IPv4Network], seed: str) -> ipaddress.IPv4Network:
    """The first 10.x.y.0/24 (from a seed-derived start) that overlaps none of the taken networks."""
    busy = [net for net in taken if net.prefixlen > 0]  # a default route overlaps everything: ignore it
    for candidate in _candidate_subnets(seed):
        if not any(candidate.overlaps(net) for net in busy):
            return candidate
    raise LabError("no free 10.x.y.0/24 range left for the lab bridge")


def taken_networks(addr_json: str, route_json: str, resolv_conf: str = "") -> list[ipaddress.IPv4Network]:
    """IPv4 networks in use on this machine, from `ip -j addr`, `ip -j route show table all`, resolv.conf."""
    nets: list[ipaddress.IPv4Network] = []
    for link in json.loads(addr_json or "[]"):
        for info in link.get("addr_info", []):
            if info.get("family") == "inet":
                nets.append(
                    ipaddress.IPv4Network(f"{info['local']}/{info.get('prefixlen', 32)}", strict=False)
                )
    for route in json.loads(route_json or "[]"):
        dst = route.get("dst", "")
        if dst in ("", "default") or ":" in dst:
            continue
        with contextlib.suppress(ValueError):
            nets.append(ipaddress.IPv4Network(dst if "/" in dst else f"{dst}/32", strict=False))
    for line in resolv_conf.splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[0] == "nameserver":
            with contextlib.suppress(ValueError):
                addr = ipaddress.ip_address(parts[1])
                if addr.version == 4:
                    nets.append(ipaddress.IPv4Network(f"{addr}/32"))
    return nets


def gateway(subnet: ipaddress.IPv4Network | str) -> str:
    """The bridge's own address in the subnet (.1): gateway and lab resolver."""
    return str(ipaddress.IPv4Network(subnet)[1])


def next_host_address(subnet: ipaddress.IPv4Network | str, used: Iterable[str]) -> str:
    """The lowest free host address from .2 upward."""
    net = ipaddress.IPv4Network(subnet)
    busy = set(used) | {gateway(net)}
    for addr in net.hosts():
        if str(addr) not in busy:
            return str(addr)
    raise LabError(f"no free address left in {net}")


def inventory_text(hosts: Iterable[tuple[str, str]], key_path: Path | str) -> str:
    """The Ansible INI inventory for the lab's hosts (name, address)."""
    lines = ["# managed by mailprov lab; rewritten by `mailprov lab up`", "[lab]"]
    lines += [f"{name} ansible_host={ip}" for name, ip in hosts]
    lines += [
        "",
        "[all:vars]",
        "ansible_user=root",
        f"ansible_ssh_private_key_file={key_path}",
        "ansible_python_interpreter=/usr/bin/python3",
        "ansible_ssh_common_args='-o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null'",
        # The hosts have no internet: apt installs from the cache pre-filled in the base image.
        "mailprov_apt_update_cache=false",
        "",
    ]
    return "\n".join(lines)


def reverse_zone(subnet: ipaddress.IPv4Network | str) -> str:
    """The in-addr.arpa zone of a /24 (no trailing dot)."""
    a, b, c, _ = str(ipaddress.IPv4Network(subnet).network_address).split(".")
    return f"{c}.{b}.{a}.in-addr.arpa"


def lab_records(hosts: dict[str, str], loads: dict[str, list[Record]]) -> list[Record]:
    """Every record the lab resolver serves: each host's `NAME.lab.test` A/PTR plus the loaded spec records.

    A host's default PTR gives way to a PTR loaded for its address (one PTR per address, as in real life).
    """
    loaded = [record for host in sorted(loads) for record in loads[host]]
    loaded_ptrs = {record.name for record in loaded if record.type == "PTR"}
    out: list[Record] = []
    for name, ip in hosts.items():
        fqdn = f"{name}.{LAB_DOMAIN}"
        out.append(Record(fqdn, "A", ip, 300))
        ptr = ipaddress.ip_address(ip).reverse_pointer
        if ptr not in loaded_ptrs:
            out.append(Record(ptr, "PTR", fqdn, 300))
    seen: set[Record] = set(out)
    for record in loaded:
        if record not in seen:
            seen.add(record)
            out.append(record)
    return out


def lab_zones(subnet: ipaddress.IPv4Network | str, records: Iterable[Record]) -> list[str]:
    """Static zones for the resolver: the lab domain, the bridge's reverse zone, and the records' zones."""
    return sorted({LAB_DOMAIN, reverse_zone(subnet), *zones_for(records)})


#: pebble's ACME (directory) and management ports, on the bridge address only.
ACME_PORT = 14000
ACME_MANAGEMENT_PORT = 15000
#: How long pebble may take to answer after it was started.
ACME_START_TIMEOUT = 30.0


def pebble_config(listen: str, certificate: Path, key: Path) -> dict[str, Any]:
    """pebble's configuration: both listeners on the lab bridge address, validation on the standard ports.

    HTTP-01 is checked on port 80 and TLS-ALPN-01 on 443 of the lab host, as a public CA would (pebble's
    own defaults, 5002/5001, suit clients on the same machine, not servers in their own network).
    """
    return {
        "pebble": {
            "listenAddress": f"{listen}:{ACME_PORT}",
            "managementListenAddress": f"{listen}:{ACME_MANAGEMENT_PORT}",
            "certificate": str(certificate),
            "privateKey": str(key),
            "httpPort": 80,
            "tlsPort": 443,
            "ocspResponderURL": "",
            "externalAccountBindingRequired": False,
        }
    }


def pebble_env(base: dict[str, str] | None = None) -> dict[str, str]:
    """pebble's environment: no artificial validation sleeps, no nonce rejections, real validation.

    PEBBLE_VA_ALWAYS_VALID is never passed on (even when set here), so every challenge is really fetched.
    """
    source = os.environ if base is None else base
    env = {key: value for key, value in source.items() if key in ("PATH", "LANG", "TZ")}
    env.setdefault("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
    env["PEBBLE_VA_NOSLEEP"] = "1"
    # pebble rejects 5 % of good nonces by default to exercise clients' retries; the lab wants determinism.
    env["PEBBLE_WFE_NONCEREJECT"] = "0"
    # Every order is validated for real (pebble reuses half of the valid authorizations by default).
    env["PEBBLE_AUTHZREUSE"] = "0"
    return env


def acme_directory_url(listen: str) -> str:
    """The ACME directory URL of the lab's pebble."""
    return f"https://{listen}:{ACME_PORT}/dir"


def make_listener_ca(directory: Path, listen: str) -> tuple[Path, Path, Path]:
    """A CA for pebble's own HTTPS listeners and a certificate for the bridge address: (ca, cert, key).

    Debian's pebble package ships no test certificate (upstream's test/certs/ is not packaged), so the lab
    makes its own: a fresh CA per lab whose key is never written, and a leaf for the bridge address.
    """
    import datetime as dt

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name(
        [x509.NameAttribute(NameOID.COMMON_NAME, f"mailprov lab pebble listener CA {listen}")]
    )
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(hours=1))
        .not_valid_after(now + dt.timedelta(days=3650))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True
        )
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    leaf = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, listen)]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(hours=1))
        .not_valid_after(now + dt.timedelta(days=3650))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(listen))]), critical=False
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    directory.mkdir(parents=True, exist_ok=True)
    ca_path, cert_path, key_path = (
        directory / "listener-ca.pem",
        directory / "listener.pem",
        directory / "listener.key",
    )
    _write_atomic(ca_path, ca.public_bytes(serialization.Encoding.PEM).decode())
    _write_atomic(cert_path, leaf.public_bytes(serialization.Encoding.PEM).decode())
    pem_key = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    _write_atomic(key_path, pem_key.decode(), mode=0o600)
    return ca_path, cert_path, key_path


def acme_bundle(root_pem: str, listener_ca_pem: str) -> str:
    """The lab's ACME CA bundle: the root pebble issues under, then the CA of pebble's HTTPS listeners."""
    if "-----BEGIN CERTIFICATE-----" not in root_pem:
        raise LabError("pebble's /roots/0 did not answer with a PEM certificate")
    return root_pem.strip() + "\n" + listener_ca_pem.strip() + "\n"


#: inotify instances one booted host uses (systemd, journald, udev...; measured ~12 on a Debian 12 host).
INOTIFY_PER_HOST = 16
INOTIFY_SYSCTL = Path("/proc/sys/fs/inotify/max_user_instances")


def raise_inotify_limit(hosts: int, sysctl: Path = INOTIFY_SYSCTL) -> None:
    """Raise fs.inotify.max_user_instances when the lab's hosts could exhaust it (never lowers it).

    All hosts run as root in the host's user namespace and share the default limit of 128, so about ten
    booted hosts exhaust it; then systemd units inside them fail to start in odd ways.
    """
    try:
        current = int(sysctl.read_text().strip())
        wanted = max(1024, 4 * INOTIFY_PER_HOST * hosts)
        if current < wanted:
            sysctl.write_text(f"{wanted}\n")
    except (OSError, ValueError):
        pass  # not writable here (e.g. an unprivileged container): hosts still boot, up to the old limit


def cache_key(distro: str) -> str:
    """Name of the cached base image: changes whenever the package lists or the recipe change."""
    recipe = json.dumps(
        [distro, SUITES[distro], BOOTSTRAP_PACKAGES, BASE_PACKAGES, MAIL_PACKAGES, MASKED_UNITS, BUILD_RECIPE]
    )
    return f"{distro}-{hashlib.sha256(recipe.encode()).hexdigest()[:12]}"


def _which(tool: str) -> str | None:
    # sudo and cron may drop /usr/sbin from PATH, where debootstrap and unbound live.
    found = shutil.which(tool)
    if found is None and Path("/usr/sbin", tool).exists():
        found = str(Path("/usr/sbin", tool))
    return found


def check_prerequisites(
    euid: Callable[[], int] | None = None, which: Callable[[str], str | None] | None = None
) -> None:
    """Refuse (exit 2) unless running as root with the tools the lab needs installed."""
    euid = euid or os.geteuid
    which = which or _which
    if euid() != 0:
        raise UsageError(
            "mailprov lab needs root (it creates bridges, mounts and containers): run it with sudo"
        )
    missing = [tool for tool in REQUIRED_TOOLS if which(tool) is None]
    if missing:
        packages = sorted({REQUIRED_TOOLS[tool] for tool in missing})
        raise UsageError(
            f"missing {', '.join(missing)}: install the Debian package(s) {' '.join(packages)} "
            f"(apt-get install {' '.join(packages)})"
        )


def check_distro(distro: str) -> str:
    """Accept the distros the lab can build here; refuse the rest with the reason."""
    if distro in SUPPORTED_DISTROS:
        return distro
    if distro.startswith(("el", "rhel", "alma", "rocky", "centos")):
        raise UsageError(
            f"--distro {distro}: RHEL-family roots need `dnf --installroot` and reachable RHEL-family "
            "repositories, which this machine does not have; use --distro debian12 "
            "(RHEL is covered by the rhel9/rhel10 profiles and the Vagrantfile)"
        )
    raise UsageError(f"--distro: unknown distro {distro!r} (expected one of: {', '.join(SUPPORTED_DISTROS)})")


# ---------------------------------------------------------------------------------------------------------
# System helpers
# ---------------------------------------------------------------------------------------------------------


def _run(
    argv: list[str], timeout: float = 60, check: bool = True, **kw: Any
) -> subprocess.CompletedProcess[str]:
    try:
        proc = subprocess.run(
            argv, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL, **kw
        )
    except subprocess.TimeoutExpired:
        raise LabError(f"{argv[0]} did not finish within {timeout:.0f}s: {' '.join(argv)}") from None
    except FileNotFoundError:
        raise LabError(f"{argv[0]} is not installed") from None
    if check and proc.returncode != 0:
        detail = (proc.stderr or proc.stdout).strip().splitlines()
        raise LabError(f"{' '.join(argv[:3])} failed: {detail[-1] if detail else f'exit {proc.returncode}'}")
    return proc


class NotReady(Exception):
    """Raised by a `wait_for` probe: not there yet, with the reason (reported if the wait times out)."""


def wait_for(
    what: str,
    probe: Callable[[], T | None],
    timeout: float,
    interval: float = 0.05,
    abort: Callable[[], str | None] | None = None,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> T:
    """Call `probe` until it returns a value (not None); LabError naming `what` once `timeout` s have passed.

    State another process creates (nspawn's veth, the container's init, sshd) is never looked for once:
    under load it appears late. `abort` returns a reason to stop early (e.g. the container exited).
    The probe always runs at least once, and once more at the deadline, so a slow poll is not a failure.
    """
    deadline = clock() + timeout
    last = ""
    while True:
        try:
            value = probe()
        except NotReady as exc:
            value, last = None, str(exc)
        if value is not None:
            return value
        reason = abort() if abort is not None else None
        if reason:
            raise LabError(f"{what}: {reason}")
        left = deadline - clock()
        if left <= 0:
            raise LabError(
                f"timed out after {timeout:g}s waiting for {what}" + (f" ({last})" if last else "")
            )
        sleep(min(interval, left))
        interval = min(interval * 1.5, 1.0)


def proc_start_time(pid: int) -> int | None:
    """The process start time (clock ticks since boot), to tell our process from a reused PID."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name may contain spaces and parentheses: fields start after the last ')'.
    return int(stat.rsplit(")", 1)[1].split()[19])


def pid_matches(pid: int | None, start: int | None) -> bool:
    """True when `pid` is alive (not a zombie) and is the very process recorded (same start time)."""
    return bool(pid) and start is not None and proc_start_time(pid or 0) == start and not _is_zombie(pid or 0)


def _cmdline(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return []


def _children(pid: int) -> list[int]:
    kids: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        with contextlib.suppress(OSError, ValueError):
            kids += [int(x) for x in (task / "children").read_text().split()]
    return kids


def container_init(nspawn_pid: int, timeout: float = SPAWN_TIMEOUT) -> int:
    """PID (in our namespace) of the container's init: the nspawn child living in another PID namespace."""
    own_pid_ns, own_net_ns = os.readlink("/proc/self/ns/pid"), os.readlink("/proc/self/ns/net")

    def probe() -> int | None:
        for kid in _children(nspawn_pid):
            with contextlib.suppress(OSError):
                if os.readlink(f"/proc/{kid}/ns/pid") != own_pid_ns and (
                    os.readlink(f"/proc/{kid}/ns/net") != own_net_ns
                ):
                    return kid
        return None

    def exited() -> str | None:
        if proc_start_time(nspawn_pid) is None or _is_zombie(nspawn_pid):
            return "systemd-nspawn exited before the container started"
        return None

    return wait_for(f"the container of systemd-nspawn (pid {nspawn_pid})", probe, timeout, abort=exited)


def container_veth(init_pid: int, timeout: float = SPAWN_TIMEOUT) -> str:
    """Host-side name of the veth whose peer is the container's host0, once nspawn has moved it in."""
    init_start = proc_start_time(init_pid)
    argv = ["nsenter", "-t", str(init_pid), "-n", "ip", "-j", "link", "show", "host0"]

    def probe() -> str:
        proc = _run(argv, timeout=20, check=False)
        if proc.returncode != 0:
            detail = (proc.stderr or proc.stdout).strip().splitlines()
            raise NotReady(detail[-1] if detail else f"ip link show host0: exit {proc.returncode}")
        peer = _peer_name(proc.stdout)
        if peer is None:
            raise NotReady("host0 is there but its host-side veth is not")
        return peer

    def exited() -> str | None:
        return None if pid_matches(init_pid, init_start) else "the container exited"

    return wait_for(f"host0 in the container (init pid {init_pid})", probe, timeout, abort=exited)


def _mounted(path: Path) -> bool:
    target = str(path.resolve())
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/mountinfo").read_text().splitlines():
            if line.split()[4].replace("\\040", " ") == target:
                return True
    return False


def _mounts_under(path: Path) -> list[str]:
    prefix = str(path.resolve()).rstrip("/") + "/"
    found = []
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/mountinfo").read_text().splitlines():
            mnt = line.split()[4].replace("\\040", " ")
            if mnt.startswith(prefix) or mnt == prefix.rstrip("/"):
                found.append(mnt)
    return sorted(found, key=len, reverse=True)


def _umount(path: str | Path) -> None:
    if _run(["umount", str(path)], timeout=30, check=False).returncode != 0:
        # Still busy (a process of ours just exiting): detach now, the kernel frees it when unused.
        _run(["umount", "-l", str(path)], timeout=30, check=False)


def _safe_rmtree(path: Path) -> None:
    """Remove a tree after unmounting anything mounted inside it (never recurse into a mount)."""
    if not path.exists():
        return
    for mnt in _mounts_under(path):
        _umount(mnt)
    if _mounts_under(path):
        raise LabError(f"cannot remove {path}: something is still mounted under it")
    shutil.rmtree(path, ignore_errors=True)


@contextlib.contextmanager
def _flock(path: Path, timeout: float, what: str) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as handle:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise LabError(f"{what} is busy (lock {path} held for over {timeout:.0f}s)") from None
                time.sleep(0.2)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _write_atomic(path: Path, text: str, mode: int = 0o644) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
    os.chmod(tmp, mode)
    os.replace(tmp, path)


# ---------------------------------------------------------------------------------------------------------
# Base image
# ---------------------------------------------------------------------------------------------------------


def cache_dir() -> Path:
    """Where base images are cached (shared by every lab on the machine)."""
    return Path(os.environ.get("MAILPROV_CACHE_DIR") or DEFAULT_CACHE_DIR)


def _chroot(root: Path, *args: str, timeout: float = 600) -> None:
    env = {
        "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
        "DEBIAN_FRONTEND": "noninteractive",
        "LANG": "C.UTF-8",
    }
    _run(["chroot", str(root), *args], timeout=timeout, env=env)


def build_base(rootfs: Path, distro: str) -> None:
    """Build a base root filesystem into `rootfs` (debootstrap, extra packages, mail packages downloaded)."""
    # The tool's default mirror on purpose: no mirror name is configured anywhere in mailprov.
    _run(
        ["debootstrap", f"--include={','.join(BOOTSTRAP_PACKAGES)}", SUITES[distro], str(rootfs)],
        timeout=900,
    )
    policy = rootfs / "usr/sbin/policy-rc.d"
    # Keep postinst scripts from starting daemons inside the build chroot.
    policy.write_text("#!/bin/sh\nexit 101\n")
    policy.chmod(0o755)
    proc_dir = rootfs / "proc"
    _run(["mount", "-t", "proc", "proc", str(proc_dir)])
    try:
        _chroot(rootfs, "apt-get", "update", "-q")
        _chroot(rootfs, "apt-get", "install", "-y", "-q", *BASE_PACKAGES)
        # With recommends, like a plain `apt install` (and Ansible's apt module) inside the host would ask.
        _chroot(rootfs, "apt-get", "install", "-y", "-q", "--download-only", *MAIL_PACKAGES)
    finally:
        _umount(proc_dir)
    policy.unlink()
    for unit in MASKED_UNITS:
        link = rootfs / "etc/systemd/system" / unit
        link.unlink(missing_ok=True)
        link.symlink_to("/dev/null")
    # Each host gets its own identity at first boot.
    (rootfs / "etc/machine-id").write_text("")
    (rootfs / "etc/hostname").write_text("localhost\n")


def ensure_base(distro: str, cache: Path | None = None, log: Callable[[str], None] | None = None) -> Path:
    """The cached base rootfs for `distro`, built once under a file lock and published by an atomic rename."""
    cache = cache or cache_dir()
    key = cache_key(distro)
    final = cache / key
    if (final / "rootfs/etc/os-release").exists():
        return final / "rootfs"
    cache.mkdir(parents=True, exist_ok=True)
    with _flock(cache / f".{key}.lock", timeout=1200, what=f"the base image build {key}"):
        if (final / "rootfs/etc/os-release").exists():  # another lab built it while we waited
            return final / "rootfs"
        for stale in cache.glob(f".build-{key}-*"):  # an interrupted build: we hold the lock, nobody uses it
            _safe_rmtree(stale)
        tmp = Path(tempfile.mkdtemp(dir=cache, prefix=f".build-{key}-"))
        if log:
            log(f"building the {distro} base image into {final} (once; a few minutes)")
        try:
            build_base(tmp / "rootfs", distro)
            os.rename(tmp, final)
        except BaseException:
            _safe_rmtree(tmp)
            raise
    return final / "rootfs"


# ---------------------------------------------------------------------------------------------------------
# The lab
# ---------------------------------------------------------------------------------------------------------


def default_lab_dir() -> Path:
    """The lab directory from MAILPROV_LAB_DIR, else /var/lib/mailprov/lab."""
    return Path(os.environ.get("MAILPROV_LAB_DIR") or DEFAULT_LAB_DIR)


def _record_to_dict(record: Record) -> dict[str, Any]:
    return asdict(record)


def _record_from_dict(data: dict[str, Any]) -> Record:
    return Record(data["name"], data["type"], data["value"], int(data.get("ttl", 3600)))


class Lab:
    """One lab: its state directory, bridge, DNS server and hosts."""

    def __init__(self, state_dir: Path | None = None, log: Callable[[str], None] | None = None) -> None:
        self.dir = Path(state_dir or default_lab_dir()).resolve()
        self.bridge = bridge_name(self.dir)
        self.log = log or (lambda message: None)

    # -- paths ------------------------------------------------------------------------------------------
    @property
    def state_path(self) -> Path:
        """The lab's state file."""
        return self.dir / "state.json"

    @property
    def inventory_path(self) -> Path:
        """The Ansible inventory `up` writes."""
        return self.dir / "inventory.ini"

    @property
    def key_path(self) -> Path:
        """The lab's SSH private key (root on every host accepts it)."""
        return self.dir / "ssh" / "id_ed25519"

    def _host_dir(self, name: str) -> Path:
        return self.dir / "hosts" / name

    def _dns(self, state: dict[str, Any]) -> DnsServer:
        return DnsServer(self.dir / "dns", listen=state["resolver"], port=53)

    # -- state ------------------------------------------------------------------------------------------
    def _load(self) -> dict[str, Any]:
        try:
            state: dict[str, Any] = json.loads(self.state_path.read_text())
        except FileNotFoundError:
            state = {}
        except (OSError, ValueError) as exc:
            raise LabError(
                f"lab state {self.state_path} is unreadable ({exc}); run `mailprov lab down`"
            ) from None
        state.setdefault("version", 1)
        state.setdefault("hosts", {})
        state.setdefault("loads", {})
        return state

    def _save(self, state: dict[str, Any]) -> None:
        _write_atomic(self.state_path, json.dumps(state, indent=2, sort_keys=True) + "\n")

    def _lock(self, timeout: float = 900) -> contextlib.AbstractContextManager[None]:
        return _flock(self.dir / ".lock", timeout=timeout, what=f"lab {self.dir}")

    @staticmethod
    def _host_running(info: dict[str, Any]) -> bool:
        return pid_matches(info.get("pid"), info.get("pid_start")) and pid_matches(
            info.get("init_pid"), info.get("init_start")
        )

    # -- public API -------------------------------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        """The documented status: resolver, inventory, hosts [{name, ip, ssh_user, ssh_key, state}]."""
        state = self._load()
        hosts = [
            {
                "name": name,
                "ip": info["ip"],
                "ssh_user": "root",
                "ssh_key": str(self.key_path),
                "state": "running" if self._host_running(info) else "stopped",
                "firewall": bool(info.get("firewall", True)),
            }
            for name, info in sorted(
                state["hosts"].items(), key=lambda item: ipaddress.ip_address(item[1]["ip"])
            )
        ]
        dns = state.get("dns") or {}
        acme = state.get("acme") or {}
        return {
            "resolver": state.get("resolver"),
            "inventory": str(self.inventory_path),
            "hosts": hosts,
            "lab_dir": str(self.dir),
            "bridge": self.bridge if state.get("subnet") else None,
            "subnet": state.get("subnet"),
            "dns": "running" if pid_matches(dns.get("pid"), dns.get("pid_start")) else "stopped",
            # pebble (`up --acme`): its directory URL and the CA bundle that trusts it and what it issues.
            "acme": (
                {
                    "directory": acme["directory"],
                    "ca_bundle": acme["ca_bundle"],
                    "state": "running" if pid_matches(acme.get("pid"), acme.get("pid_start")) else "stopped",
                }
                if acme.get("directory")
                else None
            ),
        }

    def up(
        self,
        hosts: list[str],
        firewall: bool = True,
        distro: str = "debian12",
        subnet: str | None = None,
        acme: bool = False,
    ) -> dict[str, Any]:
        """Start (building what is missing) the named hosts, additively; idempotent. Returns status().

        acme: also run pebble on the bridge address (kept running once started, like the hosts).
        """
        check_distro(distro)
        for name in hosts:
            check_host_name(name)
        check_prerequisites()
        if acme and _which("pebble") is None:
            raise UsageError(
                "--acme: pebble is not installed: install the Debian package pebble (apt-get install pebble)"
            )
        self.dir.mkdir(parents=True, exist_ok=True)
        with self._lock():
            state = self._load()
            wanted = list(dict.fromkeys([*state["hosts"], *hosts]))
            raise_inotify_limit(len(wanted))
            to_start = [name for name in wanted if not self._host_running(state["hosts"].get(name, {}))]
            self._ensure_network(state, subnet)
            self._ensure_key()
            if to_start:
                base = ensure_base(distro, log=self.log)
                for name in to_start:
                    # A host keeps the firewall choice it was created with: `up` is additive, never a change.
                    info = state["hosts"].setdefault(name, {"firewall": firewall, "distro": distro})
                    used = [h["ip"] for other, h in state["hosts"].items() if other != name and "ip" in h]
                    if "ip" not in info or ipaddress.ip_address(info["ip"]) not in ipaddress.ip_network(
                        state["subnet"]
                    ):
                        info["ip"] = next_host_address(state["subnet"], used)
                self._save(state)
            self._ensure_dns(state)
            if acme or state.get("acme"):
                self._ensure_acme(state)
            if to_start:
                self._start_hosts(state, to_start, base)
            self._write_inventory(state)
            self._save(state)
        return self.status()

    def dns_load(self, spec: Spec, host: str, extra: Iterable[Record] = ()) -> None:
        """Publish `mailprov dns` records for `spec` at `host`'s address (replacing its earlier load)."""
        check_prerequisites(which=lambda tool: tool)  # root: it restarts the resolver on the bridge
        with self._lock():
            state = self._load()
            info = state["hosts"].get(host)
            if info is None:
                raise UsageError(f"--host: unknown lab host {host!r} (lab hosts: {self._names(state)})")
            # `extra`: records only known once a host is provisioned (e.g. a DKIM key generated there).
            records = [*dns_records(spec, ipv4=info["ip"]), *extra]
            state["loads"][host] = [_record_to_dict(record) for record in records]
            self._save(state)
            if state.get("resolver"):
                self._ensure_dns(state)
                self._save(state)

    def down(self) -> None:
        """Stop every host and the DNS server this lab started, unmount and remove copies and the bridge."""
        check_prerequisites(which=lambda tool: tool)  # root only: tearing down needs no build tools
        if not self.dir.exists():
            return
        with self._lock(timeout=120):
            state = self._load()
            self._stop_hosts(state)
            self._stop_acme(state)
            self._stop_dns(state)
            self._delete_bridge()
            _safe_rmtree(self.dir / "hosts")
            _safe_rmtree(self.dir / "dns")
            _safe_rmtree(self.dir / "acme")
            _safe_rmtree(self.dir / "ssh")
            self.inventory_path.unlink(missing_ok=True)
            self.state_path.unlink(missing_ok=True)

    def ssh_argv(self, host: str) -> list[str]:
        """The ssh command line that logs into `host` as root."""
        info = self._host_info(host)
        return ["ssh", "-i", str(self.key_path), *SSH_OPTIONS, f"root@{info['ip']}"]

    def run(self, host: str, cmd: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        """Run a shell command on `host` over SSH; returns the completed process (text output)."""
        argv = [*self.ssh_argv(host), cmd]
        try:
            return subprocess.run(
                argv, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL
            )
        except subprocess.TimeoutExpired:
            raise LabError(f"{host}: `{cmd}` did not finish within {timeout:.0f}s") from None

    def ip(self, host: str) -> str:
        """The address of a lab host."""
        return str(self._host_info(host)["ip"])

    # -- internals --------------------------------------------------------------------------------------
    @staticmethod
    def _names(state: dict[str, Any]) -> str:
        return ", ".join(sorted(state["hosts"])) or "none; run `mailprov lab up`"

    def _host_info(self, host: str) -> dict[str, Any]:
        state = self._load()
        info = state["hosts"].get(host)
        if info is None:
            raise UsageError(f"unknown lab host {host!r} (lab hosts: {self._names(state)})")
        return dict(info)

    def _ensure_key(self) -> None:
        if self.key_path.exists():
            return
        self.key_path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        _run(
            [
                "ssh-keygen",
                "-q",
                "-t",
                "ed25519",
                "-N",
                "",
                "-C",
                f"mailprov-lab@{self.bridge}",
                "-f",
                str(self.key_path),
            ]
        )

    def _bridge_exists(self) -> bool:
        return Path(f"/sys/class/net/{self.bridge}/bridge").exists()

    def _ensure_network(self, state: dict[str, Any], requested: str | None) -> None:
        """Create the bridge with the recorded (or a newly allocated) subnet."""
        if requested:
            try:
                want = ipaddress.IPv4Network(requested)
            except ValueError:
                raise UsageError(
                    f"--subnet: expected an IPv4 /24 such as 10.210.3.0/24, got {requested!r}"
                ) from None
            if want.prefixlen != 24:
                raise UsageError(f"--subnet: expected a /24, got {requested!r}")
            if state.get("subnet") and state["subnet"] != str(want) and state["hosts"]:
                raise UsageError(
                    f"--subnet: this lab already uses {state['subnet']}; "
                    "run `mailprov lab down` first to change it"
                )
        if self._bridge_exists() and state.get("subnet"):
            addrs = _run(["ip", "-j", "-4", "addr", "show", "dev", self.bridge]).stdout
            if gateway(state["subnet"]) in addrs:
                return
        with _flock(_NET_LOCK, timeout=60, what="lab network allocation"):
            if self._bridge_exists():
                # Ours by name (derived from this lab's directory): a leftover of a crashed run.
                _run(["ip", "link", "del", self.bridge])
            taken = taken_networks(
                _run(["ip", "-j", "-4", "addr"]).stdout,
                _run(["ip", "-j", "-4", "route", "show", "table", "all"]).stdout,
                Path("/etc/resolv.conf").read_text() if Path("/etc/resolv.conf").exists() else "",
            )
            if requested:
                net = ipaddress.IPv4Network(requested)
                clash = sorted({other for other in taken if other.prefixlen > 0 and other.overlaps(net)})
                if clash:
                    # The widest overlapping network says the most (a route or interface subnet).
                    widest = min(clash, key=lambda other: other.prefixlen)
                    raise UsageError(f"bridge address range {net} is taken (overlaps {widest} in use here)")
            elif state.get("subnet") and not any(
                other.prefixlen > 0 and other.overlaps(ipaddress.IPv4Network(state["subnet"]))
                for other in taken
            ):
                net = ipaddress.IPv4Network(state["subnet"])
            else:
                net = allocate_subnet(taken, str(self.dir))
            if state.get("subnet") != str(net):
                # A new range: hosts get new addresses when they next boot.
                for info in state["hosts"].values():
                    info.pop("ip", None)
            state["subnet"] = str(net)
            state["resolver"] = gateway(net)
            state["bridge"] = self.bridge
            self._save(state)
            _run(["ip", "link", "add", self.bridge, "type", "bridge"])
            _run(["ip", "addr", "add", f"{gateway(net)}/24", "dev", self.bridge])
            # Nothing from the lab is routed anywhere: hosts reach each other and the resolver, no further.
            for knob, value in (
                (f"/proc/sys/net/ipv4/conf/{self.bridge}/forwarding", "0"),
                (f"/proc/sys/net/ipv6/conf/{self.bridge}/disable_ipv6", "1"),
            ):
                with contextlib.suppress(OSError):
                    Path(knob).write_text(value)
            _run(["ip", "link", "set", self.bridge, "up"])

    def _delete_bridge(self) -> None:
        if self._bridge_exists():
            _run(["ip", "link", "del", self.bridge], check=False)

    def _dns_records(self, state: dict[str, Any]) -> list[Record]:
        hosts = {name: info["ip"] for name, info in state["hosts"].items() if "ip" in info}
        loads = {host: [_record_from_dict(r) for r in recs] for host, recs in state["loads"].items()}
        return lab_records(hosts, loads)

    def _ensure_dns(self, state: dict[str, Any]) -> None:
        """Run unbound with the current records; restart it only when its configuration changes."""
        server = self._dns(state)
        records = self._dns_records(state)
        zones = lab_zones(state["subnet"], records)
        dns = state.get("dns") or {}
        digest = hashlib.sha256(json.dumps([state["resolver"], zones, [asdict(r) for r in records]]).encode())
        if pid_matches(dns.get("pid"), dns.get("pid_start")) and dns.get("digest") == digest.hexdigest():
            return
        self._stop_dns(state)
        server.start(records, zones)
        pid = server.pid
        if pid is None:
            raise LabError("the lab DNS server did not start")
        state["dns"] = {"pid": pid, "pid_start": proc_start_time(pid), "digest": digest.hexdigest()}

    def _stop_dns(self, state: dict[str, Any]) -> None:
        dns = state.pop("dns", None) or {}
        config = str(self.dir / "dns" / "unbound.conf")
        pids = [dns["pid"]] if pid_matches(dns.get("pid"), dns.get("pid_start")) else []
        # After a crash the record may be gone: an unbound running our own config file is ours too.
        pids += [pid for pid in self._pids_using(config) if pid not in pids]
        for pid in pids:
            if "unbound" in " ".join(_cmdline(pid)):
                _terminate(pid)
        (self.dir / "dns" / "unbound.pid").unlink(missing_ok=True)

    # -- ACME (pebble) ----------------------------------------------------------------------------------
    def _ensure_acme(self, state: dict[str, Any]) -> None:
        """Run pebble on the bridge address, resolving through the lab's unbound; keep one that runs.

        pebble makes a new root at every start, so a running pebble is never restarted (certificates it
        issued stay verifiable with the bundle); a dead one is started again and the bundle rewritten.
        """
        acme = state.get("acme") or {}
        if pid_matches(acme.get("pid"), acme.get("pid_start")):
            return
        self._stop_acme(state)
        listen = state["resolver"]
        workdir = self.dir / "acme"
        ca_path, cert_path, key_path = make_listener_ca(workdir, listen)
        config = workdir / "pebble-config.json"
        _write_atomic(config, json.dumps(pebble_config(listen, cert_path, key_path), indent=2) + "\n")
        log_path = workdir / "pebble.log"
        binary = _which("pebble") or "pebble"
        with open(log_path, "ab") as log:
            proc = subprocess.Popen(
                [binary, "-config", str(config), "-dnsserver", f"{listen}:53"],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                env=pebble_env(),
                cwd=workdir,
                start_new_session=True,  # outlives this command, like the hosts
                close_fds=True,
            )
        bundle = workdir / "ca-bundle.pem"
        state["acme"] = {
            "pid": proc.pid,
            "pid_start": proc_start_time(proc.pid),
            "config": str(config),
            "directory": acme_directory_url(listen),
            "ca_bundle": str(bundle),
        }
        self._save(state)  # recorded before anything can fail, so `down` finds it
        context = ssl.create_default_context(cafile=str(ca_path))
        roots_url = f"https://{listen}:{ACME_MANAGEMENT_PORT}/roots/0"
        directory_url = state["acme"]["directory"]

        # No proxy from the environment: pebble is on the lab bridge, reached directly.
        opener = urllib.request.build_opener(
            urllib.request.ProxyHandler({}), urllib.request.HTTPSHandler(context=context)
        )

        def fetch(url: str) -> str:
            try:
                with opener.open(url, timeout=2) as answer:
                    return str(answer.read(1024 * 1024).decode())
            except (OSError, ValueError) as exc:
                raise NotReady(f"{url}: {getattr(exc, 'reason', None) or exc}") from None

        def ready() -> str:
            fetch(directory_url)
            return fetch(roots_url)

        def exited() -> str | None:
            if pid_matches(proc.pid, state["acme"]["pid_start"]):
                return None
            proc.poll()
            tail = log_path.read_text(errors="replace").strip().splitlines()[-3:]
            return f"pebble exited ({'; '.join(tail) or 'no output'}; see {log_path})"

        root = wait_for(
            f"pebble on {listen}:{ACME_PORT}", ready, ACME_START_TIMEOUT, interval=0.1, abort=exited
        )
        _write_atomic(bundle, acme_bundle(root, ca_path.read_text()))

    def _stop_acme(self, state: dict[str, Any]) -> None:
        acme = state.get("acme") or {}
        config = str(self.dir / "acme" / "pebble-config.json")
        pids = [acme["pid"]] if pid_matches(acme.get("pid"), acme.get("pid_start")) else []
        # After a crash the record may be gone: a pebble running our own config file is ours too.
        pids += [pid for pid in self._pids_using(config) if pid not in pids]
        for pid in pids:
            if "pebble" in " ".join(_cmdline(pid)):
                _terminate(pid)
        for key in ("pid", "pid_start"):
            acme.pop(key, None)

    @staticmethod
    def _pids_using(path_fragment: str) -> list[int]:
        out = []
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                argv = _cmdline(int(entry.name))
                if any(path_fragment in arg for arg in argv):
                    out.append(int(entry.name))
        return out

    # -- hosts ------------------------------------------------------------------------------------------
    def _prepare_root(self, name: str, base: Path) -> Path:
        hdir = self._host_dir(name)
        root = hdir / "root"
        if _mounted(root):
            return root
        upper, work = hdir / "upper", hdir / "work"
        for d in (upper, work, root):
            d.mkdir(parents=True, exist_ok=True)
        copy_marker = hdir / "copied"
        if copy_marker.exists():
            return root
        opts = f"lowerdir={base},upperdir={upper},workdir={work}"
        if _run(["mount", "-t", "overlay", "overlay", "-o", opts, str(root)], check=False).returncode != 0:
            # No overlayfs here (e.g. the lab dir sits on an overlay itself): a reflink copy is cheap on
            # btrfs/xfs and a plain copy elsewhere.
            _run(["cp", "-a", "--reflink=auto", f"{base}/.", str(root)], timeout=600)
            copy_marker.write_text("")
        return root

    def _customise(self, root: Path, name: str, info: dict[str, Any], resolver: str) -> None:
        etc = root / "etc"
        (etc / "hostname").write_text(f"{name}\n")
        hosts = (
            f"127.0.0.1\tlocalhost\n{info['ip']}\t{name}.{LAB_DOMAIN} {name}\n"
            "::1\tlocalhost ip6-localhost ip6-loopback\n"
        )
        (etc / "hosts").write_text(hosts)
        resolv = etc / "resolv.conf"
        resolv.unlink(missing_ok=True)
        resolv.write_text(f"# lab resolver (mailprov)\nnameserver {resolver}\nsearch {LAB_DOMAIN}\n")
        machine_id = etc / "machine-id"
        if not machine_id.read_text().strip():
            machine_id.write_text(secrets.token_hex(16) + "\n")
        ssh_dir = root / "root/.ssh"
        ssh_dir.mkdir(mode=0o700, exist_ok=True)
        ssh_dir.chmod(0o700)
        pub = Path(f"{self.key_path}.pub").read_text()
        keys = ssh_dir / "authorized_keys"
        keys.write_text(pub)
        keys.chmod(0o600)
        mask = etc / "systemd/system/firewalld.service"
        if info.get("firewall", True):
            if mask.is_symlink():
                mask.unlink()
        elif not mask.is_symlink():
            mask.unlink(missing_ok=True)
            mask.symlink_to("/dev/null")

    def _spawn(self, name: str, root: Path) -> subprocess.Popen[bytes]:
        log = open(self._host_dir(name) / "console.log", "ab")  # noqa: SIM115 - handed to the child
        try:
            return subprocess.Popen(
                [
                    "systemd-nspawn",
                    "-q",
                    "-D",
                    str(root),
                    "-b",
                    "--register=no",
                    "--keep-unit",
                    f"--network-bridge={self.bridge}",
                    "-M",
                    machine_name(name, self.dir),
                    f"--hostname={name}",
                    "--resolv-conf=off",
                    "--timezone=off",
                    "--console=read-only",
                ],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                start_new_session=True,  # outlives this command; not in our terminal's process group
                close_fds=True,
            )
        finally:
            log.close()

    def _start_hosts(self, state: dict[str, Any], names: list[str], base: Path) -> None:
        self._stop_hosts(state, only=names)  # stale records or half-started leftovers of these hosts
        resolver = state["resolver"]
        started: list[str] = []
        for name in names:
            info = state["hosts"][name]
            # An existing overlay must keep the lower layer it was made on; a new host takes the current base.
            recorded = Path(info.get("base", ""))
            host_base = recorded if info.get("base") and recorded.is_dir() else base
            if host_base != base and not (self._host_dir(name) / "upper").exists():
                host_base = base
            root = self._prepare_root(name, host_base)
            info["base"] = str(host_base)
            self._customise(root, name, info, resolver)
            proc = self._spawn(name, root)
            info["pid"] = proc.pid
            info["pid_start"] = proc_start_time(proc.pid)
            self._save(state)  # recorded before anything can fail, so `down` finds it
            started.append(name)
        for name in started:
            info = state["hosts"][name]
            try:
                init = container_init(info["pid"])
            except LabError as exc:
                raise LabError(f"{name}: {exc} (see {self._host_dir(name) / 'console.log'})") from None
            info["init_pid"], info["init_start"] = init, proc_start_time(init)
            netns = ["nsenter", "-t", str(init), "-n"]
            try:
                info["veth"] = container_veth(init)
            except LabError as exc:
                raise LabError(f"{name}: {exc} (see {self._host_dir(name) / 'console.log'})") from None
            self._save(state)
            _run([*netns, "ip", "addr", "replace", f"{info['ip']}/24", "dev", "host0"], timeout=20)
            _run([*netns, "ip", "link", "set", "host0", "up"], timeout=20)
            _run([*netns, "ip", "route", "replace", "default", "via", resolver], timeout=20)
        with ThreadPoolExecutor(max_workers=max(1, len(started))) as pool:
            list(pool.map(lambda n: self._wait_ready(n, state["hosts"][n]), started))

    def _wait_ready(self, name: str, info: dict[str, Any], timeout: float = BOOT_TIMEOUT) -> None:
        """Wait until sshd answers and accepts the key, then until systemd finished booting (bounded)."""
        deadline = time.monotonic() + timeout

        def ssh_ok() -> bool:
            try:
                with socket.create_connection((info["ip"], 22), timeout=1) as sock:
                    sock.settimeout(2)
                    if not sock.recv(8).startswith(b"SSH-"):
                        raise NotReady("port 22 answers without an SSH banner")
                argv = ["ssh", "-i", str(self.key_path), *SSH_OPTIONS, f"root@{info['ip']}", "true"]
                proc = subprocess.run(argv, capture_output=True, text=True, timeout=15)
            except (OSError, subprocess.TimeoutExpired) as exc:
                raise NotReady(str(exc) or type(exc).__name__) from None
            if proc.returncode != 0:
                raise NotReady(f"ssh: {proc.stderr.strip() or f'exit {proc.returncode}'}")
            return True

        def stopped() -> str | None:
            if pid_matches(info.get("pid"), info.get("pid_start")):
                return None
            return f"the container stopped while booting (see {self._host_dir(name)}/console.log)"

        wait_for(f"{name}: sshd on {info['ip']}", ssh_ok, timeout, interval=0.2, abort=stopped)
        remaining = max(5, int(deadline - time.monotonic()))
        argv = [
            "ssh",
            "-i",
            str(self.key_path),
            *SSH_OPTIONS,
            f"root@{info['ip']}",
            f"timeout {remaining} systemctl is-system-running --wait",
        ]
        # running or degraded are both fine; the point is that boot-time units have settled.
        with contextlib.suppress(subprocess.TimeoutExpired):
            subprocess.run(argv, capture_output=True, timeout=remaining + 5)

    def _stop_hosts(self, state: dict[str, Any], only: list[str] | None = None) -> None:
        names = only if only is not None else list(state["hosts"])
        victims: list[int] = []
        for name in names:
            info = state["hosts"].get(name, {})
            if pid_matches(info.get("init_pid"), info.get("init_start")):
                # Throwaway hosts: killing init ends the whole container at once (a clean poweroff takes
                # seconds and buys nothing here); systemd-nspawn then cleans up its veth and exits.
                with contextlib.suppress(ProcessLookupError):
                    os.kill(info["init_pid"], signal.SIGKILL)
            if pid_matches(info.get("pid"), info.get("pid_start")):
                victims.append(info["pid"])
            # After a crash the records may be gone: an nspawn booting from our own host dir is ours too.
            host_root = str(self._host_dir(name) / "root")
            victims += [
                pid for pid in self._pids_using(host_root) if "systemd-nspawn" in " ".join(_cmdline(pid))
            ]
        if only is None:
            hosts_dir = str(self.dir / "hosts") + "/"
            victims += [
                pid for pid in self._pids_using(hosts_dir) if "systemd-nspawn" in " ".join(_cmdline(pid))
            ]
        for pid in dict.fromkeys(victims):
            for kid in _children(pid):  # the container init, in case the record was lost
                with contextlib.suppress(OSError):
                    if os.readlink(f"/proc/{kid}/ns/pid") != os.readlink("/proc/self/ns/pid"):
                        os.kill(kid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        for pid in dict.fromkeys(victims):
            _terminate(pid, grace=max(0.5, deadline - time.monotonic()), first=None)
        for name in names:
            info = state["hosts"].get(name, {})
            for key in ("pid", "pid_start", "init_pid", "init_start"):
                info.pop(key, None)
            root = self._host_dir(name) / "root"
            if _mounted(root):
                _umount(root)
        self._remove_stale_veths(state)

    def _remove_stale_veths(self, state: dict[str, Any], timeout: float = 5) -> None:
        """Wait for the veths of stopped hosts to go (the kernel frees them asynchronously), else delete them.

        A host restarted while its old `vb-` interface lingers would fail to boot ("File exists").
        Only `vb-` interfaces enslaved to this lab's own bridge and not used by a running host qualify.
        """
        brif = Path(f"/sys/class/net/{self.bridge}/brif")
        live: set[str | None] = set()
        for info in state["hosts"].values():
            if self._host_running(info):
                if not info.get("veth"):  # recorded by older versions only from now on: look it up
                    with contextlib.suppress(LabError):
                        info["veth"] = container_veth(info["init_pid"], timeout=5)
                live.add(info.get("veth"))
        if None in live:
            return  # a running host whose veth is unknown: deleting anything could cut it off
        deadline = time.monotonic() + timeout
        while True:
            stale = sorted(p.name for p in brif.glob("vb-*") if p.name not in live) if brif.exists() else []
            if not stale:
                break
            if time.monotonic() > deadline:
                for name in stale:
                    _run(["ip", "link", "del", name], check=False)
                break
            time.sleep(0.1)
        for info in state["hosts"].values():
            if not self._host_running(info):
                info.pop("veth", None)

    def _write_inventory(self, state: dict[str, Any]) -> None:
        hosts = sorted(
            ((name, info["ip"]) for name, info in state["hosts"].items()),
            key=lambda item: ipaddress.ip_address(item[1]),
        )
        text = inventory_text(hosts, self.key_path)
        if not self.inventory_path.exists() or self.inventory_path.read_text() != text:
            _write_atomic(self.inventory_path, text)


def _terminate(pid: int, grace: float = 5, first: signal.Signals | None = signal.SIGTERM) -> None:
    """Stop one of our processes: `first` (if any), wait up to `grace` seconds for it to go, then SIGKILL."""
    start = proc_start_time(pid)
    if start is None:
        return
    if first is not None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, first)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        with contextlib.suppress(ChildProcessError, OSError):
            os.waitpid(pid, os.WNOHANG)  # reap it if it happens to be our child
        if proc_start_time(pid) != start or _is_zombie(pid):
            return
        time.sleep(0.05)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


def _peer_name(link_json: str) -> str | None:
    """Host-side name of a container's veth, from `ip -j link show host0` run in the container."""
    try:
        index = json.loads(link_json)[0]["link_index"]
    except (ValueError, LookupError, TypeError):
        return None
    for iface in Path("/sys/class/net").iterdir():
        with contextlib.suppress(OSError, ValueError):
            if int((iface / "ifindex").read_text()) == index:
                return iface.name
    return None


def _is_zombie(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] == "Z"
