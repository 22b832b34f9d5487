"""Stand-in for ComfyUI's ``comfy.ldm`` package (tests only)."""
