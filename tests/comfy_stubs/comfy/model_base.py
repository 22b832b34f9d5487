"""Stand-in for ``comfy.model_base``: ``ModelType``, ``model_sampling`` and ``BaseModel`` as far as a
model of one's own meets them (``disable_unet_model_creation``: the subclass brings its own
``diffusion_model``).

``apply_model`` runs the ``APPLY_MODEL`` wrappers around ``_apply_model``; ``_apply_model`` scales
the input (``calculate_input``), concatenates ``c_concat`` on channels, casts to the inference dtype,
turns sigma into the model's timestep, calls ``diffusion_model(xc, t, context=..., control=...,
transformer_options=...)`` and returns ``calculate_denoised``. ``extra_conds`` maps
``concat_latent_image`` (through ``concat_cond`` when ``concat_keys`` is set) and ``cross_attn``."""

from __future__ import annotations

import math
from enum import Enum

import torch

import comfy.conds
import comfy.model_management
import comfy.model_sampling
import comfy.patcher_extension


class ModelType(Enum):
    EPS = 1
    V_PREDICTION = 2
    V_PREDICTION_EDM = 3
    STABLE_CASCADE = 4
    EDM = 5
    FLOW = 6
    V_PREDICTION_CONTINUOUS = 7
    FLUX = 8
    IMG_TO_IMG = 9
    FLOW_COSMOS = 10


def model_sampling(model_config, model_type):
    kinds = {ModelType.EPS: comfy.model_sampling.EPS, ModelType.V_PREDICTION: comfy.model_sampling.V_PREDICTION}
    if model_type not in kinds:
        raise NotImplementedError(f"the stand-in has only EPS and V_PREDICTION, not {model_type}")

    class ModelSampling(comfy.model_sampling.ModelSamplingDiscrete, kinds[model_type]):
        pass

    return ModelSampling(model_config)


def convert_tensor(extra, dtype, device):
    if hasattr(extra, "dtype"):
        if extra.dtype != torch.int and extra.dtype != torch.long:
            return comfy.model_management.cast_to_device(extra, device, dtype)
        return comfy.model_management.cast_to_device(extra, device, None)
    return extra


class BaseModel(torch.nn.Module):
    def __init__(self, model_config, model_type=ModelType.EPS, device=None, unet_model=None):
        super().__init__()
        unet_config = model_config.unet_config
        self.latent_format = model_config.latent_format
        self.model_config = model_config
        self.manual_cast_dtype = model_config.manual_cast_dtype
        self.device = device
        self.current_patcher = None
        if not unet_config.get("disable_unet_model_creation", False):
            raise NotImplementedError("the stand-in builds no UNet: set disable_unet_model_creation")
        self.model_type = model_type
        self.model_sampling = model_sampling(model_config, model_type)
        self.adm_channels = unet_config.get("adm_in_channels", None) or 0
        self.concat_keys = ()
        self.memory_usage_factor = model_config.memory_usage_factor
        self.memory_usage_factor_conds = ()
        self.memory_usage_shape_process = {}

    def apply_model(self, x, t, c_concat=None, c_crossattn=None, control=None, transformer_options={}, **kwargs):
        return comfy.patcher_extension.WrapperExecutor.new_class_executor(
            self._apply_model, self,
            comfy.patcher_extension.get_all_wrappers(comfy.patcher_extension.WrappersMP.APPLY_MODEL,
                                                     transformer_options),
        ).execute(x, t, c_concat, c_crossattn, control, transformer_options, **kwargs)

    def _apply_model(self, x, t, c_concat=None, c_crossattn=None, control=None, transformer_options={}, **kwargs):
        sigma = t
        xc = self.model_sampling.calculate_input(sigma, x)
        if c_concat is not None:
            xc = torch.cat([xc, comfy.model_management.cast_to_device(c_concat, xc.device, xc.dtype)], dim=1)
        dtype = self.get_dtype_inference()
        xc = xc.to(dtype)
        t = self.model_sampling.timestep(t).float()
        context = c_crossattn
        if context is not None:
            context = comfy.model_management.cast_to_device(context, xc.device, dtype)
        extra_conds = {k: convert_tensor(v, dtype, xc.device) for k, v in kwargs.items()}
        t = self.process_timestep(t, x=x, **extra_conds)
        out = self.diffusion_model(xc, t, context=context, control=control, transformer_options=transformer_options,
                                   **extra_conds)
        return self.model_sampling.calculate_denoised(sigma, out.float(), x)

    def process_timestep(self, timestep, **kwargs):
        return timestep

    def get_dtype(self):
        return self.diffusion_model.dtype

    def get_dtype_inference(self):
        return self.manual_cast_dtype if self.manual_cast_dtype is not None else self.get_dtype()

    def resize_cond_for_context_window(self, cond_key, cond_value, window, x_in, device, retain_index_list=[]):
        """0.33.0: a model's own cut of a cond for a context window; None: the handler's default."""
        return None

    def encode_adm(self, **kwargs):
        return None

    def concat_cond(self, **kwargs):
        return None

    def extra_conds(self, **kwargs):
        out = {}
        concat = self.concat_cond(**kwargs)
        if concat is not None:
            out["c_concat"] = comfy.conds.CONDNoiseShape(concat)
        cross_attn = kwargs.get("cross_attn", None)
        if cross_attn is not None:
            out["c_crossattn"] = comfy.conds.CONDCrossAttn(cross_attn)
        return out

    def extra_conds_shapes(self, **kwargs):
        return {}

    def process_latent_in(self, latent):
        return self.latent_format.process_in(latent)

    def process_latent_out(self, latent):
        return self.latent_format.process_out(latent)

    def memory_required(self, input_shape, cond_shapes={}):
        area = input_shape[0] * math.prod(input_shape[2:])
        return area * 0.15 * self.memory_usage_factor * (1024 * 1024)
