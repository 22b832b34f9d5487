"""Every core MODEL node of issue 19 item 5 on the pack's MODEL in a real ComfyUI, as a table.

``COMFYUI_PATH=/path/to/ComfyUI python real_core_nodes_check.py [--json FILE] [--steps N]`` (ComfyUI's
interpreter). It starts ComfyUI headless as the real-ComfyUI test does (``real_server``: ``--cpu``,
the pack in custom_nodes, tiny models) and runs, through ``/prompt``, the KSampler example
(``workflows/ingredients_two_ids_ksampler.json`` on the tiny models: Load Ingredients Model's MODEL
-> Apply IDs -> KSampler euler/simple with Ingredients Image to Video's conditioning) once as it is
and once per row with a core node put on the MODEL: after Apply IDs (patches, caches, guidance,
sampling), or between the loader and Apply IDs (LoRAs). ModelSave writes the loader's MODEL, and
the file goes back in through the loader's ``transformer_file``. The sampled LATENT of each run is
captured (the test-only *IngredientsTestCapture*) and compared with the run without the node.

A row is ``works`` (ran and changed the latent, or ran and left it alone where the node should,
e.g. MultiGPU CFG Split on a CPU), ``refused: <class>: <message>`` (an exception class of the pack's own, as the UI names it),
``raw error: <type: message>`` (anything else: a bug), or ``no-op`` (ran, changed nothing, yet should
have; for PAG and SLG: changed it no more than a control run whose perturbation reaches nothing, since
their extra cond pass alone moves the latent). The node settings are chosen so that the node would act on the tiny model (2 blocks, 3 latent
frames, ``STEPS`` steps). It prints a markdown table and exits 0 whatever the rows say.
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import shutil
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import real_server  # this folder: first on sys.path when run as a script

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))  # the pack's library and tools (run as a script from anywhere)
from tools import native_workflows  # noqa: E402
from ingredients_core.testing import tiny_models  # noqa: E402
WORKFLOW = REPO / "workflows" / "ingredients_two_ids_ksampler.json"
STEPS = 8  # enough for EasyCache / LazyCache to find steps to skip between 15 % and 95 %
PEFT_FILE = "tiny_peft_lora.safetensors"
SAVED_FILE = "ingredients_core_check.safetensors"
# Exceptions that are bugs wherever they come from; the pack refuses with its own classes.
RAW_TYPES = {"AttributeError", "TypeError", "KeyError", "IndexError", "NameError", "UnboundLocalError",
             "AssertionError", "ZeroDivisionError", "NotImplementedError"}
log = logging.getLogger("ingredients.real_core_nodes_check")


@dataclass
class Row:
    label: str
    node: str
    inputs: dict = field(default_factory=dict)
    place: str = "ids"  # "ids": between Apply IDs and KSampler; "model": between the loader and Apply IDs
    expect: str = "change"  # or "same": the node should leave the latent alone here
    note: str = ""
    same_within: float = 1e-5  # largest absolute latent difference that counts as "unchanged"
    # (node, inputs) of a run whose perturbation reaches nothing: equal to it means the row's node acted on nothing
    control: tuple[str, dict] | None = None


# SkipLayerGuidanceDiT over the whole run; on a block the model does not have, its extra cond pass
# perturbs nothing: what PAG and SLG give when their patch finds no place in the model.
SLG = dict(scale=3.0, start_percent=0.0, end_percent=1.0, rescaling_scale=0.0)
SLG_NOWHERE = ("SkipLayerGuidanceDiT", SLG | dict(double_layers="99", single_layers="99"))
SLG_BLOCK_0 = ("SkipLayerGuidanceDiT", SLG | dict(double_layers="0", single_layers=""))
ROWS = (
    Row("EasyCache", "EasyCache", dict(reuse_threshold=0.5, start_percent=0.15, end_percent=0.95, verbose=False)),
    Row("LazyCache", "LazyCache", dict(reuse_threshold=0.2, start_percent=0.15, end_percent=0.95, verbose=False)),
    Row("TorchCompileModel", "TorchCompileModel", dict(backend="inductor"), expect="same", same_within=1e-3,
        note="inductor on the CPU; compiled = uncompiled within float rounding"),
    Row("ModelSamplingDiscrete (v_prediction, zsnr)", "ModelSamplingDiscrete", dict(sampling="v_prediction", zsnr=True),
        expect="same", note="the MODEL's own sampling: nothing should change"),
    Row("ModelSamplingDiscrete (v_prediction, no zsnr)", "ModelSamplingDiscrete",
        dict(sampling="v_prediction", zsnr=False), note="another schedule: the latent should change"),
    Row("ModelSamplingSD3", "ModelSamplingSD3", dict(shift=3.0)),
    Row("ModelSamplingFlux", "ModelSamplingFlux", dict(max_shift=1.15, base_shift=0.5, width=96, height=64)),
    Row("CFGNorm", "CFGNorm", dict(strength=1.0)),
    Row("APG", "APG", dict(eta=0.5, norm_threshold=5.0, momentum=0.0), note="eta 0.5 (eta 1 without a norm is CFG)"),
    Row("PerturbedAttentionGuidance", "PerturbedAttentionGuidance", dict(scale=3.0), control=SLG_NOWHERE,
        note="control: SkipLayerGuidanceDiT on block 99 (the same extra cond pass and formula, nothing skipped)"),
    Row("SkipLayerGuidanceDiT", "SkipLayerGuidanceDiT", SLG | dict(double_layers="1", single_layers=""),
        control=SLG_BLOCK_0, note="block 1 of the tiny model's 2 over the whole run; control: block 0"),
    Row("SkipLayerGuidanceDiT (its default single_layers)", "SkipLayerGuidanceDiT",
        SLG | dict(double_layers="1", single_layers="7, 8, 9"), note="this model has no 'single' blocks"),
    Row("Context Windows (Manual) (causal_window_fix on, the default)", "ContextWindowsManual",
        dict(context_length=2, context_overlap=1, dim=2), note="windows of 2 of the 3 latent frames"),
    Row("Context Windows (Manual) (the checkpoint's length, causal_window_fix off)", "ContextWindowsManual",
        dict(context_length=3, context_overlap=1, dim=2, causal_window_fix=False), expect="same",
        note="one window the latent's length = the plain run; longer videos: Ingredients Long Video"),
    Row("MultiGPU CFG Split", "MultiGPU_WorkUnits", dict(max_gpus=2), expect="same",
        note="one device here (--cpu): passes through"),
    Row("LoraLoaderModelOnly (kohya)", "LoraLoaderModelOnly", dict(lora_name=native_workflows.LORA_FILE, strength_model=1.0),
        place="model"),
    Row("LoraLoaderModelOnly (PEFT)", "LoraLoaderModelOnly", dict(lora_name=PEFT_FILE, strength_model=1.0),
        place="model"),
)


def _defaults(definition: dict) -> dict:
    """Every widget input of an /object_info definition at its default (a combo at its first option)."""
    values = {}
    for section in ("required", "optional"):
        for name, spec in definition["input"].get(section, {}).items():
            kind, options = spec[0], spec[1] if len(spec) > 1 else {}
            if isinstance(kind, list):
                values[name] = options.get("default", kind[0] if kind else None)
            elif kind == "COMBO":
                values[name] = options.get("default", (options.get("options") or [None])[0])
            elif kind in ("INT", "FLOAT", "BOOLEAN", "STRING") and "default" in options:
                values[name] = options["default"]
    return values


def _find(prompt: dict, class_type: str) -> str:
    return next(k for k, v in prompt.items() if v["class_type"] == class_type)


def base_prompt(definitions: dict, steps: int) -> dict:
    """The KSampler example on the tiny models, sampling ``steps`` steps, ending at KSampler's LATENT."""
    prompt = real_server.tiny_api_prompt(json.loads(WORKFLOW.read_text()), definitions)
    for key in [k for k, v in prompt.items() if v["class_type"] in ("SaveAnimatedWEBP", "PreviewImage",
                                                                        "IngredientsDecodeLatent")]:
        del prompt[key]
    prompt[_find(prompt, "KSampler")]["inputs"]["steps"] = steps
    return prompt


