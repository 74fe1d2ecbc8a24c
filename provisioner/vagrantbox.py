"""The local Vagrant box `mailprov/debian12` (libvirt, qemu/TCG) and the libvirt daemons it needs.

Why libvirt with the `qemu` domain type: on our machines /dev/kvm exists but guests hang under nested KVM,
while TCG boots Debian's kernel in seconds; vagrant-libvirt is a Debian package, and libvirt networks are
plain bridges on this machine. (vagrant-lxc would share this machine's kernel, so firewalld, nftables and
a booted systemd would behave unlike any real VM.)

The box is built from the lab's cached debootstrap base (mail packages already downloaded into its apt
cache, so the VM installs them offline) plus Debian's cloud kernel, booted directly (kernel, initrd and
command line come with the box), and registered with `vagrant box add`. It is cached under
MAILPROV_CACHE_DIR/vagrant/<key>: the key changes when the base, the package lists or this recipe change.

Daemons: `daemons-up` starts virtlogd and libvirtd when nothing answers on libvirt's socket and records
them; `daemons-down` stops exactly those, once no libvirt domain is left. The Vagrantfile calls both.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from provisioner import lab, profiles
from provisioner.errors import LabError, UsageError

BOX_NAME = "mailprov/debian12"
PROVIDER = "libvirt"
DISTRO = "debian12"
# The cloud flavour: virtio drivers built in, no firmware or sound, a smaller initrd; boots faster under TCG.
KERNEL_PACKAGES = ("linux-image-cloud-amd64",)
BOX_PACKAGES = ("sudo",)
DISK_GB = 16
CMD_LINE = "root=/dev/vda rw console=ttyS0 net.ifnames=0 quiet"
# Bump when the recipe changes in a way the package lists do not show.
BOX_RECIPE = 3
LIBVIRT_SOCKET = Path("/var/run/libvirt/libvirt-sock")
STATE_FILE = Path("/run/mailprov/vagrant-daemons.json")
POOL_DIR = Path("/var/lib/libvirt/images")
BOOT_DIR = Path("/var/lib/libvirt/boot")

BOX_VAGRANTFILE = """\
# mailprov/debian12, built by `make vagrant-box` (provisioner/vagrantbox.py); key {key}.
# libvirt with the qemu domain type (TCG): nested KVM hangs guests on the machines this box is built for.
# Set MAILPROV_LIBVIRT_DRIVER=kvm where KVM works.
Vagrant.configure("2") do |config|
  config.vm.guest = :debian
  config.vm.provider :libvirt do |libvirt|
    libvirt.driver = ENV.fetch("MAILPROV_LIBVIRT_DRIVER", "qemu")
    # TCG cannot pass the host CPU through; qemu64 is what Debian's amd64 kernel needs.
    libvirt.cpu_mode = "custom"
    libvirt.cpu_model = "qemu64"
    # The VM has no internet and needs none (its apt cache holds the mail packages): isolated networks.
    libvirt.management_network_mode = "none"
    libvirt.disk_bus = "virtio"
    # A throwaway VM: guest flushes need not reach the disk.
    libvirt.disk_driver :cache => "unsafe"
    # Direct kernel boot. qemu runs as libvirt-qemu, which cannot enter root's box directory: libvirt's
    # own place for kernels, /var/lib/libvirt/boot, gets a copy named after the box key.
    here = File.expand_path(__dir__)
    boot = "{boot_dir}/mailprov-debian12-{key}"
    kernel, initrd = File.join(here, "vmlinuz"), File.join(here, "initrd.img")
    if File.writable?(File.dirname(boot)) || File.directory?(boot)
      begin
        require "fileutils"
        FileUtils.mkdir_p(boot)
        %w[vmlinuz initrd.img].each do |name|
          target = File.join(boot, name)
          FileUtils.cp(File.join(here, name), target) unless File.size?(target)
        end
        kernel, initrd = File.join(boot, "vmlinuz"), File.join(boot, "initrd.img")
      rescue SystemCallError
        # keep the box's own files: fine when qemu may read them
      end
    end
    libvirt.kernel = kernel
    libvirt.initrd = initrd
    libvirt.cmd_line = "{cmd_line}"
  end
