"""The pack on real ComfyUI in-process on a GPU: the node chain per VRAM mode, then the full-size transformer.

    COMFYUI_PATH=/path/to/ComfyUI python bench/gpu_check.py [--json out.json] [--log-dir DIR]
    python bench/gpu_check.py --bundle bench/.gpu --json out.json     # on the GPU machine (see below)

(a) The node chain (Load Model/VAE/T5/Face Encoder -> Encode Prompt -> Encode Face x2 -> IDs ->
    Project IDs -> Route IDs -> Sampler (2 steps) -> Decode) on tiny models, once per ComfyUI VRAM
    mode: default, --lowvram, --novram (ComfyUI reads its flags at import, so each mode runs in a
    subprocess of this script). Printed per mode: ok/failed, seconds, peak VRAM
    (torch.cuda.max_memory_allocated) and how much of the transformer ComfyUI kept on the GPU.
(b) The full-size transformer (TransformerConfig(), random weights, no download) at 49 x 480 x 720,
    2 IDs, CFG (batch 2), ``--steps`` steps (the first is a warm-up): peak VRAM and seconds per step
    for bf16, fp8 (e4m3fn storage, bf16 compute), fp8 + partial load under 12 GiB and 8 GiB budgets
    (``ModelPatcher.load(device, lowvram_model_memory=budget)``, budget = card - the pack's
    activation estimate for this run - ComfyUI's ``minimum_inference_memory()``, weights starting
    on the offload device), sage attention (ComfyUI's --use-sage-attention) against the bf16 run's
    SDPA, and TeaCache 0.15 (skipped evaluations, seconds per step). Each in its own subprocess.

Every check catches its own failure (one line) and the others go on; a table and ``--json`` close
the run; exit status 1 if any check failed. Without CUDA: says so, runs (a) in ComfyUI's --cpu mode
(the CPU dry run) and skips (b) (``--smoke`` runs (b) on a tiny config instead, to try its code).

On the GPU machine (no pip, no network): ``bench/prepare_gpu_bundle.sh`` here builds ``bench/.gpu``
(wheels + a copy of ComfyUI's Python files); ``--bundle bench/.gpu`` unzips the wheels into
``/tmp/ingredients-gpu-site`` (``INGREDIENTS_BUNDLE_SITE``), appends it to sys.path after the
machine's own packages and imports the bundled ComfyUI unless COMFYUI_PATH or --comfyui is given.
"""

from __future__ import annotations

import argparse
import json
import logging
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import comfy_inproc as inproc  # noqa: E402  (stdlib only at import)
import fullsize  # noqa: E402

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
#: Top-level modules the checks import (listed when missing, before anything runs).
NEEDED = ["diffusers", "transformers", "safetensors", "einops", "psutil", "PIL", "torchvision", "av", "facexlib",
          "insightface", "onnxruntime", "onnx", "skimage", "consisid_eva_clip", "cv2", "scipy", "sageattention",
          "triton", "yaml"]
SMOKE_SHARE = {12: 0.5, 8: 0.25}  # --smoke: the partial loads keep these shares of the tiny weights
TINY = dict(width=96, height=64, frames=9)
CHAIN_TIMEOUT, ITEM_TIMEOUT = 150, 170
GiB = fullsize.GiB


# -- in a worker: ComfyUI and the pack ---------------------------------------------------------------
def setup(args, flags: list[str]) -> dict:
    """Bundle, stand-ins, ComfyUI with ``flags``, the pack: what every worker starts with."""
    started = time.perf_counter()
    bundle = inproc.use_bundle(args.bundle)  # again (done before a sage check): no work the second time
    absent = inproc.stand_in_absent()
    path = inproc.resolve_comfyui(args.comfyui, bundle["comfyui"])
    if path is None:
        raise RuntimeError("no ComfyUI: set COMFYUI_PATH (a ComfyUI checkout) or pass --bundle/--comfyui")
    mm = inproc.start_comfyui(path, flags)
    _, nodes = inproc.load_pack()
    return dict(mm=mm, nodes=nodes, host=inproc.pack_module("nodes.host"), stand_ins=absent,
                comfyui=f"{inproc.comfyui_version(path)} ({path})", import_s=time.perf_counter() - started)


