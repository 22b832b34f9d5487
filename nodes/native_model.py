"""The Ingredients transformer as a native ComfyUI ``MODEL`` (KSampler, SamplerCustomAdvanced, LoRAs,
MODEL patches), beside the pack's own sampler. The one module besides ``host.py`` that meets ComfyUI.

- the latent format: ``host.IngredientsLatentFormat`` (16 channels, 3-D, scaled by 0.7, the 5B VAE's);
- :class:`IngredientsModelConfig`: a ``supported_models_base.BASE`` with no UNet of ComfyUI's own
  (``disable_unet_model_creation``), V-prediction on ``ModelSamplingDiscrete`` over the scaled-linear
  betas 0.00085..0.012, 1000 steps, zero terminal SNR: diffusers' CogVideoX schedule (ComfyUI's
  "linear" schedule is LDM's, the square of a linspace of square roots: diffusers' "scaled_linear");
- :class:`IngredientsBaseModel`: a ``model_base.BaseModel`` whose ``diffusion_model`` IS the pack's
  ``IngredientsTransformer`` (state-dict keys ``diffusion_model.<official key>``); its ``_apply_model``
  runs ComfyUI's ``DIFFUSION_MODEL`` wrappers (EasyCache) around the transformer in ComfyUI's latent
  layout (B, C, F, H, W) and applies the IDs of *Ingredients Apply IDs* from ``transformer_options``;
- :func:`model_patcher`: the ``MODEL`` (a ``CoreModelPatcher`` where the host has one);
- :func:`apply_ids`: a clone of a MODEL carrying an ``IDPatch`` (``ingredients_core.routing.host_ids``);
- sampling the MODEL (section 5): the official DDIM/DPM as a ``KSAMPLER``, dynamic CFG as a
  ``sampler_post_cfg_function`` (the maths in ``ingredients_core.sampling.host_sampler``);
- LoRAs on the MODEL (section 6: ComfyUI's key map, ``load_lora``, ``add_patches``; the pack's key
  map is ``ingredients_core.weights.lora_keys``) and the conditioning/ComfyUI-VAE helpers of Image to Video
  (section 7);
- TeaCache on the MODEL (section 8): :func:`with_teacache`, :func:`teacache_report` (the cache is
  ``ingredients_core.sampling.step_cache``'s, one per sampling run, bounded by an OUTER_SAMPLE wrapper).
"""

from __future__ import annotations

import functools
import logging
import math
from pathlib import Path
from typing import Any, Optional

import comfy.conds
import comfy.lora
import comfy.model_base
import comfy.model_management
import comfy.model_patcher
import comfy.patcher_extension
import comfy.samplers
import comfy.supported_models_base
import torch

from ..ingredients_core import InputError
from ..ingredients_core.sampling.settings import FF_CHUNK  # the feed-forward chunk the pack's sampler runs with
from . import host, native_checks, native_windows

logger = logging.getLogger(__name__)

IDS_KEY = "ingredients_ids"          # transformer_options key of the ID patch
FF_CHUNK_KEY = "ingredients_ff_chunk"  # optional transformer_options key: feed-forward token chunk
WRAPPER_KEY = "ingredients_ids"      # key of the OUTER_SAMPLE wrapper that bounds a run
SPACE_KEY = "ingredients_space"      # transformer_options key: "ddpm" when the official SAMPLER samples
TEXT_FIX = ("encode the prompt with CLIPTextEncode on a CogVideoX/T5-XXL CLIP (CLIPLoader, type cogvideox or sd3) "
            "or the pack's Encode Prompt nodes")