end
"""


# ---------------------------------------------------------------------------------------------------------
# Pure helpers
# ---------------------------------------------------------------------------------------------------------


def download_packages(profile_name: str = DISTRO) -> list[str]:
    """Every package the role may install on the profile (base, DKIM, fail2ban, Sieve, antispam), sorted."""
    profile = profiles.get(profile_name)
    names: set[str] = set(lab.MAIL_PACKAGES)
    for field, value in vars(profile).items():
        if field == "packages" or field.endswith("_packages"):
            names.update(value)
    return sorted(names)


def box_key() -> str:
    """The box's cache key: the lab base key plus everything this recipe adds."""
    recipe = json.dumps(
        [
            lab.cache_key(DISTRO),
            KERNEL_PACKAGES,
            BOX_PACKAGES,
            download_packages(),
            DISK_GB,
            CMD_LINE,
            BOX_RECIPE,
            BOX_VAGRANTFILE,
        ]
    )
    return hashlib.sha256(recipe.encode()).hexdigest()[:12]


def box_vagrantfile(key: str) -> str:
    """The Vagrantfile shipped inside the box (provider defaults for the local, offline box)."""
    return (
        BOX_VAGRANTFILE.replace("{key}", key)
        .replace("{boot_dir}", str(BOOT_DIR))
        .replace("{cmd_line}", CMD_LINE)
    )


def box_metadata() -> dict[str, Any]:
    """vagrant-libvirt's metadata.json for the box."""
    return {"provider": PROVIDER, "format": "qcow2", "virtual_size": DISK_GB}


def vagrant_home() -> Path:
    """Vagrant's data directory (VAGRANT_HOME, else ~/.vagrant.d)."""
    return Path(os.environ.get("VAGRANT_HOME") or Path.home() / ".vagrant.d")


def registered_box_dir(name: str = BOX_NAME) -> Path:
    """Where `vagrant box add` unpacks the (unversioned, so version 0) box."""
    return vagrant_home() / "boxes" / name.replace("/", "-VAGRANTSLASH-") / "0" / PROVIDER


def registered_key(name: str = BOX_NAME) -> str | None:
    """The key of the registered box, if it is one of ours."""
    with contextlib.suppress(OSError, ValueError, TypeError):
        return str(json.loads((registered_box_dir(name) / "mailprov-box.json").read_text())["key"])
    return None


def pool_volume_prefix(name: str = BOX_NAME) -> str:
    """vagrant-libvirt's name for the box image it uploads into the storage pool (version 0)."""
    return f"{name.replace('/', '-VAGRANTSLASH-')}_vagrant_box_image_0"


# ---------------------------------------------------------------------------------------------------------
# Build
# ---------------------------------------------------------------------------------------------------------


def _vagrant_public_key() -> str:
    """Vagrant's insecure public key (Vagrant swaps in a generated key pair on the first `vagrant up`)."""
    candidates = sorted(Path("/usr/share/rubygems-integration/all/gems").glob("vagrant-*/keys/vagrant.pub"))
    candidates += [Path("/opt/vagrant/embedded/gems/gems/vagrant/keys/vagrant.pub")]
    for path in candidates:
        if path.is_file():
            return path.read_text().strip() + "\n"
    raise LabError("vagrant's insecure public key (keys/vagrant.pub) not found: install the vagrant package")


