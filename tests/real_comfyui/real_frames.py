"""The frames every example workflow gives in a real ComfyUI on the tiny models: save them, compare them.

Issue 19 asks that the Ingredients Sampler rebuilt on the native MODEL path gives, for each example
workflow, the same saved frames on the tiny models as before. This starts real ComfyUI headless as the
real-ComfyUI test does (``real_server``: ``--cpu``, the pack in custom_nodes, tiny models; run it
with ComfyUI's interpreter), runs every ``workflows/*.json`` and ``tests/fixtures/workflows/*.json``
through ``/prompt`` with the test's tiny sizes (``real_server.tiny_api_prompt``), and captures what
reaches each output node's ``images`` input unchanged (the test-only *IngredientsTestCapture* node):

- ``DIR/<workflow>.npz``: the float32 frames keyed by the output node's id;
- ``DIR/manifest.json``: per workflow the status, per output node its class, shape and a sha256 of
  each frame as a saver stores it (uint8, ``clip(255 * x)``), the sha256 of every file the history
  lists (the saved WEBPs, previews, the identity plot) and the texts nodes show; the ComfyUI version
  and the pack's commit.

    COMFYUI_PATH=/work/comfy033 python tests/real_comfyui/real_frames.py save DIR
    COMFYUI_PATH=/work/comfy033 python tests/real_comfyui/real_frames.py compare DIR   # a new run vs DIR
    python tests/real_comfyui/real_frames.py diff DIR_A DIR_B                          # two saved runs

``compare`` and ``diff`` print per workflow the largest absolute difference of the float frames and
the count of differing uint8 values, and exit 1 when anything differs (0 when all are equal).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import real_server  # this folder: first on sys.path when run as a script

REPO = Path(__file__).resolve().parents[2]
WORKFLOWS = sorted((REPO / "workflows").glob("*.json"))
FIXTURES = sorted((REPO / "tests" / "fixtures" / "workflows").glob("*.json"))
CAPTURE = "IngredientsTestCapture"
log = logging.getLogger("ingredients.real_frames")


def workflow_key(path: Path) -> str:
    return path.stem if path.parent.name == "workflows" and path.parent.parent == REPO else f"fixtures__{path.stem}"


def to_uint8(frames: np.ndarray) -> np.ndarray:
    """What ComfyUI's savers store: ``clip(255 * x, 0, 255)`` cast to uint8."""
    return np.clip(255.0 * frames, 0, 255).astype(np.uint8)


def add_captures(prompt: dict, definitions: dict, key: str) -> dict[str, str]:
    """A capture node beside every output node's linked ``images`` input; {output node id: capture name}."""
    names = {}
    for node_id, node in list(prompt.items()):
        definition = definitions.get(node["class_type"], {})
        images = node["inputs"].get("images")
        if definition.get("output_node") and isinstance(images, list):
            names[node_id] = f"{key}__{node_id}"
            prompt[f"capture_{node_id}"] = {"class_type": CAPTURE, "inputs": {"value": images, "name": names[node_id]}}
    return names


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _history_outputs(server, entry: dict) -> tuple[dict[str, str], dict[str, list]]:
    """({"<node>/<i>": sha256 of the i-th file the node shows}, {node: its text outputs}); files are
    keyed by position, not by name (previews get random temp names)."""
    files, texts = {}, {}
    for node_id, output in sorted(entry.get("outputs", {}).items()):
        if not isinstance(output, dict):
            continue
        for i, item in enumerate(item for item in output.get("images", []) if isinstance(item, dict)):
            path = server.base / item.get("type", "output") / item.get("subfolder", "") / item.get("filename", "")
            files[f"{node_id}/{i}"] = _sha256(path.read_bytes()) if path.is_file() else "missing"
        if output.get("text"):  # the work folder (a temporary one) as <work>: the doctor's hints name it
            texts[node_id] = [t.replace(str(server.root), "<work>") if isinstance(t, str) else t for t in output["text"]]
    return files, texts


def _errors(answer: dict, entry: dict) -> str | None:
    if not entry:
        return json.dumps(answer)[:2000]
    if entry["status"].get("status_str") != "success":
        shown = [m[1] for m in entry["status"].get("messages", []) if m[0] == "execution_error"]
        return json.dumps(shown or entry["status"])[:2000]
    return None


def run_workflow(server, definitions: dict, path: Path, out: Path) -> dict:
    """Run one example; write ``out/<key>.npz``; its manifest entry."""
    key = workflow_key(path)
    prompt = real_server.tiny_api_prompt(json.loads(path.read_text()), definitions)
    names = add_captures(prompt, definitions, key)
    answer, entry = real_server.run_prompt(server, prompt)
    error = _errors(answer, entry)
    result = {"status": "error" if error else "success", "outputs": {}}
    if error:
        result["error"] = error
        return result
    arrays = {}
    for node_id, name in names.items():
        frames = np.load(server.base / "output" / "captures" / f"{name}.npy")
        arrays[node_id] = frames
        result["outputs"][node_id] = {"class_type": prompt[node_id]["class_type"], "shape": list(frames.shape),
                                      "frames_sha256": [_sha256(f.tobytes()) for f in to_uint8(frames)]}
    np.savez(out / f"{key}.npz", **arrays)
    result["files"], result["texts"] = _history_outputs(server, entry)
    return result


