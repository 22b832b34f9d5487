"""The pack on real ComfyUI in-process on a GPU: the node chain and the native MODEL path per VRAM mode,
then the full-size transformer through the pack's sampler and through the MODEL.

    COMFYUI_PATH=/path/to/ComfyUI python bench/gpu_check.py [--json out.json] [--log-dir DIR]
    python bench/gpu_check.py --bundle bench/.gpu --json out.json     # on the GPU machine (see below)

ComfyUI starts as its ``main.py`` starts it (``comfy_inproc`` / ``comfy_start``): on ComfyUI 0.33 on an
NVIDIA GPU that turns DynamicVRAM (comfy-aimdo) on, so ``CoreModelPatcher`` is ``ModelPatcherDynamic``;
every check prints whether DynamicVRAM was on and which patcher class each of the pack's models got.

(a) The node chain (Load Model/VAE/T5/Face Encoder -> Encode Prompt -> Encode Face x2 -> IDs ->
    Project IDs -> Route IDs -> Sampler (2 steps) -> Decode) on tiny models, then in the same process
    the native MODEL path (``native_check``): the loader's MODEL -> Apply IDs -> ComfyUI's KSampler
    (euler / simple) and SamplerCustomAdvanced with the pack's official DDIM SAMPLER, 2 steps each;
    once per ComfyUI VRAM mode: default, --lowvram, --novram (ComfyUI reads its flags at import, so
    each mode runs in a subprocess of this script). Printed: ok/failed, seconds, peak VRAM
    (torch.cuda.max_memory_allocated), how much of the transformer ComfyUI kept on the GPU.
(b) The full-size transformer (TransformerConfig(), random weights, no download) at 49 x 480 x 720,
    2 IDs, CFG (batch 2), ``--steps`` steps (the first is a warm-up): peak VRAM and seconds per step
    for bf16, fp8 (e4m3fn storage, bf16 compute), fp8 under 12 GiB and 8 GiB cards, sage attention
    (ComfyUI's --use-sage-attention) against the bf16 run's SDPA, and TeaCache 0.15; bf16, fp8 and the
    two cards also through the MODEL (``<item>:MODEL``: Apply IDs, ``comfy.sample.sample`` euler /
    simple). A card is emulated with DynamicVRAM by ``--vram-headroom`` (total - card GiB: aimdo keeps
    that much VRAM free, counting every process; judged by the device's used memory, sampled
    every 10 ms), without it by ComfyUI's own partial load (``ModelPatcher.load(device,
    lowvram_model_memory=budget)``, budget = card - the pack's activation estimate - ComfyUI's
    reserve; the MODEL path: ComfyUI's reserve raised to total - card, what ``--reserve-vram`` does).

Every check catches its own failure (one line) and the others go on; a table and ``--json`` close
the run; exit status 1 if any check failed. Without CUDA: says so, runs (a) in ComfyUI's --cpu mode
(the CPU dry run) and skips (b) (``--smoke`` runs (b) on a tiny config instead, to try its code).

On the GPU machine (no pip, no network): ``bench/prepare_gpu_bundle.sh`` here builds ``bench/.gpu``
(wheels + a copy of ComfyUI's Python files; for 0.33 the comfy_kitchen STAND-IN of the working tree
replaces comfy-kitchen); ``--bundle bench/.gpu`` unzips the wheels into ``/tmp/ingredients-gpu-site``
(``INGREDIENTS_BUNDLE_SITE``), appends it to sys.path after the machine's own packages and imports the
bundled ComfyUI unless COMFYUI_PATH or --comfyui is given.
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
import comfy_inproc as inproc  # noqa: E402  (stdlib only at import: torch must come after ComfyUI's start)
import comfy_start  # noqa: E402
import gpu_check_report as report  # noqa: E402
import gpu_check_workers as workers  # noqa: E402

logger = logging.getLogger("bench.gpu_check")

CHAIN_MODES = workers.CHAIN_MODES
ITEMS = workers.ITEMS
#: Seconds each job is expected to take on an H200 (import, build, run) and its cap.
EXPECTED = {"chain": 25, "item": 35, "item+MODEL": 50}
CHAIN_TIMEOUT, ITEM_TIMEOUT = 150, 170
#: The order jobs run in (the time limit skips from the end): what matters most first.
ORDER = ("chain:cpu", "chain:default", "item:bf16", "item:fp8", "item:fp8_12gb", "item:fp8_8gb", "chain:lowvram",
         "chain:novram", "item:teacache_bf16", "item:sage_bf16")
#: Top-level modules the checks import (listed when missing, before anything runs).
NEEDED = ["diffusers", "transformers", "safetensors", "einops", "psutil", "PIL", "torchvision", "av", "facexlib",
          "insightface", "onnxruntime", "onnx", "skimage", "consisid_eva_clip", "cv2", "scipy", "sageattention",
          "triton", "yaml", "comfy_aimdo", "comfy_kitchen", "torchaudio"]
GiB = report.GiB


# -- the parent: subprocesses, time limit, table -------------------------------------------------------
def _passthrough(args) -> list[str]:
    out = ["--steps", str(args.steps), "--teacache-steps", str(args.teacache_steps)]
    named = (("--bundle", args.bundle), ("--comfyui", args.comfyui), ("--device-memory", args.device_memory))
    for flag, value in named:
        if value:
            out += [flag, str(value)]
    return out + (["--smoke"] if args.smoke else []) + (["--cpu-only"] if args.cpu_only else [])


def _no_result(log_file: Path, code) -> str:
    lines = [line for line in log_file.read_text(errors="replace").splitlines() if line.strip()]
    fallback = lines[-1] if lines else ""
    last = next((line for line in reversed(lines) if "Error" in line or "error" in line), fallback)
    return f"exit status {code}: {' '.join(last.split())[:240]}"


def spawn(args, job: str, timeout: float, log_dir: Path) -> dict:
    """Run ``--worker job`` in a fresh interpreter (same flags, same environment): ``{check: result}``
    for the job's checks, or why there is none (exit status and the last error line of its log)."""
    stem = job.replace(":", "_")
    result_file, log_file = log_dir / f"{stem}.json", log_dir / f"{stem}.log"
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
    results = json.loads(result_file.read_text()) if result_file.is_file() else {}
    why = f"timed out after {timeout:.0f} s" if code == "timeout" else None
    for check in workers.job_checks(job):
        if check not in results:
            results[check] = dict(ok=False, error=why or _no_result(log_file, code))
    for result in results.values():
        result.update(wall_s=wall, log=str(log_file))
    return results