def core(name: str):
    """A module of the pack's own ``ingredients_core`` (the copy its nodes use)."""
    return inproc.pack_module(f"ingredients_core.{name}")


def _run(node, **inputs):
    return node.execute(**inputs).args


def _photos(tiny, seed: int):
    import torch

    return torch.from_numpy(tiny.face_photo(seed, size=128)).float().div(255.0)[None]


def chain_worker(args, mode: str) -> dict:
    """(a): the whole node chain on tiny models in ComfyUI's ``mode``."""
    import torch

    env = setup(args, CHAIN_MODES[mode])
    mm, nodes = env["mm"], env["nodes"]
    import folder_paths

    tiny = inproc.tiny_models()
    root = Path(inproc.scratch_dir("ingredients-gpu-check-"))
    tiny.make_tiny_model_folder(root / "ingredients" / "Ingredients")
    folder_paths.add_model_folder_path("ingredients", str(root / "ingredients"))
    device = mm.get_torch_device()
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
    started = time.perf_counter()
    folder = dict(model_folder="Ingredients")
    model, _ = _run(nodes["IngredientsModelLoader"], **folder, dtype="auto", routing_mode="official")
    vae, = _run(nodes["IngredientsVAELoader"], **folder, dtype="auto")
    t5, = _run(nodes["IngredientsT5Loader"], **folder, dtype="auto")
    encoder, = _run(nodes["IngredientsFaceEncoderLoader"], **folder, provider="auto")
    prompt, _, _ = _run(nodes["IngredientsEncodePrompt"], t5=t5, prompt="Two women at a table.", negative_prompt="")
    faces = [_run(nodes["IngredientsEncodeFace"], face_encoder=encoder, image=_photos(tiny, seed), face_choice="best",
                  face_index=0, min_face_size=64)[0] for seed in (1, 3)]
    ids, = _run(nodes["IngredientsIDList"], face_1=faces[0], face_2=faces[1])
    tokens, = _run(nodes["IngredientsProjectIDs"], model=model, ids=ids)
    routed, = _run(nodes["IngredientsRouteIDs"], id_tokens=tokens, routing_mode="from model", strength=1.0)
    latents, _ = _run(nodes["IngredientsSampler"], model=model, prompt=prompt, routed_ids=routed, vae=vae, steps=2,
                      cfg=6.0, seed=3, scheduler="dpm", dynamic_cfg=False, **TINY)
    resident, size = model.patcher.loaded_size(), model.patcher.model_size()
    frames, = _run(nodes["IngredientsDecode"], vae=vae, latents=latents, tiling=True)
    if cuda:
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - started
    finite = bool(torch.isfinite(latents.latents).all())
    shape = tuple(frames.shape)
    ok = finite and shape == (TINY["frames"], TINY["height"], TINY["width"], 3)
    return dict(ok=ok, error=None if ok else f"latents finite={finite}, frames {shape}", seconds=seconds,
                import_s=env["import_s"], peak_vram=fullsize.peak_bytes(device), device=str(device),
                vram_state=mm.vram_state.name, transformer_resident=resident, transformer_bytes=size,
                transformer_dtype=str(model.transformer.placement()[1]), comfyui=env["comfyui"],
                stand_ins=env["stand_ins"])


# -- in a worker: one full-size check -----------------------------------------------------------------
def _sage_ready() -> str | None:
    """None when ``sageattention`` imports, else why not (one line)."""
    try:
        import sageattention  # noqa: F401
    except Exception as error:  # an ImportError, or Triton failing inside it
        return inproc.one_line(error)
    return None


