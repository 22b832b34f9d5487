"""Stand-in for ``comfy.samplers``: the guider, the k-diffusion sampler wrapper and KSampler, as
ComfyUI 0.3.64 / 0.33.0 run them where a MODEL of the pack meets them.

- ``CFGGuider.sample``: conds converted and encoded through the model's ``extra_conds``, the
  ``OUTER_SAMPLE`` / ``SAMPLER_SAMPLE`` / ``PREDICT_NOISE`` wrappers, ``sample_sigmas`` in
  ``transformer_options``, ``extra_args = {"model_options", "seed"}``, the latent scaled in and out;
- ``calc_cond_batch``: cond and uncond batched in ComfyUI's order (the chunks reversed: [uncond,
  cond]) when ``memory_required * 1.5`` fits the free memory, else one batch each, uncond first;
  ``transformer_options`` gets ``cond_or_uncond``, ``uuids`` and ``sigmas``; the ``CALC_COND_BATCH``
  wrappers run around it;
- ``cfg_function`` with ``sampler_cfg_function`` and ``sampler_post_cfg_function``, and the cfg 1
  optimisation (no uncond pass);
- ``KSAMPLER.sample``: ``noise_scaling`` (``max_denoise`` at the model's largest sigma), the
  sampler function, ``inverse_noise_scaling``; ``KSampler`` with the ``simple`` scheduler.
No areas, masks, hooks, ControlNets or multi-GPU. Context Windows: ``comfy/context_windows.py``.
"""

from __future__ import annotations

import collections
import math

import torch

import comfy.multigpu
import comfy.patcher_extension
import comfy.sampler_helpers
from comfy.k_diffusion import sampling as k_diffusion_sampling


# -- conds and batches ---------------------------------------------------------------------------
def get_area_and_mult(conds, x_in, timestep_in):
    if "area" in conds or "mask" in conds:
        raise NotImplementedError("the stand-in has no area or mask conditioning")
    if "timestep_start" in conds and timestep_in[0] > conds["timestep_start"]:
        return None
    if "timestep_end" in conds and timestep_in[0] < conds["timestep_end"]:
        return None
    mult = torch.ones_like(x_in) * conds.get("strength", 1.0)
    conditioning = {c: v.process_cond(batch_size=x_in.shape[0], area=None) for c, v in conds["model_conds"].items()}
    cond_obj = collections.namedtuple("cond_obj", ["input_x", "mult", "conditioning", "area", "control", "patches",
                                                   "uuid", "hooks"])
    return cond_obj(x_in, mult, conditioning, None, None, None, conds["uuid"], None)


def can_concat_cond(c1, c2):
    if c1.input_x.shape != c2.input_x.shape:
        return False
    if c1.conditioning.keys() != c2.conditioning.keys():
        return False
    return all(c1.conditioning[k].can_concat(c2.conditioning[k]) for k in c1.conditioning)


def cond_cat(c_list, device=None):
    temp = {}
    for x in c_list:
        for k in x:
            temp.setdefault(k, []).append(x[k])
    return {k: conds[0].concat(conds[1:]) for k, conds in temp.items()}


def calc_cond_batch(model, conds, x_in, timestep, model_options):
    """0.33.0: through the MODEL's context handler (Context Windows) when it has one and uses it."""
    handler = model_options.get("context_handler", None)
    if handler is None or not handler.should_use_context(model, conds, x_in, timestep, model_options):
        return _calc_cond_batch_outer(model, conds, x_in, timestep, model_options)
    return handler.execute(_calc_cond_batch_outer, model, conds, x_in, timestep, model_options)


def _calc_cond_batch_outer(model, conds, x_in, timestep, model_options):
    executor = comfy.patcher_extension.WrapperExecutor.new_executor(
        _calc_cond_batch,
        comfy.patcher_extension.get_all_wrappers(comfy.patcher_extension.WrappersMP.CALC_COND_BATCH, model_options,
                                                 is_model_options=True))
    return executor.execute(model, conds, x_in, timestep, model_options)