def _cap(job: str, scale: float = 1.0) -> float:
    return scale * (CHAIN_TIMEOUT if job.startswith("chain") else ITEM_TIMEOUT)


def expected_seconds(job: str) -> float:
    if job.startswith("chain"):
        return EXPECTED["chain"]
    return EXPECTED["item+MODEL" if len(workers.job_checks(job)) > 1 else "item"]


def run_jobs(args, jobs: list[str], deadline: float, log_dir: Path) -> dict:
    """Each job in its own subprocess, skipped once the time limit is too close."""
    results = {}
    for job in jobs:
        left = deadline - time.monotonic()
        if left < 30:
            found = {check: dict(ok=None, error=f"skipped: {args.time_limit:.0f} s time limit reached")
                     for check in workers.job_checks(job)}
        else:
            found = spawn(args, job, min(_cap(job, args.cap_scale), left), log_dir)
        for check, result in found.items():
            report.line(check, result)
        results.update(found)
    return results


def _device_memory() -> int | None:
    import torch

    return torch.cuda.get_device_properties(0).total_memory if torch.cuda.is_available() else None


def run_fullsize(args, deadline: float, log_dir: Path, items=tuple(ITEMS)) -> dict:
    """(b) for ``items`` (also used by bench_memory.py); adds the sage comparison."""
    if getattr(args, "device_memory", None) is None:
        args.device_memory = _device_memory()
    results = run_jobs(args, [f"item:{name}" for name in items], deadline, log_dir)
    base = results.get("item:bf16", {}).get("s_per_step")
    sage = results.get("item:sage_bf16", {}).get("s_per_step")
    if base and sage:
        results["item:sage_bf16"]["speedup_vs_bf16"] = base / sage
    return results


def environment(args) -> dict:
    import torch

    bundle = inproc.use_bundle(args.bundle)
    placed = inproc.stand_in_absent()  # what the workers will find stood in
    cuda = torch.cuda.is_available()
    comfyui = inproc.resolve_comfyui(args.comfyui, bundle["comfyui"])
    return dict(python=sys.version.split()[0], torch=torch.__version__, cuda_build=torch.version.cuda, cuda=cuda,
                device=torch.cuda.get_device_name(0) if cuda else "cpu", device_memory=_device_memory(),
                bundle_site=bundle["site"], comfyui=str(comfyui),
                comfyui_version=inproc.comfyui_version(comfyui) if comfyui else None,
                dynamic_vram_in_comfyui=bool(comfyui and comfy_start.has_dynamic_vram(comfyui)),
                missing=[n for n in inproc.missing_modules(NEEDED) if n not in placed],
                stand_ins={name: inproc.stand_in_note(name) for name in placed})


