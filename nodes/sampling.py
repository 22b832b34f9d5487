"""The sampler node and the decode node.

The sampler keeps the official order of random draws from one generator seeded with ``seed``: the
canvas latent sample, then the initial noise, then the scheduler's own draws (see
``ingredients_core.sampling.pipeline``). Progress, previews and Cancel are handled after every step.
"""

from __future__ import annotations

import logging

import torch
from comfy_api.latest import io, ui

from ..ingredients_core import InputError
from . import host, native_windows
from .apply_ids import put_ids, routing_payload
from .payloads import (
    IngredientsLatents,
    IngredientsModel,
    IngredientsPrompt,
    IngredientsRoutedIDs,
    IngredientsVAE,
    LatentsType,
    ModelType,
    PromptType,
    RoutedIDsType,
    RoutingType,
    VAEType,
)
from .preview import fit_rgb_factors, preview_frame
from .schema import MAX_SEED, node_schema, size_inputs, video_settings

logger = logging.getLogger(__name__)

SCHEDULERS = ["dpm", "ddim"]


def _check_frames(config, settings, patched_model) -> None:
    """The checkpoint's size, or, when ``patched_model`` samples in windows (Ingredients Long Video),
    any length: the windows are checked against the checkpoint when sampling starts."""
    from ..ingredients_core.sampling.settings import SettingsError

    if patched_model is not None and native_windows.window_length(patched_model.model_options) is not None:
        return
    try:
        settings.check_model(config)
    except SettingsError as error:
        if settings.frames <= config.sample_frames:
            raise
        raise InputError(f"frames: {settings.frames} frames need the MODEL sampled in windows of the checkpoint's "
                         f"{config.sample_frames} frames: put Ingredients Long Video on the MODEL and connect it to "
                         f"patched_model (or set frames {config.sample_frames}). {error}") from error


def _check_prompt(prompt: IngredientsPrompt, config) -> None:
    if prompt.width != config.text_embed_dim:
        raise InputError(f"prompt: embeddings are {prompt.width} wide ({prompt.source}) but the model reads "
                         f"{config.text_embed_dim}: encode the prompt with this model's T5 (or a t5xxl CLIP for "
                         "the official model).")


def _check_masks(routed: IngredientsRoutedIDs, frames: int) -> None:
    """Refuse masks whose frame count does not fit the video before anything runs (the core's message)."""
    from ..ingredients_core.routing.plan import RoutingError, resize_mask
    from ..ingredients_core.encoders.vae import latent_frame_count

    for n, mask in enumerate(routed.routing.masks or [], start=1):
        if mask is not None:
            try:
                resize_mask(mask, (latent_frame_count(frames), 1, 1), f"mask_{n}")
            except RoutingError as error:
                raise InputError(f"routed_ids: {error} (mask_{n} of Ingredients Route IDs; the sampler makes "
                                 f"{frames} frames)") from error


def _noise_device(model_device: torch.device, vae_device: torch.device) -> torch.device:
    """The official run draws everything from one generator on the pipeline's device; when
    ComfyUI keeps the VAE on another device, a CPU generator serves both (same seed, other noise)."""
    return model_device if model_device == vae_device else torch.device("cpu")


def _sampled_model(model: IngredientsModel, patched_model, routed: IngredientsRoutedIDs, settings):
    """The MODEL the Sampler runs: ``patched_model`` (the loader's MODEL after MODEL patches) or the
    loader's own, with the IDs put on as Apply IDs puts them, the official dynamic CFG and TeaCache
    (the Ingredients TeaCache node's patch) when on."""
    base = model.patcher if patched_model is None else patched_model
    if patched_model is not None and host.transformer_of(patched_model) is not model.transformer:
        raise InputError("patched_model: this MODEL is not the model's transformer (another Load Ingredients Model "
                         "or settings): connect the MODEL output of the same Load Ingredients Model as model, "
                         "after your MODEL patches.")
    sampled = put_ids(base, routed)
    if settings.dynamic_cfg:
        sampled = host.with_dynamic_cfg(sampled)
    if settings.teacache > 0:
        sampled = host.with_teacache(sampled, settings.teacache)
    return sampled


