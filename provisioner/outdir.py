"""Writing a rendered tree to disk: built beside the target, swapped in by rename, never through a symlink.

The output directory is replaced whole: `render --out DIR` leaves DIR holding exactly the files of this
render (files an earlier render wrote and this one does not are gone, so `--check` judges only what was
just written). Because it is replaced, DIR must be new, empty, or an earlier render's output: a directory
holding anything else (a file mailprov does not render, a symlink, a device, a mount point) is refused
with a UsageError and nothing is touched. Readers see the old tree or the new one, never a mix: the new
tree is built in a sibling temporary directory and exchanged with DIR in one rename (renameat2
RENAME_EXCHANGE; where the kernel or file system lacks it, two renames with the old tree put back if the
second fails).
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import shutil
import stat
import tempfile
from collections.abc import Iterable
from pathlib import Path

from provisioner.errors import MailprovError, RenderError, UsageError

#: Prefix of the sibling directories a write uses (new tree, then the old one on its way out).
TEMP_MARK = ".mailprov-"
_AT_FDCWD = -100
_RENAME_NOREPLACE = 1
_RENAME_EXCHANGE = 2
EXPECTED = (
    "expected a new or empty directory, or one an earlier `mailprov render` wrote (it is replaced whole)"
)


def show(path: Path | str) -> str:
    """A path for a one-line message (control characters escaped)."""
    text = str(path)
    return text if text.isprintable() else repr(text)


def _fail(label: str, message: str) -> UsageError:
    return UsageError(f"{label}: {message}; {EXPECTED}")


def _ancestors(rel: str) -> list[str]:
    parts = rel.split("/")
    return ["/".join(parts[:i]) for i in range(1, len(parts))]


def _check_contents(target: Path, known: set[str], label: str) -> None:
    """Refuse a tree that holds anything but regular files and directories at paths mailprov renders.

    A known entry ending in '/' is a directory of generated files (one per mailbox): any regular file
    directly in it is mailprov's.
    """
    generated = {rel for rel in known if rel.endswith("/")}
    known = {rel for rel in known if not rel.endswith("/")} | {rel + "x" for rel in generated}
    dirs = {parent for rel in known for parent in _ancestors(rel)}
    pending = [("", target)]
    while pending:
        prefix, directory = pending.pop()
        try:
            entries = list(os.scandir(directory))
        except OSError as exc:
            raise _fail(label, f"cannot read {show(directory)}: {exc.strerror}") from None
        for entry in entries:
            rel = prefix + entry.name
            where = show(target / rel)
            if entry.is_symlink():
                raise _fail(label, f"{where} is a symlink (mailprov never writes through one)")
            if entry.is_dir(follow_symlinks=False):
                if rel not in dirs:
                    raise _fail(label, f"{where} is a directory mailprov does not render")
                if os.path.ismount(entry.path):
                    raise _fail(label, f"{where} is a mount point")
                pending.append((rel + "/", Path(entry.path)))
            elif entry.is_file(follow_symlinks=False):
                if rel in dirs:
                    raise _fail(label, f"{where} is a file where mailprov writes a directory")
                if rel not in known and rel.rpartition("/")[0] + "/" not in generated:
                    raise _fail(label, f"{where} is a file mailprov does not render")
            else:
                raise _fail(label, f"{where} is not a regular file or directory")


def check_out_dir(out: Path, known: Iterable[str], label: str = "--out") -> Path:
    """The absolute output directory, or a UsageError naming `label` if mailprov must not replace it."""
    target = Path(os.path.abspath(out))
    if not target.name:
        raise _fail(label, f"{show(target)} is the root directory")
    with contextlib.suppress(OSError):
        cwd = Path.cwd()
        if target == cwd or target in cwd.parents:
            raise _fail(label, f"{show(target)} is the current directory or one above it")
    try:
        st: os.stat_result | None = os.lstat(target)
    except FileNotFoundError:
        st = None
    except OSError as exc:
        raise _fail(label, f"cannot look at {show(target)}: {exc.strerror}") from None
    if st is not None:
        if stat.S_ISLNK(st.st_mode):
            raise _fail(label, f"{show(target)} is a symlink (mailprov never writes through one)")
        if not stat.S_ISDIR(st.st_mode):
            kind = "a file" if stat.S_ISREG(st.st_mode) else "not a directory"
            raise _fail(label, f"{show(target)} is {kind}")
        if os.path.ismount(target):
            raise _fail(label, f"{show(target)} is a mount point")
        if not os.access(target, os.W_OK | os.X_OK):
            raise _fail(label, f"{show(target)} is not writable")
        _check_contents(target, set(known), label)
    # The temporary sibling is made in the parent (created if missing, below its nearest existing ancestor).
    base = target.parent
    while not os.path.lexists(base):
        base = base.parent
    if not base.is_dir():
        raise _fail(label, f"{show(base)} is not a directory")
    if not os.access(base, os.W_OK | os.X_OK):
        raise _fail(label, f"{show(base)} is not writable")
    return target


def _renameat2(src: Path, dst: Path, flags: int) -> bool:
    """renameat2(2); False when this kernel, libc or file system does not offer it (the caller falls back)."""
    func = getattr(ctypes.CDLL(None, use_errno=True), "renameat2", None)
    if func is None:
        return False
    if func(_AT_FDCWD, os.fsencode(src), _AT_FDCWD, os.fsencode(dst), ctypes.c_uint(flags)) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):
        return False
    raise OSError(code, os.strerror(code), str(dst))


def _swap_in(new: Path, target: Path) -> Path | None:
    """Put `new` at `target`; return where the old tree went (to be removed), or None if there was none."""
    if not os.path.lexists(target):
        if not _renameat2(new, target, _RENAME_NOREPLACE):
            os.rename(new, target)
        return None
    if _renameat2(new, target, _RENAME_EXCHANGE):
        return new  # `new` now names the old tree
    old = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}{TEMP_MARK}old-"))
    try:
        os.rename(target, old / "tree")
        try:
            os.rename(new, target)
        except OSError:
            os.rename(old / "tree", target)
            raise
    except OSError:
        with contextlib.suppress(OSError):
            os.rmdir(old)  # only when empty: if putting the old tree back failed, it stays in there
        raise
    return old


def _write_file(root: Path, rel: str, text: str, made: set[Path]) -> None:
    parts = rel.split("/")
    if rel.startswith("/") or any(part in ("", ".", "..") for part in parts):
        raise RenderError(f"rendered path {rel!r} is not a plain relative path")
    directory = root
    for part in parts[:-1]:
        directory = directory / part
        if directory not in made:
            with contextlib.suppress(FileExistsError):
                os.mkdir(directory)
            made.add(directory)
    # O_EXCL|O_NOFOLLOW: the temporary tree is ours alone; nothing in it may already exist or be a link.
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    fd = os.open(root / rel, flags, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())


def _remove_empty(directories: list[Path]) -> None:
    """Remove directories this write created (deepest first), if still empty."""
    for directory in directories:
        with contextlib.suppress(OSError):
            os.rmdir(directory)


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def replace_tree(files: dict[str, str], out: Path, known: Iterable[str], label: str = "--out") -> list[Path]:
    """Make `out` hold exactly `files` (relative path -> text), atomically; return the written paths.

    `known` lists the paths an earlier render may have left there (with `files`, what may be replaced).
    Refusals are UsageError naming `label`; a failure while writing leaves `out` as it was (exit 1).
    """
    target = check_out_dir(out, {*known, *files}, label)
    missing: list[Path] = []  # parents this call creates, removed again if it fails
    parent = target.parent
    while not os.path.lexists(parent):
        missing.append(parent)
        parent = parent.parent
    try:
        for directory in reversed(missing):
            os.mkdir(directory)
        new = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}{TEMP_MARK}new-"))
    except OSError as exc:
        _remove_empty(missing)
        raise _fail(label, f"cannot create a directory beside {show(target)}: {exc.strerror}") from None
    old: Path | None = None
    try:
        try:
            mode = stat.S_IMODE(os.lstat(target).st_mode)
        except FileNotFoundError:
            umask = os.umask(0o022)
            os.umask(umask)
            mode = 0o777 & ~umask
        os.chmod(new, mode)
        made: set[Path] = set()
        for rel, text in sorted(files.items()):
            _write_file(new, rel, text, made)
        for directory in (*sorted(made, key=lambda p: len(p.parts), reverse=True), new):
            _fsync_dir(directory)
        old = _swap_in(new, target)
    except UnicodeError as exc:
        shutil.rmtree(new, ignore_errors=True)
        _remove_empty(missing)
        raise RenderError(f"a rendered file is not UTF-8 text: {exc}") from None
    except OSError as exc:
        shutil.rmtree(new, ignore_errors=True)
        _remove_empty(missing)
        if exc.errno == errno.EBUSY:  # a bind mount, which os.path.ismount does not see
            raise _fail(label, f"{show(target)} is a mount point") from None
        where = show(exc.filename) if exc.filename else show(target)
        raise MailprovError(
            f"{label}: writing the rendered tree failed ({where}: {exc.strerror}); "
            f"{show(target)} is unchanged"
        ) from None
    except BaseException:
        shutil.rmtree(new, ignore_errors=True)
        _remove_empty(missing)
        raise
    _fsync_dir(target.parent)
    if old is not None:
        if old.is_symlink():  # swapped in between our check and the rename: drop the link, never follow it
            old.unlink()
        else:
            shutil.rmtree(old, ignore_errors=True)
    return [target / rel for rel in sorted(files)]
