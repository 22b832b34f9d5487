"""The sampler node and the decode node.

The sampler keeps the official order of random draws from one generator seeded with ``seed``: the
canvas latent sample, then the initial noise, then the scheduler's own draws (see
``ingredients_core.pipeline``). Progress, previews and Cancel are handled after every step.
"""

from __future__ import annotations

import logging

import torch
from comfy_api.latest import io, ui

from . import host
from .payloads import (
    IngredientsLatents,
    IngredientsModel,
    IngredientsPrompt,
    IngredientsRoutedIDs,
    IngredientsRouting,
    IngredientsVAE,
    LatentsType,
    ModelType,
    PromptType,
    RoutedIDsType,
    RoutingType,
    VAEType,
)
from .preview import fit_rgb_factors, preview_frame

logger = logging.getLogger(__name__)

CATEGORY = "Ingredients"
SCHEDULERS = ["dpm", "ddim"]
MAX_SEED = 0xFFFFFFFFFFFFFFFF


def _settings(**values):
    from ..ingredients_core.pipeline import GenerationSettings

    settings = GenerationSettings(**values)
    settings.validate()
    return settings


def _check_prompt(prompt: IngredientsPrompt, config) -> None:
    if prompt.width != config.text_embed_dim:
        raise ValueError(f"prompt: embeddings are {prompt.width} wide ({prompt.source}) but the model reads "
                         f"{config.text_embed_dim}: encode the prompt with this model's T5 (or a t5xxl CLIP for "
                         "the official model).")


def _check_ids(routed: IngredientsRoutedIDs, model: IngredientsModel) -> None:
    from .payloads import check_projected_with

    check_projected_with(routed.tokens, model.weights, model.folder, "the sampler's model")


def _check_masks(routed: IngredientsRoutedIDs, frames: int) -> None:
    """Refuse masks whose frame count does not fit the video before anything runs (the core's message)."""
    from ..ingredients_core.routing import RoutingError, resize_mask
    from ..ingredients_core.vae import latent_frame_count

    for n, mask in enumerate(routed.routing.masks or [], start=1):
        if mask is not None:
            try:
                resize_mask(mask, (latent_frame_count(frames), 1, 1), f"mask_{n}")
            except RoutingError as error:
                raise ValueError(f"routed_ids: {error} (mask_{n} of Ingredients Route IDs; the sampler makes "
                                 f"{frames} frames)") from error


def routing_payload(recorder, settings) -> IngredientsRouting:
    """The recorder's maps per routed layer (CPU tensors), with the video size."""
    layers = tuple(sorted(recorder.last))
    return IngredientsRouting(layers, tuple(recorder.maps("last", k) for k in layers),
                              tuple(recorder.maps("mean", k) for k in layers),
                              settings.height, settings.width, settings.frames)


def _noise_device(model_device: torch.device, vae_device: torch.device) -> torch.device:
    """The official run draws everything from one generator on the pipeline's device; when
    ComfyUI keeps the VAE on another device, a CPU generator serves both (same seed, other noise)."""
    return model_device if model_device == vae_device else torch.device("cpu")