def item_worker(args, name: str) -> dict:
    """(b): one full-size (or, with ``--smoke``, tiny) transformer run, see :data:`ITEMS`."""
    import torch

    storage_name, flags, card, teacache = ITEMS[name]
    inproc.use_bundle(args.bundle)
    if "--use-sage-attention" in flags and (why := _sage_ready()) is not None:
        return dict(ok=False, error=f"sageattention does not import: {why}")
    env = setup(args, flags + (["--cpu"] if args.cpu_only else []))
    mm, host = env["mm"], env["host"]
    device, offload = host.devices("diffusion")
    if name.startswith("sage") and device.type != "cuda":
        return dict(ok=None, error="sageattention imports; its kernels need CUDA: not run")
    fallbacks = fullsize.SageFallbacks()
    logging.getLogger().addHandler(fallbacks)
    compute, storage = torch.bfloat16, fullsize.dtype_of(storage_name)
    config = fullsize.smoke_config(core) if args.smoke else core("config").TransformerConfig()
    shape = fullsize.SMOKE if args.smoke else fullsize.OFFICIAL
    model = fullsize.build_on_meta(core, config, host.transformer_layers(storage, compute), storage, compute)
    fullsize.materialise(model, device)
    model.local_facial_extractor.to(offload)  # Project IDs' part: not used by a step
    patcher = inproc.pack_module("nodes.native_model").model_patcher(model, storage, compute, "official")
    element = torch.finfo(compute).bits // 8
    both = fullsize.activation_bytes(core, config, shape, element)
    result = dict(storage=storage_name, flags=flags, device=str(device), comfyui=env["comfyui"],
                  activation_estimate=both, reserve=int(mm.minimum_inference_memory()))
    if card is None:
        host.load_for_run(patcher, both, both)
        result["method"] = "host.load_for_run (ComfyUI load_models_gpu with the pack's estimates)"
    else:
        model.to(offload)
        budget = (int(SMOKE_SHARE[card] * patcher.model_size()) if args.smoke
                  else fullsize.load_models_gpu_budget(mm, card * GiB, both))
        patcher.load(device, lowvram_model_memory=budget)
        result.update(budget=budget, card_gib=card,
                      method="ModelPatcher.load(device, lowvram_model_memory=what load_models_gpu grants the "
                             "sampler on that card)")
    cache = core("step_cache").TeaCache(teacache, args.teacache_steps) if teacache else None
    steps = args.teacache_steps if teacache else args.steps
    import comfy.ldm.modules.attention as attention

    fullsize.peak_reset(device)
    seconds = fullsize.timed_denoise(core, model, shape, steps, device, compute, cache)
    result.update(ok=fallbacks.count == 0, error=fallbacks.first, step_s=seconds, s_per_step=fullsize.per_step(seconds),
                  peak_vram=fullsize.peak_bytes(device), resident=patcher.loaded_size(),
                  model_bytes=patcher.model_size(), attention=attention.optimized_attention.__name__,
                  sage_fallbacks=fallbacks.count)
    if cache is not None:
        result["teacache"] = fullsize.teacache_figures(cache, seconds)
        result["s_per_step"] = result["teacache"]["mean_step_s"]
    return result


def worker(args) -> int:
    kind, _, name = args.worker.partition(":")
    try:
        result = chain_worker(args, name) if kind == "chain" else item_worker(args, name)
    except Exception as error:  # each check reports its own failure in one line
        logger.exception("%s failed", args.worker)
        result = dict(ok=False, error=inproc.one_line(error))
    Path(args.result).write_text(json.dumps(result, default=str))
    return 0


# -- the parent: subprocesses, time limit, table -------------------------------------------------------
def _passthrough(args) -> list[str]:
    out = ["--steps", str(args.steps), "--teacache-steps", str(args.teacache_steps)]
    for flag, value in (("--bundle", args.bundle), ("--comfyui", args.comfyui)):
        if value:
            out += [flag, str(value)]
    return out + (["--smoke"] if args.smoke else []) + (["--cpu-only"] if args.cpu_only else [])


