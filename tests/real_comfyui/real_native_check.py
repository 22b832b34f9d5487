"""The native MODEL inside real ComfyUI (its own comfy package, no server), as JSON.

``python real_native_check.py COMFYUI_PATH PACK_DIR`` (ComfyUI's interpreter, ``--cpu``). Checks, on a
tiny transformer built with the pack's code and ComfyUI's real ``comfy.ops``, ``ModelPatcher``/
``CoreModelPatcher``, ``model_base``, ``model_sampling``, ``samplers``:

- the schedule: ComfyUI's ``ModelSamplingDiscrete`` from the pack's model config against diffusers'
  CogVideoX DDIM alphas_cumprod (max relative error without the terminal step, the terminal alpha);
- one ``apply_model`` with two people (per_sample and official) against the pack's transformer's
  v-prediction turned into x0 (the stand-in test (a), here on real ComfyUI);
- ``comfy.sample.sample`` (what KSampler calls) with euler/simple, cfg 6, on the MODEL with Apply IDs:
  finite latents, the ID patch's run state dropped after the run and a routing recorded; and split
  calls (ComfyUI's low-memory path, forced by a tiny free-memory figure) give the batched result.
"""

import importlib.util
import json
import sys


def load_pack(pack_dir: str):
    spec = importlib.util.spec_from_file_location("ComfyUI_Ingredients", f"{pack_dir}/__init__.py",
                                                  submodule_search_locations=[pack_dir])
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return spec.name


def _pack(name: str, module: str):
    return importlib.import_module(f"{name}.{module}")


def schedule_check(native) -> dict:
    import torch
    from diffusers import CogVideoXDDIMScheduler

    config = native.IngredientsModelConfig(torch.float32, torch.float32, "official", None)
    import comfy.model_base

    sampling = comfy.model_base.model_sampling(config, comfy.model_base.ModelType.V_PREDICTION)
    alphas = 1.0 / (sampling.sigmas.double() ** 2 + 1.0)
    want = CogVideoXDDIMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                                  rescale_betas_zero_snr=True, snr_shift_scale=1.0,
                                  prediction_type="v_prediction").alphas_cumprod.double()
    rel = float(((alphas[:-1] - want[:-1]).abs() / want[:-1]).max())
    return dict(max_relative=rel, terminal_comfy=float(alphas[-1]), terminal_diffusers=float(want[-1]))


def build(name: str):
    import torch

    host = _pack(name, "nodes.host")
    tiny = _pack(name, "ingredients_core.testing.tiny_transformer")
    transformer_mod = _pack(name, "ingredients_core.model.transformer")
    config = tiny.tiny_config()
    layers = host.transformer_layers(torch.float32, torch.float32)
    transformer = transformer_mod.IngredientsTransformer(config, **layers)
    transformer.load_state_dict(tiny.tiny_state_dict(config))
    transformer.eval().requires_grad_(False)
    return transformer, host.model_patcher(transformer, torch.float32, torch.float32, "official", None)


def with_ids(name, model, transformer, mode: str):
    import torch

    native_ids, routing = _pack(name, "ingredients_core.routing.host_ids"), _pack(name, "ingredients_core.routing.plan")
    ids = transformer.config.ids
    tokens = torch.randn(2, ids.num_tokens, ids.token_dim, generator=torch.Generator().manual_seed(3))
    patch = native_ids.IDPatch(tokens, routing.RoutingOptions(mode=mode))
    return _pack(name, "nodes.host").apply_ids(model, patch), patch


