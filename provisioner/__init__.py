"""mailprov: provision and verify Postfix + Dovecot mail servers."""

from pathlib import Path

__version__ = "0.1.0"

#: The source tree root: templates/ and playbooks/ live beside the package (install with `pip install -e .`).
PROJECT_ROOT = Path(__file__).resolve().parent.parent
TEMPLATES_DIR = PROJECT_ROOT / "templates"
PLAYBOOKS_DIR = PROJECT_ROOT / "playbooks"
