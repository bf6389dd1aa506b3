"""``python -m stpredict``: the ``stpredict`` command (:mod:`stpredict.cli`)."""

from stpredict.cli import main

raise SystemExit(main())
