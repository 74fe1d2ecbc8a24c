"""Action plugin mailprov.mail.render: validate the spec and render its files on the controller.

The rendering is mailprov's own Python package (`provisioner`): the same model validates the spec and the
same templates produce the files as `mailprov render`, so there is one source of truth for file content.
The plugin needs no connection: a bad spec fails here, before anything touches a host.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from ansible.errors import AnsibleActionFail
from ansible.plugins.action import ActionBase

_IMPORT_ERROR: str | None = None


def _import_provisioner() -> Any:
    """provisioner.apply: from the mailprov tree holding this collection, else from the Python environment.

    A collection used in place (collections/ansible_collections/mailprov/mail in a mailprov clone) renders
    with the package of that same tree, so the role and the templates always come from one version; an
    installed collection uses the installed package.
    """
    parents = Path(__file__).resolve().parents
    root = parents[6] if len(parents) > 6 else None
    if root is not None and (root / "provisioner" / "__init__.py").is_file() and str(root) not in sys.path:
        sys.path.insert(0, str(root))
    from provisioner import apply as apply_mod

    return apply_mod


try:
    # Imported when Ansible loads the plugin class in its main process, so forked workers share it.
    _APPLY: Any = _import_provisioner()
    _APPLY.warm()
except ImportError as exc:  # reported by run(), with the interpreter to install into
    _APPLY = None
    _IMPORT_ERROR = str(exc)


class ActionModule(ActionBase):
    """Validate mailprov_spec / mailprov_spec_file and return a plan per OS profile."""

    TRANSFERS_FILES = False
    _requires_connection = False
    _VALID_ARGS = frozenset(("spec", "spec_file", "hostname", "append"))

    def run(self, tmp: Any = None, task_vars: dict[str, Any] | None = None) -> dict[str, Any]:
        """Return {hostname, servers, plans: {profile: plan}, profile_map}; fail naming the field."""
        result = super().run(tmp, task_vars)
        if _APPLY is None:
            raise AnsibleActionFail(
                f"the mailprov Python package is not importable by {sys.executable} ({_IMPORT_ERROR}): "
                "install it into the environment that runs ansible-playbook (pip install mailprov)"
            )
        args = self._task.args
        base_dir = Path(self._loader.get_basedir())
        try:
            spec = _APPLY.load_role_spec(args.get("spec"), args.get("spec_file"), base_dir)
            data = _APPLY.role_input(spec, args.get("hostname"), args.get("append") or None)
        except _APPLY.UsageError as exc:
            raise AnsibleActionFail(str(exc)) from None
        result.update(changed=False, **data)
        # The plans hold the Dovecot passwd-file (password hashes): censor the result in every callback,
        # while a failure above keeps its message (the field at fault) visible.
        result["_ansible_no_log"] = True
        return result
