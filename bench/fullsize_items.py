"""One full-size item of ``gpu_check.py`` (b), in its worker after ComfyUI's start: the transformer
(random weights) through the pack's sampler and, for the MODEL items, the same patcher (the loader's
MODEL is the patcher the pack's sampler loads) through Apply IDs and ``comfy.sample.sample``.

With DynamicVRAM on (ComfyUI 0.33 on NVIDIA) the weights start on the offload device, as ComfyUI's own
loaders keep them (``unet_inital_load_device`` is the CPU then), and a card is the ``--vram-headroom``
the worker started ComfyUI with; without it a card is ComfyUI's partial load for that budget.
"""

from __future__ import annotations

import logging

import fullsize
import native_check
import torch

import comfy_inproc as inproc

logger = logging.getLogger("bench.gpu_check")
GiB = fullsize.GiB


def _model(env, core, smoke: bool, storage, compute, to_offload: bool):
    host = env["host"]
    device, offload = host.devices("diffusion")
    config = fullsize.smoke_config(core) if smoke else core("config").TransformerConfig()
    model = fullsize.build_on_meta(core, config, host.transformer_layers(storage, compute), storage, compute)
    fullsize.materialise(model, device)  # drawn on the GPU (fast), moved where ComfyUI would keep it
    model.local_facial_extractor.to(offload)  # Project IDs' part: not used by a step
    if to_offload:
        model.to(offload)
    return model, config


def _pack_item(env, args, core, model, config, patcher, item, smoke_share) -> dict:
    """The pack's sampler (``sampling.denoise``) on ``patcher``'s transformer."""
    mm, host = env["mm"], env["host"]
    storage_name, flags, card, teacache = item
    device, offload = host.devices("diffusion")
    dynamic = env["start"].get("dynamic_vram") == "on"
    shape = fullsize.SMOKE if args.smoke else fullsize.OFFICIAL
    compute = torch.bfloat16
    both = fullsize.activation_bytes(core, config, shape, torch.finfo(compute).bits // 8)
    result = dict(storage=storage_name, flags=flags, device=str(device), activation_estimate=both,
                  reserve=int(mm.minimum_inference_memory()), card_gib=card, patcher=type(patcher).__name__)
    if card is None or dynamic:
        host.load_for_run(patcher, both, both)
        result["method"] = ("host.load_for_run (ComfyUI load_models_gpu with the pack's estimates)"
                            + (f"; DynamicVRAM with --vram-headroom for a {card} GiB card" if card else ""))
    else:
        budget = (int(smoke_share[card] * patcher.model_size()) if args.smoke
                  else fullsize.load_models_gpu_budget(mm, card * GiB, both))
        patcher.load(device, lowvram_model_memory=budget)
        result.update(budget=budget, method="ModelPatcher.load(device, lowvram_model_memory=what load_models_gpu "
                                            "grants the sampler on that card)")
    cache = core("step_cache").TeaCache(teacache, args.teacache_steps) if teacache else None
    steps = args.teacache_steps if teacache else args.steps
    import comfy.ldm.modules.attention as attention

    fallbacks = fullsize.SageFallbacks()
    logging.getLogger().addHandler(fallbacks)
    use = fullsize.DeviceUse(device)
    fullsize.peak_reset(device)
    use.start()
    try:
        seconds = fullsize.timed_denoise(core, model, shape, steps, device, compute, cache, probe=use.sample)
    finally:
        use.stop()
    result.update(ok=fallbacks.count == 0, error=fallbacks.first, step_s=seconds, s_per_step=fullsize.per_step(seconds),
                  peak_vram=fullsize.peak_bytes(device), resident=patcher.loaded_size(),
                  model_bytes=patcher.model_size(), attention=attention.optimized_attention.__name__,
                  sage_fallbacks=fallbacks.count, **use.figures())
    if cache is not None:
        result["teacache"] = fullsize.teacache_figures(cache, seconds)
        result["s_per_step"] = result["teacache"]["mean_step_s"]
    return result


def _guarded(name: str, run) -> dict:
    try:
        return run()
    except Exception as error:  # each check reports its own failure in one line
        logger.exception("%s failed", name)
        return dict(ok=False, error=inproc.one_line(error))


def run(env, args, name: str, item: tuple, checks: list[str], smoke_share: dict, core) -> dict:
    """``{check: result}`` for the item and (when asked) its MODEL run."""
    storage_name, _, card, _ = item
    host, mm = env["host"], env["mm"]
    device, _ = host.devices("diffusion")
    fields = dict(comfyui=env["comfyui"], dynamic_vram=env["start"].get("dynamic_vram", "n/a"),
                  core_patcher=env["start"]["core_patcher"], stand_ins=env["stand_ins"],
                  torch_imported_first=env["start"].get("torch_imported_first"))
    if name.startswith("sage") and device.type != "cuda":
        return {checks[0]: dict(ok=None, error="sageattention imports; its kernels need CUDA: not run", **fields)}
    dynamic = fields["dynamic_vram"] == "on"
    compute, storage = torch.bfloat16, fullsize.dtype_of(storage_name)
    model, config = _model(env, core, args.smoke, storage, compute, to_offload=dynamic or card is not None)
    patcher = host.model_patcher(model, storage, compute, "official")
    results = {checks[0]: _guarded(checks[0], lambda: _pack_item(env, args, core, model, config, patcher, item,
                                                                  smoke_share))}
    results[checks[0]].update(fields)
    if len(checks) > 1:
        mm.unload_all_models()  # the MODEL run loads the same weights again, through ComfyUI's sampler
        mm.soft_empty_cache()
        shape = fullsize.SMOKE if args.smoke else fullsize.OFFICIAL
        results[checks[1]] = _guarded(checks[1], lambda: native_check.fullsize_check(
            env, patcher, shape, args.steps, card=card, dynamic=dynamic, device_memory=args.device_memory))
        results[checks[1]].update(fields, storage=storage_name, card_gib=card)
    return results
