"""``python -m ingredients_core``: see :mod:`ingredients_core.standalone.cli`."""

from ingredients_core.standalone.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
