"""``python -m dmdcore``: see dmdcore/cli.py."""

from dmdcore.cli import main

raise SystemExit(main())
