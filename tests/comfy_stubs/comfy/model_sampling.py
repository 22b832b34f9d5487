"""Stand-in for ``comfy.model_sampling``: the discrete (DDPM) schedule as k-diffusion sigmas and
the EPS / V_PREDICTION parameterisations, as ComfyUI computes them.

``ModelSamplingDiscrete`` reads ``beta_schedule`` ("linear" is LDM's: the square of a linspace of
square roots, i.e. diffusers' "scaled_linear"), ``linear_start``, ``linear_end``, ``timesteps``
and ``zsnr`` from ``model_config.sampling_settings``; zsnr rescales to zero terminal SNR and then
sets the last alpha_cumprod to 4.8973451890853435e-08 (ComfyUI's value: a finite last sigma)."""

from __future__ import annotations

import torch

TERMINAL_ALPHA_CUMPROD = 4.8973451890853435e-08


def make_beta_schedule(schedule, n_timestep, linear_start=1e-4, linear_end=2e-2):
    if schedule == "linear":
        return torch.linspace(linear_start ** 0.5, linear_end ** 0.5, n_timestep, dtype=torch.float64) ** 2
    if schedule == "sqrt_linear":
        return torch.linspace(linear_start, linear_end, n_timestep, dtype=torch.float64)
    raise ValueError(f"schedule '{schedule}' unknown (the stand-in has linear and sqrt_linear).")


def rescale_zero_terminal_snr_sigmas(sigmas):
    alphas_bar_sqrt = (1 / ((sigmas * sigmas) + 1)).sqrt()
    first, last = alphas_bar_sqrt[0].clone(), alphas_bar_sqrt[-1].clone()
    alphas_bar_sqrt -= last
    alphas_bar_sqrt *= first / (first - last)
    alphas_bar = alphas_bar_sqrt ** 2
    alphas_bar[-1] = TERMINAL_ALPHA_CUMPROD
    return ((1 - alphas_bar) / alphas_bar) ** 0.5


def reshape_sigma(sigma, noise_dim):
    if sigma.nelement() == 1:
        return sigma.view(())
    return sigma.view(sigma.shape[:1] + (1,) * (noise_dim - 1))


class EPS:
    def calculate_input(self, sigma, noise):
        sigma = reshape_sigma(sigma, noise.ndim)
        return noise / (sigma ** 2 + self.sigma_data ** 2) ** 0.5

    def calculate_denoised(self, sigma, model_output, model_input):
        sigma = reshape_sigma(sigma, model_output.ndim)
        return model_input - model_output * sigma

    def noise_scaling(self, sigma, noise, latent_image, max_denoise=False):
        sigma = reshape_sigma(sigma, noise.ndim)
        noise = noise * torch.sqrt(1.0 + sigma ** 2.0) if max_denoise else noise * sigma
        return noise + latent_image

    def inverse_noise_scaling(self, sigma, latent):
        return latent


class V_PREDICTION(EPS):
    def calculate_denoised(self, sigma, model_output, model_input):
        sigma = reshape_sigma(sigma, model_output.ndim)
        d = self.sigma_data
        return (model_input * d ** 2 / (sigma ** 2 + d ** 2)
                - model_output * sigma * d / (sigma ** 2 + d ** 2) ** 0.5)


class ModelSamplingDiscrete(torch.nn.Module):
    def __init__(self, model_config=None, zsnr=None):
        super().__init__()
        settings = model_config.sampling_settings if model_config is not None else {}
        if zsnr is None:
            zsnr = settings.get("zsnr", False)
        self._register_schedule(given_betas=None, beta_schedule=settings.get("beta_schedule", "linear"),
                                timesteps=settings.get("timesteps", 1000),
                                linear_start=settings.get("linear_start", 0.00085),
                                linear_end=settings.get("linear_end", 0.012), cosine_s=8e-3, zsnr=zsnr)
        self.sigma_data = 1.0

    def _register_schedule(self, given_betas=None, beta_schedule="linear", timesteps=1000, linear_start=1e-4,
                           linear_end=2e-2, cosine_s=8e-3, zsnr=False):
        betas = given_betas if given_betas is not None else make_beta_schedule(
            beta_schedule, timesteps, linear_start=linear_start, linear_end=linear_end)
        alphas_cumprod = torch.cumprod(1.0 - betas, dim=0)
        self.num_timesteps = int(betas.shape[0])
        self.linear_start, self.linear_end, self.zsnr = linear_start, linear_end, zsnr
        sigmas = ((1 - alphas_cumprod) / alphas_cumprod) ** 0.5
        if zsnr:
            sigmas = rescale_zero_terminal_snr_sigmas(sigmas)
        self.set_sigmas(sigmas)

    def set_sigmas(self, sigmas):
        self.register_buffer("sigmas", sigmas.float())
        self.register_buffer("log_sigmas", sigmas.log().float())

    @property
    def sigma_min(self):
        return self.sigmas[0]

    @property
    def sigma_max(self):
        return self.sigmas[-1]

    def timestep(self, sigma):
        dists = sigma.log().to(self.log_sigmas.device) - self.log_sigmas[:, None]
        return dists.abs().argmin(dim=0).view(sigma.shape).to(sigma.device)

    def sigma(self, timestep):
        t = torch.clamp(timestep.float().to(self.log_sigmas.device), min=0, max=len(self.sigmas) - 1)
        low, high, w = t.floor().long(), t.ceil().long(), t.frac()
        return ((1 - w) * self.log_sigmas[low] + w * self.log_sigmas[high]).exp().to(timestep.device)

    def percent_to_sigma(self, percent):
        if percent <= 0.0:
            return 999999999.9
        if percent >= 1.0:
            return 0.0
        return self.sigma(torch.tensor((1.0 - percent) * 999.0)).item()


class CONST:
    """Flow matching (ModelSamplingSD3 / ModelSamplingFlux put it on a MODEL), as far as the pack meets it."""

    def calculate_input(self, sigma, noise):
        return noise

    def calculate_denoised(self, sigma, model_output, model_input):
        return model_input - model_output * reshape_sigma(sigma, model_output.ndim)


def time_snr_shift(alpha, t):
    if alpha == 1.0:
        return t
    return alpha * t / (1 + (alpha - 1) * t)


class ModelSamplingDiscreteFlow(torch.nn.Module):
    """ComfyUI's flow-matching sampling (ModelSamplingSD3 / AuraFlow): no ``num_timesteps``."""

    def __init__(self, model_config=None):
        super().__init__()
        settings = model_config.sampling_settings if model_config is not None else {}
        self.set_parameters(shift=settings.get("shift", 1.0), multiplier=settings.get("multiplier", 1000))

    def set_parameters(self, shift=1.0, timesteps=1000, multiplier=1000):
        self.shift, self.multiplier = shift, multiplier
        ts = self.sigma((torch.arange(1, timesteps + 1, 1) / timesteps) * multiplier)
        self.register_buffer("sigmas", ts)

    def sigma(self, timestep):
        return time_snr_shift(self.shift, timestep / self.multiplier)

    def timestep(self, sigma):
        return sigma * self.multiplier


class ModelSamplingFlux(torch.nn.Module):
    """ComfyUI's Flux sampling (ModelSamplingFlux): no ``num_timesteps``."""

    def __init__(self, model_config=None):
        super().__init__()
        self.set_parameters(shift=1.15)

    def set_parameters(self, shift=1.15, timesteps=10000):
        self.shift = shift
        self.register_buffer("sigmas", torch.linspace(1.0 / timesteps, 1.0, timesteps))

    def timestep(self, sigma):
        return sigma
