"""The pack without ComfyUI: ``python -m ingredients_core`` and what only the command line needs.

- :mod:`.cli`: the ``generate`` command and the entry point (exit codes 0, 1, 2, 130).
- :mod:`.demo`, :mod:`.evaluate`: the ``demo`` and ``evaluate`` commands.
- :mod:`.common`: argparse types, the progress bar, reading a photo; :mod:`.video`: writing the MP4.

The top layer: it may import every other folder of the library; nothing in the library imports it.
"""
