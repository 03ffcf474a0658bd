"""``python -m model.sparse``: build the native sparse kernel ahead of time and say what was
built (:func:`model.sparse.native.main`; ``make`` and the Dockerfile run it)."""

from model.sparse.native import main

raise SystemExit(main())