def _activation_bytes(model: IngredientsModel, routed: IngredientsRoutedIDs, settings, dtype: torch.dtype) -> int:
    """Activation bytes of one transformer forward as the run makes it, for ComfyUI to decide how much
    of the transformer stays on the GPU. Both CFG halves go through one forward (the loop cannot
    split them as ComfyUI's own sampler can), so that is also the smallest run that works."""
    from ..ingredients_core.memory import forward_size, transformer_activation_bytes
    from ..ingredients_core.vae import latent_frame_count

    batch = 2 if settings.cfg > 1.0 else 1
    size = forward_size(model.transformer.config, batch, latent_frame_count(settings.frames), settings.height // 8,
                        settings.width // 8, len(routed.tokens.ids))
    return transformer_activation_bytes(size, torch.finfo(dtype).bits // 8, settings.ff_chunk)


def run_sampler(model: IngredientsModel, prompt: IngredientsPrompt, routed: IngredientsRoutedIDs,
                vae: IngredientsVAE, settings, recorder=None):
    """The core's generation path (``generation.sample_video``) for these inputs, with ComfyUI
    loading each model before it is used and reporting every step; returns its ``SampleResult``.
    ``recorder`` (a ``RoutingRecorder``) receives the router's assignments."""
    from ..ingredients_core.generation import TRANSFORMER_STAGE, RunHooks, RunPlacement, sample_video

    device = host.load_device(model.patcher)
    placement = RunPlacement(device, model.transformer.placement()[1],
                             _noise_device(device, host.load_device(vae.patcher)))
    reporter = []

    def started(canvas, image_latents) -> None:
        factors, bias = fit_rgb_factors(canvas, image_latents[0, 0])
        reporter.append(host.step_reporter(settings.steps, device, factors, bias,
                                           float(vae.vae.config.scaling_factor)))

    def load(stage: str) -> None:
        if stage == TRANSFORMER_STAGE:
            needed = _activation_bytes(model, routed, settings, placement.dtype)
            host.load_for_run(model.patcher, needed, needed)
        else:
            host.load(vae.patcher)

    hooks = RunHooks(load=load, started=started,
                     step=lambda info: reporter[0](info.step + 1, preview_frame(info.denoised)))
    return sample_video(model.transformer, vae.vae, model.scheduler_config,
                        [face.crop for face in routed.tokens.ids.faces], prompt.positive, prompt.negative,
                        routed.tokens.tokens, settings, placement, hooks, routing=routed.routing_for(model),
                        recorder=recorder)


class Sampler(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="IngredientsSampler",
            display_name="Ingredients Sampler",
            category=CATEGORY,
            description=("Generates the video latents: the face canvas starts the video, the prompt guides it, "
                         "the routed ID tokens keep each person's identity. Also records which person the "
                         "router gave each region (routing, for Routing Maps). Official defaults: 720 x 480, "
                         "49 frames, 50 dpm steps, cfg 6."),
            inputs=[
                ModelType.Input("model", tooltip="From Load Ingredients Model."),
                PromptType.Input("prompt", tooltip="From an Ingredients Encode Prompt node."),
                RoutedIDsType.Input("routed_ids", tooltip="From Ingredients Route IDs."),
                VAEType.Input("vae", tooltip="From Load Ingredients VAE (encodes the face canvas)."),
                io.Int.Input("width", default=720, min=16, max=2048, step=16,
                             tooltip="Video width in pixels (multiple of 16). The released model needs 720."),
                io.Int.Input("height", default=480, min=16, max=2048, step=16,
                             tooltip="Video height in pixels (multiple of 16). The released model needs 480."),
                io.Int.Input("frames", default=49, min=1, max=49, step=4,
                             tooltip="Number of frames, 4k+1 (1, 5, ..., 49). The released model needs 49."),
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
            ],
            outputs=[LatentsType.Output("latents", display_name="latents",
                                        tooltip="The denoised video latents, for Ingredients Decode."),
                     RoutingType.Output("routing", display_name="routing",
                                        tooltip=("Which person the router gave each video region, per routed "
                                                 "layer (last step and mean over steps), for Routing Maps."))],
        )

    @classmethod
    def execute(cls, model: IngredientsModel, prompt: IngredientsPrompt, routed_ids: IngredientsRoutedIDs,
                vae: IngredientsVAE, width: int, height: int, frames: int, steps: int, cfg: float, seed: int,
                scheduler: str, dynamic_cfg: bool, teacache: float = 0.0) -> io.NodeOutput:
        from ..ingredients_core.routing import RoutingRecorder

        settings = _settings(height=height, width=width, frames=frames, steps=steps, cfg=cfg, seed=seed,
                             scheduler=scheduler, dynamic_cfg=dynamic_cfg, teacache=teacache)
        settings.check_model(model.transformer.config)
        _check_prompt(prompt, model.transformer.config)
        _check_ids(routed_ids, model)
        _check_masks(routed_ids, frames)
        host.check_interrupt()
        recorder = RoutingRecorder()
        result = run_sampler(model, prompt, routed_ids, vae, settings, recorder)
        summary = (result.cache.summary() if result.cache is not None
                   else f"TeaCache off: {steps} of {steps} transformer evaluations computed")
        logger.info("Ingredients Sampler: %s", summary)
        return io.NodeOutput(IngredientsLatents(result.latents.to(host.output_device()), height, width, frames),
                             routing_payload(recorder, settings), ui=ui.PreviewText(summary))


class Decode(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="IngredientsDecode",
            display_name="Ingredients Decode",
            category=CATEGORY,
            description=("Decodes the video latents to IMAGE frames (one image per frame) for ComfyUI's video "
                         "and image savers."),
            inputs=[
                VAEType.Input("vae", tooltip="From Load Ingredients VAE."),
                LatentsType.Input("latents", tooltip="From Ingredients Sampler."),
                io.Boolean.Input("tiling", default=True,
                                 tooltip=("Decode in tiles: much less memory, tiny seams at most. "
                                          "Off = the official decode.")),
            ],
            outputs=[io.Image.Output("frames", display_name="frames",
                                     tooltip="The video frames as an IMAGE batch (frames, height, width, 3).")],
        )

    @classmethod
    def execute(cls, vae: IngredientsVAE, latents: IngredientsLatents, tiling: bool) -> io.NodeOutput:
        raw = (1 / vae.vae.config.scaling_factor) * latents.latents.permute(0, 2, 1, 3, 4)  # (B, C, F, h, w)
        return io.NodeOutput(decode_video(vae, raw, tiling, "Ingredients Decode"))


def decode_video(vae: IngredientsVAE, raw: torch.Tensor, tiling: bool, node: str) -> torch.Tensor:
    """Frames (B*T, H, W, 3) on the output device from raw latents (B, 16, F, h, w): ComfyUI loads
    the VAE with room for the decode; an untiled decode that runs out of memory is retried tiled."""
    from ..ingredients_core.memory import vae_decode_bytes
    from ..ingredients_core.vae import decode_raw

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
        raise ValueError(f"samples: expected a CogVideoX video LATENT (B, 16, frames, h, w), got {found}: connect "
                         "the LATENT of a sampler that ran the Ingredients MODEL (or Ingredients Image to Video).")
    return tensor


class DecodeLatent(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="IngredientsDecodeLatent",
            display_name="Ingredients Decode LATENT",
            category=CATEGORY,
            description=("Decodes a ComfyUI video LATENT (from KSampler or SamplerCustomAdvanced on the Ingredients "
                         "MODEL) with the Ingredients VAE to IMAGE frames. ComfyUI's own VAE Decode with a "
                         "CogVideoX VAE file (VAELoader, ComfyUI 0.21 and later) decodes the same LATENT."),
            inputs=[
                VAEType.Input("vae", tooltip="From Load Ingredients VAE."),
                io.Latent.Input("samples", tooltip=("The sampled video LATENT (B, 16, frames, h, w), in raw VAE "
                                                     "units as ComfyUI's samplers return it.")),
                io.Boolean.Input("tiling", default=True,
                                 tooltip=("Decode in tiles: much less memory, tiny seams at most. "
                                          "Off = the official decode.")),
            ],
            outputs=[io.Image.Output("frames", display_name="frames",
                                     tooltip=("The video frames as an IMAGE batch (videos x frames, height, width, "
                                              "3), video after video."))],
        )

    @classmethod
    def execute(cls, vae: IngredientsVAE, samples: dict, tiling: bool) -> io.NodeOutput:
        return io.NodeOutput(decode_video(vae, _latent_samples(samples), tiling, "Ingredients Decode LATENT"))
