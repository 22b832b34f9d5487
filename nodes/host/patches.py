"""The MODEL patches the pack's nodes put on a clone of the MODEL, each under its own
``transformer_options`` key that :class:`.model.IngredientsBaseModel` reads at every call:

- the IDs (*Ingredients Apply IDs*, and the Sampler): :func:`apply_ids`, :func:`ids_patch`; an
  ``IDPatch`` of ``ingredients_core.routing.host_ids``;
- TeaCache (*Ingredients TeaCache*, the Sampler's teacache): :func:`with_teacache`,
  :func:`teacache_report` (the cache is ``ingredients_core.sampling.step_cache``'s, one per run);
- ComfyUI's context windows (*Ingredients Long Video*): :func:`with_context_windows`.

The ID patch and TeaCache are bounded per sampling run by an ``OUTER_SAMPLE`` wrapper (:func:`_run_bounds`).
"""

from __future__ import annotations

import functools
import logging

import comfy.patcher_extension

from ...ingredients_core import InputError
from .. import native_windows
from .model import IDS_KEY, TEACACHE_KEY, transformer_of

logger = logging.getLogger(__name__)

WRAPPER_KEY = "ingredients_ids"      # key of the OUTER_SAMPLE wrapper that bounds a run of the ID patch


def _run_bounds(key: str, executor, *args, **kwargs):
    """An OUTER_SAMPLE wrapper bounding one sampling run for the patch under ``transformer_options[key]``
    (the ID patch: its keys/values made once, dropped after; TeaCache: a fresh cache for the run)."""
    options = getattr(executor.class_obj, "model_options", {}).get("transformer_options", {})
    patch = options.get(key)
    if patch is None:
        return executor(*args, **kwargs)
    patch.begin_run()
    try:
        return executor(*args, **kwargs)
    finally:
        patch.end_run()


_outer_sample = functools.partial(_run_bounds, IDS_KEY)


def apply_ids(model, patch):
    """A clone of ``model`` carrying ``patch``; IDs already on it are replaced (with a warning)."""
    transformer_of(model)
    clone = model.clone()
    options = clone.model_options.setdefault("transformer_options", {})
    old = options.get(IDS_KEY)
    if old is not None:
        logger.warning("Ingredients Apply IDs: this MODEL already carries IDs (%d people, routing %s) from an "
                       "earlier Apply IDs; they are REPLACED by these %d people (routing %s), not stacked.",
                       old.num_ids, old.options.mode, patch.num_ids, patch.options.mode)
    options[IDS_KEY] = patch
    clone.remove_wrappers_with_key(comfy.patcher_extension.WrappersMP.OUTER_SAMPLE, WRAPPER_KEY)
    clone.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.OUTER_SAMPLE, WRAPPER_KEY, _outer_sample)
    return clone


def ids_patch(model):
    """The ID patch a MODEL carries, or None."""
    return model.model_options.get("transformer_options", {}).get(IDS_KEY)


def with_teacache(model, threshold: float):
    """A clone of the MODEL whose transformer skips its blocks on the steps TeaCache judges
    unchanged (``threshold`` > 0; the published CogVideoX-5B values are 0.10-0.20). 0: a clone
    without TeaCache (one the MODEL carried is removed), sampling exactly as without it. Each
    sampling run gets a cache of its own (OUTER_SAMPLE); :func:`teacache_report` reads the last run."""
    from ...ingredients_core.sampling.step_cache import TeaCachePatch

    transformer_of(model)
    if not threshold >= 0:
        raise InputError(f"threshold: must be 0 (off) or above (0.10-0.20 for CogVideoX-5B); got {threshold}")
    clone = model.clone()
    options = clone.model_options.setdefault("transformer_options", {})
    if options.pop(TEACACHE_KEY, None) is not None:
        logger.info("Ingredients TeaCache: the MODEL's earlier TeaCache is replaced (threshold %g)", threshold)
    clone.remove_wrappers_with_key(comfy.patcher_extension.WrappersMP.OUTER_SAMPLE, TEACACHE_KEY)
    if threshold > 0:
        options[TEACACHE_KEY] = TeaCachePatch(float(threshold))
        clone.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.OUTER_SAMPLE, TEACACHE_KEY,
                                   functools.partial(_run_bounds, TEACACHE_KEY))
    return clone


def teacache_report(model):
    """The last finished sampling run's TeaCache of a MODEL (``summary()``, ``skipped_steps``,
    ``skipped``, ``evaluations``: counted per step), or None: no TeaCache on it, or not sampled yet."""
    patch = model.model_options.get("transformer_options", {}).get(TEACACHE_KEY)
    return None if patch is None else patch.last


def with_context_windows(model, window: int, overlap: int, fuse_method: str):
    """A clone of the MODEL that ComfyUI samples in windows of ``window`` latent frames along the
    frames (``standard_static``, ``overlap`` latent frames shared, outputs fused by ``fuse_method``),
    memory budgeted per window; ``causal_window_fix`` off where the handler has it (0.33). The canvas
    reaches every window through the model (``resize_cond_for_context_window``, or on 0.3.64 the
    model's own cut in ``_apply_model``)."""
    import inspect

    import comfy.context_windows as windows

    transformer_of(model)
    settings = dict(context_schedule=windows.get_matching_context_schedule(windows.ContextSchedules.STATIC_STANDARD),
                    fuse_method=windows.get_matching_fuse_method(fuse_method), context_length=window,
                    context_overlap=overlap, context_stride=1, closed_loop=False, dim=native_windows.FRAME_DIM)
    if "causal_window_fix" in inspect.signature(windows.IndexListContextHandler).parameters:
        settings["causal_window_fix"] = False
    clone = model.clone()
    if clone.model_options.get("context_handler") is not None:
        logger.info("Ingredients Long Video: the MODEL's earlier context windows are replaced")
    clone.model_options["context_handler"] = windows.IndexListContextHandler(**settings)
    windows.create_prepare_sampling_wrapper(clone)
    return clone