def _start(vae: IngredientsVAE, routed: IngredientsRoutedIDs, settings, generator: torch.Generator,
           dtype: torch.dtype):
    """(canvas RGB, raw canvas latent (1, 16, F, h, w), noise (1, 16, F, h, w)) in the official draw
    order from ``generator``: the canvas latent sample, then the initial noise (in ``dtype``, the
    official pipeline's latents dtype; CogVideoX's ``init_noise_sigma`` is 1)."""
    from diffusers.utils.torch_utils import randn_tensor

    from ..ingredients_core.faces.canvas import make_canvas
    from ..ingredients_core.encoders.vae import encode_first_frame, latent_frame_count
    from .image_to_video import image_latent

    canvas = make_canvas([face.crop for face in routed.tokens.ids.faces])
    host.load(vae.patcher)
    first = encode_first_frame(vae.vae, canvas, settings.height, settings.width, dtype, generator, sample=True)
    concat = image_latent(first.float(), latent_frame_count(settings.frames))        # (1, 16, F, h, w)
    shape = (1, concat.shape[2], concat.shape[1], *concat.shape[3:])                 # drawn as (1, F, 16, h, w)
    noise = randn_tensor(shape, generator=generator, device=generator.device, dtype=dtype)
    return canvas, concat, noise.permute(0, 2, 1, 3, 4).float()


def run_sampler(model: IngredientsModel, prompt: IngredientsPrompt, routed: IngredientsRoutedIDs,
                vae: IngredientsVAE, settings, patched_model=None):
    """Sample through ComfyUI's sampling with the official SAMPLER, as KSampler is built on it: the
    MODEL with the IDs (``_sampled_model``), the canvas latent on the conditioning as Image to Video
    puts it, the noise and the DPM's draws from one generator seeded with the run's seed.
    Returns (latents (1, F, 16, h, w) scaled as the pack's VAE scales them, the MODEL that ran)."""
    sampled = _sampled_model(model, patched_model, routed, settings)
    device = host.load_device(model.patcher)
    generator = torch.Generator(_noise_device(device, host.load_device(vae.patcher))).manual_seed(settings.seed)
    canvas, concat, noise = _start(vae, routed, settings, generator, sampled.model.get_dtype_inference())
    scale = float(vae.vae.config.scaling_factor)
    factors, bias = fit_rgb_factors(canvas, concat[0, :, 0] * scale)
    report = host.step_reporter(settings.steps, device, factors, bias, scale)
    latents = sample_from(sampled, prompt.positive, prompt.negative, concat, noise, settings, generator,
                          lambda step, x0, x, total: report(step + 1, preview_frame(x0.permute(0, 2, 1, 3, 4))))
    return latents.permute(0, 2, 1, 3, 4), sampled


def sample_from(sampled, positive: torch.Tensor, negative: torch.Tensor, concat: torch.Tensor, noise: torch.Tensor,
                settings, generator: torch.Generator, callback=None) -> torch.Tensor:
    """The Sampler's sampling of the MODEL ``sampled`` from its start: prompt embeddings (1, 226, D),
    the raw canvas latent and the noise (1, 16, F, h, w), the official sigmas and SAMPLER drawing from
    ``generator``; the sampled latents (1, 16, F, h, w) in model space (scaled by the VAE's factor), as
    the official SAMPLER ends (ComfyUI's own output divides them by the factor; the Sampler's
    latents keep the pack's scale, so Decode sees what it always saw)."""
    from ..ingredients_core.sampling.host_sampler import official_sigmas

    values = {"concat_latent_image": concat}
    guided = settings.cfg > 1.0  # the official loop runs no guidance at 1 or less; ComfyUI's at exactly 1
    result: list = []
    host.sample(
        sampled, noise, settings.cfg if guided else 1.0,
        host.official_sampler(settings.scheduler, generator, result),
        official_sigmas(host.model_sampling(sampled), settings.steps),
        host.conditioning_with([[positive, {}]], values),
        host.conditioning_with([[negative if negative is not None else positive, {}]], values),
        callback, settings.seed)
    return result[-1].to(host.output_device())


