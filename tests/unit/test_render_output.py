"""`render --out DIR`: the tree is swapped in whole, never written through a symlink; bad --out writes nothing.

Hostile cases run through the real CLI (CliRunner) and compare a snapshot of the whole scratch area before
and after: exit 2, one line on stderr naming --out, no traceback, not one byte changed anywhere.
Root can write almost everything, so "not writable" is tested with what stops root too: an immutable
directory (chattr +i) and a read-only bind mount; both skip (with the reason) where they cannot be set up.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from typer.testing import CliRunner

from provisioner import outdir, profiles, render, spec
from provisioner.cli import app
from provisioner.errors import UsageError

GOLDEN = Path(__file__).resolve().parent.parent / "golden"
MINIMAL = GOLDEN / "minimal" / "mail.yml"
runner = CliRunner()


@pytest.fixture(scope="module")
def files() -> dict[str, str]:
    return render.render(spec.load(MINIMAL), profiles.get("debian12"))


def snapshot(root: Path) -> dict[str, tuple[str, ...]]:
    """Every path below root with its kind, mode and content (or link target): any write shows up."""
    out: dict[str, tuple[str, ...]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            st = path.lstat()
            rel = str(path.relative_to(root))
            if stat.S_ISLNK(st.st_mode):
                out[rel] = ("link", os.readlink(path))
            elif stat.S_ISREG(st.st_mode):
                out[rel] = ("file", oct(st.st_mode), path.read_bytes().hex())
            else:
                out[rel] = ("other", oct(st.st_mode))
    return out


def tree_files(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): p.read_text() for p in root.rglob("*") if p.is_file()}


# -- the normal path ------------------------------------------------------------------------------------


def test_new_directory_gets_exactly_the_files(files: dict[str, str], tmp_path: Path) -> None:
    out = tmp_path / "a" / "b" / "build"  # missing parents are created
    written = render.write_tree(files, out)
    assert written == [out / rel for rel in sorted(files)]
    assert tree_files(out) == files
    assert sorted(p.name for p in out.parent.iterdir()) == ["build"], "no temporary sibling left behind"
    assert stat.S_IMODE((out / "etc/dovecot/users").stat().st_mode) == 0o600, "password hashes stay private"


def test_earlier_output_is_replaced_whole(files: dict[str, str], tmp_path: Path) -> None:
    out = tmp_path / "build"
    dkim_files = render.render(spec.load(GOLDEN / "dkim" / "mail.yml"), profiles.get("debian12"))
    assert set(dkim_files) - set(files), "the dkim case renders files the minimal one does not"
    render.write_tree(dkim_files, out)
    (out / "etc/postfix/main.cf").write_text("edited by hand\n")
    render.write_tree(files, out)
    assert tree_files(out) == files, "files of the earlier render that this one lacks are gone"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["build"]


def test_existing_empty_directory_keeps_its_mode(files: dict[str, str], tmp_path: Path) -> None:
    out = tmp_path / "build"
    out.mkdir(mode=0o750)
    out.chmod(0o750)
    render.write_tree(files, out)
    assert stat.S_IMODE(out.stat().st_mode) == 0o750
    assert tree_files(out) == files


def test_cli_check_judges_the_tree_it_wrote(tmp_path: Path) -> None:
    """A stale, broken main.cf from an earlier render must not be what --check judges (or what remains)."""
    if not (shutil.which("postconf") or Path("/usr/sbin/postconf").exists()) or not shutil.which("doveconf"):
        pytest.skip("postfix/dovecot not installed")
    out = tmp_path / "build"
    (out / "etc/postfix").mkdir(parents=True)
    (out / "etc/postfix/main.cf").write_text("smtpd_tls_security_levle = may\n")
    result = runner.invoke(app, ["render", str(MINIMAL), "-o", str(out), "--check"])
    assert result.exit_code == 0, result.output
    assert "postconf: ok" in result.stdout and "doveconf: ok" in result.stdout
    assert "levle" not in (out / "etc/postfix/main.cf").read_text()


def test_rendered_paths_cover_every_render(files: dict[str, str]) -> None:
    assert set(files) <= set(render.rendered_paths())


# -- hostile --out ----------------------------------------------------------------------------------------


def _is_file(tmp: Path) -> Path:
    (tmp / "out").write_text("not a directory\n")
    return tmp / "out"


def _symlinked_dir(tmp: Path) -> Path:
    (tmp / "elsewhere").mkdir()
    (tmp / "out").symlink_to(tmp / "elsewhere")
    return tmp / "out"


def _dangling_symlink(tmp: Path) -> Path:
    (tmp / "out").symlink_to(tmp / "nowhere")
    return tmp / "out"


def _symlink_inside(tmp: Path) -> Path:
    (tmp / "victim").write_text("root:x:0:0\n")
    (tmp / "out/etc/postfix").mkdir(parents=True)
    (tmp / "out/etc/postfix/main.cf").symlink_to(tmp / "victim")
    return tmp / "out"


def _symlinked_etc(tmp: Path) -> Path:
    (tmp / "system-etc/postfix").mkdir(parents=True)
    (tmp / "system-etc/postfix/main.cf").write_text("the real one\n")
    (tmp / "out").mkdir()
    (tmp / "out/etc").symlink_to(tmp / "system-etc")
    return tmp / "out"


def _postfix_is_a_file(tmp: Path) -> Path:
    (tmp / "out/etc").mkdir(parents=True)
    (tmp / "out/etc/postfix").write_text("a file where a directory goes\n")
    return tmp / "out"


def _main_cf_is_a_directory(tmp: Path) -> Path:
    (tmp / "out/etc/postfix/main.cf").mkdir(parents=True)
    return tmp / "out"


def _foreign_content(tmp: Path) -> Path:
    (tmp / "out").mkdir()
    (tmp / "out/thesis.tex").write_text("months of work\n")
    return tmp / "out"


def _fifo_inside(tmp: Path) -> Path:
    (tmp / "out/etc").mkdir(parents=True)
    os.mkfifo(tmp / "out/etc/dovecot")
    return tmp / "out"


def _under_a_file(tmp: Path) -> Path:
    (tmp / "afile").write_text("x\n")
    return tmp / "afile" / "out"


HOSTILE: dict[str, Callable[[Path], Path]] = {
    "a file": _is_file,
    "a symlink to a directory": _symlinked_dir,
    "a dangling symlink": _dangling_symlink,
    "a symlink at a path we write": _symlink_inside,
    "etc a symlink": _symlinked_etc,
    "etc/postfix a file": _postfix_is_a_file,
    "main.cf a directory": _main_cf_is_a_directory,
    "foreign content": _foreign_content,
    "a fifo inside": _fifo_inside,
    "under a file": _under_a_file,
}


def _assert_refused(area: Path, out: Path, before: dict[str, tuple[str, ...]]) -> str:
    result = runner.invoke(app, ["render", str(MINIMAL), "-o", str(out)])
    assert result.exit_code == 2, (result.output, result.exception)
    assert isinstance(result.exception, SystemExit), result.exception
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("mailprov: error: --out: "), (
        result.stderr
    )
    assert "Traceback" not in result.output
    assert result.stdout == ""
    assert snapshot(area) == before, "nothing may be written, moved or removed"
    return result.stderr


@pytest.mark.parametrize("case", list(HOSTILE))
def test_hostile_out_is_refused_with_nothing_written(case: str, tmp_path: Path) -> None:
    area = tmp_path / "area"
    area.mkdir()
    out = HOSTILE[case](area)
    before = snapshot(area)
    message = _assert_refused(area, out, before)
    assert "expected" in message


def test_symlink_message_names_the_link(tmp_path: Path) -> None:
    out = _symlink_inside(tmp_path)
    before = snapshot(tmp_path)
    message = _assert_refused(tmp_path, out, before)
    assert "etc/postfix/main.cf is a symlink" in message
    assert (tmp_path / "victim").read_text() == "root:x:0:0\n"


def test_root_and_current_directory_are_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(UsageError, match="root directory"):
        outdir.check_out_dir(Path("/"), [])
    monkeypatch.chdir(tmp_path)
    for value in (".", str(tmp_path), str(tmp_path.parent)):
        with pytest.raises(UsageError, match="current directory"):
            outdir.check_out_dir(Path(value), [])


def test_bad_out_is_refused_before_the_spec_is_read(tmp_path: Path) -> None:
    """--out is judged first: a missing spec with a bad --out still names --out and touches nothing."""
    out = _is_file(tmp_path)
    before = snapshot(tmp_path)
    result = runner.invoke(app, ["render", str(tmp_path / "missing.yml"), "-o", str(out)])
    assert result.exit_code == 2
    assert "--out" in result.stderr
    assert snapshot(tmp_path) == before


def test_unwritable_parent_via_immutable_directory(tmp_path: Path) -> None:
    """chattr +i stops root too: no temporary sibling can be made next to --out."""
    area = tmp_path / "area"
    area.mkdir()
    if (
        shutil.which("chattr") is None
        or subprocess.run(["chattr", "+i", str(area)], capture_output=True).returncode
    ):
        pytest.skip("cannot set the immutable attribute here (needs root and ext4/xfs/btrfs)")
    try:
        before = snapshot(area)
        message = _assert_refused(area, area / "out", before)
        assert "not writable" in message
    finally:
        subprocess.run(["chattr", "-i", str(area)], check=True)


def test_unwritable_out_via_immutable_directory(tmp_path: Path, files: dict[str, str]) -> None:
    area = tmp_path / "area"
    out = area / "out"
    render.write_tree(files, out)  # an earlier render, now made immutable
    if (
        shutil.which("chattr") is None
        or subprocess.run(["chattr", "+i", str(out)], capture_output=True).returncode
    ):
        pytest.skip("cannot set the immutable attribute here (needs root and ext4/xfs/btrfs)")
    try:
        before = snapshot(area)
        message = _assert_refused(area, out, before)
        assert "not writable" in message
    finally:
        subprocess.run(["chattr", "-i", str(out)], check=True)


@pytest.mark.parametrize("read_only", [True, False], ids=["read-only bind mount", "writable bind mount"])
def test_mount_point_out_is_refused(tmp_path: Path, read_only: bool) -> None:
    """A read-only bind mount is not writable; a writable one cannot be renamed away (EBUSY): both exit 2."""
    area = tmp_path / "area"
    out = area / "out"
    out.mkdir(parents=True)
    if (
        os.geteuid() != 0
        or subprocess.run(["mount", "--bind", str(out), str(out)], capture_output=True).returncode
    ):
        pytest.skip("bind mounts need root")
    try:
        if read_only:
            subprocess.run(["mount", "-o", "remount,ro,bind", str(out)], check=True)
        before = snapshot(area)
        message = _assert_refused(area, out, before)
        assert ("not writable" in message) if read_only else ("mount point" in message)
    finally:
        subprocess.run(["umount", str(out)], check=True)


def test_a_real_process_prints_one_line_and_no_traceback(tmp_path: Path) -> None:
    out = _postfix_is_a_file(tmp_path)
    before = snapshot(tmp_path)
    proc = subprocess.run(
        ["python3", "-m", "provisioner", "render", str(MINIMAL), "-o", str(out)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.count("\n") == 1 and "--out" in proc.stderr and "etc/postfix" in proc.stderr
    assert snapshot(tmp_path) == before


# -- the swap itself ------------------------------------------------------------------------------------


def test_failure_while_writing_leaves_the_old_tree(files: dict[str, str], tmp_path: Path) -> None:
    out = tmp_path / "build"
    render.write_tree(files, out)
    before = snapshot(tmp_path)
    bad = dict(files)
    bad["etc/../../escape"] = "x"  # not a plain relative path: an internal error, not a write anywhere
    with pytest.raises(Exception, match="not a plain relative path"):
        outdir.replace_tree(bad, out, list(bad))
    assert snapshot(tmp_path) == before


def test_fallback_without_renameat2_still_swaps(
    files: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Where the kernel or file system lacks renameat2, two renames do the swap (and clean up)."""
    monkeypatch.setattr(outdir, "_renameat2", lambda src, dst, flags: False)
    out = tmp_path / "build"
    render.write_tree({"etc/postfix/main.cf": "old\n"}, out)
    render.write_tree(files, out)
    assert tree_files(out) == files
    assert sorted(p.name for p in tmp_path.iterdir()) == ["build"]


def test_control_characters_in_out_stay_on_one_line(tmp_path: Path) -> None:
    out = tmp_path / "bad\nname"
    out.write_text("a file\n")
    with pytest.raises(UsageError) as err:
        outdir.check_out_dir(out, [])
    assert "\n" not in str(err.value) and "--out" in str(err.value)


def test_failed_write_removes_the_parents_it_made(tmp_path: Path) -> None:
    out = tmp_path / "a" / "b" / "build"
    with pytest.raises(Exception, match="not UTF-8 text"):
        outdir.replace_tree({"etc/postfix/main.cf": "lone surrogate \udc80\n"}, out, [])
    assert list(tmp_path.iterdir()) == []
