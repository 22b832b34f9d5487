"""Stand-in for ``comfy.supported_models_base.BASE``: a model family's config (class attributes as in
ComfyUI; ``__init__`` copies ``unet_config`` and ``sampling_settings`` and instantiates the latent format)."""

from __future__ import annotations

import torch

from . import latent_formats


class BASE:
    unet_config = {}
    unet_extra_config = {"num_heads": -1, "num_head_channels": 64}
    required_keys = {}
    clip_prefix = []
    clip_vision_prefix = None
    noise_aug_config = None
    sampling_settings = {}
    latent_format = latent_formats.LatentFormat
    vae_key_prefix = ["first_stage_model."]
    text_encoder_key_prefix = ["cond_stage_model."]
    supported_inference_dtypes = [torch.float16, torch.bfloat16, torch.float32]
    memory_usage_factor = 2.0
    manual_cast_dtype = None
    custom_operations = None
    optimizations = {"fp8": False}

    def __init__(self, unet_config):
        self.unet_config = unet_config.copy()
        self.sampling_settings = self.sampling_settings.copy()
        self.latent_format = self.latent_format()
        self.optimizations = self.optimizations.copy()
        for key, value in self.unet_extra_config.items():
            self.unet_config[key] = value

    def process_unet_state_dict(self, state_dict):
        return state_dict

    def process_unet_state_dict_for_saving(self, state_dict):
        return {"model.diffusion_model." + k: v for k, v in state_dict.items()}

    def set_inference_dtype(self, dtype, manual_cast_dtype):  # 0.33 adds device=None
        self.unet_config["dtype"] = dtype
        self.manual_cast_dtype = manual_cast_dtype
