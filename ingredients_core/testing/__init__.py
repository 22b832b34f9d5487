"""Tiny models in the official layout (random weights, seconds on a CPU) and the golden parity check.

- :mod:`.make_tiny` (``python -m ingredients_core.testing.make_tiny DIR``) and the ``tiny_*`` modules:
  a whole model folder small enough for tests, the demo and a first run.
- :mod:`.parity` (``python -m ingredients_core.testing.parity GOLDEN_DIR``): the official outputs on
  deterministic weights against this library.

May import the model, weights, identity and sampling; the library never imports it (the demo does).
"""
