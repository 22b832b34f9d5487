"""The native MODEL path of ``gpu_check.py``: the loader's ComfyUI ``MODEL`` through *Ingredients Apply
IDs* into ComfyUI's own sampling, inside real ComfyUI (in-process, see ``comfy_inproc``).

- ``tiny_checks``: on the chain's tiny models, KSampler (euler / simple) and SamplerCustomAdvanced
  (RandomNoise, CFGGuider, the pack's official DDIM ``SAMPLER`` and its Ingredients Scheduler sigmas,
  BasicScheduler simple without it), two steps each;
- ``fullsize_check``: the full-size transformer (random weights) as a MODEL, KSampler euler / simple
  at 49 x 480 x 720 with CFG: peak VRAM and seconds per step.

Each check returns its own result dict (``ok``, ``error`` in one line, figures); nothing raises out.
ComfyUI's nodes are called as its executor would (V3 ``execute`` or the V1 ``FUNCTION``); the pack's
nodes get their inputs bound by type (the MODEL, the routed IDs), the rest at their defaults.
"""

from __future__ import annotations

import logging
import time

logger = logging.getLogger("bench.native_check")

STEPS = 2
CFG = 6.0
SEED = 3
#: The pack's node ids this path needs (issue 15: parts 1, 3 and 4).
APPLY_IDS = "IngredientsApplyIDs"
OFFICIAL_SAMPLER, OFFICIAL_SCHEDULER = "IngredientsOfficialSampler", "IngredientsScheduler"


# -- calling nodes -------------------------------------------------------------------------------------
def call_core(cls, **inputs) -> tuple:
    """A ComfyUI core node's outputs: V3 (``execute``) or V1 (``FUNCTION``)."""
    if hasattr(cls, "define_schema"):
        return tuple(cls.execute(**inputs).args)
    return tuple(getattr(cls(), cls.FUNCTION)(**inputs))


def _default(entry):
    default = getattr(entry, "default", None)
    options = getattr(entry, "options", None)
    return options[0] if default is None and options else default


def call_pack(node, by_type: dict, **named) -> tuple:
    """A pack (V3) node run with ``named`` inputs, the inputs whose io type is a key of ``by_type``
    bound to that value, every other required input at its default."""
    inputs = {}
    for entry in node.GET_SCHEMA().inputs:
        kind = entry.get_io_type()
        if entry.id in named:
            inputs[entry.id] = named[entry.id]
        elif kind in by_type:
            inputs[entry.id] = by_type[kind]
        elif not entry.optional:
            value = _default(entry)
            if value is None:
                raise ValueError(f"{node.GET_SCHEMA().node_id}: no value for its required input {entry.id!r} ({kind})")
            inputs[entry.id] = value
    return tuple(node.execute(**inputs).args)


def output_of(node, values: tuple, io_type: str):
    """The first output of ``node`` with ``io_type`` among ``values`` (None when it has none)."""
    outputs = node.GET_SCHEMA().outputs
    for output, value in zip(outputs, values, strict=False):
        if output.get_io_type() == io_type:
            return value
    return None


def patcher_class(model) -> str:
    return type(model).__name__ if model is not None else "none"


# -- inputs in ComfyUI's layout ---------------------------------------------------------------------------
def conditioning(positive, negative, image_latent) -> tuple[list, list]:
    """CONDITIONING pair: the text embeddings (1, 226, D) with the raw image latent (B, 16, 1, h, w)
    as ``concat_latent_image`` on both (contract 2-3 of issue 15; the model pads the frames)."""
    return ([[positive, {"concat_latent_image": image_latent}]],
            [[negative, {"concat_latent_image": image_latent}]])


