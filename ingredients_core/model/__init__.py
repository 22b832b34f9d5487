"""The Ingredients network: CogVideoX-5B-I2V's transformer with the ID modules, built as ComfyUI's
``comfy/ldm`` models are (layers from an injected ``operations`` namespace, attention through an
injected function, storage dtype apart from compute dtype).

- :mod:`.config`: the configuration dataclasses (``config.json`` and variants read from key shapes).
- :mod:`.transformer`, :mod:`.cogvideox`, :mod:`.layers`, :mod:`.id_modules`: the network.
- :mod:`.storage`: fp8 weight storage and its conversions.

May import :mod:`ingredients_core.routing` (what a step routes) and the package root; never weights
files, sampling, faces or the command line.
"""
