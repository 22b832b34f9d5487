"""Sample the pack's tiny MODEL with real ComfyUI's own sampling nodes and print the figures as JSON.

``python real_sampling_check.py COMFYUI_PATH PACK_DIR MODELS_DIR`` (ComfyUI's interpreter, CPU),
``MODELS_DIR/ingredients/Ingredients`` holding a tiny model (``tiny_models.make_tiny_model_folder``).
What runs, each against the pack's own sampler (``ingredients_core.sampling.official.denoise``) with the same
noise (ComfyUI's ``prepare_noise``), image latent, embeddings and generator seed:

- SamplerCustomAdvanced (RandomNoise, CFGGuider, Ingredients Official Sampler dpm/ddim,
  Ingredients Scheduler), with and without Ingredients Apply IDs;
- KSampler euler / simple (the pack's DDIM), and with Ingredients Dynamic CFG;
- BasicScheduler simple against Ingredients Scheduler (50 and 30 steps);
- EasyCache and LazyCache (comfy_extras) on the MODEL with IDs under KSampler: steps skipped,
  transformer calls computed (each with the ID patch in transformer_options), finite, ID-dependent;
- TorchCompileModel's wrapper (``set_torch_compile_wrapper`` with the node's guard filter, backend
  ``eager``: Dynamo's tracing and guards without code generation) on the MODEL with IDs whose step
  ranges switch people on and off during the run: the result against the uncompiled run.
"""

import importlib
import importlib.util
import json
import logging
import sys

SEED = 123
SCALE = 0.7


def node_call(cls, **kwargs):
    """Run a node class as ComfyUI does (V3 ``execute`` or the V1 ``FUNCTION``); its outputs as a tuple."""
    if hasattr(cls, "define_schema"):
        out = cls.execute(**kwargs)
        return tuple(out.args) if hasattr(out, "args") else tuple(out)
    return tuple(getattr(cls(), cls.FUNCTION)(**kwargs))


def load_pack(pack_dir: str) -> dict:
    import asyncio

    spec = importlib.util.spec_from_file_location("ComfyUI_Ingredients", f"{pack_dir}/__init__.py",
                                                  submodule_search_locations=[pack_dir])
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    extension = asyncio.run(module.comfy_entrypoint())
    return {cls.GET_SCHEMA().node_id: cls for cls in asyncio.run(extension.get_node_list())}


class SkipLog(logging.Handler):
    def __init__(self):
        super().__init__()
        self.lines = []

    def emit(self, record):
        message = record.getMessage()
        if "skipped" in message and "steps" in message:
            self.lines.append(message)


def relative(a, b) -> float:
    return float((a.double() - b.double()).abs().max() / b.double().abs().max())


def make_case(config, torch):
    g = torch.Generator().manual_seed(9)
    frames, h, w = 3, config.sample_height, config.sample_width
    image = torch.randn(1, frames, 16, h, w, generator=g)
    text = torch.randn(2, 226, config.text_embed_dim, generator=g)
    raw = image.transpose(1, 2) / SCALE
    return dict(image=image, pos=text[1:], neg=text[:1], positive=[[text[1:], {"concat_latent_image": raw}]],
                negative=[[text[:1], {"concat_latent_image": raw}]], latent={"samples": torch.zeros(1, 16, frames, h, w)})


def pack_run(payload, case, scheduler, steps, dynamic_cfg=False, routed=None):
    import comfy.sample
    import torch

    core = importlib.import_module("ComfyUI_Ingredients.ingredients_core.sampling.official")
    noise = comfy.sample.prepare_noise(case["latent"]["samples"], SEED).transpose(1, 2)
    tokens = routing = None
    if routed is not None:
        tokens, routing = routed.tokens.tokens, routed.routing_for(payload.routing_mode)
    out = core.denoise(payload.transformer, core.make_scheduler(scheduler, payload.scheduler_config), noise,
                       case["image"], case["pos"], case["neg"], tokens, steps=steps, cfg=6.0, dynamic_cfg=dynamic_cfg,
                       generator=torch.Generator().manual_seed(SEED), routing=routing)
    return out.transpose(1, 2) / SCALE


def routed_ids(payload, people=2, **ranges):
    import torch

    payloads = importlib.import_module("ComfyUI_Ingredients.nodes.payloads")
    ids_nodes = importlib.import_module("ComfyUI_Ingredients.nodes.ids")
    config = payload.transformer.config
    tokens = torch.randn(people, config.ids.num_tokens, config.ids.token_dim, generator=torch.Generator().manual_seed(3))
    id_tokens = payloads.IngredientsIDTokens(tokens, payloads.IngredientsIDs(tuple(range(people))), payload.folder)
    return ids_nodes.RouteIDs.execute(id_tokens=id_tokens, routing_mode="official", strength=1.0, **ranges).args[0]


def custom_advanced(ncs, pack, model, case, scheduler, steps):
    guider = node_call(ncs.CFGGuider, model=model, positive=case["positive"], negative=case["negative"], cfg=6.0)[0]
    noise = node_call(ncs.RandomNoise, noise_seed=SEED)[0]
    sampler = node_call(pack["IngredientsOfficialSampler"], scheduler=scheduler)[0]
    sigmas = node_call(pack["IngredientsScheduler"], model=model, steps=steps)[0]
    return node_call(ncs.SamplerCustomAdvanced, noise=noise, guider=guider, sampler=sampler, sigmas=sigmas,
                     latent_image=case["latent"])[0]["samples"]


