#!/usr/bin/python3
"""Ansible module mailprov.mail.tree: stage, activate and restore the rendered configuration tree on a mail host."""

from __future__ import annotations

import grp
import json
import os
import pwd
import shutil
import stat
import subprocess
import tempfile

from ansible.module_utils.basic import AnsibleModule

DOCUMENTATION = r"""
---
module: tree
short_description: Stage, activate and restore the configuration files rendered by mailprov
description:
  - C(state=staged) compares the rendered files (and the lookup tables built from them) with the live ones.
    When something differs it writes a fresh stage directory that the playbook then validates with the real
    programs; in check mode it only reports (and, with --diff, shows) what would change.
  - C(state=active) installs the staged files whose content or ownership differ from the live ones, after
    copying each replaced file into a timestamped backup directory, rebuilds the lookup tables, and says
    whether Postfix and Dovecot need a reload or a restart.
  - C(state=restored) puts back what a backup directory holds and removes files the activation created.
options:
  state:
    description: What to do.
    type: str
    choices: [staged, active, restored]
    required: true
  files:
    description: The rendered files (state=staged) as dicts with path, content, owner, group, mode.
    type: list
    elements: dict
  secret_contents:
    description: Contents of secret files (path -> content), e.g. the Dovecot passwd-file; never logged.
    type: dict
  stage:
    description: The stage directory.
    type: path
    default: /etc/mailprov/stage
  maps:
    description: Postfix lookup table sources (absolute paths) to build with postmap.
    type: list
    elements: str
  map_type:
    description: Postfix lookup table type (hash or lmdb).
    type: str
    default: hash
  backup_root:
    description: Where timestamped backup directories are kept.
    type: path
    default: /var/backups/mailprov
  backup_dir:
    description: The backup directory to restore (state=restored).
    type: path
  run_id:
    description: Timestamp naming this run's backup directory.
    type: str
  keep_backups:
    description: How many backup directories to keep.
    type: int
    default: 20
author: mailprov
"""

MANIFEST = ".mailprov-manifest.json"
BACKUP_MANIFEST = "manifest.json"
#: main.cf parameters whose change needs a Postfix restart, not a reload.
POSTFIX_RESTART_KEYS = ("inet_interfaces", "inet_protocols", "queue_directory", "daemon_directory")
#: dovecot.conf top-level settings whose change needs a Dovecot restart.
DOVECOT_RESTART_KEYS = ("protocols", "listen", "base_dir")
MAP_SUFFIX = {"hash": ".db", "lmdb": ".lmdb", "btree": ".db", "cdb": ".cdb"}
HIDDEN = "(contents hidden: the file holds password hashes)\n"


def parse_main_cf(text: str) -> dict[str, str]:
    """Parameters of a Postfix main.cf (continuation lines joined, comments dropped)."""
    params: dict[str, str] = {}
    key = None
    for line in text.splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        if line[0].isspace() and key is not None:
            params[key] = (params[key] + " " + line.strip()).strip()
            continue
        name, sep, value = line.partition("=")
        if sep:
            key = name.strip()
            params[key] = value.strip()
    return params


def parse_dovecot_top(text: str) -> dict[str, str]:
    """Top-level `key = value` settings of a dovecot.conf (outside any section)."""
    params: dict[str, str] = {}
    depth = 0
    for raw in text.splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        if line.endswith("{"):
            depth += 1
            continue
        if line == "}":
            depth = max(0, depth - 1)
            continue
        if depth == 0 and "=" in line:
            name, _, value = line.partition("=")
            params[name.strip()] = value.strip()
    return params


def dovecot_sections(text: str) -> str:
    """The listener-bearing `service` sections of a dovecot.conf, normalised, for comparison."""
    out = []
    depth = 0
    keep = False
    for raw in text.splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        if depth == 0 and line.startswith("service ") and line.endswith("{"):
            keep = True
        if keep:
            out.append(line)
        if line.endswith("{"):
            depth += 1
        elif line == "}":
            depth = max(0, depth - 1)
            if depth == 0:
                keep = False
    return "\n".join(out)


def postfix_action(changed: dict[str, tuple[str | None, str]]) -> str:
    """none, reload or restart for Postfix, given changed paths -> (old text or None, new text)."""
    action = "none"
    for path, (old, new) in changed.items():
        directory, _, name = path.rpartition("/")
        if not directory.endswith("/postfix"):
            continue
        if name == "master.cf":
            # Listener changes (ports, services) are safest with a fresh master process.
            return "restart"
        if name == "main.cf":
            before, after = parse_main_cf(old or ""), parse_main_cf(new)
            if any(before.get(key) != after.get(key) for key in POSTFIX_RESTART_KEYS):
                return "restart"
            action = "reload"
    return action


def dovecot_action(changed: dict[str, tuple[str | None, str]]) -> str:
    """none, reload or restart for Dovecot (the passwd-file is re-read by Dovecot on its own)."""
    conf = [path for path in changed if path.endswith("/dovecot/dovecot.conf")]
    if not conf:
        return "none"
    old_new = changed[conf[0]]
    old, new = old_new
    before, after = parse_dovecot_top(old or ""), parse_dovecot_top(new)
    if any(before.get(key) != after.get(key) for key in DOVECOT_RESTART_KEYS):
        return "restart"
    if dovecot_sections(old or "") != dovecot_sections(new):
        return "restart"
    return "reload"


