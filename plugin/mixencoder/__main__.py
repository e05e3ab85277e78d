"""``python -m mixencoder SUBCOMMAND ...`` is the ``mixencoder`` console script."""

from mixencoder.cli import main

raise SystemExit(main())
