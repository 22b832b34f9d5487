"""Stand-in for ``comfy.ldm.modules`` (tests only)."""