def with_capture(prompt: dict, name: str) -> dict:
    prompt = copy.deepcopy(prompt)
    prompt["capture"] = {"class_type": "IngredientsTestCapture",
                         "inputs": {"value": [_find(prompt, "KSampler"), 0], "name": name}}
    return prompt


def with_node(prompt: dict, definitions: dict, row: Row) -> dict:
    """``prompt`` with the row's node on the MODEL."""
    prompt = copy.deepcopy(prompt)
    loader, apply_ids, ksampler = (_find(prompt, c) for c in ("IngredientsModelLoader", "IngredientsApplyIDs",
                                                              "KSampler"))
    inputs = _defaults(definitions[row.node]) | row.inputs
    if row.place == "model":
        inputs["model"] = [loader, 1]
        prompt[apply_ids]["inputs"]["model"] = ["core_node", 0]
    else:
        inputs["model"] = [apply_ids, 0]
        prompt[ksampler]["inputs"]["model"] = ["core_node", 0]
    prompt["core_node"] = {"class_type": row.node, "inputs": inputs}
    return prompt


def _error(answer: dict, entry: dict) -> dict | None:
    """The first error of a run: {"type", "message", "node", "frame"} or None."""
    if not entry:
        errors = answer.get("node_errors") or {}
        first = next(iter(errors.values()), {}).get("errors", [{}])[0] if errors else answer.get("error", {})
        return {"type": first.get("type", "prompt refused"), "message": first.get("details") or first.get("message", ""),
                "node": next(iter(errors), ""), "frame": ""}
    if entry["status"].get("status_str") == "success":
        return None
    shown = next((m[1] for m in entry["status"]["messages"] if m[0] == "execution_error"), {})
    frames = [_frame(line) for line in shown.get("traceback", []) if line.strip().startswith("File ")]
    pack = [f for f in frames if f.startswith("ComfyUI-Ingredients/")]
    return {"type": shown.get("exception_type", "?"), "message": shown.get("exception_message", "").strip(),
            "node": shown.get("node_type", ""), "frame": frames[-1] if frames else "",
            "pack_frame": pack[-1] if pack else ""}


