"""``python -m boundkit`` runs the command-line interface."""

from boundkit.cli import main

raise SystemExit(main())