def map_file(source: str, map_type: str) -> str:
    """The indexed file postmap builds from a source."""
    return source + MAP_SUFFIX.get(map_type, ".db")


def _read(path: str) -> str | None:
    try:
        with open(path, encoding="utf-8", errors="surrogateescape") as handle:
            return handle.read()
    except FileNotFoundError:
        return None


def _ids(owner: str, group: str) -> tuple[int, int]:
    return pwd.getpwnam(owner).pw_uid, grp.getgrnam(group).gr_gid


def _meta_differs(path: str, entry: dict) -> bool:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return True
    uid, gid = _ids(entry["owner"], entry["group"])
    return st.st_uid != uid or st.st_gid != gid or stat.S_IMODE(st.st_mode) != int(entry["mode"], 8)


def _diff(path: str, old: str | None, new: str, secret: bool) -> dict:
    if secret:
        return {
            "before_header": path,
            "after_header": path,
            "before": HIDDEN if old is not None else "",
            "after": HIDDEN.replace("(contents", "(new contents"),
        }
    return {
        "before_header": path if old is not None else "/dev/null",
        "after_header": path,
        "before": old or "",
        "after": new,
    }


def _write(path: str, text: str, entry: dict) -> None:
    """Write atomically (temp file in the same directory, then rename) with owner, group and mode."""
    directory = os.path.dirname(path)
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".mailprov.")
    try:
        with os.fdopen(fd, "w", encoding="utf-8", errors="surrogateescape") as handle:
            handle.write(text)
        uid, gid = _ids(entry["owner"], entry["group"])
        os.chown(tmp, uid, gid)
        os.chmod(tmp, int(entry["mode"], 8))
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _map_stale(source: str, map_type: str) -> bool:
    built = map_file(source, map_type)
    try:
        return os.stat(built).st_mtime < os.stat(source).st_mtime
    except FileNotFoundError:
        return True


def _postmap(module: AnsibleModule, map_type: str, sources: list[str]) -> None:
    if not sources:
        return
    # The tables sit beside main.cf: read that configuration (the machine's default one may not exist).
    config_dir = os.path.dirname(sources[0])
    config = ["-c", config_dir] if os.path.exists(os.path.join(config_dir, "main.cf")) else []
    argv = ["postmap", *config] + [f"{map_type}:{src}" for src in sources]
    rc, out, err = module.run_command(argv)
    if rc != 0:
        module.fail_json(msg=f"postmap failed: {(err or out).strip()}", rc=rc)


def staged(module: AnsibleModule) -> dict:
    """Compare the rendered files with the live ones; write the stage when something differs."""
    params = module.params
    secrets = params["secret_contents"] or {}
    entries = []
    for item in params["files"] or []:
        entry = dict(item)
        path = entry["path"]
        if path in secrets:
            entry["content"] = secrets[path]
            entry["secret"] = True
        if entry.get("content") is None:
            module.fail_json(msg=f"{path}: no content given")
        entries.append(entry)
    map_type = params["map_type"]
    differs, diffs = [], []
    for entry in entries:
        live = _read(entry["path"])
        if live != entry["content"] or _meta_differs(entry["path"], entry):
            differs.append(entry["path"])
            if live != entry["content"]:
                diffs.append(_diff(entry["path"], live, entry["content"], entry.get("secret", False)))
    stale_maps = [src for src in params["maps"] or [] if src not in differs and _map_stale(src, map_type)]
    result = {
        "differs": differs,
        "stale_maps": stale_maps,
        "up_to_date": not differs and not stale_maps,
        "stage": params["stage"],
        "changed": False,
    }
    if module.check_mode:
        result["changed"] = not result["up_to_date"]
        if module._diff and diffs:
            result["diff"] = diffs
        return result
    if result["up_to_date"]:
        return result
    stage = params["stage"]
    if os.path.isdir(stage):
        shutil.rmtree(stage)
    os.makedirs(stage, mode=0o700)
    os.chmod(stage, 0o700)
    manifest = []
    for entry in entries:
        target = stage + entry["path"]
        _write(target, entry["content"], entry)
        manifest.append(
            {k: entry[k] for k in ("path", "owner", "group", "mode")} | {"secret": entry.get("secret", False)}
        )
    with open(os.path.join(stage, MANIFEST), "w", encoding="utf-8") as handle:
        json.dump({"files": manifest, "maps": params["maps"] or [], "map_type": map_type}, handle, indent=1)
    return result


def _prune(root: str, keep: int) -> None:
    try:
        names = sorted(n for n in os.listdir(root) if os.path.isdir(os.path.join(root, n)))
    except FileNotFoundError:
        return
    for name in names[:-keep] if keep > 0 else []:
        shutil.rmtree(os.path.join(root, name), ignore_errors=True)