def _customise(root: Path) -> None:
    etc = root / "etc"
    # Pass 0: the kernel mounts the root read-write (cmd_line), so a boot-time fsck could only be skipped.
    (etc / "fstab").write_text("/dev/vda / ext4 errors=remount-ro 0 0\n")
    # Nothing in the VM waits for "network online"; under TCG that wait alone costs many seconds.
    wait_online = etc / "systemd/system/systemd-networkd-wait-online.service"
    wait_online.unlink(missing_ok=True)
    wait_online.symlink_to("/dev/null")
    (etc / "hostname").write_text("debian12\n")
    (etc / "hosts").write_text("127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n")
    # No resolver: the VM is offline, and a refused query fails at once where an unreachable one waits.
    resolv = etc / "resolv.conf"
    resolv.unlink(missing_ok=True)
    resolv.write_text("nameserver 127.0.0.1\n")
    (etc / "machine-id").write_text("")
    network = etc / "systemd/network/80-mailprov-dhcp.network"
    network.parent.mkdir(parents=True, exist_ok=True)
    # Vagrant writes 50-vagrant-*.network for the private network, which wins over this catch-all.
    network.write_text("[Match]\nName=eth*\n\n[Network]\nDHCP=ipv4\n")
    # Each VM makes its own SSH host keys on first boot.
    for key in etc.glob("ssh/ssh_host_*"):
        key.unlink()
    unit = etc / "systemd/system/mailprov-ssh-hostkeys.service"
    unit.write_text(
        "[Unit]\nDescription=SSH host keys for this VM\nBefore=ssh.service\n"
        "ConditionPathExists=!/etc/ssh/ssh_host_ed25519_key\n\n"
        "[Service]\nType=oneshot\nExecStart=/usr/bin/ssh-keygen -A\n\n"
        "[Install]\nWantedBy=multi-user.target\n"
    )
    # A throwaway CI VM: dpkg without fsync and no man-db index rebuild, the slowest parts of an apt install
    # under TCG that buy nothing here.
    (etc / "dpkg/dpkg.cfg.d/mailprov-unsafe-io").write_text("force-unsafe-io\n")
    (root / "var/lib/man-db/auto-update").unlink(missing_ok=True)
    sudoers = etc / "sudoers.d/vagrant"
    sudoers.write_text("vagrant ALL=(ALL) NOPASSWD: ALL\n")
    sudoers.chmod(0o440)


def build_rootfs(root: Path) -> None:
    """Turn a copy of the lab base into the box's root: kernel, sudo, vagrant user, networkd, mail packages."""
    policy = root / "usr/sbin/policy-rc.d"
    policy.write_text("#!/bin/sh\nexit 101\n")
    policy.chmod(0o755)
    mounts = [(root / "proc", ["-t", "proc", "proc"]), (root / "dev", ["--bind", "/dev"])]
    done: list[Path] = []
    try:
        for target, args in mounts:
            lab._run(["mount", *args, str(target)])
            done.append(target)
        lab._chroot(root, "apt-get", "update", "-q")
        lab._chroot(
            root, "apt-get", "install", "-y", "-q", "--no-install-recommends", *KERNEL_PACKAGES, *BOX_PACKAGES
        )
        # Fresh lists above: the cache must hold the versions they name (with recommends, a superset).
        lab._chroot(root, "apt-get", "install", "-y", "-q", "--download-only", *download_packages())
        lab._chroot(root, "useradd", "-m", "-s", "/bin/bash", "vagrant")
        lab._chroot(root, "systemctl", "enable", "systemd-networkd.service")
    finally:
        for target in reversed(done):
            lab._umount(target)
    policy.unlink()
    _customise(root)
    lab._chroot(root, "systemctl", "enable", "mailprov-ssh-hostkeys.service")
    ssh = root / "home/vagrant/.ssh"
    ssh.mkdir(mode=0o700, exist_ok=True)
    (ssh / "authorized_keys").write_text(_vagrant_public_key())
    (ssh / "authorized_keys").chmod(0o600)
    lab._chroot(root, "chown", "-R", "vagrant:vagrant", "/home/vagrant/.ssh")