def forward_check(name, model, transformer) -> dict:
    import torch

    sampling_mod, routing = _pack(name, "ingredients_core.sampling.official"), _pack(name, "ingredients_core.routing.plan")
    config = transformer.config
    g = torch.Generator().manual_seed(1)
    x_t = torch.randn(2, 16, 3, config.sample_height, config.sample_width, generator=g)
    image = torch.randn_like(x_t)
    text = torch.randn(2, 226, config.text_embed_dim, generator=g)
    out = {}
    for mode in ("official", "per_sample"):
        patched, patch = with_ids(name, model, transformer, mode)
        sampling = patched.model.model_sampling
        sigma = sampling.sigma(torch.tensor([500.0, 500.0]))
        x = x_t * (sigma.view(-1, 1, 1, 1, 1) ** 2 + 1).sqrt()
        options = dict(patched.model_options["transformer_options"], cond_or_uncond=[1, 0])
        with torch.no_grad():
            ours = patched.model.apply_model(x, sigma, c_concat=image, c_crossattn=text, transformer_options=options)
            hidden = torch.cat([x_t, image], 1).permute(0, 2, 1, 3, 4)
            state = transformer.prepare_ids(patch.tokens)
            plan = routing.RoutingPlan(patch.options, 2, (3, 4, 6), config.local_face_scale, torch.device("cpu"))
            rotary = sampling_mod.rotary_embeddings(config, 64, 96, 3, torch.device("cpu"))
            v = transformer(hidden, text, torch.tensor([500.0, 500.0]), rotary, ids=state, routing=plan.step(0, 1))
        a = 1.0 / (float(sigma[0]) ** 2 + 1.0)
        want = a ** 0.5 * x_t - (1 - a) ** 0.5 * v.permute(0, 2, 1, 3, 4)
        out[mode] = float((ours - want).abs().max() / want.abs().max())
        if mode == "per_sample":  # the two halves in separate calls, as ComfyUI's low-memory path
            with torch.no_grad():
                halves = [patched.model.apply_model(x[i:i + 1], sigma[i:i + 1], c_concat=image[i:i + 1],
                                                    c_crossattn=text[i:i + 1],
                                                    transformer_options=dict(options, cond_or_uncond=[c]))
                          for i, c in enumerate((1, 0))]
            out["per_sample_split_vs_batched"] = float((torch.cat(halves) - ours).abs().max() / ours.abs().max())
    return out


def sample_check(name, model, transformer) -> dict:
    import comfy.sample
    import torch

    config = transformer.config
    g = torch.Generator().manual_seed(2)
    shape = (1, 16, 3, config.sample_height, config.sample_width)
    image = torch.randn(shape, generator=g)
    positive = [[torch.randn(1, 226, config.text_embed_dim, generator=g), {"concat_latent_image": image}]]
    negative = [[torch.randn(1, 226, config.text_embed_dim, generator=g), {"concat_latent_image": image}]]
    noise = torch.randn(shape, generator=g)
    runs = {}
    for label, split in (("batched", False), ("split", True)):
        patched, patch = with_ids(name, model, transformer, "per_sample")
        chunks = []
        patched.add_wrapper_with_key("apply_model", "check", lambda executor, *a, **k: (
            chunks.append(list(a[5]["cond_or_uncond"])), executor(*a, **k))[1])
        if split:  # ComfyUI splits cond and uncond into two calls when the batch's estimate does not fit
            patched.model.memory_required = lambda *args, **kwargs: 1e30
        try:
            samples = comfy.sample.sample(patched, noise, 3, 6.0, "euler", "simple", positive, negative,
                                          torch.zeros(shape), seed=0, disable_pbar=True)
        finally:
            vars(patched.model).pop("memory_required", None)
        runs[label] = dict(samples=samples, chunks=chunks, recorded=patch.recorder.finished is not None,
                           dropped=patch._run is None)
    batched, split = runs["batched"]["samples"], runs["split"]["samples"]
    return dict(finite=bool(torch.isfinite(batched).all()), shape=list(batched.shape),
                recorded=runs["batched"]["recorded"] and runs["split"]["recorded"],
                dropped=runs["batched"]["dropped"] and runs["split"]["dropped"],
                split_vs_batched=float((split - batched).abs().max() / batched.abs().max()),
                calls=dict(batched=runs["batched"]["chunks"], split=runs["split"]["chunks"]),
                patcher=type(model).__name__)


def main(comfyui: str, pack_dir: str) -> dict:
    sys.path[0] = comfyui
    sys.path.append(pack_dir)  # ingredients_core.testing imports itself absolutely
    from comfy.cli_args import args

    args.cpu = True
    import comfy.model_management  # noqa: F401

    name = load_pack(pack_dir)
    native = _pack(name, "nodes.host")
    transformer, model = build(name)
    return dict(schedule=schedule_check(native), forward=forward_check(name, model, transformer),
                sample=sample_check(name, model, transformer))


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1], sys.argv[2])))