class Sampler(io.ComfyNode):
    """Generates the video latents: the face canvas starts the video, the prompt guides it, the routed ID tokens
    keep each person's identity. Also records which person the router gave each region (routing, for Routing
    Maps). Official defaults: 720 x 480, 49 frames, 50 dpm steps, cfg 6."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return node_schema(cls, "IngredientsSampler", "Ingredients Sampler", inputs=[
            ModelType.Input("model", tooltip="From Load Ingredients Model."),
            PromptType.Input("prompt", tooltip="From an Ingredients Encode Prompt node."),
            RoutedIDsType.Input("routed_ids", tooltip="From Ingredients Route IDs."),
            VAEType.Input("vae", tooltip="From Load Ingredients VAE (encodes the face canvas)."),
            *size_inputs(),
            io.Int.Input("steps", default=50, min=1, max=1000, tooltip="Sampling steps (official: 50)."),
            io.Float.Input("cfg", default=6.0, min=0.0, max=30.0, step=0.1,
                           tooltip="Classifier-free guidance scale (official: 6). 1 or less disables guidance."),
            io.Int.Input("seed", default=42, min=0, max=MAX_SEED, control_after_generate=True,
                         tooltip="Seed of every random draw (canvas latent, noise, scheduler)."),
            io.Combo.Input("scheduler", options=SCHEDULERS, default="dpm",
                           tooltip=("dpm = CogVideoXDPMScheduler (official, stochastic); "
                                    "ddim = CogVideoXDDIMScheduler.")),
            io.Boolean.Input("dynamic_cfg", default=False,
                             tooltip="CogVideoX dynamic guidance (cfg rises over the run). Official: off."),
            io.Float.Input("teacache", default=0.0, min=0.0, max=1.0, step=0.01, optional=True,
                           tooltip=("TeaCache threshold: skip transformer evaluations that change little "
                                    "(0 = off, every step computed). 0.10 to 0.20 are the published CogVideoX-5B "
                                    "settings (about 1.6x to 2.7x faster); the skipped count shows on the node.")),
            io.Model.Input("patched_model", optional=True,
                           tooltip=("Optional: the MODEL output of the same Load Ingredients Model after MODEL "
                                    "patches (LoRA loaders, EasyCache, TorchCompileModel, ...); the Sampler "
                                    "samples it, so every patch applies. Empty: the loader's MODEL.")),
        ], outputs=[LatentsType.Output("latents", display_name="latents",
                                       tooltip="The denoised video latents, for Ingredients Decode."),
                    RoutingType.Output("routing", display_name="routing",
                                       tooltip=("Which person the router gave each video region, per routed "
                                                "layer (last step and mean over steps), for Routing Maps."))])

    @classmethod
    def execute(cls, model: IngredientsModel, prompt: IngredientsPrompt, routed_ids: IngredientsRoutedIDs,
                vae: IngredientsVAE, width: int, height: int, frames: int, steps: int, cfg: float, seed: int,
                scheduler: str, dynamic_cfg: bool, teacache: float = 0.0, patched_model=None) -> io.NodeOutput:
        settings = video_settings(height=height, width=width, frames=frames, steps=steps, cfg=cfg, seed=seed,
                             scheduler=scheduler, dynamic_cfg=dynamic_cfg, teacache=teacache)
        _check_frames(model.transformer.config, settings, patched_model)
        _check_prompt(prompt, model.transformer.config)
        _check_masks(routed_ids, frames)
        host.check_interrupt()
        latents, sampled = run_sampler(model, prompt, routed_ids, vae, settings, patched_model)
        cache = host.teacache_report(sampled) if teacache > 0 else None
        summary = (cache.summary() if cache is not None
                   else f"TeaCache off: {steps} of {steps} transformer evaluations computed")
        logger.info("Ingredients Sampler: %s", summary)
        recorder = host.ids_patch(sampled).recorder
        routing = routing_payload(recorder.finished if recorder is not None else None, height, width, frames)
        return io.NodeOutput(IngredientsLatents(latents.to(host.output_device()), height, width, frames), routing,
                             ui=ui.PreviewText(summary))


def _decode_inputs(latents) -> list:
    """The inputs of both decode nodes: the VAE, ``latents`` (the node's own latents input), tiling."""
    return [VAEType.Input("vae", tooltip="From Load Ingredients VAE."), latents,
            io.Boolean.Input("tiling", default=True, tooltip=("Decode in tiles: much less memory, tiny seams at "
                                                              "most. Off = the official decode."))]


class Decode(io.ComfyNode):
    """Decodes the video latents to IMAGE frames (one image per frame) for ComfyUI's video and image savers."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        latents = LatentsType.Input("latents", tooltip="From Ingredients Sampler.")
        frames = io.Image.Output("frames", display_name="frames",
                                 tooltip="The video frames as an IMAGE batch (frames, height, width, 3).")
        return node_schema(cls, "IngredientsDecode", "Ingredients Decode", inputs=_decode_inputs(latents),
                           outputs=[frames])

    @classmethod
    def execute(cls, vae: IngredientsVAE, latents: IngredientsLatents, tiling: bool) -> io.NodeOutput:
        raw = (1 / vae.vae.config.scaling_factor) * latents.latents.permute(0, 2, 1, 3, 4)  # (B, C, F, h, w)
        return io.NodeOutput(decode_video(vae, raw, tiling, "Ingredients Decode"))


def decode_video(vae: IngredientsVAE, raw: torch.Tensor, tiling: bool, node: str) -> torch.Tensor:
    """Frames (B*T, H, W, 3) on the output device from raw latents (B, 16, F, h, w): ComfyUI loads
    the VAE with room for the decode; an untiled decode that runs out of memory is retried tiled."""
    from ..ingredients_core.sampling.memory import vae_decode_bytes
    from ..ingredients_core.encoders.vae import decode_raw

    batch, _, frames, height, width = raw.shape
    sliced = batch > 1  # one video at a time: the memory estimate is per video, the frames the same
    element = torch.finfo(vae.vae.dtype).bits // 8
    host.load(vae.patcher, memory_required=vae_decode_bytes(frames, height, width, element, tiling))
    try:
        video = decode_raw(vae.vae, raw, tiling=tiling, slicing=sliced)
    except host.OUT_OF_MEMORY:
        if tiling:
            raise
        video = None  # leave the except block first, so the failed attempt's tensors are freed
    if video is None:
        logger.warning("%s: out of GPU memory decoding untiled; retrying with tiling", node)
        host.free_cache()
        video = decode_raw(vae.vae, raw, tiling=True, slicing=sliced)
    return video.to(host.output_device())


def _latent_samples(samples) -> torch.Tensor:
    """The (B, 16, F, h, w) tensor of a ComfyUI LATENT, or an error that names the input."""
    tensor = samples.get("samples") if isinstance(samples, dict) else None
    if not isinstance(tensor, torch.Tensor) or tensor.ndim != 5 or tensor.shape[1] != 16:
        found = tuple(tensor.shape) if isinstance(tensor, torch.Tensor) else type(samples).__name__
        raise InputError(f"samples: expected a CogVideoX video LATENT (B, 16, frames, h, w), got {found}: connect "
                         "the LATENT of a sampler that ran the Ingredients MODEL (or Ingredients Image to Video).")
    return tensor


class DecodeLatent(io.ComfyNode):
    """Decodes a ComfyUI video LATENT (from KSampler or SamplerCustomAdvanced on the Ingredients MODEL) with the
    Ingredients VAE to IMAGE frames. ComfyUI's own VAE Decode with a CogVideoX VAE file (VAELoader, ComfyUI 0.21
    and later) decodes the same LATENT."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        samples = io.Latent.Input("samples", tooltip=("The sampled video LATENT (B, 16, frames, h, w), in raw VAE "
                                                      "units as ComfyUI's samplers return it."))
        frames = io.Image.Output("frames", display_name="frames",
                                 tooltip="The video frames as an IMAGE batch (videos x frames, height, width, 3), "
                                         "video after video.")
        return node_schema(cls, "IngredientsDecodeLatent", "Ingredients Decode LATENT",
                           inputs=_decode_inputs(samples), outputs=[frames])

    @classmethod
    def execute(cls, vae: IngredientsVAE, samples: dict, tiling: bool) -> io.NodeOutput:
        return io.NodeOutput(decode_video(vae, _latent_samples(samples), tiling, "Ingredients Decode LATENT"))