def empty_latent(torch, channels: int, frames: int, height: int, width: int) -> dict:
    """An empty LATENT (1, channels, latent frames, h, w), as ComfyUI's empty latent nodes give it."""
    return {"samples": torch.zeros(1, channels, (frames - 1) // 4 + 1, height // 8, width // 8)}


def image_latent(torch, channels: int, height: int, width: int, seed: int = 5):
    """A random raw image latent (1, channels, 1, h, w) standing for the encoded face canvas."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(1, channels, 1, height // 8, width // 8, generator=generator)


# -- one sampling run ------------------------------------------------------------------------------------------
def _finish(torch, device, started: float, latent: dict, expected: tuple) -> dict:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    samples = latent["samples"]
    finite = bool(torch.isfinite(samples).all())
    shape = tuple(samples.shape)
    ok = finite and shape == expected
    return dict(ok=ok, error=None if ok else f"samples finite={finite}, shape {shape} (expected {expected})",
                seconds=time.perf_counter() - started)


def ksampler(model, positive, negative, latent: dict, steps: int = STEPS, cfg: float = CFG) -> dict:
    """ComfyUI's KSampler node, euler / simple (the official DDIM, trailing steps)."""
    import nodes

    out, = call_core(nodes.KSampler, model=model, seed=SEED, steps=steps, cfg=cfg, sampler_name="euler",
                     scheduler="simple", positive=positive, negative=negative, latent_image=latent, denoise=1.0)
    return out


def custom_advanced(model, sampler, positive, negative, latent: dict, steps: int = STEPS, cfg: float = CFG,
                    sigmas=None) -> dict:
    """SamplerCustomAdvanced with RandomNoise, CFGGuider, ``sampler`` and ``sigmas`` (default:
    BasicScheduler simple)."""
    import comfy_extras.nodes_custom_sampler as custom

    noise, = call_core(custom.RandomNoise, noise_seed=SEED)
    guider, = call_core(custom.CFGGuider, model=model, positive=positive, negative=negative, cfg=cfg)
    if sigmas is None:
        sigmas, = call_core(custom.BasicScheduler, model=model, scheduler="simple", steps=steps, denoise=1.0)
    out = call_core(custom.SamplerCustomAdvanced, noise=noise, guider=guider, sampler=sampler, sigmas=sigmas,
                    latent_image=latent)
    return out[0]


def _guarded(name: str, run) -> dict:
    try:
        return run()
    except Exception as error:  # each check reports its own failure in one line
        logger.exception("%s failed", name)
        return dict(ok=False, error=_one_line(error))


def _one_line(error: BaseException) -> str:
    return f"{type(error).__name__}: {' '.join(str(error).split())[:300]}"


def _choice(node, value: str) -> dict:
    """``{input: value}`` for the pack node's combo inputs that offer ``value`` (e.g. "ddim")."""
    return {entry.id: value for entry in node.GET_SCHEMA().inputs if value in (getattr(entry, "options", None) or ())}


def _peak(torch, device):
    return int(torch.cuda.max_memory_allocated(device)) if device.type == "cuda" else None


def _reset(torch, device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)


def _sampled(torch, device, model, run, expected: tuple, label: str) -> dict:
    """``run()`` timed, its LATENT checked; peak VRAM, the MODEL's patcher class and resident bytes."""
    import fullsize

    _reset(torch, device)
    use = fullsize.DeviceUse(device).start()  # DynamicVRAM's weights are outside max_memory_allocated
    started = time.perf_counter()
    try:
        result = _finish(torch, device, started, run(), expected)
    finally:
        use.stop()
    result.update(peak_vram=_peak(torch, device), patcher=patcher_class(model), sampler=label,
                  resident=int(model.loaded_size()), model_bytes=int(model.model_size()), **use.figures())
    return result


# -- (a') the tiny MODEL path --------------------------------------------------------------------------------------
def tiny_checks(torch, nodes: dict, loader_out: tuple, prompt, routed, size: dict, device) -> dict:
    """KSampler and SamplerCustomAdvanced on the loader's MODEL through Apply IDs (tiny models):
    ``{"ksampler": result, "custom_advanced": result}``."""
    loader = nodes["IngredientsModelLoader"]
    model = output_of(loader, loader_out, "MODEL")
    missing = ("IngredientsModelLoader has no MODEL output in this checkout (issue 15 part 1)" if model is None
               else f"{APPLY_IDS} is not a node of this checkout (issue 15 part 3)" if APPLY_IDS not in nodes else None)
    if missing:
        return {"ksampler": dict(ok=False, error=missing), "custom_advanced": dict(ok=False, error=missing)}
    apply_ids = nodes[APPLY_IDS]
    applied = output_of(apply_ids, call_pack(apply_ids, {"MODEL": model, "INGREDIENTS_ROUTED_IDS": routed}), "MODEL")
    channels = model.model.diffusion_model.config.out_channels
    positive, negative = conditioning(prompt.positive, prompt.negative,
                                      image_latent(torch, channels, size["height"], size["width"]))
    latent = empty_latent(torch, channels, size["frames"], size["height"], size["width"])
    expected = tuple(latent["samples"].shape)
    results = {"ksampler": _guarded("native ksampler", lambda: _sampled(
        torch, device, applied, lambda: ksampler(applied, positive, negative, latent), expected,
        "KSampler euler/simple"))}

    def official() -> dict:
        if OFFICIAL_SAMPLER not in nodes:
            return dict(ok=False, error=f"{OFFICIAL_SAMPLER} (the pack's DDIM as SAMPLER, issue 15 part 4) is not a "
                                        "node of this checkout")
        node = nodes[OFFICIAL_SAMPLER]
        sampler = output_of(node, call_pack(node, {}, **_choice(node, "ddim")), "SAMPLER")
        sigmas, label = None, "BasicScheduler simple"
        if OFFICIAL_SCHEDULER in nodes:  # the official trailing timesteps as SIGMAS
            scheduler = nodes[OFFICIAL_SCHEDULER]
            sigmas = output_of(scheduler, call_pack(scheduler, {"MODEL": applied}, steps=STEPS), "SIGMAS")
            label = OFFICIAL_SCHEDULER
        return _sampled(torch, device, applied, lambda: custom_advanced(applied, sampler, positive, negative, latent,
                                                                         sigmas=sigmas),
                        expected, f"SamplerCustomAdvanced + {OFFICIAL_SAMPLER} ddim + {label}")

    results["custom_advanced"] = _guarded("native custom advanced", official)
    results["ksampler"]["patcher_unpatched"] = patcher_class(model)
    return results


# -- (b') the full-size transformer as a MODEL -------------------------------------------------------------------------
def _random_routed(torch, config, people: int):
    """Routed IDs for ``people`` random ID tokens (what Project IDs + Route IDs give, official routing)."""
    import comfy_inproc as inproc

    payloads = inproc.pack_module("nodes.payloads")
    routing = inproc.pack_module("ingredients_core.routing.plan")
    generator = torch.Generator().manual_seed(0)
    tokens = torch.randn(people, config.ids.num_tokens, config.ids.token_dim, generator=generator)
    ids = payloads.IngredientsIDTokens(tokens=tokens, ids=payloads.IngredientsIDs(faces=(None,) * people),
                                       model_folder=None)
    return payloads.IngredientsRoutedIDs(tokens=ids, routing=routing.RoutingOptions())


def _legacy_card_reserve(mm, card, dynamic: bool, device_memory, device) -> int | None:
    """Without DynamicVRAM a ``card`` GiB card is ComfyUI's reserve raised by (total - card), what
    ``--reserve-vram`` does: its loader then keeps what fits that card. Returns the old reserve."""
    if not card or dynamic or device.type != "cuda" or not device_memory:
        return None
    old = mm.EXTRA_RESERVED_VRAM
    mm.EXTRA_RESERVED_VRAM = old + int(device_memory - card * 1024 ** 3)
    return old


def fullsize_check(env: dict, patcher, shape, steps: int, card=None, dynamic: bool = False,
                   device_memory=None) -> dict:
    """The transformer ``patcher`` holds (the MODEL) through Apply IDs and ComfyUI's
    ``comfy.sample.sample`` (what KSampler runs), euler / simple, CFG: s/step (the first step, which
    also loads the weights, left out), peak VRAM, the device's used memory."""
    import comfy.sample
    import fullsize
    import torch

    nodes, mm = env["nodes"], env["mm"]
    config = patcher.model.diffusion_model.config
    device = patcher.load_device
    apply_ids = nodes[APPLY_IDS]
    routed = _random_routed(torch, config, shape.ids)
    applied = output_of(apply_ids, call_pack(apply_ids, {"MODEL": patcher, "INGREDIENTS_ROUTED_IDS": routed}), "MODEL")
    g = torch.Generator().manual_seed(1)
    text = [torch.randn(1, config.max_text_seq_length, config.text_embed_dim, generator=g) for _ in range(2)]
    channels = config.out_channels
    positive, negative = conditioning(text[0], text[1], image_latent(torch, channels, shape.height, shape.width))
    latent = empty_latent(torch, channels, shape.frames, shape.height, shape.width)["samples"]
    noise = comfy.sample.prepare_noise(latent, SEED)
    use = fullsize.DeviceUse(device)
    stamps = []

    def step(*_) -> None:
        fullsize.sync(device)
        stamps.append(time.perf_counter())
        use.sample()

    old_reserve = _legacy_card_reserve(mm, card, dynamic, device_memory, device)
    try:
        fullsize.peak_reset(device)
        use.start()
        stamps.append(time.perf_counter())
        samples = comfy.sample.sample(applied, noise, steps, shape.cfg, "euler", "simple", positive, negative, latent,
                                      callback=step, disable_pbar=True, seed=SEED)
    finally:
        use.stop()
        if old_reserve is not None:
            mm.EXTRA_RESERVED_VRAM = old_reserve
    seconds = [b - a for a, b in zip(stamps, stamps[1:], strict=False)]
    finite = bool(torch.isfinite(samples).all())  # random weights: reported, not judged (as the pack's run)
    ok = tuple(samples.shape) == tuple(latent.shape)
    method = "comfy.sample.sample (KSampler's) euler/simple, Apply IDs (2 random IDs, official routing)"
    if card and dynamic:
        method += f"; DynamicVRAM with --vram-headroom for a {card} GiB card"
    elif old_reserve is not None:
        method += f"; ComfyUI's reserve raised to leave a {card} GiB card (as --reserve-vram)"
    elif card:
        method += f"; no {card} GiB card emulated here (no CUDA device)"
    return dict(ok=ok, error=None if ok else f"samples shape {tuple(samples.shape)}, expected {tuple(latent.shape)}",
                finite=finite,
                step_s=seconds, s_per_step=fullsize.per_step(seconds) if seconds else None,
                load_and_first_step_s=seconds[0] if seconds else None, peak_vram=fullsize.peak_bytes(device),
                resident=int(applied.loaded_size()), model_bytes=int(applied.model_size()),
                patcher=patcher_class(applied), sampler="MODEL: Apply IDs -> comfy.sample euler/simple",
                method=method, **use.figures())
