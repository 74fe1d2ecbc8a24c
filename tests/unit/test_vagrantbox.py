"""provisioner.vagrantbox without root or VMs: the cache key, the package list, the box files, the registry
lookup and the daemon bookkeeping. The real build, boot and teardown are in tests/e2e/test_vagrant.py."""

from __future__ import annotations

import json
import socket
import subprocess
from pathlib import Path

import pytest

from provisioner import lab, profiles, vagrantbox


def test_download_list_covers_every_package_the_role_can_install() -> None:
    """Base, DKIM, fail2ban, Sieve and antispam packages of debian12, plus the lab's mail packages."""
    names = vagrantbox.download_packages()
    profile = profiles.get("debian12")
    for group in (
        profile.packages,
        profile.dkim_packages,
        profile.fail2ban_packages,
        profile.sieve_packages,
        profile.antispam_packages,
        lab.MAIL_PACKAGES,
    ):
        assert set(group) <= set(names)
    assert names == sorted(set(names))


def test_box_key_follows_its_inputs(monkeypatch: pytest.MonkeyPatch) -> None:
    """Same inputs, same key; the kernel package, the command line or the lab base change it."""
    key = vagrantbox.box_key()
    assert key == vagrantbox.box_key() and len(key) == 12
    monkeypatch.setattr(vagrantbox, "KERNEL_PACKAGES", ("linux-image-amd64",))
    other = vagrantbox.box_key()
    assert other != key
    monkeypatch.setattr(vagrantbox, "CMD_LINE", vagrantbox.CMD_LINE + " debug")
    assert vagrantbox.box_key() not in (key, other)
    monkeypatch.setattr(lab, "BASE_PACKAGES", (*lab.BASE_PACKAGES, "vim"))
    assert vagrantbox.box_key() not in (key, other)


def test_box_vagrantfile_names_kernel_initrd_and_command_line() -> None:
    """The box's own Vagrantfile: qemu driver by default, direct kernel boot from the key's boot copy."""
    text = vagrantbox.box_vagrantfile("abc123def456")
    assert "{" + "key}" not in text and "{" + "cmd_line}" not in text
    assert '"/var/lib/libvirt/boot/mailprov-debian12-abc123def456"' in text
    assert f'libvirt.cmd_line = "{vagrantbox.CMD_LINE}"' in text
    assert 'ENV.fetch("MAILPROV_LIBVIRT_DRIVER", "qemu")' in text
    assert 'libvirt.management_network_mode = "none"' in text
    assert vagrantbox.box_metadata() == {"provider": "libvirt", "format": "qcow2", "virtual_size": 16}


def test_box_vagrantfile_is_valid_ruby(tmp_path: Path) -> None:
    """`ruby -c` accepts the generated box Vagrantfile (vagrant loads it for every command)."""
    ruby = subprocess.run(["which", "ruby"], capture_output=True, text=True)
    if ruby.returncode != 0:
        pytest.skip("ruby is not installed (it comes with the vagrant package)")
    path = tmp_path / "Vagrantfile"
    path.write_text(vagrantbox.box_vagrantfile("0123456789ab"))
    proc = subprocess.run(["ruby", "-c", str(path)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def test_registered_key_reads_the_box_marker(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The registered box is ours when its mailprov-box.json names a key; absent or garbled: None."""
    monkeypatch.setenv("VAGRANT_HOME", str(tmp_path))
    assert vagrantbox.registered_key() is None
    box = tmp_path / "boxes/mailprov-VAGRANTSLASH-debian12/0/libvirt"
    assert vagrantbox.registered_box_dir() == box
    box.mkdir(parents=True)
    (box / "mailprov-box.json").write_text("{not json")
    assert vagrantbox.registered_key() is None
    (box / "mailprov-box.json").write_text(json.dumps({"key": "feedfacecafe", "offline": True}))
    assert vagrantbox.registered_key() == "feedfacecafe"


def test_pool_volume_prefix_matches_vagrant_libvirt_naming() -> None:
    """vagrant-libvirt names the uploaded image BOX-with-VAGRANTSLASH_vagrant_box_image_VERSION_..."""
    assert vagrantbox.pool_volume_prefix() == "mailprov-VAGRANTSLASH-debian12_vagrant_box_image_0"


def test_libvirt_running_needs_a_listener(tmp_path: Path) -> None:
    """No socket file, or a socket nobody listens on: not running; a listening socket: running."""
    path = tmp_path / "sock"
    assert not vagrantbox.libvirt_running(path)
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        server.bind(str(path))
        assert not vagrantbox.libvirt_running(path)
        server.listen(1)
        assert vagrantbox.libvirt_running(path)
    finally:
        server.close()


def test_daemons_down_without_a_record_touches_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Daemons this code did not start (no record) are never stopped."""
    monkeypatch.setattr(vagrantbox, "STATE_FILE", tmp_path / "none.json")
    called: list[object] = []
    monkeypatch.setattr(lab, "_terminate", lambda *args, **kw: called.append(args))
    vagrantbox.daemons_down(log=lambda message: None)
    assert called == []


def test_daemons_down_stops_only_live_recorded_processes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A recorded PID whose start time no longer matches (reused PID) is left alone; the record goes."""
    state = tmp_path / "state.json"
    proc = subprocess.Popen(["sleep", "30"])
    try:
        start = lab.proc_start_time(proc.pid)
        state.write_text(
            json.dumps(
                {
                    "started": [
                        {"name": "virtlogd", "pid": proc.pid, "start": start},
                        {"name": "libvirtd", "pid": proc.pid, "start": (start or 0) + 1},
                    ]
                }
            )
        )
        monkeypatch.setattr(vagrantbox, "STATE_FILE", state)
        monkeypatch.setattr(vagrantbox, "libvirt_running", lambda sock=None: False)
        vagrantbox.daemons_down(log=lambda message: None)
        assert not lab.pid_matches(proc.pid, start)  # terminated by the matching record
        assert not state.exists()
    finally:
        if proc.poll() is None:
            proc.kill()


def test_build_refuses_without_root(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`make vagrant-box` as a normal user: one line, exit 2, nothing built."""
    monkeypatch.setattr(vagrantbox.os, "geteuid", lambda: 1000)
    assert vagrantbox.main(["build"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "needs root" in err[0]
