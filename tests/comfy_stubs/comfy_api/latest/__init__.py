"""Stand-in for ``comfy_api.latest``: the V3 names the pack uses, nothing else."""

from abc import ABC, abstractmethod

from . import _io as io
from . import _ui as ui


class ComfyExtension(ABC):
    async def on_load(self) -> None:  # noqa: B027 (not abstract in ComfyUI either)
        """Called when the extension is loaded (ComfyUI 0.33 calls it, 0.3.64 does not)."""

    @abstractmethod
    async def get_node_list(self) -> list:
        """The node classes of the extension."""


__all__ = ["ComfyExtension", "io", "ui"]