def _frame(line: str) -> str:
    """'File ".../custom_nodes/ComfyUI-Ingredients/x.py", line 3, in f' -> 'ComfyUI-Ingredients/x.py:3 in f'."""
    first = line.strip().splitlines()[0].removeprefix("File ")
    path, _, rest = first.partition('", line ')
    path = path.strip('"').split("custom_nodes/", 1)[-1].split("site-packages/", 1)[-1]
    number, _, function = rest.partition(", in ")
    return f"{path}:{number} in {function}"


def classify(row: Row, error: dict | None, diff: float | None, control_diff: float | None = None) -> str:
    if error:
        message = " ".join(error["message"].split())
        # ComfyUI names an exception by module and class, builtins by class alone: the pack refuses with
        # classes of its own; a builtin (ValueError from deep in the model included) or a foreign class is raw.
        if "." in error["type"] and ("Ingredients" in error["type"] or "ingredients_core" in error["type"]):
            return f"refused: {error['type'].rsplit('.', 1)[-1]}: {message}"
        return f"raw error: {error['type']}: {message}"
    if diff is None:
        return "raw error: no latent captured"
    if row.expect == "same":
        return "works" if diff <= row.same_within else f"works (changes the latent by {diff:.3g}, expected none)"
    if control_diff is not None and control_diff <= row.same_within:
        return "no-op"  # changed the latent only as the control run that perturbs nothing does
    return "works" if diff > row.same_within else "no-op"


def _error_note(error: dict | None) -> str:
    """Where an error showed (the node) and where it was raised (the last frame; the pack's last one)."""
    if not error:
        return ""
    note = f"on {error['node']}"
    note += f", raised at {error['frame']}" if error.get("frame") else ""
    if error.get("pack_frame") and error["pack_frame"] != error["frame"]:
        note += f" (from {error['pack_frame']})"
    return note


def run_captured(server, prompt: dict, name: str) -> tuple[dict | None, np.ndarray | None, str]:
    """Run ``prompt`` with its sampled LATENT captured as ``name``: (error, latent, the log it added)."""
    offset = len(server.log())
    answer, entry = real_server.run_prompt(server, with_capture(prompt, name))
    error = _error(answer, entry)
    path = server.base / "output" / "captures" / f"{name}.npy"
    latent = np.load(path) if error is None and path.is_file() else None
    return error, latent, server.log()[offset:]


def _log_note(text: str) -> str:
    """What the log says of a run that the table should show: cache skips, LoRA keys left unloaded."""
    notes = [line.split(" - ", 1)[-1].strip() for line in text.splitlines() if " - skipped " in line]
    unloaded = sum("lora key not loaded" in line for line in text.splitlines())
    if unloaded:
        notes.append(f"log: {unloaded} 'lora key not loaded'")
    return "; ".join(notes)


def _difference(latent: np.ndarray | None, reference: np.ndarray) -> float | None:
    if latent is None or latent.shape != reference.shape:
        return None
    return float(np.abs(latent.astype(np.float64) - reference).max())


