"""ComfyUI nodes of ComfyUI-Ingredients (V3 schema). ``host`` is the only module that imports ComfyUI."""
