"""The role's variable reference, generated from its argument specs (docs/ansible.md embeds it).

meta/argument_specs.yml is the one description of the role's variables: Ansible validates input against it
and this module turns it into the Markdown table between the markers in docs/ansible.md.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from ruamel.yaml import YAML

from provisioner import PROJECT_ROOT
from provisioner.apply import ROLE_DIR

DOC = PROJECT_ROOT / "docs" / "ansible.md"
BEGIN = "<!-- BEGIN generated from roles/server/meta/argument_specs.yml by provisioner.roledoc -->"
END = "<!-- END generated -->"


def argument_specs(role_dir: Path = ROLE_DIR) -> dict[str, Any]:
    """The role's entry points with their options, as Ansible reads them."""
    data = YAML(typ="safe").load((role_dir / "meta" / "argument_specs.yml").read_text(encoding="utf-8"))
    return dict(data["argument_specs"])


def _cell(text: Any) -> str:
    if isinstance(text, list):
        text = " ".join(str(t) for t in text)
    # Ansible's doc markup C(x) / O(x) / V(x) is code in Markdown.
    text = re.sub(r"\b[COV]\(([^)]*)\)", r"`\1`", str(text))
    return text.replace("|", "\\|").replace("\n", " ").strip()


def _default(option: dict[str, Any]) -> str:
    if "default" not in option:
        return ""
    value = option["default"]
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    return f'`"{value}"`' if value == "" else f"`{value}`"


def variables_markdown(role_dir: Path = ROLE_DIR) -> str:
    """The variable reference: one table per entry point (name, type, default, description)."""
    out = [BEGIN]
    for entry, spec in argument_specs(role_dir).items():
        out += ["", f"**Entry point `{entry}`**: {_cell(spec.get('short_description', ''))}", ""]
        out += ["| variable | type | default | description |", "|---|---|---|---|"]
        for name, option in spec.get("options", {}).items():
            out.append(
                f"| `{name}` | {option.get('type', 'str')} | {_default(option)} | "
                f"{_cell(option.get('description', ''))} |"
            )
    out.append(END)
    return "\n".join(out)


def embed(text: str, table: str) -> str:
    """text with the generated block between the markers replaced by table."""
    start, end = text.index(BEGIN), text.index(END) + len(END)
    return text[:start] + table + text[end:]


def write_doc(doc: Path = DOC) -> None:
    """Regenerate the variable reference in docs/ansible.md (after argument_specs.yml changes)."""
    doc.write_text(embed(doc.read_text(encoding="utf-8"), variables_markdown()), encoding="utf-8")
