"""Time per denoising step and peak RSS on the shared golden config, ours vs. the official code.

    python bench/bench_step.py ../shared/golden [--steps 10] [--scheduler ddim|dpm]
                               [--official PATH_TO_OFFICIAL_CHECKOUT]

Each implementation runs in its own process (so peak RSS is that process's own) on the same
deterministic weights, inputs, scheduler (the case's, or ``--scheduler``) and step generator seed; with
``--scheduler dpm`` the stochastic CogVideoXDPMScheduler path is compared too. Printed per
implementation: median seconds per step (first step excluded as warm-up), peak RSS (whole process,
weights included); with ``--official``, the ratio ours/official and the max relative difference of
the final latents. The official checkout (github feizc/Ingredients) is never part of this repo.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SCHEDULER_OVERRIDE = None  # set from --scheduler


def _inputs(golden: Path):
    from safetensors.torch import load_file

    case = json.loads((golden / "case.json").read_text())
    if SCHEDULER_OVERRIDE:
        case["scheduler"] = SCHEDULER_OVERRIDE
    return case, load_file(str(golden / "inputs.safetensors"))


def run_ours(golden: Path, weights: Path, steps: int, out: Path) -> list[float]:
    import torch

    from ingredients_core.weights.checkpoint import load_transformer
    from ingredients_core.sampling.official import denoise, make_scheduler

    case, x = _inputs(golden)
    model = load_transformer(weights, dtype=torch.float32)
    faces = [(x[f"id{i}.id_cond"], [x[f"id{i}.vit_hidden.{k}"] for k in range(5)]) for i in range(2)]
    stamps = [time.perf_counter()]
    scheduler = make_scheduler(case["scheduler"], json.loads((golden / "scheduler_config.json").read_text()))
    with torch.no_grad():
        tokens = model.project_ids(faces)  # once per generation: part of the first step's time
        latents = denoise(model, scheduler, x["latents"], x["image_latents"], x["prompt_embeds"],
                          x["negative_prompt_embeds"], tokens, steps=steps, cfg=case["cfg"],
                          generator=torch.Generator().manual_seed(case["step_generator_seed"]),
                          callback=lambda info: stamps.append(time.perf_counter()),
                          height=case["height_px"], width=case["width_px"])
    torch.save(latents, out)
    return [b - a for a, b in zip(stamps, stamps[1:], strict=False)]


def run_official(golden: Path, weights: Path, steps: int, out: Path, official: Path) -> list[float]:
    import torch
    from PIL import Image
    from safetensors.torch import load_file

    sys.path.insert(0, str(official))
    from models.pipeline_ingredients import IngredientsPipeline  # noqa: E402  (the official checkout)
    from models.transformer_ingredients import IngredientsTransformer3DModel  # noqa: E402

    from ingredients_core.sampling.official import make_scheduler

    case, x = _inputs(golden)
    folder = weights / "transformer"
    model = IngredientsTransformer3DModel.from_config(json.loads((folder / "config.json").read_text()))
    state = {}
    for shard in sorted(folder.glob("*.safetensors")):
        state.update(load_file(str(shard)))
    model.load_state_dict(state, strict=True)
    model.eval()
    scheduler = make_scheduler(case["scheduler"], json.loads((golden / "scheduler_config.json").read_text()))
    pipe = IngredientsPipeline(tokenizer=None, text_encoder=None, vae=None, transformer=model, scheduler=scheduler)
    pipe.prepare_latents = lambda *a, **k: (x["latents"], x["image_latents"])
    pipe.set_progress_bar_config(disable=True)
    stamps = [time.perf_counter()]

    def on_step(_pipe, _i, _t, kwargs):
        stamps.append(time.perf_counter())
        return kwargs

    with torch.no_grad():
        latents = pipe(image=Image.new("RGB", (case["width_px"], case["height_px"]), "white"),
                       prompt_embeds=x["prompt_embeds"], negative_prompt_embeds=x["negative_prompt_embeds"],
                       height=case["height_px"], width=case["width_px"], num_frames=case["num_frames"],
                       num_inference_steps=steps, guidance_scale=case["cfg"], use_dynamic_cfg=False,
                       generator=torch.Generator().manual_seed(case["step_generator_seed"]), output_type="latent",
                       callback_on_step_end=on_step,
                       id_cond=[x[f"id{i}.id_cond"] for i in range(2)],
                       id_vit_hidden=[[x[f"id{i}.vit_hidden.{k}"] for k in range(5)] for i in range(2)],
                       return_dict=False)[0]
    torch.save(latents, out)
    return [b - a for a, b in zip(stamps, stamps[1:], strict=False)]


def child(args) -> None:
    out = Path(args.out)
    if args.child == "ours":
        times = run_ours(args.golden, args.weights, args.steps, out)
    else:
        times = run_official(args.golden, args.weights, args.steps, out, args.official)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    sys.stdout.write(json.dumps({"step_s": times, "peak_rss_mb": peak_mb}) + "\n")


def measure(impl: str, args, weights: Path, tmp: Path) -> dict:
    out = tmp / f"{impl}.pt"
    cmd = [sys.executable, __file__, str(args.golden), "--child", impl, "--weights", str(weights),
           "--steps", str(args.steps), "--out", str(out)]
    if args.official:
        cmd += ["--official", str(args.official)]
    if args.scheduler:
        cmd += ["--scheduler", args.scheduler]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"{impl} run failed:\n{proc.stderr[-4000:]}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    result["out"] = out
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("golden", type=Path, help="the golden folder (../shared/golden)")
    parser.add_argument("--steps", type=int, default=10, help="denoising steps per run (default 10)")
    parser.add_argument("--scheduler", choices=("ddim", "dpm"), help="override the case's scheduler")
    parser.add_argument("--official", type=Path, help="a checkout of github feizc/Ingredients to compare with")
    parser.add_argument("--child", choices=("ours", "official"), help=argparse.SUPPRESS)
    parser.add_argument("--weights", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    global SCHEDULER_OVERRIDE
    SCHEDULER_OVERRIDE = args.scheduler
    sys.path.insert(0, str(REPO))
    if args.child:
        child(args)
        return
    import torch

    from ingredients_core.testing.parity import write_golden_checkpoint

    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        weights = write_golden_checkpoint(args.golden, tmp / "model")
        impls = ["ours"] + (["official"] if args.official else [])
        results = {impl: measure(impl, args, weights, tmp) for impl in impls}
        print(f"golden config, {args.scheduler or 'case'} scheduler, {args.steps} steps, float32, CPU, torch {torch.__version__}, "
              f"{torch.get_num_threads()} threads")
        for impl, r in results.items():
            per_step = statistics.median(r["step_s"][1:] or r["step_s"])
            r["median"] = per_step
            print(f"{impl:9s} median {per_step * 1000:8.1f} ms/step   first step {r['step_s'][0] * 1000:8.1f} ms   "
                  f"peak RSS {r['peak_rss_mb']:8.0f} MB")
        if args.official:
            ours, theirs = torch.load(results["ours"]["out"]), torch.load(results["official"]["out"])
            diff = float((ours - theirs).abs().max() / theirs.abs().max())
            print(f"ratio ours/official per step: {results['ours']['median'] / results['official']['median']:.3f}"
                  f"   peak RSS ratio: {results['ours']['peak_rss_mb'] / results['official']['peak_rss_mb']:.3f}"
                  f"   final latents max relative difference: {diff:.2e}")


if __name__ == "__main__":
    main()
