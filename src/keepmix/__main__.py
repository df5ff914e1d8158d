"""``python -m keepmix`` runs the ``keepmix`` command line (:func:`keepmix.cli.main`)."""

from .cli import main

raise SystemExit(main())