# -- 1. latent format and model config -----------------------------------------------------------
class IngredientsModelConfig(comfy.supported_models_base.BASE):
    """The model family config ComfyUI's sampling reads (``sampling_settings``, ``latent_format``,
    dtypes), plus what the pack needs to check its own inputs against the MODEL."""

    unet_config = {"disable_unet_model_creation": True}
    unet_extra_config = {}
    sampling_settings = {"beta_schedule": "linear", "linear_start": 0.00085, "linear_end": 0.012,
                         "timesteps": 1000, "zsnr": True}
    latent_format = host.IngredientsLatentFormat  # fixed preview colours (host.COGVIDEOX_RGB_FACTORS)
    supported_inference_dtypes = [torch.bfloat16, torch.float16, torch.float32]
    memory_usage_factor = 2.0  # only ComfyUI's generic estimate; memory_required below uses the pack's

    def __init__(self, storage: torch.dtype, compute: torch.dtype, routing_mode: str, folder: Optional[Path],
                 weights: Any = None):
        super().__init__(dict(self.unet_config, dtype=storage))
        self.manual_cast_dtype = compute if compute != storage else None
        self.compute_dtype = compute
        self.routing_mode = routing_mode  # the loader's routing mode ("from model" on Route IDs)
        self.model_folder = folder         # where the weights came from (Project IDs must use the same)
        self.weights = weights             # which weights (payloads.WeightsIdentity): Apply IDs compares it


# -- 2. rotary embeddings (CPU, cached per grid; moved to the call's device per call) ------------
@functools.lru_cache(maxsize=8)
def _rotary_cpu(config, height: int, width: int, frames: int) -> tuple[torch.Tensor, torch.Tensor]:
    from ..ingredients_core.sampling.official import rotary_embeddings

    return rotary_embeddings(config, height, width, frames, torch.device("cpu"))


def rotary_for(config, frames: int, height: int, width: int, device: torch.device):
    """(cos, sin) for a latent grid F x H x W, on ``device``; None for models without rotary embeddings."""
    if not config.use_rotary_positional_embeddings:
        return None
    cos, sin = _rotary_cpu(config, height * 8, width * 8, frames)
    return cos.to(device), sin.to(device)