def check_row(server, definitions: dict, prompt: dict, reference: np.ndarray, row: Row, index: int) -> dict:
    error, latent, text = run_captured(server, with_node(prompt, definitions, row), f"row_{index}")
    diff = _difference(latent, reference)
    notes = [row.note, _error_note(error), _log_note(text), "" if diff is None else f"max abs latent diff {diff:.3g}"]
    control_diff = None
    if row.control and error is None:
        control = Row(f"{row.label} control", row.control[0], row.control[1])
        control_error, control_latent, _ = run_captured(server, with_node(prompt, definitions, control),
                                                        f"row_{index}_control")
        control_diff = None if control_error else _difference(latent, control_latent)
        notes.append(f"control failed: {control_error}" if control_error else
                     f"vs control {control_diff:.3g}, control vs no node {_difference(control_latent, reference):.3g}")
    return {"node": row.label, "result": classify(row, error, diff, control_diff),
            "note": "; ".join(n for n in notes if n), "error": error, "diff": diff, "control_diff": control_diff}


def check_save_reload(server, prompt: dict, reference: np.ndarray) -> dict:
    """ModelSave on the loader's MODEL, the file back through the loader's ``transformer_file``: the
    reloaded MODEL should sample the same latent."""
    label = "ModelSave + reload (transformer_file)"
    loader = _find(prompt, "IngredientsModelLoader")
    saving = {"1": copy.deepcopy(prompt[loader]),
              "2": {"class_type": "ModelSave", "inputs": {"model": ["1", 1], "filename_prefix": "diffusion_models/core"}}}
    answer, entry = real_server.run_prompt(server, saving)
    error = _error(answer, entry)
    if error is None:
        models = server.base / "models" / "diffusion_models"
        models.mkdir(parents=True, exist_ok=True)
        shutil.copy(server.base / "output" / "diffusion_models" / "core_00001_.safetensors", models / SAVED_FILE)
        reloaded = copy.deepcopy(prompt)
        reloaded[loader]["inputs"]["transformer_file"] = f"diffusion_models/{SAVED_FILE}"
        error, latent, _ = run_captured(server, reloaded, "save_reload")
    diff = None if error else _difference(latent, reference)
    row = Row(label, "ModelSave", expect="same")
    note = "; ".join(n for n in ("saved the loader's MODEL, loaded it back as transformer_file", _error_note(error)) if n)
    note += "" if diff is None else f"; max abs latent diff {diff:.3g}"
    return {"node": label, "result": classify(row, error, diff), "note": note, "error": error, "diff": diff}


def prepare(root: Path) -> None:
    """Tiny models, the kohya LoRA of the examples and a PEFT LoRA of the same layers."""
    folder = real_server.make_models_root(root)
    tiny_models.write_tiny_lora(folder, root / "models" / "loras" / PEFT_FILE, layout="peft")
    real_server.base_directory(root / "base")


def check(root: Path, steps: int) -> list[dict]:
    prepare(root)
    server = real_server.Server(root)
    server.start()
    try:
        definitions = server.get("/object_info")
        prompt = base_prompt(definitions, steps)
        error, reference, _ = run_captured(server, prompt, "reference")
        if error or reference is None:
            raise real_server.ServerError(f"the KSampler example without a core node failed: {error}")
        results = []
        for index, row in enumerate(ROWS):
            missing = row.node not in definitions
            log.info("%s", row.label)
            results.append({"node": row.label, "result": "not in this ComfyUI", "note": row.node, "error": None,
                            "diff": None} if missing else check_row(server, definitions, prompt, reference, row, index))
        results.append(check_save_reload(server, prompt, reference))
        return results
    finally:
        server.stop()


def table(results: list[dict]) -> str:
    lines = ["| node | result | note |", "|---|---|---|"]
    for r in results:
        cells = (r["node"], r["result"], r["note"])
        lines.append("| " + " | ".join(c.replace("|", "\\|").replace("\n", " ") for c in cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=STEPS, help=f"KSampler steps (default {STEPS})")
    parser.add_argument("--json", type=Path, help="also write the results (with the full errors) here")
    parser.add_argument("--work", type=Path, help="ComfyUI's base and model folders (default: a temporary one)")
    args = parser.parse_args(argv)
    root = args.work or Path(tempfile.mkdtemp(prefix="ingredients_core_nodes_"))
    results = check(root, args.steps)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    print(table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
