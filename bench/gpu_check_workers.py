"""``gpu_check.py``'s subprocess side: ComfyUI started with one set of flags, then one job's checks.

Nothing here imports torch before ComfyUI's start (``comfy_inproc.start_comfyui``): ComfyUI 0.33's
``main.py`` initialises comfy-aimdo and picks the CUDA allocator before torch is imported.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import time
from pathlib import Path

import comfy_inproc as inproc
import comfy_start
import native_check

logger = logging.getLogger("bench.gpu_check")

CHAIN_MODES = {"default": [], "lowvram": ["--lowvram"], "novram": ["--novram"], "cpu": ["--cpu"]}
#: name -> (storage dtype, ComfyUI flags, card GiB for a partial load or None, TeaCache threshold)
ITEMS = {
    "bf16": ("bf16", [], None, 0.0),
    "fp8": ("fp8_e4m3fn", [], None, 0.0),
    "fp8_12gb": ("fp8_e4m3fn", [], 12, 0.0),
    "fp8_8gb": ("fp8_e4m3fn", [], 8, 0.0),
    "sage_bf16": ("bf16", ["--use-sage-attention"], None, 0.0),
    "teacache_bf16": ("bf16", [], None, 0.15),
}
#: Full-size items also run through the native MODEL (``<item>:MODEL``).
NATIVE_ITEMS = ("bf16", "fp8", "fp8_12gb", "fp8_8gb")
SMOKE_SHARE = {12: 0.5, 8: 0.25}  # --smoke: the partial loads keep these shares of the tiny weights
TINY = dict(width=96, height=64, frames=9)
GiB = 1024 ** 3


def job_checks(job: str) -> list[str]:
    """The checks one job reports, in order."""
    kind, _, name = job.partition(":")
    if kind == "chain":
        return [job, f"native:{name}:ksampler", f"native:{name}:custom_advanced"]
    return [job] + ([f"{job}:MODEL"] if name in NATIVE_ITEMS else [])


# -- ComfyUI and the pack -----------------------------------------------------------------------------
def setup(args, flags: list[str]) -> dict:
    """Bundle, stand-ins, ComfyUI with ``flags`` (as main.py starts it), the pack."""
    started = time.perf_counter()
    bundle = inproc.use_bundle(args.bundle)
    stand_ins = inproc.stand_in_absent()
    path = inproc.resolve_comfyui(args.comfyui, bundle["comfyui"])
    if path is None:
        raise RuntimeError("no ComfyUI: set COMFYUI_PATH (a ComfyUI checkout) or pass --bundle/--comfyui")
    mm = inproc.start_comfyui(path, flags)
    _, nodes = inproc.load_pack()
    start = comfy_start.report()
    return dict(mm=mm, nodes=nodes, host=inproc.pack_module("nodes.host"), stand_ins=stand_ins, start=start,
                comfyui=f"{inproc.comfyui_version(path)} ({path})", import_s=time.perf_counter() - started)


def core(name: str):
    """A module of the pack's own ``ingredients_core`` (the copy its nodes use)."""
    return inproc.pack_module(f"ingredients_core.{name}")


def _run(node, **inputs):
    return node.execute(**inputs).args


def _photos(torch, tiny, seed: int):
    return torch.from_numpy(tiny.face_photo(seed, size=128)).float().div(255.0)[None]


def _start_fields(env: dict) -> dict:
    start = env["start"]
    return dict(comfyui=env["comfyui"], stand_ins=env["stand_ins"], dynamic_vram=start.get("dynamic_vram", "n/a"),
                core_patcher=start["core_patcher"], cuda_malloc=start.get("cuda_malloc"), import_s=env["import_s"],
                torch_imported_first=start.get("torch_imported_first"))