def spawn(args, job: str, timeout: float, log_dir: Path) -> dict:
    """Run ``--worker job`` in a fresh interpreter (same flags, same environment); its result, or
    why there is none (exit status and the last error line of its log)."""
    result_file = log_dir / f"{job.replace(':', '_')}.json"
    log_file = log_dir / f"{job.replace(':', '_')}.log"
    result_file.unlink(missing_ok=True)
    command = [sys.executable, *inproc.python_flags(), str(Path(__file__).resolve()), "--worker", job,
               "--result", str(result_file), *_passthrough(args)]
    started = time.perf_counter()
    with open(log_file, "w") as log:
        try:
            code = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, timeout=timeout,
                                  check=False).returncode
        except subprocess.TimeoutExpired:
            code = "timeout"
    wall = time.perf_counter() - started
    if result_file.is_file():
        result = json.loads(result_file.read_text())
    else:
        lines = [line for line in log_file.read_text(errors="replace").splitlines() if line.strip()]
        fallback = lines[-1] if lines else ""
        last = next((line for line in reversed(lines) if "Error" in line or "error" in line), fallback)
        why = f"timed out after {timeout:.0f} s" if code == "timeout" else f"exit status {code}"
        result = dict(ok=False, error=f"{why}: {' '.join(last.split())[:240]}")
    result.update(wall_s=wall, log=str(log_file))
    return result


def run_jobs(args, jobs: list[tuple[str, float]], deadline: float, log_dir: Path) -> dict:
    """Each job in its own subprocess, skipped once the time limit is too close."""
    results = {}
    for job, cap in jobs:
        left = deadline - time.monotonic()
        if left < 30:
            results[job] = dict(ok=None, error=f"skipped: {args.time_limit:.0f} s time limit reached")
        else:
            results[job] = spawn(args, job, min(cap, left), log_dir)
        line(job, results[job])
    return results


def run_fullsize(args, deadline: float, log_dir: Path, items=tuple(ITEMS)) -> dict:
    """(b) for ``items`` (also used by bench_memory.py); adds the sage and TeaCache comparisons."""
    results = run_jobs(args, [(f"item:{name}", ITEM_TIMEOUT) for name in items], deadline, log_dir)
    base = results.get("item:bf16", {}).get("s_per_step")
    sage = results.get("item:sage_bf16", {}).get("s_per_step")
    if base and sage:
        results["item:sage_bf16"]["speedup_vs_bf16"] = base / sage
    return results


def _gib(value) -> str:
    """Bytes as GiB (MiB below 0.1 GiB), 8 wide."""
    if not isinstance(value, (int, float)):
        return "       -"
    return f"{value / GiB:7.2f}G" if value >= 0.1 * GiB else f"{value / fullsize.MiB:7.2f}M"


def _status(result: dict) -> str:
    return {True: "ok", False: "FAILED", None: "skipped"}[result.get("ok")]


def _note(result: dict) -> str:
    notes = []
    if result.get("transformer_bytes"):
        notes.append(f"transformer {result['transformer_resident'] / result['transformer_bytes']:.0%} resident, "
                     f"{result.get('vram_state', '')}")
    if result.get("budget") is not None:
        notes.append(f"budget {_gib(result['budget']).strip()}")
    if result.get("card_gib") and isinstance(result.get("peak_vram"), int):
        under = result["peak_vram"] < result["card_gib"] * GiB
        notes.append(f"peak {'under' if under else 'OVER'} {result['card_gib']} GiB (CUDA context not counted)")
    if result.get("attention"):
        notes.append(result["attention"])
    if result.get("teacache"):
        t = result["teacache"]
        speed = f", x{t['speedup']:.2f} vs a computed step" if t.get("speedup") else ""
        notes.append(f"TeaCache {t['threshold']}: {t['skipped']} of {t['steps']} skipped{speed} (mean s/step)")
    if result.get("speedup_vs_bf16"):
        notes.append(f"x{result['speedup_vs_bf16']:.2f} vs bf16")
    if result.get("error"):
        notes.append(result["error"])
    return "; ".join(notes)


def line(job: str, result: dict) -> None:
    seconds = result.get("seconds", result.get("wall_s"))
    step = result.get("s_per_step")
    step = f"{step:7.3f}" if isinstance(step, (int, float)) else "      -"
    sys.stdout.write(f"{job:20s} {_status(result):8s} {seconds or 0:7.1f} {_gib(result.get('peak_vram'))} {step} "
                     f"{_gib(result.get('resident', result.get('transformer_resident')))}  {_note(result)}\n")
    sys.stdout.flush()


def header() -> str:
    return f"{'check':20s} {'status':8s} {'time s':>7s} {'peak VRAM':>8s} {'s/step':>7s} {'resident':>8s}  notes\n"