def build_box(out: Path, key: str, log: Any = print) -> Path:
    """Build `out`/mailprov-debian12.box (tar of metadata.json, Vagrantfile, box.img, kernel, initrd)."""
    base = lab.ensure_base(DISTRO, log=log)
    out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".build-vagrant-{key}-"))
    try:
        root = work / "rootfs"
        log(f"vagrant-box: copying the lab base {base}")
        lab._run(["cp", "-a", "--reflink=auto", f"{base}/.", f"{root}/"], timeout=900)
        log("vagrant-box: installing the kernel and the vagrant user")
        build_rootfs(root)
        boot = root / "boot"
        kernels = sorted(boot.glob("vmlinuz-*"))
        initrds = sorted(boot.glob("initrd.img-*"))
        if not kernels or not initrds:
            raise LabError("vagrant-box: the kernel package left no /boot/vmlinuz-* and initrd.img-*")
        box = work / "box"
        box.mkdir()
        shutil.copy(kernels[-1], box / "vmlinuz")
        shutil.copy(initrds[-1], box / "initrd.img")
        for path in (box / "vmlinuz", box / "initrd.img"):
            path.chmod(0o644)
        log("vagrant-box: making the ext4 disk and the qcow2 image")
        raw = work / "disk.raw"
        lab._run(
            ["mkfs.ext4", "-q", "-F", "-L", "mailprov-root", "-d", str(root), str(raw), f"{DISK_GB}G"],
            timeout=900,
        )
        lab._safe_rmtree(root)
        # Compressed: vagrant-libvirt streams the image into the storage pool on first use, a third of the bytes.
        lab._run(["qemu-img", "convert", "-c", "-O", "qcow2", str(raw), str(box / "box.img")], timeout=1800)
        raw.unlink()
        (box / "metadata.json").write_text(json.dumps(box_metadata()) + "\n")
        (box / "Vagrantfile").write_text(box_vagrantfile(key))
        (box / "mailprov-box.json").write_text(
            json.dumps(
                {"key": key, "offline": True, "built": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
            )
            + "\n"
        )
        target = out / "mailprov-debian12.box"
        lab._run(["tar", "-C", str(box), "-cf", f"{target}.tmp", "."], timeout=900)
        os.replace(f"{target}.tmp", target)
        return target
    finally:
        lab._safe_rmtree(work)


def _remove_stale_volumes(log: Any) -> None:
    """Drop the pool copy vagrant-libvirt made of an older box with the same name (it would be reused)."""
    stale = sorted(POOL_DIR.glob(pool_volume_prefix() + "*")) if POOL_DIR.is_dir() else []
    for volume in stale:
        log(f"vagrant-box: removing the stale pool volume {volume.name}")
        if libvirt_running():
            subprocess.run(
                ["virsh", "-c", "qemu:///system", "vol-delete", "--pool", "default", volume.name],
                capture_output=True,
                timeout=60,
                check=False,
            )
        volume.unlink(missing_ok=True)
    for old in BOOT_DIR.glob("mailprov-debian12-*") if BOOT_DIR.is_dir() else []:
        shutil.rmtree(old, ignore_errors=True)


def ensure_box(force: bool = False, log: Any = print) -> str:
    """Build (when the key changed) and register the box; returns the provider name."""
    if os.geteuid() != 0:
        raise UsageError("make vagrant-box needs root (debootstrap, chroot, mounts): run it with sudo")
    for tool, package in (("qemu-img", "qemu-utils"), ("mkfs.ext4", "e2fsprogs"), ("vagrant", "vagrant")):
        if lab._which(tool) is None:
            raise UsageError(
                f"missing {tool}: install the Debian package {package} (or run scripts/setup.sh)"
            )
    key = box_key()
    cache = lab.cache_dir() / "vagrant"
    cache.mkdir(parents=True, exist_ok=True)
    out = cache / key
    with lab._flock(cache / ".build.lock", timeout=2400, what="the vagrant box build"):
        target = out / "mailprov-debian12.box"
        if force or not target.exists():
            for stale in cache.glob(".build-vagrant-*"):
                lab._safe_rmtree(stale)
            log(f"vagrant-box: building {BOX_NAME} ({key}) into {out}")
            build_box(out, key, log=log)
        else:
            log(f"vagrant-box: cached {target}")
        if force or registered_key() != key:
            _remove_stale_volumes(log)
            log(f"vagrant-box: vagrant box add --force --name {BOX_NAME}")
            lab._run(
                ["vagrant", "box", "add", "--force", "--name", BOX_NAME, "--provider", PROVIDER, str(target)],
                timeout=900,
            )
        else:
            log(f"vagrant-box: {BOX_NAME} is registered ({key})")
        for old in cache.iterdir():
            if old.is_dir() and old.name != key and not old.name.startswith("."):
                shutil.rmtree(old, ignore_errors=True)
    return PROVIDER


# ---------------------------------------------------------------------------------------------------------
# Daemons
# ---------------------------------------------------------------------------------------------------------


def libvirt_running(sock: Path = LIBVIRT_SOCKET) -> bool:
    """True when something accepts connections on libvirtd's system socket."""
    with contextlib.suppress(OSError), socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
        conn.settimeout(2)
        conn.connect(str(sock))
        return True
    return False


def _load_state() -> dict[str, Any]:
    with contextlib.suppress(OSError, ValueError):
        data = json.loads(STATE_FILE.read_text())
        if isinstance(data, dict):
            return data
    return {}


def _daemon_pid(pidfile: Path, name: str, timeout: float = 30) -> int:
    def probe() -> int | None:
        with contextlib.suppress(OSError, ValueError):
            pid = int(pidfile.read_text().strip())
            if name in " ".join(lab._cmdline(pid)):
                return pid
        return None

    return lab.wait_for(f"{name} to write {pidfile}", probe, timeout, interval=0.1)


def daemons_up(log: Any = print) -> None:
    """Start virtlogd and libvirtd unless libvirt already answers; record what was started."""
    if libvirt_running():
        return
    if os.geteuid() != 0:
        raise UsageError(
            "libvirtd is not running and starting it needs root (or start it as your system does)"
        )
    for tool in ("libvirtd", "virtlogd"):
        if lab._which(tool) is None:
            raise UsageError(f"missing {tool}: install libvirt-daemon (scripts/setup.sh)")
    for directory in ("/var/log/libvirt", "/var/run/libvirt", "/var/lib/libvirt/images", str(BOOT_DIR)):
        Path(directory).mkdir(parents=True, exist_ok=True)
    state = _load_state()
    started: list[dict[str, Any]] = []
    for name, pidfile in (
        ("virtlogd", Path("/var/run/virtlogd.pid")),
        ("libvirtd", Path("/var/run/libvirtd.pid")),
    ):
        running = False
        with contextlib.suppress(OSError, ValueError):
            running = name in " ".join(lab._cmdline(int(pidfile.read_text().strip())))
        if running:
            continue
        pidfile.unlink(missing_ok=True)
        lab._run([lab._which(name) or name, "-d"], timeout=60)
        pid = _daemon_pid(pidfile, name)
        started.append({"name": name, "pid": pid, "start": lab.proc_start_time(pid)})
        log(f"vagrant: started {name} (pid {pid})")
    lab.wait_for("libvirtd's socket", lambda: True if libvirt_running() else None, 30, interval=0.1)
    if started:
        state["started"] = [*state.get("started", []), *started]
        STATE_FILE.parent.mkdir(parents=True, exist_ok=True)
        lab._write_atomic(STATE_FILE, json.dumps(state) + "\n")


def _domains_left() -> list[str]:
    proc = subprocess.run(
        ["virsh", "-c", "qemu:///system", "list", "--all", "--name"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    return [line.strip() for line in proc.stdout.splitlines() if line.strip()]


def daemons_down(log: Any = print) -> None:
    """Stop the daemons `daemons_up` started, once no libvirt domain is defined any more."""
    state = _load_state()
    started = state.get("started") or []
    if not started:
        return
    if libvirt_running():
        left = _domains_left()
        if left:
            log(f"vagrant: libvirtd keeps running: domains {', '.join(left)} are still defined")
            return
    # libvirtd first: it holds virtlogd's socket.
    for entry in sorted(started, key=lambda e: e["name"] != "libvirtd"):
        if lab.pid_matches(entry.get("pid"), entry.get("start")):
            lab._terminate(int(entry["pid"]), grace=15, first=signal.SIGTERM)
            log(f"vagrant: stopped {entry['name']} (pid {entry['pid']})")
    STATE_FILE.unlink(missing_ok=True)


# ---------------------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    """`python3 -m provisioner.vagrantbox build|daemons-up|daemons-down|key`."""
    parser = argparse.ArgumentParser(
        prog="python3 -m provisioner.vagrantbox", description=__doc__.split("\n")[0]
    )
    parser.add_argument("command", choices=("build", "daemons-up", "daemons-down", "key"))
    parser.add_argument("--force", action="store_true", help="build: rebuild and re-register the box")
    args = parser.parse_args(argv)

    def log(message: str) -> None:
        print(message, flush=True)

    try:
        if args.command == "build":
            provider = ensure_box(force=args.force, log=log)
            print(f"provider: {provider}", flush=True)
        elif args.command == "daemons-up":
            daemons_up(log=log)
        elif args.command == "daemons-down":
            daemons_down(log=log)
        else:
            print(box_key())
    except UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except LabError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