# -- (a) the chain and the tiny MODEL path ---------------------------------------------------------------------
def _chain(env: dict, torch, fullsize, mode: str) -> tuple[dict, dict]:
    """The node chain; returns (its result, what the native checks reuse)."""
    import folder_paths

    from ingredients_core.testing import tiny_models as tiny  # the repository is on sys.path once ComfyUI started

    mm, nodes = env["mm"], env["nodes"]
    root = Path(inproc.scratch_dir("ingredients-gpu-check-"))
    tiny.make_tiny_model_folder(root / "ingredients" / "Ingredients")
    folder_paths.add_model_folder_path("ingredients", str(root / "ingredients"))
    device = mm.get_torch_device()
    fullsize.peak_reset(device)
    started = time.perf_counter()
    folder = dict(model_folder="Ingredients")
    loader_out = _run(nodes["IngredientsModelLoader"], **folder, dtype="auto", routing_mode="official")
    model = loader_out[0]
    vae, = _run(nodes["IngredientsVAELoader"], **folder, dtype="auto")
    t5, = _run(nodes["IngredientsT5Loader"], **folder, dtype="auto")
    encoder, = _run(nodes["IngredientsFaceEncoderLoader"], **folder, provider="auto")
    prompt, _, _ = _run(nodes["IngredientsEncodePrompt"], t5=t5, prompt="Two women at a table.", negative_prompt="")
    faces = [_run(nodes["IngredientsEncodeFace"], face_encoder=encoder, image=_photos(torch, tiny, seed),
                  face_choice="best", face_index=0, min_face_size=64)[0] for seed in (1, 3)]
    ids, = _run(nodes["IngredientsIDList"], face_1=faces[0], face_2=faces[1])
    tokens, = _run(nodes["IngredientsProjectIDs"], model=model, ids=ids)
    routed, = _run(nodes["IngredientsRouteIDs"], id_tokens=tokens, routing_mode="from model", strength=1.0)
    reuse = dict(loader_out=loader_out, prompt=prompt, routed=routed, device=device)
    latents, _ = _run(nodes["IngredientsSampler"], model=model, prompt=prompt, routed_ids=routed, vae=vae, steps=2,
                      cfg=6.0, seed=3, scheduler="dpm", dynamic_cfg=False, **TINY)
    resident, size = model.patcher.loaded_size(), model.patcher.model_size()
    frames, = _run(nodes["IngredientsDecode"], vae=vae, latents=latents, tiling=True)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    finite = bool(torch.isfinite(latents.latents).all())
    shape = tuple(frames.shape)
    ok = finite and shape == (TINY["frames"], TINY["height"], TINY["width"], 3)
    q_former = type(model.projector).__name__ if model.projector is not None else "the MODEL's (DynamicVRAM)"
    patchers = {"transformer": type(model.patcher).__name__, "q-former": q_former,
                "VAE": type(vae.patcher).__name__, "T5": type(t5.patcher).__name__,
                "faces": type(encoder.patcher).__name__}
    return dict(ok=ok, error=None if ok else f"latents finite={finite}, frames {shape}",
                seconds=time.perf_counter() - started, peak_vram=fullsize.peak_bytes(device), device=str(device),
                vram_state=mm.vram_state.name, transformer_resident=resident, transformer_bytes=size,
                transformer_dtype=str(model.transformer.placement()[1]), patchers=patchers), reuse


def chain_worker(args, mode: str) -> dict:
    """(a): the chain on tiny models in ComfyUI's ``mode``, then the native MODEL path on its models."""
    env = setup(args, CHAIN_MODES[mode])
    import fullsize
    import torch

    checks = job_checks(f"chain:{mode}")
    try:
        chain, reuse = _chain(env, torch, fullsize, mode)
    except Exception as error:  # the chain's own failure; the native checks need its models
        logger.exception("chain:%s failed", mode)
        why = inproc.one_line(error)
        return {checks[0]: dict(ok=False, error=why, **_start_fields(env)),
                **{c: dict(ok=False, error=f"not run: the chain failed first ({why[:120]})") for c in checks[1:]}}
    chain.update(_start_fields(env))
    natives = native_check.tiny_checks(torch, env["nodes"], reuse["loader_out"], reuse["prompt"], reuse["routed"],
                                       TINY, reuse["device"])
    for result in natives.values():
        result["dynamic_vram"] = env["start"].get("dynamic_vram", "n/a")
    return {checks[0]: chain, checks[1]: natives["ksampler"], checks[2]: natives["custom_advanced"]}


# -- (b) one full-size item ------------------------------------------------------------------------------------------
def _sage_ready(args) -> str | None:
    """None when ``sageattention`` imports (tried in a child interpreter: importing it here would
    import torch before ComfyUI's start), else why not (one line)."""
    site = inproc.use_bundle(args.bundle)["site"]
    code = (f"import sys; sys.path.append({site!r})\n" if site else "") + "import sageattention"
    done = subprocess.run([sys.executable, *inproc.python_flags(), "-c", code], capture_output=True, text=True,
                          timeout=120, check=False)
    if done.returncode == 0:
        return None
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    return " ".join((lines[-1] if lines else f"exit status {done.returncode}").split())[:300]


def _card_flags(args, card) -> list[str]:
    """``--vram-headroom`` that leaves ``card`` GiB to DynamicVRAM (ComfyUI versions that have it)."""
    path = inproc.resolve_comfyui(args.comfyui, inproc.use_bundle(args.bundle)["comfyui"])
    if not card or args.smoke or args.cpu_only or not args.device_memory or not comfy_start.has_dynamic_vram(path):
        return []
    return ["--vram-headroom", f"{max(0.0, args.device_memory / GiB - card):.3f}"]


def item_worker(args, name: str) -> dict:
    """(b): one full-size (``--smoke``: tiny) item through the pack's sampler, then (NATIVE_ITEMS)
    the same weights through the MODEL."""
    storage_name, flags, card, teacache = ITEMS[name]
    checks = job_checks(f"item:{name}")
    inproc.use_bundle(args.bundle)
    if "--use-sage-attention" in flags and (why := _sage_ready(args)) is not None:
        return {checks[0]: dict(ok=False, error=f"sageattention does not import: {why}")}
    env = setup(args, flags + _card_flags(args, card) + (["--cpu"] if args.cpu_only else []))
    import fullsize_items

    return fullsize_items.run(env, args, name, ITEMS[name], checks, SMOKE_SHARE, core)


def worker(args) -> int:
    kind, _, name = args.worker.partition(":")
    try:
        results = chain_worker(args, name) if kind == "chain" else item_worker(args, name)
    except Exception as error:  # each job reports its own failure in one line
        logger.exception("%s failed", args.worker)
        results = {check: dict(ok=False, error=inproc.one_line(error)) for check in job_checks(args.worker)}
    Path(args.result).write_text(json.dumps(results, default=str))
    return 0