# -- 3. the BaseModel ----------------------------------------------------------------------------
class IngredientsBaseModel(comfy.model_base.BaseModel):
    """ComfyUI's view of the Ingredients transformer (V-prediction, CogVideoX latents, image latent
    on channels). Keeps nothing but the transformer and ComfyUI's ``model_sampling`` buffers."""

    def __init__(self, model_config: IngredientsModelConfig, transformer: torch.nn.Module):
        super().__init__(model_config, model_type=comfy.model_base.ModelType.V_PREDICTION, device=None)
        self.diffusion_model = transformer
        self.memory_usage_factor_conds = ()

    def get_dtype(self):
        return self.model_config.unet_config["dtype"]

    def get_dtype_inference(self):  # 0.33 has it; 0.3.64 reads manual_cast_dtype inline
        return self.manual_cast_dtype if self.manual_cast_dtype is not None else self.get_dtype()

    def _apply_model(self, x, t, c_concat=None, c_crossattn=None, control=None, transformer_options={}, **kwargs):
        """Denoised x0 (B, 16, F, H, W) for the sampler's x at sigma ``t``; under the official SAMPLER
        (``transformer_options[SPACE_KEY] == "ddpm"``) x is the DDPM sample x_t and the result the
        v-prediction, as the official loop steps them (ComfyUI's guidance, linear, is the same on both)."""
        sigma = t
        ddpm = transformer_options.get(SPACE_KEY) == "ddpm"
        xc = x if ddpm else self.model_sampling.calculate_input(sigma, x)       # x_t, (B, 16, F, H, W)
        if c_concat is not None:                                                # + image latent: (B, 32, F, H, W)
            c_concat = native_windows.canvas_for_call(c_concat, transformer_options, x.shape[2])  # 0.3.64's windows
            xc = torch.cat([xc, comfy.model_management.cast_to_device(c_concat, xc.device, xc.dtype)], dim=1)
        dtype = self.get_dtype_inference()
        xc = xc.to(dtype)
        timestep = self.model_sampling.timestep(t).float()
        context = self._context(c_crossattn, xc.device, dtype)
        options = dict(transformer_options)
        options.setdefault("sigmas", sigma)
        wrappers = comfy.patcher_extension.get_all_wrappers(comfy.patcher_extension.WrappersMP.DIFFUSION_MODEL,
                                                            options)
        out = comfy.patcher_extension.WrapperExecutor.new_class_executor(
            self._diffusion_forward, self.diffusion_model, wrappers).execute(xc, timestep, context, control, options)
        if ddpm:
            return out.float()
        return self.model_sampling.calculate_denoised(sigma, out.float(), x)

    def _context(self, context, device, dtype):
        width = self.diffusion_model.config.text_embed_dim
        if context is None:
            raise InputError(f"Ingredients MODEL: no text conditioning reached the model; {TEXT_FIX}.")
        if context.shape[-1] != width:
            raise InputError(f"Ingredients MODEL: the text conditioning is {context.shape[-1]} wide, the model reads "
                             f"{width} (T5-XXL); {TEXT_FIX}.")
        return comfy.model_management.cast_to_device(context, device, dtype)

    def _diffusion_forward(self, xc, timestep, context, control, transformer_options):
        """The transformer in ComfyUI's layout: xc (B, C, F, H, W) -> v (B, 16, F, H, W)."""
        transformer = self.diffusion_model
        hidden = xc.permute(0, 2, 1, 3, 4)                                       # (B, F, C, H, W)
        batch, frames, _, height, width = hidden.shape
        rotary = rotary_for(transformer.config, frames, height, width, hidden.device)
        ids = routing = order = None
        patch = transformer_options.get(IDS_KEY)
        if patch is not None:
            ids, routing, order = _step_inputs(self, patch, hidden, transformer_options, timestep)
        if order is not None:  # official routing: the uncond rows first
            order = order.to(hidden.device)
            hidden, context, timestep = hidden[order], context[order], timestep[order]
        replaces = native_checks.block_replaces(transformer_options, len(transformer.transformer_blocks))
        v = transformer(hidden, context, timestep, rotary, ids=ids, routing=routing,
                        cache=_teacache_call(self, transformer_options, timestep, order),
                        ff_chunk=transformer_options.get(FF_CHUNK_KEY, FF_CHUNK),
                        block_replace=native_checks.core_block_replace(replaces, transformer_options))
        if order is not None:
            v = v[torch.argsort(order)]
        return v.permute(0, 2, 1, 3, 4)                                          # (B, 16, F, H, W)

    # -- conditioning ----------------------------------------------------------------------------
    def concat_cond(self, **kwargs):
        """``concat_latent_image`` (raw VAE latent (B, 16, F, H, W), the noise's frames and size) -> scaled,
        repeated to the noise's batch; a conditioning without one, or with other frames, is refused."""
        noise = kwargs.get("noise")
        image = kwargs.get("concat_latent_image")
        if image is None:
            raise native_checks.no_canvas_error(kwargs.get("prompt_type"))
        native_checks.check_canvas(image.shape, noise.shape)
        image = self.process_latent_in(image.to(noise.dtype))
        if image.shape[0] != noise.shape[0]:
            image = image[:1].expand(noise.shape[0], *image.shape[1:])
        return image.to(kwargs.get("device", noise.device))

    def extra_conds(self, **kwargs):
        self._check_run(kwargs["noise"].shape)
        out = {"c_concat": comfy.conds.CONDNoiseShape(self.concat_cond(**kwargs))}
        cross_attn = kwargs.get("cross_attn")
        if cross_attn is not None:
            out["c_crossattn"] = comfy.conds.CONDCrossAttn(self._text_tokens(cross_attn))
        return out

    def _check_run(self, noise_shape) -> None:
        """Before the first step (ComfyUI encodes the conds after loading the MODEL with its object
        patches and setting ``current_patcher``): what this run cannot sample is refused, with the fix."""
        patcher = getattr(self, "current_patcher", None)
        options = getattr(patcher, "model_options", None) or {}
        native_checks.check_model_sampling(self.model_sampling)
        native_windows.check_run(self.diffusion_model.config, noise_shape, options)
        native_checks.check_model_options(options, len(self.diffusion_model.transformer_blocks))

    def resize_cond_for_context_window(self, cond_key, cond_value, window, x_in, device, retain_index_list=[]):
        """ComfyUI 0.33's cut of a cond for a context window: the canvas latent (``c_concat``) keeps the
        video's frame 0 in the window's first frame (``native_windows.window_canvas``); other conds take
        ComfyUI's default (None)."""
        cond = getattr(cond_value, "cond", None)
        if cond_key != "c_concat" or not isinstance(cond, torch.Tensor) or cond.shape[2] != x_in.shape[2]:
            return None
        return cond_value._copy_with(native_windows.window_canvas(cond, native_windows.window_frames(window)).to(device))

    def _text_tokens(self, text: torch.Tensor) -> torch.Tensor:
        """The prompt's T5 tokens (B, 226, D) as the model reads them (its learned positions cover
        exactly 226). Fewer (CLIPLoader ``sd3`` gives 77) is refused with the fixes: padding after the
        encoder is not what T5 gives for pad tokens. More (CLIPTextEncode never truncates) keeps the
        first 226 with a warning: near the official text, whose tokenizer cuts before T5 and keeps the
        end token (the pack's Encode Prompt nodes do exactly that). Called once per sampling run."""
        tokens = self.diffusion_model.config.max_text_seq_length
        if text.shape[-2] < tokens:
            raise InputError(
                f"Ingredients MODEL: the text conditioning has {text.shape[-2]} tokens, the model reads {tokens} "
                f"(padded T5 tokens, as the official pipeline): put ComfyUI's T5TokenizerOptions (min_length {tokens}) "
                "between CLIPLoader and CLIPTextEncode, use CLIPLoader type cogvideox, or take the positive/"
                "negative outputs of the pack's Encode Prompt nodes.")
        if text.shape[-2] > tokens:
            logger.warning("Ingredients MODEL: the text conditioning has %d tokens (a prompt over %d T5 tokens; "
                           "CLIPTextEncode does not truncate); the model reads the first %d. The pack's Encode "
                           "Prompt nodes truncate as the official pipeline does (end token kept).",
                           text.shape[-2], tokens - 1, tokens)
            text = text[..., :tokens, :]
        return text

    def memory_required(self, input_shape, cond_shapes={}):
        """Activation bytes of one forward on ``input_shape`` (B, 16, F, H, W) (the pack's estimate)."""
        from ..ingredients_core.sampling.memory import forward_size, transformer_activation_bytes
        from ..ingredients_core.routing.plan import MAX_IDS

        batch, _, frames, height, width = input_shape
        size = forward_size(self.diffusion_model.config, batch, frames, height, width, MAX_IDS)
        return transformer_activation_bytes(size, comfy.model_management.dtype_size(self.get_dtype_inference()),
                                            FF_CHUNK)


