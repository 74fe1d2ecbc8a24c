"""`python -m provisioner` runs the mailprov command (useful where console scripts are not on PATH)."""

from provisioner.cli import main

main()
