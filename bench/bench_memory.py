"""Resident transformer weights and their error per weight mode; full-size accounting; GPU figures.

    [COMFYUI_PATH=/path/to/ComfyUI] python bench/bench_memory.py [--golden ../shared/golden] [--json out.json]
        [--sweep]

One line per mode, each saying what produced it:

1. golden config (``/work/shared/golden``: the official width, 2 blocks, deterministic weights):
   bytes of transformer weights resident on the load device and the max relative error of one
   forward (t = 999, 2 IDs, CFG batch) against the float32 forward (``parity.relative_error``), for
   ``default`` (bf16), ``fp8_e4m3fn``, ``fp8_e5m2`` (bf16 compute) and a partial load at half the
   weights. ``--sweep``: the error of every mode at each golden timestep (999 and 500), and the fp8
   modes with float32 compute too, then the range per weight dtype. With COMFYUI_PATH: the path users
   get, in-process real ComfyUI with --cpu (``comfy.ops`` from ``host.transformer_layers``, the real
   patcher of the MODEL (``host.model_patcher``, which the pack's sampler loads too),
   ``patcher.load(device, lowvram_model_memory=...)``; resident = ``loaded_size()`` of the
   transformer's patcher plus its q-former's). Without: the core path
   (``checkpoint.load_transformer(weight_dtype=...)`` + ``storage.enable_storage_casting``); the
   partial line needs ComfyUI.
2. full size (``TransformerConfig()``) on the meta device, no memory used: resident weight bytes in
   bf16 and fp8, and (with ComfyUI) what ComfyUI's own ``ModelPatcher.load`` keeps resident under
   12 GiB and 8 GiB once the run's activation estimate (``memory.transformer_activation_bytes``, 2 IDs,
   CFG, 49 x 480 x 720) and ``minimum_inference_memory()`` are taken off.
3. with CUDA: peak VRAM and seconds per step at 49 x 480 x 720, 2 IDs, CFG for bf16, fp8, fp8 +
   partial 12 / 8 GiB, SDPA vs sage (``gpu_check.run_fullsize``: one subprocess per mode).
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import comfy_inproc as inproc  # noqa: E402
import fullsize  # noqa: E402

logger = logging.getLogger("bench.bench_memory")

GiB, MiB = fullsize.GiB, fullsize.MiB
#: mode -> (storage dtype, compute dtype, share of the weights a partial load keeps or None)
GOLDEN_MODES = {"default (bf16)": ("bf16", "bf16", None), "fp8_e4m3fn": ("fp8_e4m3fn", "bf16", None),
                "fp8_e5m2": ("fp8_e5m2", "bf16", None), "partial half (bf16)": ("bf16", "bf16", 0.5)}
#: with --sweep: the fp8 storages computed in float32 as well (what the CPU and fp32 ComfyUI runs use)
SWEEP_MODES = {"fp8_e4m3fn, fp32 compute": ("fp8_e4m3fn", "fp32", None),
               "fp8_e5m2, fp32 compute": ("fp8_e5m2", "fp32", None)}
CARDS_GIB = (24, 16, 12, 8)
CUDA_ITEMS = ("bf16", "fp8", "fp8_12gb", "fp8_8gb", "sage_bf16")


def emit(section: str, mode: str, figures: str, source: str, record: dict | None = None, **values) -> None:
    sys.stdout.write(f"{section:9s} {mode:22s} {figures:58s} [{source}]\n")
    sys.stdout.flush()
    if record is not None:
        record.setdefault(section, {})[mode] = dict(values, source=source)


def _size(value: float) -> str:
    return f"{value / GiB:.3f} GiB" if value >= 0.1 * GiB else f"{value / MiB:.2f} MiB"


class Host:
    """The ComfyUI path (``comfy``: in-process ComfyUI and the pack's host) or the core path."""

    def __init__(self, comfyui: Path | None):
        self.comfyui = comfyui
        self.host = self.mm = None
        if comfyui is not None:
            inproc.stand_in_absent()
            self.mm = inproc.start_comfyui(comfyui, ["--cpu"])
            inproc.load_pack()
            self.host = inproc.pack_module("nodes.host")
            self.label = f"ComfyUI {inproc.comfyui_version(comfyui)} in-process --cpu"
        else:
            sys.path.insert(0, str(inproc.REPO))
            self.label = "core, no ComfyUI"

    def core(self, name: str):
        if self.host is not None:
            return inproc.pack_module(f"ingredients_core.{name}")
        return importlib.import_module(f"ingredients_core.{name}")

    def layers(self, storage, compute) -> dict:
        return self.host.transformer_layers(storage, compute) if self.host is not None else {}


# -- 1. golden config ------------------------------------------------------------------------------------
def golden_forward(env: Host, model, inputs: dict, case: dict, dtype, t: int):
    """One forward (timestep ``t``, both IDs, CFG batch) on the CPU in ``dtype``."""
    import torch

    sampling = env.core("sampling")
    device = torch.device("cpu")
    faces = [(inputs[f"id{i}.id_cond"], [inputs[f"id{i}.vit_hidden.{k}"] for k in range(5)]) for i in range(2)]
    latents, image = inputs["latents"], inputs["image_latents"]
    with torch.no_grad():
        ids = model.prepare_ids(model.project_ids(faces, device, dtype), device, dtype)
        rotary = sampling.rotary_embeddings(model.config, case["height_px"], case["width_px"], latents.shape[1], device)
        hidden = torch.cat([torch.cat([latents] * 2), torch.cat([image] * 2)], dim=2).to(dtype)
        text = torch.cat([inputs["negative_prompt_embeds"], inputs["prompt_embeds"]]).to(dtype)
        return model(hidden, text, torch.tensor([t, t]), rotary, ids=ids).float()


def golden_model(env: Host, folder: Path, storage_name: str, compute_name: str, share: float | None):
    """(model, resident bytes, how it was placed) for one golden mode."""
    checkpoint, storage_mod = env.core("checkpoint"), env.core("model.storage")
    storage, compute = fullsize.dtype_of(storage_name), fullsize.dtype_of(compute_name)
    weight = storage if storage != compute else None
    if env.host is None:
        model = checkpoint.load_transformer(folder, dtype=compute, weight_dtype=weight, device="cpu")
        how = "load_transformer"
        if weight is not None:
            storage_mod.enable_storage_casting(model, storage, compute)
            how += " + enable_storage_casting"
        return model, storage_mod.weight_bytes(model), how + ", weight_bytes()"
    host = env.host
    load, offload = host.devices("diffusion")
    model = checkpoint.load_transformer(folder, dtype=compute, weight_dtype=weight, device=offload,
                                        **env.layers(storage, compute))
    patcher = inproc.pack_module("nodes.host").model_patcher(model, storage, compute, "official")
    projector = host.manage_projector(model)
    projector.load(load, full_load=True)
    if share is None:
        patcher.load(load, full_load=True)
        how = "ModelPatcher.load(full_load=True)"
    else:
        budget = int(share * patcher.model_size())
        patcher.load(load, lowvram_model_memory=budget)
        how = f"ModelPatcher.load(lowvram_model_memory={_size(budget)})"
    ops = "manual_cast" if weight is not None else "disable_weight_init"
    return model, patcher.loaded_size() + projector.loaded_size(), f"comfy.ops {ops}, {how}, loaded_size()"


def _by_step(errors: dict) -> str:
    return ", ".join(f"t={t} {error:.2e}" for t, error in errors.items())


def golden_section(env: Host, golden: Path, record: dict, sweep: bool = False) -> None:
    import torch
    from safetensors.torch import load_file

    parity = env.core("parity")
    case = json.loads((golden / "case.json").read_text())
    steps = case["timesteps_forward"] if sweep else case["timesteps_forward"][:1]
    inputs = load_file(str(golden / "inputs.safetensors"))
    outputs = load_file(str(golden / "outputs.safetensors"))
    with tempfile.TemporaryDirectory(prefix="ingredients-bench-memory-") as tmp:
        folder = parity.write_golden_checkpoint(golden, Path(tmp))
        reference, _, _ = golden_model(env, folder, "fp32", "fp32", None)
        refs = {}
        for t in steps:
            started = time.perf_counter()
            refs[t] = golden_forward(env, reference, inputs, case, torch.float32, t)
            seconds = time.perf_counter() - started
            vs_golden = parity.relative_error(refs[t], outputs[f"forward.t{t}"])
            emit("golden", f"float32 (reference) t={t}", f"vs official golden output {vs_golden:.2e}, "
                 f"forward {seconds:.1f} s", env.label, record, error=vs_golden)
        del reference
        full_outputs, ranges = {}, {}
        for mode, (storage, compute, share) in {**GOLDEN_MODES, **(SWEEP_MODES if sweep else {})}.items():
            if share is not None and env.host is None:
                emit("golden", mode, "needs COMFYUI_PATH", "ComfyUI's partial loading (ModelPatcher.load)", record)
                continue
            try:
                model, resident, how = golden_model(env, folder, storage, compute, share)
                outs = {t: golden_forward(env, model, inputs, case, fullsize.dtype_of(compute), t) for t in steps}
            except Exception as error:  # one mode's failure must not lose the others
                logger.exception("golden %s failed", mode)
                emit("golden", mode, f"FAILED {inproc.one_line(error)}", env.label, record, failed=True)
                continue
            errors = {t: parity.relative_error(out, refs[t]) for t, out in outs.items()}
            same = ""
            if share is None:
                full_outputs[storage] = outs
                ranges.setdefault(storage, []).extend(errors.values())
            elif storage in full_outputs:
                equal = all(torch.equal(outs[t], full_outputs[storage][t]) for t in steps)
                same = f", vs full load {'identical' if equal else 'DIFFERENT'}"
            figures = (f"max rel err vs fp32 {_by_step(errors)}" if sweep else
                       f"max rel err vs fp32 {errors[steps[0]]:.2e}")
            emit("golden", mode, f"resident {_size(resident):>12s}  {figures}{same}", f"{env.label}: {how}", record,
                 resident=resident, error=max(errors.values()), errors=errors)
            del model
        if sweep:
            for storage, values in ranges.items():
                emit("golden", f"range {storage}", f"max rel err vs fp32 {min(values):.2e} to {max(values):.2e}",
                     f"t = {'/'.join(map(str, steps))}, compute bf16" + ("/fp32" if storage.startswith("fp8") else ""),
                     record, low=min(values), high=max(values))


# -- 2. full size on the meta device ------------------------------------------------------------------------
def meta_section(env: Host, record: dict) -> None:
    import torch

    config = env.core("config").TransformerConfig()
    act = fullsize.activation_bytes(env.core, config, fullsize.OFFICIAL, 2)
    half = fullsize.activation_bytes(env.core, config, fullsize.OFFICIAL, 2, batch=1)
    reserve = int(env.mm.minimum_inference_memory()) if env.mm is not None else None
    emit("estimate", "activations 49x480x720", f"CFG (batch 2) {_size(act)}, one half {_size(half)}",
         "memory.transformer_activation_bytes, 2 IDs, bf16", record, both=act, half=half)
    for name, storage in (("bf16", torch.bfloat16), ("fp8_e4m3fn", torch.float8_e4m3fn)):
        model = fullsize.build_on_meta(env.core, config, env.layers(storage, torch.bfloat16), storage, torch.bfloat16)
        weight_bytes = env.core("model.storage").weight_bytes
        total, qformer = weight_bytes(model), weight_bytes(model.local_facial_extractor)
        emit("fullsize", f"{name} all weights", f"resident {_size(total):>12s} (q-former {_size(qformer)})",
             f"meta model on {'comfy.ops' if env.host else 'torch.nn'} layers, bytes of every tensor", record,
             resident=total, qformer=qformer)
        for card in CARDS_GIB:
            mode = f"{name} {card} GiB card"
            if env.host is None:
                emit("fullsize", mode, "needs COMFYUI_PATH", "ComfyUI's ModelPatcher.load", record)
                continue
            budget = fullsize.load_models_gpu_budget(env.mm, card * GiB, act)
            model = fullsize.build_on_meta(env.core, config, env.layers(storage, torch.bfloat16), storage,
                                           torch.bfloat16)
            patcher = inproc.pack_module("nodes.host").model_patcher(model, storage, torch.bfloat16,
                                                                              "official")
            with torch.device("meta"):  # ComfyUI 0.33 zero-fills meta weights it loads: keep them meta
                patcher.load(torch.device("meta"), lowvram_model_memory=budget)
            emit("fullsize", mode, f"resident {_size(patcher.loaded_size()):>12s} of {_size(patcher.model_size())}, "
                 f"budget {_size(budget)}",
                 f"{env.label}: ModelPatcher.load(lowvram_model_memory = what load_models_gpu grants the "
                 f"sampler: card - max(CFG activations + --reserve-vram, minimum_inference_memory() "
                 f"{_size(reserve)}))", record, resident=patcher.loaded_size(), budget=budget)


# -- 3. CUDA -----------------------------------------------------------------------------------------------
def cuda_section(args, record: dict) -> None:
    import torch

    if not torch.cuda.is_available():
        emit("cuda", "peak VRAM, s/step", "skipped: CUDA absent", "bench/gpu_check.py runs these on a GPU", record)
        return
    import gpu_check

    check_args = gpu_check.build_parser().parse_args(["--steps", str(args.steps)] + (
        ["--bundle", str(args.bundle)] if args.bundle else []))
    log_dir = Path(tempfile.mkdtemp(prefix="ingredients-bench-memory-logs-"))
    results = gpu_check.run_fullsize(check_args, time.monotonic() + args.time_limit, log_dir, CUDA_ITEMS)
    for job, result in results.items():
        figures = (f"peak {_size(result['peak_vram'])}, {result['s_per_step']:.3f} s/step, resident "
                   f"{_size(result['resident'])}" if result.get("ok") else f"FAILED {result.get('error')}")
        emit("cuda", job.removeprefix("item:"), figures, f"gpu_check item, {result.get('method', '')}, "
             f"{result.get('attention', '')}", record, **{k: v for k, v in result.items() if k != "step_s"})


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--golden", type=Path, default=Path(os.environ.get("INGREDIENTS_SHARED", inproc.REPO.parent
                                                                          / "shared")) / "golden",
                        help="the golden folder (default ../shared/golden)")
    parser.add_argument("--json", type=Path, help="write the figures to this JSON file")
    parser.add_argument("--sweep", action="store_true", help="golden errors at every golden timestep and with "
                                                             "float32 compute for fp8 too, with their range")
    parser.add_argument("--bundle", type=Path, help="the GPU bundle (bench/.gpu, see gpu_check.py): its wheels "
                                                   "and, without COMFYUI_PATH, its ComfyUI copy")
    parser.add_argument("--steps", type=int, default=4, help="steps per CUDA run, the first a warm-up (4)")
    parser.add_argument("--time-limit", type=float, default=420, help="seconds for the CUDA runs (420)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    bundle = inproc.use_bundle(args.bundle)  # the GPU machine: wheels and ComfyUI from the bundle
    comfyui = inproc.resolve_comfyui(None, bundle["comfyui"])
    env = Host(comfyui)
    record: dict = {"path": env.label}
    sys.stdout.write(f"bench_memory: {env.label}" + (f" ({comfyui})" if comfyui else
                                                     " (set COMFYUI_PATH for ComfyUI's loading)") + "\n")
    golden_section(env, args.golden, record, args.sweep)
    meta_section(env, record)
    cuda_section(args, record)
    if args.json:
        args.json.write_text(json.dumps(record, indent=2, default=str))
    return 1 if any(v.get("failed") for part in record.values() if isinstance(part, dict)
                    for v in part.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
