"""docs/ansible.md's variable reference is generated from the role's argument specs and kept current."""

from __future__ import annotations

from provisioner import roledoc
from provisioner.apply import ROLE_DIR


def test_every_public_role_default_is_in_the_argument_specs() -> None:
    from ruamel.yaml import YAML

    defaults = YAML(typ="safe").load((ROLE_DIR / "defaults" / "main.yml").read_text())
    options = roledoc.argument_specs()["main"]["options"]
    public = {name for name in defaults if name.startswith("mailprov_")}
    assert public == set(options), public ^ set(options)
    for name, option in options.items():
        assert option.get("description"), f"{name} has no description"
        if name in defaults and "default" in option:
            assert option["default"] == defaults[name], name


def test_docs_variable_reference_is_current() -> None:
    """After changing argument_specs.yml: python -c 'from provisioner import roledoc; roledoc.write_doc()'."""
    text = roledoc.DOC.read_text()
    assert roledoc.embed(text, roledoc.variables_markdown()) == text


def test_variable_table_renders_markup_types_and_defaults() -> None:
    table = roledoc.variables_markdown()
    assert table.startswith(roledoc.BEGIN) and table.endswith(roledoc.END)
    assert "| `mailprov_keep_backups` | int | `20` |" in table
    assert "| `mailprov_apt_update_cache` | bool | `true` |" in table
    assert "C(" not in table and "**Entry point `validate`**" in table