def _step_inputs(model: IngredientsBaseModel, patch, hidden: torch.Tensor, options: dict, timestep: torch.Tensor):
    """The ID patch's inputs for this call; routing options that do not fit the video (a mask's frame
    count) are refused naming the node to fix."""
    from ..ingredients_core.routing.plan import RoutingError

    try:
        return patch.step_inputs(model.diffusion_model, hidden.shape, hidden.device, hidden.dtype,
                                 _position(model, options, timestep), options.get("cond_or_uncond") or [],
                                 window=native_windows.call_window(options, hidden.shape[1]))
    except RoutingError as error:
        raise InputError(f"Ingredients Apply IDs: {error} (mask_N of Ingredients Route IDs; the latent has "
                         f"{hidden.shape[1]} frames)") from error


def _position(model: IngredientsBaseModel, options: dict, timestep: torch.Tensor) -> tuple[int, int]:
    from ..ingredients_core.routing.host_ids import step_position

    return step_position(options["sigmas"], options.get("sample_sigmas"), timestep,
                         model.model_sampling.num_timesteps)


# -- 4. the MODEL ------------------------------------------------------------------------------------
def model_patcher(transformer, storage: torch.dtype, compute: torch.dtype, routing_mode: str,
                  folder: Optional[Path] = None, disable_dynamic: bool = False, weights: Any = None):
    """The MODEL for a loaded transformer (kept on the offload device until ComfyUI loads it): a
    ``CoreModelPatcher`` where the host has it (``host.patcher_class``). The pack's sampler loads this
    same patcher, so ComfyUI's bookkeeping of the weights is one (its clones, such as Apply IDs'
    output, are unloaded by ComfyUI before another clone loads). The q-former also has a patcher of
    its own (Project IDs loads 0.15 B parameters, not 6.4 B); when this one has moved it away,
    ``host.load_part`` loads it again. Under DynamicVRAM (0.33 on NVIDIA, a ``ModelPatcherDynamic``
    that keeps per-layer state on the modules) the q-former gets no second patcher and Project IDs
    uses this one: read from ComfyUI's code, not run on a GPU.
    ``disable_dynamic``: a plain ``ModelPatcher`` (what ComfyUI asks of a loader's
    ``cached_patcher_init`` factory for its non-dynamic delegates)."""
    config = IngredientsModelConfig(storage, compute, routing_mode, folder, weights)
    model = IngredientsBaseModel(config, transformer)
    load_device, offload_device = host.devices("diffusion")
    patcher_cls = comfy.model_patcher.ModelPatcher if disable_dynamic else host.patcher_class()
    return patcher_cls(model, load_device=load_device, offload_device=offload_device)


