"""Write a complete tiny Ingredients model folder in the official layout.

    python -m ingredients_core.testing.make_tiny DIR [--seed N] [--no-faces]

``DIR`` receives ``transformer/``, ``vae/``, ``text_encoder/``, ``tokenizer/``, ``scheduler/``,
``face_encoder/`` and ``model_index.json``, with seeded random weights (a few MB, a few seconds).
The outputs are noise; the folder exists so that every code path (loading, text encoding, face
encoding, sampling, decoding, video writing) runs offline on the CPU, in tests and in the demo.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from ingredients_core.testing.tiny_text_vae import (
    TINY_TEXT_DIM,
    write_tiny_text_encoder,
    write_tiny_tokenizer,
    write_tiny_vae,
)

logger = logging.getLogger(__name__)

# CogVideoX-5B-I2V's scheduler configuration (the tiny model samples with the real schedule).
COGVIDEOX_I2V_SCHEDULER_CONFIG = {
    "_class_name": "CogVideoXDPMScheduler",
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "beta_start": 0.00085,
    "clip_sample": False,
    "num_train_timesteps": 1000,
    "prediction_type": "v_prediction",
    "rescale_betas_zero_snr": True,
    "set_alpha_to_one": True,
    "snr_shift_scale": 1.0,
    "steps_offset": 0,
    "timestep_spacing": "trailing",
}

MODEL_INDEX = {
    "_class_name": "IngredientsPipeline",
    "scheduler": ["diffusers", "CogVideoXDPMScheduler"],
    "text_encoder": ["transformers", "T5EncoderModel"],
    "tokenizer": ["transformers", "T5Tokenizer"],
    "transformer": ["ingredients_core", "IngredientsTransformer3DModel"],
    "vae": ["diffusers", "AutoencoderKLCogVideoX"],
}

_NOTICE = """\
Tiny Ingredients model written by ingredients_core.testing.make_tiny (seed {seed}).
Random weights: generations are noise. For tests and the offline demo only.
"""


def _write_json(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def _write_transformer(folder: Path) -> None:
    """``transformer/``: golden-rule deterministic weights (no seed), its input widths matching
    the tiny T5 (text) and the tiny EVA-CLIP (ViT hidden states) written beside it."""
    from ingredients_core.testing.tiny_faces import TINY_EVA_WIDTH
    from ingredients_core.testing.tiny_transformer import tiny_config, write_tiny_transformer

    config = tiny_config(text_embed_dim=TINY_TEXT_DIM, ids={"vit_dim": TINY_EVA_WIDTH})
    write_tiny_transformer(folder, config)


def _write_face_models(folder: Path, seed: int) -> None:
    """``face_encoder/``: tiny stand-ins for the detector, ArcFace and EVA-CLIP files.

    The tiny detector finds no face on any image: pass detections to ``FaceEncoder.encode``.
    """
    from ingredients_core.testing.tiny_faces import write_tiny_face_models

    write_tiny_face_models(folder / "face_encoder", seed=seed)


def make_tiny_model(folder: str | Path, seed: int = 0, faces: bool = True) -> Path:
    """Write the tiny model folder and return its path. Deterministic for a given ``seed``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    vocab_size = write_tiny_tokenizer(folder / "tokenizer")
    write_tiny_text_encoder(folder / "text_encoder", vocab_size=vocab_size, seed=seed)
    write_tiny_vae(folder / "vae", seed=seed)
    _write_json(folder / "scheduler" / "scheduler_config.json", COGVIDEOX_I2V_SCHEDULER_CONFIG)
    _write_transformer(folder)
    if faces:
        _write_face_models(folder, seed)
    _write_json(folder / "model_index.json", MODEL_INDEX)
    (folder / "TINY_MODEL.txt").write_text(_NOTICE.format(seed=seed), encoding="utf-8")
    logger.info("wrote tiny Ingredients model to %s", folder)
    return folder


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m ingredients_core.testing.make_tiny",
        description="Write a tiny random-weight Ingredients model folder (official layout).",
    )
    parser.add_argument("folder", type=Path, help="output folder (created if missing)")
    parser.add_argument("--seed", type=int, default=0, help="weight seed (default 0)")
    parser.add_argument("--no-faces", action="store_true", help="skip face_encoder/")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    path = make_tiny_model(args.folder, seed=args.seed, faces=not args.no_faces)
    sys.stdout.write(f"Tiny model written to {path}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
