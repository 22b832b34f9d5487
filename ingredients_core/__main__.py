"""``python -m ingredients_core``: see :mod:`ingredients_core.cli`."""

from ingredients_core.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