def _batches(to_run, model, x_in):
    """ComfyUI's batching: the concatenable chunks reversed, as many as fit ``memory_required * 1.5``."""
    first = to_run[0]
    to_batch_temp = [x for x in range(len(to_run)) if can_concat_cond(to_run[x][0], first[0])]
    to_batch_temp.reverse()
    to_batch = to_batch_temp[:1]
    free_memory = model.current_patcher.get_free_memory(x_in.device)
    for i in range(1, len(to_batch_temp) + 1):
        batch_amount = to_batch_temp[:len(to_batch_temp) // i]
        input_shape = [len(batch_amount) * first[0].input_x.shape[0]] + list(first[0].input_x.shape)[1:]
        if model.memory_required(input_shape) * 1.5 < free_memory:
            to_batch = batch_amount
            break
    return to_batch


def _calc_cond_batch(model, conds, x_in, timestep, model_options):
    if "multigpu_clones" in model_options:  # 0.33.0: MultiGPU CFG Split (the stand-in: comfy/multigpu.py)
        return comfy.multigpu._calc_cond_batch_multigpu(model, conds, x_in, timestep, model_options)
    out_conds = [torch.zeros_like(x_in) for _ in conds]
    out_counts = [torch.ones_like(x_in) * 1e-37 for _ in conds]
    to_run = []
    for i, cond in enumerate(conds):
        for x in cond or []:
            p = get_area_and_mult(x, x_in, timestep)
            if p is not None:
                to_run.append((p, i))
    while to_run:
        picked = [to_run.pop(x) for x in _batches(to_run, model, x_in)]
        cond_or_uncond = [o[1] for o in picked]
        input_x = torch.cat([o[0].input_x for o in picked])
        c = cond_cat([o[0].conditioning for o in picked])
        timestep_ = torch.cat([timestep] * len(picked))
        transformer_options = comfy.patcher_extension.merge_nested_dicts(
            {}, model_options.get("transformer_options", {}), copy_dict1=False)
        transformer_options["cond_or_uncond"] = cond_or_uncond[:]
        transformer_options["uuids"] = [o[0].uuid for o in picked]
        transformer_options["sigmas"] = timestep
        c["transformer_options"] = transformer_options
        output = model.apply_model(input_x, timestep_, **c).chunk(len(picked))
        for o, (p, cond_index) in enumerate(picked):
            out_conds[cond_index] += output[o] * p.mult
            out_counts[cond_index] += p.mult
    return [out / count for out, count in zip(out_conds, out_counts)]


def cfg_function(model, cond_pred, uncond_pred, cond_scale, x, timestep, model_options={}, cond=None, uncond=None):
    if "sampler_cfg_function" in model_options:
        args = {"cond": x - cond_pred, "uncond": x - uncond_pred, "cond_scale": cond_scale, "timestep": timestep,
                "input": x, "sigma": timestep, "cond_denoised": cond_pred, "uncond_denoised": uncond_pred,
                "model": model, "model_options": model_options, "input_cond": cond, "input_uncond": uncond}
        cfg_result = x - model_options["sampler_cfg_function"](args)
    else:
        cfg_result = uncond_pred + (cond_pred - uncond_pred) * cond_scale
    for fn in model_options.get("sampler_post_cfg_function", []):
        args = {"denoised": cfg_result, "cond": cond, "uncond": uncond, "cond_scale": cond_scale, "model": model,
                "uncond_denoised": uncond_pred, "cond_denoised": cond_pred, "sigma": timestep,
                "model_options": model_options, "input": x}
        cfg_result = fn(args)
    return cfg_result


def sampling_function(model, x, timestep, uncond, cond, cond_scale, model_options={}, seed=None):
    if math.isclose(cond_scale, 1.0) and not model_options.get("disable_cfg1_optimization", False):
        uncond_ = None
    else:
        uncond_ = uncond
    conds = [cond, uncond_]
    out = calc_cond_batch(model, conds, x, timestep, model_options)
    for fn in model_options.get("sampler_pre_cfg_function", []):
        args = {"conds": conds, "conds_out": out, "cond_scale": cond_scale, "timestep": timestep, "input": x,
                "sigma": timestep, "model": model, "model_options": model_options}
        out = fn(args)
    return cfg_function(model, out[0], out[1], cond_scale, x, timestep, model_options=model_options, cond=cond,
                        uncond=uncond_)


class KSamplerX0Inpaint:
    def __init__(self, model, sigmas):
        self.inner_model = model
        self.sigmas = sigmas

    def __call__(self, x, sigma, denoise_mask, model_options={}, seed=None):
        if denoise_mask is not None:
            raise NotImplementedError("the stand-in has no inpainting (denoise_mask)")
        return self.inner_model(x, sigma, model_options=model_options, seed=seed)


# -- schedulers ----------------------------------------------------------------------------------
def simple_scheduler(model_sampling, steps):
    s = model_sampling
    ss = len(s.sigmas) / steps
    sigs = [float(s.sigmas[-(1 + int(x * ss))]) for x in range(steps)]
    return torch.FloatTensor(sigs + [0.0])


SCHEDULER_HANDLERS = {"simple": simple_scheduler}
SCHEDULER_NAMES = list(SCHEDULER_HANDLERS)


def calculate_sigmas(model_sampling, scheduler_name, steps):
    if scheduler_name not in SCHEDULER_HANDLERS:
        raise ValueError(f"error invalid scheduler {scheduler_name}")
    return SCHEDULER_HANDLERS[scheduler_name](model_sampling, steps)


# -- samplers ------------------------------------------------------------------------------------
class Sampler:
    def sample(self):
        pass

    def max_denoise(self, model_wrap, sigmas):
        max_sigma = float(model_wrap.inner_model.model_sampling.sigma_max)
        sigma = float(sigmas[0])
        return math.isclose(max_sigma, sigma, rel_tol=1e-05) or sigma > max_sigma


KSAMPLER_NAMES = ["euler"]
SAMPLER_NAMES = KSAMPLER_NAMES + ["ddim"]


class KSAMPLER(Sampler):
    def __init__(self, sampler_function, extra_options={}, inpaint_options={}):
        self.sampler_function = sampler_function
        self.extra_options = extra_options
        self.inpaint_options = inpaint_options

    def sample(self, model_wrap, sigmas, extra_args, callback, noise, latent_image=None, denoise_mask=None,
               disable_pbar=False):
        extra_args["denoise_mask"] = denoise_mask
        model_k = KSamplerX0Inpaint(model_wrap, sigmas)
        model_k.latent_image = latent_image
        model_k.noise = noise
        model_sampling = model_wrap.inner_model.model_sampling
        noise = model_sampling.noise_scaling(sigmas[0], noise, latent_image, self.max_denoise(model_wrap, sigmas))
        total_steps = len(sigmas) - 1

        def k_callback(x):
            if callback is not None:
                callback(x["i"], x["denoised"], x["x"], total_steps)

        samples = self.sampler_function(model_k, noise, sigmas, extra_args=extra_args, callback=k_callback,
                                        disable=disable_pbar, **self.extra_options)
        return model_sampling.inverse_noise_scaling(sigmas[-1], samples)


def ksampler(sampler_name, extra_options={}, inpaint_options={}):
    return KSAMPLER(getattr(k_diffusion_sampling, f"sample_{sampler_name}"), extra_options, inpaint_options)


def sampler_object(name):
    if name == "ddim":
        return ksampler("euler", inpaint_options={"random": True})
    return ksampler(name)


# -- the guider ----------------------------------------------------------------------------------
def encode_model_conds(model_function, conds, noise, device, prompt_type, **kwargs):
    for t in range(len(conds)):
        x = conds[t]
        params = x.copy()
        params["device"] = device
        params["noise"] = noise
        params["width"] = params.get("width", noise.shape[3] * 8 if noise.ndim >= 4 else None)
        params["height"] = params.get("height", noise.shape[2] * 8)
        params["prompt_type"] = params.get("prompt_type", prompt_type)
        for k in kwargs:
            params.setdefault(k, kwargs[k])
        out = model_function(**params)
        x = x.copy()
        x["model_conds"] = {**x["model_conds"], **out}
        conds[t] = x
    return conds


def process_conds(model, noise, conds, device, latent_image=None, denoise_mask=None, seed=None):
    for k in conds:
        conds[k] = conds[k][:]
    if hasattr(model, "extra_conds"):
        for k in conds:
            conds[k] = encode_model_conds(model.extra_conds, conds[k], noise, device, k, latent_image=latent_image,
                                          denoise_mask=denoise_mask, seed=seed)
    return conds


class CFGGuider:
    def __init__(self, model_patcher):
        self.model_patcher = model_patcher
        self.model_options = model_patcher.model_options
        self.original_conds = {}
        self.cfg = 1.0

    def set_conds(self, positive, negative):
        self.inner_set_conds({"positive": positive, "negative": negative})

    def set_cfg(self, cfg):
        self.cfg = cfg

    def inner_set_conds(self, conds):
        for k in conds:
            self.original_conds[k] = comfy.sampler_helpers.convert_cond(conds[k])

    def __call__(self, *args, **kwargs):
        return self.outer_predict_noise(*args, **kwargs)

    def outer_predict_noise(self, x, timestep, model_options={}, seed=None):
        return comfy.patcher_extension.WrapperExecutor.new_class_executor(
            self.predict_noise, self,
            comfy.patcher_extension.get_all_wrappers(comfy.patcher_extension.WrappersMP.PREDICT_NOISE,
                                                     self.model_options, is_model_options=True),
        ).execute(x, timestep, model_options, seed)

    def predict_noise(self, x, timestep, model_options={}, seed=None):
        return sampling_function(self.inner_model, x, timestep, self.conds.get("negative", None),
                                 self.conds.get("positive", None), self.cfg, model_options=model_options, seed=seed)

    def inner_sample(self, noise, latent_image, device, sampler, sigmas, denoise_mask, callback, disable_pbar, seed):
        if latent_image is not None and torch.count_nonzero(latent_image) > 0:  # the empty latent stays unshifted
            latent_image = self.inner_model.process_latent_in(latent_image)
        self.conds = process_conds(self.inner_model, noise, self.conds, device, latent_image, denoise_mask, seed)
        extra_model_options = comfy.patcher_extension.copy_nested_dicts(self.model_options)
        extra_model_options.setdefault("transformer_options", {})["sample_sigmas"] = sigmas
        extra_args = {"model_options": extra_model_options, "seed": seed}
        executor = comfy.patcher_extension.WrapperExecutor.new_class_executor(
            sampler.sample, sampler,
            comfy.patcher_extension.get_all_wrappers(comfy.patcher_extension.WrappersMP.SAMPLER_SAMPLE,
                                                     extra_args["model_options"], is_model_options=True))
        samples = executor.execute(self, sigmas, extra_args, callback, noise, latent_image, denoise_mask, disable_pbar)
        return self.inner_model.process_latent_out(samples.to(torch.float32))

    def outer_sample(self, noise, latent_image, sampler, sigmas, denoise_mask=None, callback=None,
                     disable_pbar=False, seed=None):
        self.inner_model, self.conds, self.loaded_models = comfy.sampler_helpers.prepare_sampling(
            self.model_patcher, noise.shape, self.conds, self.model_options)
        device = self.model_patcher.load_device
        clones = comfy.sampler_helpers.prepare_model_patcher_multigpu_clones(self.model_patcher, self.loaded_models,
                                                                             self.model_options)
        if clones:  # 0.33.0: one pool thread per device, the main one too
            self.model_options["multigpu_thread_pool"] = comfy.multigpu.MultiGPUThreadPool(
                [device] + [p.load_device for p in clones])
        try:
            noise = noise.to(device=device, dtype=torch.float32)
            latent_image = latent_image.to(device=device, dtype=torch.float32)
            sigmas = sigmas.to(device)
            self.model_patcher.pre_run()
            for clone in clones:
                clone.pre_run()
            output = self.inner_sample(noise, latent_image, device, sampler, sigmas, denoise_mask, callback,
                                       disable_pbar, seed)
        finally:
            pool = self.model_options.pop("multigpu_thread_pool", None)
            if pool is not None:
                pool.shutdown()
            self.model_patcher.cleanup()
            for clone in clones:
                clone.cleanup()
        comfy.sampler_helpers.cleanup_models(self.conds, self.loaded_models)
        del self.inner_model
        del self.loaded_models
        return output

    def sample(self, noise, latent_image, sampler, sigmas, denoise_mask=None, callback=None, disable_pbar=False,
               seed=None):
        if sigmas.shape[-1] == 0:
            return latent_image
        self.conds = {k: [a.copy() for a in v] for k, v in self.original_conds.items()}
        orig_model_options = self.model_options
        try:
            self.model_options = comfy.patcher_extension.copy_nested_dicts(self.model_options)
            comfy.sampler_helpers.prepare_model_patcher(self.model_patcher, self.conds, self.model_options)
            executor = comfy.patcher_extension.WrapperExecutor.new_class_executor(
                self.outer_sample, self,
                comfy.patcher_extension.get_all_wrappers(comfy.patcher_extension.WrappersMP.OUTER_SAMPLE,
                                                         self.model_options, is_model_options=True))
            output = executor.execute(noise, latent_image, sampler, sigmas, denoise_mask, callback, disable_pbar, seed)
        finally:
            self.model_options = orig_model_options
        del self.conds
        return output


def sample(model, noise, positive, negative, cfg, device, sampler, sigmas, model_options={}, latent_image=None,
           denoise_mask=None, callback=None, disable_pbar=False, seed=None):
    cfg_guider = CFGGuider(model)
    cfg_guider.set_conds(positive, negative)
    cfg_guider.set_cfg(cfg)
    return cfg_guider.sample(noise, latent_image, sampler, sigmas, denoise_mask, callback, disable_pbar, seed)


class KSampler:
    SCHEDULERS = SCHEDULER_NAMES
    SAMPLERS = SAMPLER_NAMES

    def __init__(self, model, steps, device, sampler=None, scheduler=None, denoise=None, model_options={}):
        self.model = model
        self.device = device
        self.scheduler = scheduler if scheduler in self.SCHEDULERS else self.SCHEDULERS[0]
        self.sampler = sampler if sampler in self.SAMPLERS else self.SAMPLERS[0]
        self.set_steps(steps, denoise)
        self.denoise = denoise
        self.model_options = model_options

    def calculate_sigmas(self, steps):
        return calculate_sigmas(self.model.get_model_object("model_sampling"), self.scheduler, steps)

    def set_steps(self, steps, denoise=None):
        self.steps = steps
        if denoise is None or denoise > 0.9999:
            self.sigmas = self.calculate_sigmas(steps).to(self.device)
        elif denoise <= 0.0:
            self.sigmas = torch.FloatTensor([])
        else:
            self.sigmas = self.calculate_sigmas(int(steps / denoise)).to(self.device)[-(steps + 1):]

    def sample(self, noise, positive, negative, cfg, latent_image=None, start_step=None, last_step=None,
               force_full_denoise=False, denoise_mask=None, sigmas=None, callback=None, disable_pbar=False, seed=None):
        sigmas = self.sigmas if sigmas is None else sigmas
        if last_step is not None and last_step < (len(sigmas) - 1):
            sigmas = sigmas[:last_step + 1]
            if force_full_denoise:
                sigmas[-1] = 0
        if start_step is not None:
            if start_step < (len(sigmas) - 1):
                sigmas = sigmas[start_step:]
            else:
                return latent_image if latent_image is not None else torch.zeros_like(noise)
        return sample(self.model, noise, positive, negative, cfg, self.device, sampler_object(self.sampler), sigmas,
                      self.model_options, latent_image=latent_image, denoise_mask=denoise_mask, callback=callback,
                      disable_pbar=disable_pbar, seed=seed)
