"""Hand-run tools of the pack's developers, run from the repository root as ``python -m tools.NAME``:
the example workflows and blueprints built by a real ComfyUI frontend (``build_workflows``,
``native_workflows``, ``build_blueprints``, ``blueprint_specs``, ``blueprint_frontend``, ``frontend``) and
their thumbnails (``thumbnails``). Not shipped: ``.comfyignore`` keeps this folder out of the registry archive.
"""
