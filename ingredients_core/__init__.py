"""Ingredients (arXiv 2501.01790) as a host-independent library.

Multi-identity video generation on CogVideoX-5B-I2V. Nothing in this package imports ComfyUI;
the node pack in ``nodes/`` wraps it.
"""

__version__ = "0.1.0"

#: The ``__module__`` of the library's exception classes: hosts that name an error ``module.qualname``
#: (ComfyUI's UI) show ``Ingredients.SettingsError``, not the path the pack was imported under.
ERROR_NAMESPACE = "Ingredients"


class InputError(ValueError):
    """An input that cannot work: a node's input or wiring, a command-line value. The message names the
    input and says what to give instead (hosts show it as ``Ingredients.InputError``)."""

    __module__ = ERROR_NAMESPACE