def ksampler(core_nodes, model, case, steps):
    return node_call(core_nodes.KSampler, model=model, seed=SEED, steps=steps, cfg=6.0, sampler_name="euler",
                     scheduler="simple", positive=case["positive"], negative=case["negative"],
                     latent_image=case["latent"])[0]["samples"]


def cache_run(cache_node, core_nodes, model, case, steps, threshold, log):
    """KSampler through a cache node; counts the transformer calls that ran (with the ID patch)."""
    import comfy.patcher_extension

    cached = node_call(cache_node, model=model, reuse_threshold=threshold, start_percent=0.15, end_percent=0.95,
                       verbose=False)[0]
    seen = []

    def count(executor, *args, **kwargs):
        seen.append("ingredients_ids" in args[-1])
        return executor(*args, **kwargs)

    cached = cached.clone()
    cached.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.DIFFUSION_MODEL, "count", count)
    log.lines.clear()
    out = ksampler(core_nodes, cached, case, steps)
    return out, seen, list(log.lines)


def main(comfyui: str, pack_dir: str, models_dir: str) -> dict:
    sys.path[0] = comfyui
    from comfy.cli_args import args

    args.cpu = True
    import folder_paths
    import torch

    pack = load_pack(pack_dir)
    folder_paths.add_model_folder_path("ingredients", f"{models_dir}/ingredients")
    import comfy.samplers
    import comfy_extras.nodes_custom_sampler as ncs
    import nodes as core_nodes

    log = SkipLog()
    logging.getLogger().addHandler(log)
    logging.getLogger().setLevel(logging.INFO)
    payload, model = node_call(pack["IngredientsModelLoader"], model_folder="Ingredients", dtype="float32",
                               routing_mode="official")
    case = make_case(payload.transformer.config, torch)
    report = {}
    for scheduler, steps in (("ddim", 4), ("dpm", 4), ("dpm", 3)):
        ours = custom_advanced(ncs, pack, model, case, scheduler, steps)
        report[f"custom_advanced.{scheduler}.{steps}"] = relative(ours, pack_run(payload, case, scheduler, steps))
    routed = routed_ids(payload)
    with_ids = node_call(pack["IngredientsApplyIDs"], model=model, routed_ids=routed)[0]
    want = pack_run(payload, case, "dpm", 3, routed=routed)
    report["custom_advanced.dpm.3.ids"] = relative(custom_advanced(ncs, pack, with_ids, case, "dpm", 3), want)
    report["ids_change_pack_result"] = relative(pack_run(payload, case, "dpm", 3), want)
    for steps in (4, 10):
        report[f"ksampler.euler_simple.{steps}"] = relative(ksampler(core_nodes, model, case, steps),
                                                            pack_run(payload, case, "ddim", steps))
    dynamic = node_call(pack["IngredientsDynamicCFG"], model=model)[0]
    report["ksampler.dynamic_cfg.4"] = relative(ksampler(core_nodes, dynamic, case, 4),
                                                pack_run(payload, case, "ddim", 4, dynamic_cfg=True))
    sampling = model.get_model_object("model_sampling")
    for steps in (50, 30):
        simple = comfy.samplers.calculate_sigmas(sampling, "simple", steps)
        official = node_call(pack["IngredientsScheduler"], model=model, steps=steps)[0]
        report[f"simple_equals_official.{steps}"] = bool(torch.equal(simple, official))
    report["caches"] = caches(pack, core_nodes, model, with_ids, case, log)
    report["compile"] = compiled_run(pack, core_nodes, model, payload, case)
    return report


def compiled_run(pack, core_nodes, model, payload, case, backend="eager") -> dict:
    """KSampler on a compiled MODEL with IDs that switch on and off by step (per-step Python values)."""
    import comfy_extras.nodes_torch_compile as node_module
    from comfy_api.torch_helpers import set_torch_compile_wrapper
    from torch._dynamo.utils import counters

    guard_filter = getattr(node_module, "skip_torch_compile_dict", None)  # 0.33.0's node passes it, 0.3.64's not
    options = {"guard_filter_fn": guard_filter} if guard_filter is not None else None

    routed = routed_ids(payload, start_1=0.0, end_1=0.5, start_2=0.5, end_2=1.0)
    with_ids = node_call(pack["IngredientsApplyIDs"], model=model, routed_ids=routed)[0]
    compiled = with_ids.clone()
    set_torch_compile_wrapper(model=compiled, backend=backend, options=options)
    counters.clear()
    ours = ksampler(core_nodes, compiled, case, 6)
    return {"backend": backend, "relative_to_uncompiled": relative(ours, ksampler(core_nodes, with_ids, case, 6)),
            "graphs": int(counters["stats"]["unique_graphs"]), "graph_breaks": int(sum(counters["graph_break"].values()))}


def caches(pack, core_nodes, model, with_ids, case, log) -> dict:
    try:
        import comfy_extras.nodes_easycache as nec
    except ImportError:
        return {"missing": "comfy_extras.nodes_easycache"}
    found = {}
    steps = 12
    for name, node in (("EasyCache", nec.EasyCacheNode), ("LazyCache", nec.LazyCacheNode)):
        for threshold in (0.05, 0.2, 0.5):
            out, seen, lines = cache_run(node, core_nodes, with_ids, case, steps, threshold, log)
            plain, _, _ = cache_run(node, core_nodes, model, case, steps, threshold, log)
            found[f"{name}.{threshold}"] = {
                "steps": steps, "log": lines, "transformer_calls": len(seen), "ids_at_every_call": all(seen),
                "finite": bool(out.isfinite().all()), "ids_change_result": relative(plain, out)}
    return found


if __name__ == "__main__":
    print(json.dumps(main(*sys.argv[1:4])))
