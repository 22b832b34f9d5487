"""Parity with the official implementation on golden data.

``python -m ingredients_core.testing.parity GOLDEN_DIR`` rebuilds the deterministic weights from
``GOLDEN_DIR/keys.json``, writes them in the official folder layout (sharded, with an index), loads
them through :func:`ingredients_core.weights.checkpoint.load_transformer`, runs the golden forward cases and
the project's own sampling loop (:func:`ingredients_core.sampling.official.denoise`), and prints the max
relative error of each output (max |ours - golden| / max |golden|). Exit status 0 only when every
forward output is within 1e-4 and the denoised latents within 1e-3.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch

logger = logging.getLogger(__name__)

FORWARD_TOLERANCE = 1e-4
DENOISE_TOLERANCE = 1e-3
GOLDEN_FILES = ("keys.json", "case.json", "inputs.safetensors", "outputs.safetensors",
                "transformer_config.json", "scheduler_config.json")


@dataclass(frozen=True)
class ParityResult:
    name: str
    error: float
    tolerance: float

    @property
    def ok(self) -> bool:
        return self.error <= self.tolerance


def relative_error(ours: torch.Tensor, golden: torch.Tensor) -> float:
    if ours.shape != golden.shape:
        raise ValueError(f"shape {tuple(ours.shape)} differs from golden {tuple(golden.shape)}")
    return float((ours.float() - golden.float()).abs().max() / golden.float().abs().max())


def check_golden_dir(golden: Path) -> None:
    missing = [name for name in GOLDEN_FILES if not (golden / name).is_file()]
    if missing:
        raise FileNotFoundError(f"{golden}: not a golden folder, missing {', '.join(missing)}")


def write_golden_checkpoint(golden: Path, dest: Path) -> Path:
    """Rebuild the deterministic weights and write ``dest/transformer/`` in the official layout."""
    from .weights import deterministic_state_dict, write_transformer_folder

    shapes = json.loads((golden / "keys.json").read_text())
    config = json.loads((golden / "transformer_config.json").read_text())
    write_transformer_folder(dest / "transformer", deterministic_state_dict(shapes), config, shards=2)
    (dest / "scheduler").mkdir(parents=True, exist_ok=True)
    (dest / "scheduler" / "scheduler_config.json").write_text((golden / "scheduler_config.json").read_text())
    return dest


def run_parity(golden: Path, workdir: Optional[Path] = None) -> list[ParityResult]:
    """Run every golden case; return one :class:`ParityResult` per output."""
    from safetensors.torch import load_file

    from ..weights.checkpoint import load_transformer
    from ..sampling.official import denoise, make_scheduler, rotary_embeddings

    golden = Path(golden)
    check_golden_dir(golden)
    case = json.loads((golden / "case.json").read_text())
    inputs = load_file(str(golden / "inputs.safetensors"))
    outputs = load_file(str(golden / "outputs.safetensors"))
    with tempfile.TemporaryDirectory() as tmp:
        folder = write_golden_checkpoint(golden, Path(workdir or tmp))
        model = load_transformer(folder, dtype=torch.float32, device="cpu")
    faces = [(inputs[f"id{i}.id_cond"], [inputs[f"id{i}.vit_hidden.{k}"] for k in range(5)]) for i in range(2)]
    latents, image_latents = inputs["latents"], inputs["image_latents"]
    negative, positive = inputs["negative_prompt_embeds"], inputs["prompt_embeds"]
    results = []
    with torch.no_grad():
        ids = model.prepare_ids(model.project_ids(faces))
        rotary = rotary_embeddings(model.config, case["height_px"], case["width_px"], latents.shape[1], "cpu")
        hidden = torch.cat([torch.cat([latents] * 2), torch.cat([image_latents] * 2)], dim=2)
        text = torch.cat([negative, positive])
        for t in case["timesteps_forward"]:
            out = model(hidden, text, torch.tensor([t, t]), rotary, ids=ids)
            results.append(ParityResult(f"forward.t{t}", relative_error(out, outputs[f"forward.t{t}"]),
                                        FORWARD_TOLERANCE))
        scheduler = make_scheduler(case["scheduler"], json.loads((golden / "scheduler_config.json").read_text()))
        generator = torch.Generator().manual_seed(case["step_generator_seed"])
        final = denoise(model, scheduler, latents, image_latents, positive, negative, model.project_ids(faces),
                        steps=case["steps"], cfg=case["cfg"], generator=generator,
                        height=case["height_px"], width=case["width_px"])
    results.append(ParityResult("denoise.latents", relative_error(final, outputs["denoise.latents"]),
                                DENOISE_TOLERANCE))
    return results


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ingredients_core.testing.parity",
                                     description="Check the implementation against the official golden outputs.")
    parser.add_argument("golden_dir", type=Path, help="folder with keys.json, case.json, inputs/outputs.safetensors")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        results = run_parity(args.golden_dir)
    except FileNotFoundError as err:
        sys.stderr.write(f"error: {err}\n")
        return 2
    for r in results:
        sys.stdout.write(f"{r.name:18s} max relative error {r.error:.3e}  (tolerance {r.tolerance:.0e})  "
                         f"{'ok' if r.ok else 'FAIL'}\n")
    ok = all(r.ok for r in results)
    sys.stdout.write("parity: all outputs within tolerance\n" if ok else "parity: FAILED\n")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
