"""ComfyUI-Ingredients: ComfyUI nodes for Ingredients (arXiv 2501.01790), multi-person
identity-preserving video on CogVideoX-5B-I2V.

ComfyUI calls ``comfy_entrypoint`` (V3 node API). Importing this file is instant: the node modules
load when ComfyUI asks for the extension, and torch-heavy libraries only when a node runs.
There is deliberately no NODE_CLASS_MAPPINGS: its presence would make ComfyUI ignore
``comfy_entrypoint``.
"""

WEB_DIRECTORY = "./web"


async def comfy_entrypoint():
    from .nodes.extension import IngredientsExtension

    return IngredientsExtension()


__all__ = ["WEB_DIRECTORY", "comfy_entrypoint"]
