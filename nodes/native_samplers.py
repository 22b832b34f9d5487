"""Sampling the Ingredients MODEL with ComfyUI's own nodes: the official DDIM/DPM as a SAMPLER for
SamplerCustomAdvanced, the official trailing schedule as SIGMAS, and the official dynamic CFG as a
MODEL patch (works with KSampler too), and TeaCache as a MODEL patch."""

from __future__ import annotations

import logging

from comfy_api.latest import io

from ..ingredients_core import InputError
from . import host
from .schema import node_schema

logger = logging.getLogger(__name__)

SCHEDULERS = ["dpm", "ddim"]


class OfficialSampler(io.ComfyNode):
    """The official CogVideoX schedulers (diffusers' CogVideoXDPMScheduler / CogVideoXDDIMScheduler) as a SAMPLER
    for SamplerCustomAdvanced: with CFGGuider, the sigmas of Ingredients Scheduler and the same noise and seed,
    the run equals the Ingredients Sampler's. The sigmas must be on the model's discrete schedule (Ingredients
    Scheduler, or BasicScheduler's simple, ddim_uniform, normal)."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return node_schema(cls, "IngredientsOfficialSampler", "Ingredients Official Sampler", inputs=[
            io.Combo.Input("scheduler", options=SCHEDULERS, default="dpm",
                           tooltip=("dpm = CogVideoXDPMScheduler (official, stochastic: draws from a generator "
                                    "seeded with the noise seed); ddim = CogVideoXDDIMScheduler (eta 0).")),
        ], outputs=[io.Sampler.Output("sampler", display_name="sampler",
                                      tooltip="For SamplerCustomAdvanced's sampler input.")])

    @classmethod
    def execute(cls, scheduler: str) -> io.NodeOutput:
        if scheduler not in SCHEDULERS:
            raise InputError(f"scheduler must be one of {', '.join(SCHEDULERS)}; got {scheduler!r}")
        return io.NodeOutput(host.official_sampler(scheduler))


class OfficialScheduler(io.ComfyNode):
    """The official trailing timesteps (999, 979, ... for 50 steps) as the MODEL's sigmas, ending with 0.
    BasicScheduler's simple gives the same ones only when the step count divides 1000 (50, 40, 25, 20, ...)."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return node_schema(cls, "IngredientsScheduler", "Ingredients Scheduler", inputs=[
            io.Model.Input("model", tooltip="The Ingredients MODEL (Load Ingredients Model, Apply IDs, ...)."),
            io.Int.Input("steps", default=50, min=1, max=1000, tooltip="Sampling steps (official: 50)."),
        ], outputs=[io.Sigmas.Output("sigmas", display_name="sigmas",
                                     tooltip="For SamplerCustomAdvanced's sigmas input.")])

    @classmethod
    def execute(cls, model, steps: int) -> io.NodeOutput:
        from ..ingredients_core.sampling.host_sampler import official_sigmas

        if steps < 1:
            raise InputError(f"steps must be at least 1; got {steps}")
        return io.NodeOutput(official_sigmas(host.model_sampling(model), steps))


class DynamicCFG(io.ComfyNode):
    """CogVideoX's dynamic guidance (the official formula, 'use_dynamic_cfg'): the sampler's cfg becomes the peak
    of a scale that rises over the run. For KSampler and SamplerCustomAdvanced (CFGGuider)."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return node_schema(cls, "IngredientsDynamicCFG", "Ingredients Dynamic CFG", inputs=[
            io.Model.Input("model", tooltip="The MODEL to guide dynamically (the result is a patched copy)."),
        ], outputs=[io.Model.Output("MODEL", display_name="MODEL",
                                    tooltip="The MODEL with dynamic CFG, for KSampler or CFGGuider.")])

    @classmethod
    def execute(cls, model) -> io.NodeOutput:
        return io.NodeOutput(host.with_dynamic_cfg(model))


class TeaCache(io.ComfyNode):
    """TeaCache on the Ingredients MODEL, for KSampler and SamplerCustomAdvanced: on steps whose timestep embedding
    barely changed, the transformer blocks are skipped and their last change is reused (the first and last step
    always run). The same cache as the Ingredients Sampler's teacache input; the run's count of skipped steps
    goes to the log."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return node_schema(cls, "IngredientsTeaCache", "Ingredients TeaCache", inputs=[
            io.Model.Input("model", tooltip="The Ingredients MODEL to cache (the result is a patched copy)."),
            io.Float.Input("threshold", default=0.1, min=0.0, max=1.0, step=0.01,
                           tooltip=("How much estimated change may build up before the blocks run again. "
                                    "0 = off (sampling exactly as without this node); the published "
                                    "CogVideoX-5B values 0.10-0.20 are about 1.6x-2.7x faster. Higher "
                                    "skips more steps and loses more detail.")),
        ], outputs=[io.Model.Output("MODEL", display_name="MODEL",
                                    tooltip="The MODEL with TeaCache, for KSampler or CFGGuider.")])

    @classmethod
    def execute(cls, model, threshold: float) -> io.NodeOutput:
        return io.NodeOutput(host.with_teacache(model, threshold))
