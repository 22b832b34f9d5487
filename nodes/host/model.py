"""The Ingredients transformer as a native ComfyUI ``MODEL`` (KSampler, SamplerCustomAdvanced, LoRAs,
MODEL patches), which the pack's own Sampler samples too.

- the latent format: :class:`.progress.IngredientsLatentFormat` (16 channels, 3-D, scaled by 0.7, the 5B VAE's);
- :class:`IngredientsModelConfig`: a ``supported_models_base.BASE`` with no UNet of ComfyUI's own
  (``disable_unet_model_creation``), V-prediction on ``ModelSamplingDiscrete`` over the scaled-linear
  betas 0.00085..0.012, 1000 steps, zero terminal SNR: diffusers' CogVideoX schedule (ComfyUI's
  "linear" schedule is LDM's, the square of a linspace of square roots: diffusers' "scaled_linear");
- :class:`IngredientsBaseModel`: a ``model_base.BaseModel`` whose ``diffusion_model`` IS the pack's
  ``IngredientsTransformer`` (state-dict keys ``diffusion_model.<official key>``); its ``_apply_model``
  runs ComfyUI's ``DIFFUSION_MODEL`` wrappers (EasyCache) around the transformer in ComfyUI's latent
  layout (B, C, F, H, W) and applies what the MODEL patches (:mod:`.patches`) put in
  ``transformer_options``: the IDs of *Ingredients Apply IDs* and TeaCache;
- :func:`model_patcher`: the ``MODEL`` (a ``CoreModelPatcher`` where the host has one);
  :func:`transformer_of`: the transformer of a MODEL, or the error naming the fix.
"""

from __future__ import annotations

import functools
import logging
from pathlib import Path
from typing import Any, Optional

import comfy.conds
import comfy.model_base
import comfy.model_management
import comfy.model_patcher
import comfy.patcher_extension
import comfy.supported_models_base
import torch

from ...ingredients_core import InputError
from ...ingredients_core.sampling.settings import FF_CHUNK  # the feed-forward chunk the pack's sampler runs with
from .. import native_checks, native_windows
from .memory import devices, patcher_class
from .progress import IngredientsLatentFormat

logger = logging.getLogger(__name__)

IDS_KEY = "ingredients_ids"          # transformer_options key of the ID patch
FF_CHUNK_KEY = "ingredients_ff_chunk"  # optional transformer_options key: feed-forward token chunk
SPACE_KEY = "ingredients_space"      # transformer_options key: "ddpm" when the official SAMPLER samples
TEACACHE_KEY = "ingredients_teacache"  # transformer_options key of the TeaCachePatch, and of its OUTER_SAMPLE wrapper
TEXT_FIX = ("encode the prompt with CLIPTextEncode on a CogVideoX/T5-XXL CLIP (CLIPLoader, type cogvideox or sd3) "
            "or the pack's Encode Prompt nodes")


# -- 1. model config -----------------------------------------------------------
class IngredientsModelConfig(comfy.supported_models_base.BASE):
    """The model family config ComfyUI's sampling reads (``sampling_settings``, ``latent_format``,
    dtypes), plus what the pack needs to check its own inputs against the MODEL."""

    unet_config = {"disable_unet_model_creation": True}
    unet_extra_config = {}
    sampling_settings = {"beta_schedule": "linear", "linear_start": 0.00085, "linear_end": 0.012,
                         "timesteps": 1000, "zsnr": True}
    latent_format = IngredientsLatentFormat  # fixed preview colours (progress.COGVIDEOX_RGB_FACTORS)
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
    from ...ingredients_core.sampling.official import rotary_embeddings

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
        from ...ingredients_core.sampling.memory import forward_size, transformer_activation_bytes
        from ...ingredients_core.routing.plan import MAX_IDS

        batch, _, frames, height, width = input_shape
        size = forward_size(self.diffusion_model.config, batch, frames, height, width, MAX_IDS)
        return transformer_activation_bytes(size, comfy.model_management.dtype_size(self.get_dtype_inference()),
                                            FF_CHUNK)