def _backup(path: str, backup_dir: str) -> None:
    target = backup_dir + path
    os.makedirs(os.path.dirname(target), exist_ok=True)
    shutil.copy2(path, target)
    st = os.stat(path)
    os.chown(target, st.st_uid, st.st_gid)


def active(module: AnsibleModule) -> dict:
    """Install the staged files that differ, with backups; rebuild lookup tables; pick reload/restart."""
    params = module.params
    stage = params["stage"]
    with open(os.path.join(stage, MANIFEST), encoding="utf-8") as handle:
        manifest = json.load(handle)
    map_type = manifest["map_type"]
    maps = set(manifest["maps"])
    todo = []
    for entry in manifest["files"]:
        path = entry["path"]
        new = _read(stage + path)
        old = _read(path)
        if new is None:
            module.fail_json(msg=f"{path}: missing from the stage {stage}")
        if old != new or _meta_differs(path, entry):
            todo.append((entry, old, new))
    rebuild = sorted(
        {e["path"] for e, _, _ in todo if e["path"] in maps} | {m for m in maps if _map_stale(m, map_type)}
    )
    result: dict = {"changed": False, "changed_files": [], "backup_dir": None, "diff": []}
    content_changed: dict[str, tuple[str | None, str]] = {}
    if todo or rebuild:
        os.makedirs(params["backup_root"], mode=0o700, exist_ok=True)
        os.chmod(params["backup_root"], 0o700)
        backup_dir = os.path.join(params["backup_root"], params["run_id"])
        os.makedirs(backup_dir, mode=0o700, exist_ok=True)
        record: dict = {"replaced": [], "created": [], "map_type": map_type}
        touched = [e["path"] for e, _, _ in todo] + [map_file(src, map_type) for src in rebuild]
        for path in touched:
            if os.path.exists(path):
                _backup(path, backup_dir)
                record["replaced"].append(path)
            else:
                record["created"].append(path)
        # The record is written before anything is replaced so that a restore always knows what to undo.
        with open(os.path.join(backup_dir, BACKUP_MANIFEST), "w", encoding="utf-8") as handle:
            json.dump(record, handle, indent=1)
        for entry, old, new in todo:
            _write(entry["path"], new, entry)
            if old != new:
                content_changed[entry["path"]] = (old, new)
                result["diff"].append(_diff(entry["path"], old, new, entry.get("secret", False)))
        _postmap(module, map_type, rebuild)
        result.update(changed=True, changed_files=touched, backup_dir=backup_dir)
        _prune(params["backup_root"], params["keep_backups"])
    result["postfix_action"] = postfix_action(content_changed)
    result["dovecot_action"] = dovecot_action(content_changed)
    if not module._diff:
        result.pop("diff")
    return result


def restored(module: AnsibleModule) -> dict:
    """Put back the files saved in a backup directory and remove the files that activation created."""
    backup_dir = module.params["backup_dir"]
    manifest_path = os.path.join(backup_dir or "", BACKUP_MANIFEST)
    if not backup_dir or not os.path.exists(manifest_path):
        return {"changed": False, "restored": [], "removed": [], "msg": "nothing to restore"}
    with open(manifest_path, encoding="utf-8") as handle:
        record = json.load(handle)
    restored_files, removed = [], []
    for path in record["replaced"]:
        saved = backup_dir + path
        fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix=".mailprov.")
        os.close(fd)
        # copy2 keeps the saved mtimes, so a restored table stays newer than its restored source.
        shutil.copy2(saved, tmp)
        st = os.stat(saved)
        os.chown(tmp, st.st_uid, st.st_gid)
        os.replace(tmp, path)
        restored_files.append(path)
    for path in record["created"]:
        if os.path.exists(path):
            os.unlink(path)
            removed.append(path)
    return {"changed": bool(restored_files or removed), "restored": restored_files, "removed": removed}


def main() -> None:
    """Module entry point."""
    module = AnsibleModule(
        argument_spec={
            "state": {"type": "str", "required": True, "choices": ["staged", "active", "restored"]},
            "files": {"type": "list", "elements": "dict"},
            "secret_contents": {"type": "dict", "no_log": True},
            "stage": {"type": "path", "default": "/etc/mailprov/stage"},
            "maps": {"type": "list", "elements": "str"},
            "map_type": {"type": "str", "default": "hash"},
            "backup_root": {"type": "path", "default": "/var/backups/mailprov"},
            "backup_dir": {"type": "path"},
            "run_id": {"type": "str"},
            "keep_backups": {"type": "int", "default": 20},
        },
        required_if=[("state", "staged", ("files",)), ("state", "active", ("run_id",))],
        supports_check_mode=True,
    )
    state = module.params["state"]
    if module.check_mode and state != "staged":
        module.exit_json(changed=False, skipped_reason="check mode")
    try:
        if state == "staged":
            result = staged(module)
        elif state == "active":
            result = active(module)
        else:
            result = restored(module)
    except (OSError, KeyError, ValueError, subprocess.SubprocessError) as exc:
        module.fail_json(msg=f"mailprov_tree {state}: {exc}")
    module.exit_json(**result)


if __name__ == "__main__":
    main()
