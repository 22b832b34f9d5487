"""Tiny model folders for node tests and the real-ComfyUI test.

``make_tiny`` writes a complete tiny Ingredients folder whose face detector never finds a face
(random weights). Workflows start from photos, so here the tiny detector's output heads are set
to report faces: every 256 px anchor of the coarsest level scores as a face (others as background),
boxes are the anchors, and the five landmarks sit where eyes, nose and mouth corners would be in
such a box. Non-maximum suppression then keeps a few boxes; alignment, ArcFace and EVA-CLIP run on
them as on real detections. The backbone stays the tiny random one.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

# Landmarks relative to the anchor centre, in anchor sizes (x, y): eyes, nose tip, mouth corners.
LANDMARKS = ((-0.18, -0.10), (0.18, -0.10), (0.0, 0.05), (-0.13, 0.20), (0.13, 0.20))
VARIANCE = 0.1  # RetinaFace decodes landmark offsets as prior + offset * 0.1 * prior size
FACE, BACKGROUND = (-10.0, 10.0), (10.0, -10.0)


def detector_that_finds_faces(path: Path) -> Path:
    """Rewrite the tiny RetinaFace state dict at ``path`` so that it reports faces (see module doc)."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    for head in ("ClassHead", "BboxHead", "LandmarkHead"):
        for level in range(3):
            state[f"{head}.{level}.conv1x1.weight"] = torch.zeros_like(state[f"{head}.{level}.conv1x1.weight"])
            state[f"{head}.{level}.conv1x1.bias"] = torch.zeros_like(state[f"{head}.{level}.conv1x1.bias"])
    for level in range(3):  # two anchors per position: (background, face) logits each
        logits = BACKGROUND + (FACE if level == 2 else BACKGROUND)
        state[f"ClassHead.{level}.conv1x1.bias"] = torch.tensor(logits)
        offsets = [v / VARIANCE for point in LANDMARKS for v in point]
        state[f"LandmarkHead.{level}.conv1x1.bias"] = torch.tensor(offsets * 2, dtype=torch.float32)
    torch.save(state, path)
    return path


def make_tiny_model_folder(folder: Path) -> Path:
    """A tiny Ingredients folder (official layout) whose face detector finds faces."""
    from ingredients_core.faces.paths import DETECTION_FILE
    from ingredients_core.testing.make_tiny import make_tiny_model

    make_tiny_model(folder)
    detector_that_finds_faces(folder / "face_encoder" / DETECTION_FILE)
    return folder


def shared_models_dir(tmp_path_factory) -> Path:
    """A models folder (``ingredients/Ingredients`` inside) made once per test session, for the test
    modules that only read it; pass it to ``harness.load_pack``."""
    root = tmp_path_factory.getbasetemp() / "shared_tiny_models"
    done = root / ".complete"
    if not done.is_file():
        make_tiny_model_folder(root / "ingredients" / "Ingredients")
        done.write_text("")
    return root


def beside_shared_models(tmp_path_factory, name: str) -> tuple[Path, Path]:
    """A new models folder whose ``ingredients/`` is the shared one's (a link), for a module that adds
    other model files; returns (the folder, the shared tiny transformer's safetensors file)."""
    shared = shared_models_dir(tmp_path_factory)
    root = tmp_path_factory.mktemp(name)
    (root / "ingredients").symlink_to(shared / "ingredients", target_is_directory=True)
    return root, shared / "ingredients" / "Ingredients" / "transformer" / "diffusion_pytorch_model.safetensors"


def face_photo(seed: int = 0, size: int = 512) -> np.ndarray:
    """A smooth random RGB photo (H, W, 3) uint8; the tiny detector finds 'faces' in any image."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, (8, 8, 3)).astype(np.float32)
    image = torch.nn.functional.interpolate(torch.from_numpy(coarse).permute(2, 0, 1)[None], size=(size, size),
                                            mode="bilinear", align_corners=False)[0].permute(1, 2, 0)
    return image.clamp(0, 255).round().to(torch.uint8).numpy()


def write_tiny_kohya_lora(model_folder: Path, path: Path, rank: int = 2, scale: float = 0.5) -> Path:
    """A kohya-format LoRA (``lora_unet_<key with _>.lora_down/lora_up/alpha``) for the q and v
    projections of every block of the tiny transformer in ``model_folder``, seeded: what ComfyUI's
    *LoraLoaderModelOnly* applies to the Ingredients MODEL through its own key map."""
    return write_tiny_lora(model_folder, path, "kohya", rank, scale)


def write_tiny_lora(model_folder: Path, path: Path, layout: str = "kohya", rank: int = 2, scale: float = 0.5) -> Path:
    """A LoRA for the q and v projections of every block of the tiny transformer, seeded, in
    ``layout`` "kohya" (``lora_unet_<key with _>.lora_down/lora_up/alpha``) or "peft" (diffusers/PEFT,
    as CogVideoX LoRAs are trained: ``transformer.<key>.lora_A/lora_B``, no alpha); the same
    numbers in both."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    generator = torch.Generator().manual_seed(0)
    tensors = {}
    for weights in sorted((model_folder / "transformer").glob("*.safetensors")):
        with safe_open(str(weights), framework="pt") as f:
            for key in f.keys():
                if key.startswith("transformer_blocks.") and key.endswith((".attn1.to_q.weight", ".attn1.to_v.weight")):
                    out_features, in_features = f.get_slice(key).get_shape()
                    down = torch.randn(rank, in_features, generator=generator) * scale
                    up = torch.randn(out_features, rank, generator=generator) * scale
                    tensors.update(_lora_tensors(layout, key.removesuffix(".weight"), down, up, rank))
    if not tensors:
        raise ValueError(f"{model_folder}: no transformer_blocks.N.attn1.to_q/to_v weights to make a LoRA for")
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path))
    return path


def _lora_tensors(layout: str, layer: str, down: torch.Tensor, up: torch.Tensor, rank: int) -> dict:
    if layout == "kohya":
        name = "lora_unet_" + layer.replace(".", "_")
        return {f"{name}.lora_down.weight": down, f"{name}.lora_up.weight": up, f"{name}.alpha": torch.tensor(float(rank))}
    if layout == "peft":  # alpha = rank in the kohya file: scale 1, as PEFT without an alpha
        return {f"transformer.{layer}.lora_A.weight": down, f"transformer.{layer}.lora_B.weight": up}
    raise ValueError(f"unknown LoRA layout {layout!r} (kohya or peft)")
