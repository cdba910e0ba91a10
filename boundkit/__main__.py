"""``python -m boundkit`` runs the command-line interface."""

import sys

try:
    from boundkit.cli import main
except KeyboardInterrupt:  # Ctrl-C while the interpreter is still importing
    print("boundkit: interrupted", file=sys.stderr)
    raise SystemExit(130) from None

raise SystemExit(main())