def _step_inputs(model: IngredientsBaseModel, patch, hidden: torch.Tensor, options: dict, timestep: torch.Tensor):
    """The ID patch's inputs for this call; routing options that do not fit the video (a mask's frame
    count) are refused naming the node to fix."""
    from ...ingredients_core.routing.plan import RoutingError

    try:
        return patch.step_inputs(model.diffusion_model, hidden.shape, hidden.device, hidden.dtype,
                                 _position(model, options, timestep), options.get("cond_or_uncond") or [],
                                 window=native_windows.call_window(options, hidden.shape[1]))
    except RoutingError as error:
        raise InputError(f"Ingredients Apply IDs: {error} (mask_N of Ingredients Route IDs; the latent has "
                         f"{hidden.shape[1]} frames)") from error


def _position(model: IngredientsBaseModel, options: dict, timestep: torch.Tensor) -> tuple[int, int]:
    from ...ingredients_core.routing.host_ids import step_position

    return step_position(options["sigmas"], options.get("sample_sigmas"), timestep,
                         model.model_sampling.num_timesteps)


# -- 4. the MODEL ------------------------------------------------------------------------------------
def model_patcher(transformer, storage: torch.dtype, compute: torch.dtype, routing_mode: str,
                  folder: Optional[Path] = None, disable_dynamic: bool = False, weights: Any = None):
    """The MODEL for a loaded transformer (kept on the offload device until ComfyUI loads it): a
    ``CoreModelPatcher`` where the host has it (``memory.patcher_class``). The pack's sampler loads this
    same patcher, so ComfyUI's bookkeeping of the weights is one (its clones, such as Apply IDs'
    output, are unloaded by ComfyUI before another clone loads). The q-former also has a patcher of
    its own (Project IDs loads 0.15 B parameters, not 6.4 B); when this one has moved it away,
    ``memory.load_part`` loads it again. Under DynamicVRAM (0.33 on NVIDIA, a ``ModelPatcherDynamic``
    that keeps per-layer state on the modules) the q-former gets no second patcher and Project IDs
    uses this one: read from ComfyUI's code, not run on a GPU.
    ``disable_dynamic``: a plain ``ModelPatcher`` (what ComfyUI asks of a loader's
    ``cached_patcher_init`` factory for its non-dynamic delegates)."""
    config = IngredientsModelConfig(storage, compute, routing_mode, folder, weights)
    model = IngredientsBaseModel(config, transformer)
    load_device, offload_device = devices("diffusion")
    patcher_cls = comfy.model_patcher.ModelPatcher if disable_dynamic else patcher_class()
    return patcher_cls(model, load_device=load_device, offload_device=offload_device)


def transformer_of(model) -> Any:
    """The IngredientsTransformer of a MODEL, or a ValueError naming the fix."""
    inner = getattr(model, "model", None)
    if not isinstance(inner, IngredientsBaseModel):
        raise InputError(f"model: this MODEL is a {type(inner).__name__}, not the Ingredients model: connect the "
                         "MODEL output of Load Ingredients Model (or a patch of it).")
    return inner.diffusion_model


def _teacache_call(model: IngredientsBaseModel, options: dict, timestep: torch.Tensor, order):
    """This call's TeaCache (its step in the run's schedule, its chunks in the transformer's row
    order), or None."""
    from ...ingredients_core.sampling.step_cache import chunk_keys

    patch = options.get(TEACACHE_KEY)
    if patch is None:
        return None
    position = None if options.get("sample_sigmas") is None else _position(model, options, timestep)
    window = options.get("context_window")  # Context Windows: one residual per window
    keys = chunk_keys(timestep.shape[0], options.get("cond_or_uncond") or [], options.get("uuids") or [], order,
                      None if window is None else tuple(getattr(window, "index_list", ())))
    return patch.call(position, keys)