def _versions() -> dict:
    import os

    comfyui = os.environ.get("COMFYUI_PATH", "")
    version_file = Path(comfyui) / "comfyui_version.py"
    version = version_file.read_text().split("=")[-1].strip().strip("\"'") if version_file.is_file() else "unknown"
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout.strip()
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO, capture_output=True, text=True).stdout.strip()
    return {"comfyui_path": comfyui, "comfyui_version": version, "pack_commit": commit, "pack_dirty": bool(dirty)}


def save(out: Path, work: Path | None = None) -> dict:
    """Start ComfyUI, run every example, write ``out``; the manifest."""
    out.mkdir(parents=True, exist_ok=True)
    root = Path(work or tempfile.mkdtemp(prefix="ingredients_frames_"))
    real_server.make_models_root(root)
    real_server.base_directory(root / "base")
    server = real_server.Server(root)
    server.start()
    try:
        definitions = server.get("/object_info")
        manifest = {"versions": _versions(), "workflows": {}}
        for path in WORKFLOWS + FIXTURES:
            log.info("running %s", path.name)
            manifest["workflows"][workflow_key(path)] = run_workflow(server, definitions, path, out)
    finally:
        server.stop()
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1, sort_keys=True))
    return manifest


def _compare_workflow(key: str, old: dict, new: dict, old_dir: Path, new_dir: Path) -> dict:
    if old["status"] != "success" or new["status"] != "success":
        return {"equal": old["status"] == new["status"], "note": f"status {old['status']} -> {new['status']}"}
    a, b = np.load(old_dir / f"{key}.npz"), np.load(new_dir / f"{key}.npz")
    if sorted(a.files) != sorted(b.files):
        return {"equal": False, "note": f"outputs {sorted(a.files)} -> {sorted(b.files)}"}
    max_abs, pixels, total, shapes = 0.0, 0, 0, True
    for node_id in a.files:
        if a[node_id].shape != b[node_id].shape:
            shapes = False
            continue
        max_abs = max(max_abs, float(np.abs(a[node_id].astype(np.float64) - b[node_id]).max(initial=0.0)))
        pixels += int((to_uint8(a[node_id]) != to_uint8(b[node_id])).sum())
        total += a[node_id].size
    files_equal = old.get("files", {}) == new.get("files", {})
    texts_equal = old.get("texts", {}) == new.get("texts", {})
    note = "; ".join(n for n, bad in (("shapes differ", not shapes), ("saved files differ (sha256)", not files_equal),
                                      ("texts shown on nodes differ", not texts_equal)) if bad)
    return {"equal": shapes and max_abs == 0.0 and pixels == 0 and files_equal and texts_equal, "max_abs": max_abs,
            "uint8_differing": pixels, "uint8_total": total, "note": note}


def diff(old_dir: Path, new_dir: Path) -> bool:
    """Print the per-workflow table of differences; True when every workflow is equal."""
    old = json.loads((old_dir / "manifest.json").read_text())
    new = json.loads((new_dir / "manifest.json").read_text())
    print(f"reference: {old_dir} ({old['versions']})\nnew:       {new_dir} ({new['versions']})\n")
    print("| workflow | max abs diff (float) | differing uint8 values | equal | note |\n|---|---|---|---|---|")
    all_equal = True
    for key in sorted(set(old["workflows"]) | set(new["workflows"])):
        if key not in old["workflows"] or key not in new["workflows"]:
            print(f"| {key} | | | no | only in {'new' if key not in old['workflows'] else 'reference'} |")
            all_equal = False
            continue
        found = _compare_workflow(key, old["workflows"][key], new["workflows"][key], old_dir, new_dir)
        all_equal &= found["equal"]
        pixels = f"{found['uint8_differing']} of {found['uint8_total']}" if "uint8_total" in found else ""
        print(f"| {key} | {found.get('max_abs', '')} | {pixels} | {'yes' if found['equal'] else 'NO'} "
              f"| {found['note']} |")
    return all_equal


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name in ("save", "compare"):
        command = sub.add_parser(name)
        command.add_argument("dir", type=Path, help="where to save (save) / the reference run (compare)")
        command.add_argument("--work", type=Path, help="ComfyUI's base and model folders (default: a temporary one)")
    sub.choices["compare"].add_argument("--out", type=Path, help="where the new run goes (default: temporary)")
    pair = sub.add_parser("diff")
    pair.add_argument("reference", type=Path)
    pair.add_argument("new", type=Path)
    args = parser.parse_args(argv)
    sys.path.insert(0, str(REPO))  # ingredients_core, for the tiny models
    if args.command == "save":
        manifest = save(args.dir, args.work)
        failed = [k for k, v in manifest["workflows"].items() if v["status"] != "success"]
        print(f"saved {len(manifest['workflows'])} workflows to {args.dir}; failed: {failed or 'none'}")
        return 1 if failed else 0
    if args.command == "compare":
        new = args.out or Path(tempfile.mkdtemp(prefix="ingredients_frames_new_"))
        save(new, args.work)
        return 0 if diff(args.dir, new) else 1
    return 0 if diff(args.reference, args.new) else 1


if __name__ == "__main__":
    sys.exit(main())
