"""Ansible stdout callback for `mailprov apply`: one JSON object per line for every event.

Events: {"event": "play"|"task"|"result"|"stats"|"warning", ...}. A result carries host, task, status
(ok, changed, failed, skipped, unreachable), the failure message, the files a task changed and, with
--diff, the diff as text. `provisioner.apply` parses these lines; people read its table instead.
"""

from __future__ import annotations

import json
import sys
from typing import Any

from ansible import context
from ansible.plugins.callback import CallbackBase

DOCUMENTATION = """
name: mailprov_events
type: stdout
short_description: JSON lines for mailprov apply
description:
  - Prints one JSON object per line for plays, tasks, host results and the final stats.
"""

#: Module result keys that name files a task changed.
FILE_KEYS = ("changed_files", "restored", "removed")


class CallbackModule(CallbackBase):
    """Emit machine-readable events on stdout."""

    CALLBACK_VERSION = 2.0
    CALLBACK_TYPE = "stdout"
    CALLBACK_NAME = "mailprov_events"

    def __init__(self) -> None:
        super().__init__()
        self._out = sys.stdout

    def _emit(self, **event: Any) -> None:
        self._out.write(json.dumps(event, default=str) + "\n")
        self._out.flush()

    def v2_playbook_on_play_start(self, play: Any) -> None:
        self._emit(event="play", name=play.get_name().strip())

    def v2_playbook_on_task_start(self, task: Any, is_conditional: bool) -> None:
        self._emit(event="task", name=task.get_name().strip())

    def v2_playbook_on_handler_task_start(self, task: Any) -> None:
        self._emit(event="task", name=task.get_name().strip(), handler=True)

    def _result(self, result: Any, status: str) -> None:
        res = result._result
        event: dict[str, Any] = {
            "event": "result",
            "host": result._host.get_name(),
            "task": result._task.get_name().strip(),
            "action": result._task.action,
            "status": status,
        }
        if res.get("_ansible_no_log") or result._task.no_log:
            event["no_log"] = True
        if status in ("failed", "unreachable"):
            msg = str(res.get("msg") or res.get("reason") or "").strip()
            detail = str(res.get("stderr") or res.get("stdout") or "").strip()
            if detail and (not msg or msg == "non-zero return code"):
                msg = f"{msg}: {detail}" if msg else detail
            event["msg"] = msg
        if status == "skipped" and res.get("skip_reason"):
            event["skip_reason"] = res["skip_reason"]
        if res.get("item") is not None and not event.get("no_log"):
            event["item"] = self._item(res["item"])
        files: list[str] = []
        for key in FILE_KEYS:
            value = res.get(key)
            if isinstance(value, list):
                files += [str(v) for v in value]
        if (
            status == "changed"
            and result._task.action in ("ansible.builtin.copy", "copy")
            and res.get("dest")
        ):
            files.append(str(res["dest"]))
        if files:
            event["files"] = files
        if res.get("ignore_errors") or getattr(result._task, "ignore_errors", False):
            event["ignored"] = True
        if context.CLIARGS.get("diff") and res.get("diff") and status in ("changed", "ok"):
            diffs = res["diff"] if isinstance(res["diff"], list) else [res["diff"]]
            text = "".join(self._get_diff(d) for d in diffs if d)
            if text.strip():
                event["diff"] = text
        if status == "ok" and res.get("msg") and result._task.action in ("ansible.builtin.debug", "debug"):
            event["msg"] = str(res["msg"])
        self._emit(**event)

    @staticmethod
    def _item(item: Any) -> str:
        if isinstance(item, dict):
            for key in ("path", "name", "port"):
                if key in item:
                    return str(item[key])
            return "item"
        return str(item)

    def v2_runner_on_ok(self, result: Any) -> None:
        self._result(result, "changed" if result._result.get("changed") else "ok")

    def v2_runner_on_failed(self, result: Any, ignore_errors: bool = False) -> None:
        self._result(result, "failed")

    def v2_runner_on_skipped(self, result: Any) -> None:
        self._result(result, "skipped")

    def v2_runner_on_unreachable(self, result: Any) -> None:
        self._result(result, "unreachable")

    def v2_runner_item_on_ok(self, result: Any) -> None:
        pass

    def v2_runner_item_on_failed(self, result: Any) -> None:
        pass

    def v2_runner_item_on_skipped(self, result: Any) -> None:
        pass

    def v2_playbook_on_stats(self, stats: Any) -> None:
        hosts = {}
        for host in sorted(stats.processed):
            summary = stats.summarize(host)
            hosts[host] = {
                "ok": summary["ok"],
                "changed": summary["changed"],
                "failed": summary["failures"],
                "unreachable": summary["unreachable"],
                "skipped": summary["skipped"],
                "rescued": summary["rescued"],
                "ignored": summary["ignored"],
            }
        self._emit(event="stats", hosts=hosts)

    def v2_playbook_on_no_hosts_matched(self) -> None:
        self._emit(event="warning", msg="no hosts matched")

    def v2_playbook_on_no_hosts_remaining(self) -> None:
        self._emit(event="warning", msg="no hosts remaining")