def _preamble(info: dict, log_dir: Path) -> None:
    out = sys.stdout
    out.write(f"python {info['python']}, torch {info['torch']} (CUDA build {info['cuda_build']}), device "
              f"{info['device']}, ComfyUI {info['comfyui_version']} ({info['comfyui']}), logs in {log_dir}\n")
    out.write(f"bundle site: {info['bundle_site']}; not importable: {', '.join(info['missing']) or 'none'}\n")
    for note in info["stand_ins"].values():
        out.write(f"stand-in: {note}\n")
    if info["dynamic_vram_in_comfyui"]:
        out.write("DynamicVRAM: this ComfyUI has it; started as main.py starts it, it is on for NVIDIA GPUs in the "
                  "default and --lowvram modes (off with --novram, --cpu); each check says what it got\n")
    else:
        out.write("DynamicVRAM: not in this ComfyUI (legacy ModelPatcher loading)\n")
    if not info["cuda"]:
        out.write("CUDA: absent (torch.cuda.is_available() is False): CPU dry run, chain in ComfyUI's --cpu mode\n")


def _summary(results: dict, args) -> int:
    checks = [r for part in ("chain", "fullsize") for r in results.get(part, {}).values() if isinstance(r, dict)]
    failed = [r for r in checks if r.get("ok") is False]
    sys.stdout.write("\n" + report.header())
    for part in ("chain", "fullsize"):
        for check, result in results.get(part, {}).items():
            if isinstance(result, dict):
                report.line(check, result)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2, default=str))
    passed, skipped = (sum(r.get("ok") is want for r in checks) for want in (True, None))
    sys.stdout.write(f"{passed} passed, {len(failed)} failed, {skipped} skipped; {results['wall_s']:.0f} s in all\n")
    return 1 if failed else 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", type=Path, help="write every figure to this JSON file")
    parser.add_argument("--bundle", type=Path, help="the folder prepare_gpu_bundle.sh made (bench/.gpu)")
    parser.add_argument("--comfyui", help="ComfyUI checkout (default: COMFYUI_PATH, else the bundle's copy)")
    parser.add_argument("--steps", type=int, default=4, help="steps per full-size run, the first a warm-up (4)")
    parser.add_argument("--teacache-steps", type=int, default=10, help="steps of the TeaCache run (10)")
    parser.add_argument("--time-limit", type=float, default=390, help="seconds for the whole check (390)")
    parser.add_argument("--log-dir", type=Path, help="where each subprocess's log goes (default: a temp folder)")
    parser.add_argument("--only", choices=("chain", "fullsize"), help="run only part (a) or (b)")
    parser.add_argument("--cap-scale", type=float, default=1.0,
                        help="multiply each job's time cap (150 s chain, 170 s item) by this: a CPU dry run on a "
                             "busy machine needs more (1)")
    parser.add_argument("--smoke", action="store_true", help="(b) on a tiny config: tries the code, no figures")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    parser.add_argument("--cpu-only", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--device-memory", type=int, help=argparse.SUPPRESS)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if args.worker:
        return workers.worker(args)
    started = time.monotonic()
    deadline = started + args.time_limit
    info = environment(args)
    args.cpu_only, args.device_memory = not info["cuda"], info["device_memory"]
    log_dir = args.log_dir or Path(tempfile.mkdtemp(prefix="ingredients-gpu-check-logs-"))
    log_dir.mkdir(parents=True, exist_ok=True)
    _preamble(info, log_dir)
    modes = ["default", "lowvram", "novram"] if info["cuda"] else ["cpu"]
    chain = [f"chain:{m}" for m in modes] if args.only != "fullsize" else []
    items = [f"item:{n}" for n in ITEMS] if args.only != "chain" and (info["cuda"] or args.smoke) else []
    jobs = sorted(chain + items, key=lambda j: ORDER.index(j) if j in ORDER else len(ORDER))
    plan = [(job, expected_seconds(job), _cap(job, args.cap_scale)) for job in jobs]
    sys.stdout.write(report.budget(plan, args.time_limit))
    sys.stdout.write(report.header())
    done = run_jobs(args, jobs, deadline, log_dir)
    results: dict = dict(environment=info, chain={k: v for k, v in done.items() if not k.startswith("item")},
                         fullsize={k: v for k, v in done.items() if k.startswith("item")})
    sage, base = done.get("item:sage_bf16", {}).get("s_per_step"), done.get("item:bf16", {}).get("s_per_step")
    if sage and base:
        results["fullsize"]["item:sage_bf16"]["speedup_vs_bf16"] = base / sage
    if not items and args.only != "chain":
        results["fullsize"] = {"skipped": "CUDA absent: the full-size checks need a GPU (--smoke tries their code)"}
        sys.stdout.write(f"{'fullsize':26s} skipped  {results['fullsize']['skipped']}\n")
    results["wall_s"] = time.monotonic() - started
    return _summary(results, args)


if __name__ == "__main__":
    sys.exit(main())