def environment(args) -> dict:
    import torch

    bundle = inproc.use_bundle(args.bundle)
    cuda = torch.cuda.is_available()
    info = dict(python=sys.version.split()[0], torch=torch.__version__, cuda_build=torch.version.cuda, cuda=cuda,
                device=torch.cuda.get_device_name(0) if cuda else "cpu",
                device_memory=torch.cuda.get_device_properties(0).total_memory if cuda else None,
                bundle_site=bundle["site"], comfyui=str(inproc.resolve_comfyui(args.comfyui, bundle["comfyui"])),
                missing=inproc.missing_modules(NEEDED))
    return info


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", type=Path, help="write every figure to this JSON file")
    parser.add_argument("--bundle", type=Path, help="the folder prepare_gpu_bundle.sh made (bench/.gpu)")
    parser.add_argument("--comfyui", help="ComfyUI checkout (default: COMFYUI_PATH, else the bundle's copy)")
    parser.add_argument("--steps", type=int, default=4, help="steps per full-size run, the first a warm-up (4)")
    parser.add_argument("--teacache-steps", type=int, default=10, help="steps of the TeaCache run (10)")
    parser.add_argument("--time-limit", type=float, default=470, help="seconds for the whole check (470)")
    parser.add_argument("--log-dir", type=Path, help="where each subprocess's log goes (default: a temp folder)")
    parser.add_argument("--only", choices=("chain", "fullsize"), help="run only part (a) or (b)")
    parser.add_argument("--smoke", action="store_true", help="(b) on a tiny config: tries the code, no figures")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    parser.add_argument("--cpu-only", action="store_true", help=argparse.SUPPRESS)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if args.worker:
        return worker(args)
    deadline = time.monotonic() + args.time_limit
    info = environment(args)
    args.cpu_only = not info["cuda"]
    log_dir = args.log_dir or Path(tempfile.mkdtemp(prefix="ingredients-gpu-check-logs-"))
    log_dir.mkdir(parents=True, exist_ok=True)
    sys.stdout.write(f"python {info['python']}, torch {info['torch']} (CUDA build {info['cuda_build']}), "
                     f"device {info['device']}, ComfyUI {info['comfyui']}, logs in {log_dir}\n")
    stand_in = [name for name in info["missing"] if name in inproc.ABSENT_OK]
    sys.stdout.write(f"bundle site: {info['bundle_site']}; not importable: {', '.join(info['missing']) or 'none'}"
                     + (f" ({', '.join(stand_in)}: a stand-in module replaces it, unused here)" if stand_in else "")
                     + "\n")
    if not info["cuda"]:
        sys.stdout.write("CUDA: absent (torch.cuda.is_available() is False): CPU dry run, "
                         "chain in ComfyUI's --cpu mode\n")
    sys.stdout.write(header())
    results: dict = dict(environment=info)
    modes = ["default", "lowvram", "novram"] if info["cuda"] else ["cpu"]
    if args.only != "fullsize":
        results["chain"] = run_jobs(args, [(f"chain:{m}", CHAIN_TIMEOUT) for m in modes], deadline, log_dir)
    if args.only != "chain":
        if info["cuda"] or args.smoke:
            results["fullsize"] = run_fullsize(args, deadline, log_dir)
        else:
            results["fullsize"] = {"skipped": "CUDA absent: the full-size checks need a GPU (--smoke tries their code)"}
            sys.stdout.write(f"{'fullsize':20s} skipped  {results['fullsize']['skipped']}\n")
    checks = [r for part in ("chain", "fullsize") for r in results.get(part, {}).values() if isinstance(r, dict)]
    failed = [r for r in checks if r.get("ok") is False]
    sys.stdout.write("\n" + header())
    for part in ("chain", "fullsize"):
        for job, result in results.get(part, {}).items():
            if isinstance(result, dict):
                line(job, result)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2, default=str))
    passed, skipped = (sum(r.get("ok") is want for r in checks) for want in (True, None))
    sys.stdout.write(f"{passed} passed, {len(failed)} failed, {skipped} skipped\n")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
