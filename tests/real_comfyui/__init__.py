"""Scripts the real-ComfyUI tests run under a real ComfyUI (``COMFYUI_PATH``, its own Python), each in a
process of its own, and the server helper those tests share (:mod:`.real_server`). Run alone they print
what they check; ``real_frames.py`` and ``real_core_nodes_check.py`` are also hand-run reports."""