def transformer_of(model) -> Any:
    """The IngredientsTransformer of a MODEL, or a ValueError naming the fix."""
    inner = getattr(model, "model", None)
    if not isinstance(inner, IngredientsBaseModel):
        raise InputError(f"model: this MODEL is a {type(inner).__name__}, not the Ingredients model: connect the "
                         "MODEL output of Load Ingredients Model (or a patch of it).")
    return inner.diffusion_model


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


# -- 5. sampling the MODEL (issue 15, part 4) ------------------------------------------------------
def _official_sampler_function(model, x, sigmas, extra_args=None, callback=None, disable=None,
                               scheduler: str = "dpm", generator: Optional[torch.Generator] = None,
                               result: Optional[list] = None):
    """A k-diffusion sampler function (ComfyUI's protocol): ``model`` is ComfyUI's
    ``KSamplerX0Inpaint`` around the guider, ``model(x, sigma * s_in, **extra_args)`` -> guided output;
    the guider's base model carries ``model_sampling`` and the compute dtype (the loop keeps its state
    in it, as the official pipeline); ``extra_args["seed"]`` seeds the DPM unless ``generator`` (the
    Ingredients Sampler's, which drew the canvas latent and the noise) is given; ``result`` (a list)
    receives the sampled latents in model space, before ComfyUI rescales them. Where ComfyUI's
    guidance is linear (``_v_space_fits``) the model runs in the official loop's own space (x_t in,
    v out: the command line's loop to the bit); else in k-diffusion space, to float rounding."""
    from ..ingredients_core.sampling.host_sampler import sample_official

    extra_args = {} if extra_args is None else extra_args
    base = model.inner_model.inner_model
    v_space = _v_space_fits(extra_args)
    logger.debug("official %s SAMPLER: %s space", scheduler, "the official loop's (v)" if v_space else "k-diffusion")
    call_args = extra_args
    if v_space:
        options = dict(extra_args.get("model_options") or {})
        options["transformer_options"] = dict(options.get("transformer_options") or {}, **{SPACE_KEY: "ddpm"})
        call_args = dict(extra_args, model_options=options)

    def denoise(x_in: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        return model(x_in, sigma, **call_args)

    def report(info) -> None:  # the core's StepInfo -> ComfyUI's callback dict (x at the next sigma, x0)
        i, sigma = info.step, sigmas[info.step]
        x_next = info.latents.transpose(1, 2).float() * (1 + sigmas[i + 1].float() ** 2) ** 0.5
        callback({"x": x_next, "i": i, "sigma": sigma, "sigma_hat": sigma, "denoised": info.denoised.transpose(1, 2)})

    dtype = base.get_dtype_inference() if hasattr(base, "get_dtype_inference") else x.dtype
    out = sample_official(denoise, x, sigmas, base.model_sampling, scheduler, extra_args.get("seed"),
                          report if callback is not None else None, disable=disable, generator=generator,
                          dtype=dtype, v_space=v_space, start=_exact_start(model, x, sigmas) if v_space else None)
    if result is not None:
        result.append(out)
    return out


def _v_space_fits(extra_args: dict) -> bool:
    """Whether ComfyUI's guidance gives the same result on v as on x0 (it is affine in the model's
    output): no sampler_cfg_function or pre-CFG function (RescaleCFG, ...), no post-CFG function but
    the pack's Dynamic CFG (APG, CFGNorm and SLG's act on x0), no inpainting mask."""
    options = extra_args.get("model_options") or {}
    if extra_args.get("denoise_mask") is not None or "sampler_cfg_function" in options \
            or options.get("sampler_pre_cfg_function"):
        return False
    return all(isinstance(fn, DynamicCFG) for fn in options.get("sampler_post_cfg_function", []))


def _exact_start(model, x: torch.Tensor, sigmas: torch.Tensor) -> Optional[torch.Tensor]:
    """The unscaled noise ComfyUI's KSAMPLER kept (``model.noise``): x_t itself when x is that noise
    scaled to the model's largest sigma on an empty latent (x_t = x / sqrt(1 + sigma^2) would round)."""
    noise, latent = getattr(model, "noise", None), getattr(model, "latent_image", None)
    if noise is None or noise.shape != x.shape or (latent is not None and bool(torch.count_nonzero(latent))):
        return None
    sigma_max, first = float(model.inner_model.inner_model.model_sampling.sigma_max), float(sigmas[0])
    if not (math.isclose(sigma_max, first, rel_tol=1e-5) or first > sigma_max):
        return None
    return noise.to(device=x.device, dtype=x.dtype)


def official_sampler(scheduler: str, generator: Optional[torch.Generator] = None, result: Optional[list] = None):
    """A ComfyUI ``SAMPLER`` running the pack's official ``scheduler`` (``dpm`` or ``ddim``); the DPM
    draws from ``generator`` when given, else from one seeded with the run's seed; ``result`` (a
    list) receives the sampled latents in model space (the Ingredients Sampler's output)."""
    options = {"scheduler": scheduler}
    if generator is not None:
        options["generator"] = generator
    if result is not None:
        options["result"] = result
    return comfy.samplers.KSAMPLER(_official_sampler_function, extra_options=options)


def sample(model, noise: torch.Tensor, cfg: float, sampler, sigmas: torch.Tensor, positive: list, negative: list,
           callback, seed: int) -> torch.Tensor:
    """ComfyUI's own sampling of a MODEL (``comfy.sample.sample_custom``, what SamplerCustomAdvanced runs)
    from ``noise`` (B, 16, F, h, w) on an empty latent: raw VAE latents on the intermediate device.
    ``callback(step, x0, x, total)`` after every step (ComfyUI's protocol)."""
    import comfy.sample
    import comfy.utils

    latent = torch.zeros_like(noise)
    return comfy.sample.sample_custom(model, noise, cfg, sampler, sigmas, positive, negative, latent,
                                      callback=callback, disable_pbar=not comfy.utils.PROGRESS_BAR_ENABLED, seed=seed)


def model_sampling(model):
    """The MODEL's ``model_sampling`` with its object patches applied (as BasicScheduler reads it)."""
    return model.get_model_object("model_sampling")


class DynamicCFG:
    """ComfyUI ``sampler_post_cfg_function``: the official dynamic guidance. The scale at each step
    comes from the step's timestep (its sigma on the model's schedule) and the number of steps of
    the sigmas being sampled; without an unconditional pass (cfg 1) the result is left as it is."""

    def __call__(self, args: dict) -> torch.Tensor:
        from ..ingredients_core.sampling.host_sampler import dynamic_cfg_scale

        cfg, uncond = args["cond_scale"], args["uncond_denoised"]
        if args.get("uncond") is None or cfg <= 1.0:
            return args["denoised"]
        sample_sigmas = args["model_options"].get("transformer_options", {}).get("sample_sigmas")
        if sample_sigmas is None:
            raise RuntimeError("Ingredients Dynamic CFG: the sampler gave no sample_sigmas (ComfyUI sets them in "
                               "CFGGuider); use KSampler or SamplerCustomAdvanced with CFGGuider")
        scale = dynamic_cfg_scale(cfg, len(sample_sigmas) - 1, args["model"].model_sampling, args["sigma"])
        return uncond + scale * (args["cond_denoised"] - uncond)


def with_dynamic_cfg(model):
    """A clone of the MODEL whose guidance follows the official dynamic CFG."""
    patched = model.clone()
    patched.set_model_sampler_post_cfg_function(DynamicCFG())
    return patched


# -- 6. LoRAs on the MODEL (ComfyUI's load_lora and add_patches) ----------------------------------
def model_weight_shapes(model) -> dict[str, tuple[int, ...]]:
    """Shapes of a MODEL's state-dict keys (``diffusion_model.<key>``) without copying weights."""
    return {key: tuple(tensor.shape) for key, tensor in model.model.state_dict().items()}


def host_lora_key_map(model) -> dict:
    """ComfyUI's own LoRA key map of the MODEL (what LoraLoaderModelOnly understands)."""
    return comfy.lora.model_lora_keys_unet(model.model, {})


def apply_lora(model, lora: dict, key_map: dict, strength: float):
    """(a clone of the MODEL with the LoRA's weight patches at ``strength``, the number of weights
    patched), through ComfyUI's ``load_lora`` and ``add_patches`` as LoraLoaderModelOnly does."""
    patches = comfy.lora.load_lora(lora, key_map, log_missing=False)
    patched = model.clone()
    return patched, len(patched.add_patches(patches, strength))


# -- 7. conditioning and ComfyUI's VAE (Image to Video) ----------------------------------------------
def conditioning_with(conditioning: list, values: dict) -> list:
    """A copy of a CONDITIONING with ``values`` set in every entry's dict (ComfyUI's own
    ``node_helpers.conditioning_set_values``: the input, cached by ComfyUI, stays unchanged)."""
    import node_helpers

    return node_helpers.conditioning_set_values(conditioning, values)


def is_cogvideox_vae(vae) -> bool:
    """Whether a ComfyUI ``VAE`` (VAELoader) holds ComfyUI's CogVideoX VAE (0.21 and later)."""
    model = getattr(vae, "first_stage_model", None)
    return type(model).__name__ == "AutoencoderKLCogVideoX" and getattr(vae, "latent_channels", None) == 16


def comfy_vae_encode(vae, image: torch.Tensor) -> torch.Tensor:
    """ComfyUI's VAE encode of an IMAGE (frames, H, W, 3) in [0, 1]: the raw latent mean
    (1, 16, latent frames, h, w) on the output device; ComfyUI loads the VAE and tiles on OOM."""
    return vae.encode(image).float().to(host.output_device())


# -- 8. TeaCache on the MODEL (the one cache: ingredients_core.sampling.step_cache) -------------------------
TEACACHE_KEY = "ingredients_teacache"  # transformer_options key of the TeaCachePatch, and of its OUTER_SAMPLE wrapper


def with_teacache(model, threshold: float):
    """A clone of the MODEL whose transformer skips its blocks on the steps TeaCache judges
    unchanged (``threshold`` > 0; the published CogVideoX-5B values are 0.10-0.20). 0: a clone
    without TeaCache (one the MODEL carried is removed), sampling exactly as without it. Each
    sampling run gets a cache of its own (OUTER_SAMPLE); :func:`teacache_report` reads the last run."""
    from ..ingredients_core.sampling.step_cache import TeaCachePatch

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


def _teacache_call(model: IngredientsBaseModel, options: dict, timestep: torch.Tensor, order):
    """This call's TeaCache (its step in the run's schedule, its chunks in the transformer's row
    order), or None."""
    from ..ingredients_core.sampling.step_cache import chunk_keys

    patch = options.get(TEACACHE_KEY)
    if patch is None:
        return None
    position = None if options.get("sample_sigmas") is None else _position(model, options, timestep)
    window = options.get("context_window")  # Context Windows: one residual per window
    keys = chunk_keys(timestep.shape[0], options.get("cond_or_uncond") or [], options.get("uuids") or [], order,
                      None if window is None else tuple(getattr(window, "index_list", ())))
    return patch.call(position, keys)


# -- 9. Context windows: long videos (Ingredients Long Video) -------------------------------------
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

