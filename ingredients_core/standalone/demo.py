"""Offline end-to-end demo on tiny random models: proves the installation, not the model.

    python -m ingredients_core demo --out DIR

Writes ``DIR/tiny_model/`` (random weights, official layout), then runs the full path (model
loading, T5, face encoder, face canvas, VAE encode, sampling with CFG, VAE decode, MP4) on two
faces of the group photo ``t1.jpg`` that the insightface wheel ships. Outputs: ``DIR/demo.mp4``,
``DIR/canvas.png`` (the image the video starts from) and ``DIR/crop_1.png``, ``DIR/crop_2.png``
(the aligned faces).

The tiny face detector is a random network that finds no face, so the demo passes the two faces'
boxes and landmarks in (measured once by hand on ``t1.jpg``); alignment, ArcFace and EVA-CLIP
then run as usual. With random weights the video is noise.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

logger = logging.getLogger(__name__)

DEMO_PROMPT = "Two friends sit at a table, smiling and talking, warm light, cinematic."


@dataclass(frozen=True)
class DemoFace:
    """A face of the demo photo: box (x1, y1, x2, y2) and 5 landmarks (eyes, nose, mouth corners)."""

    name: str
    box: tuple[float, float, float, float]
    landmarks: tuple[tuple[float, float], ...]


DEMO_FACES = (
    DemoFace("man at the centre of t1.jpg", (462, 265, 585, 410),
             ((490, 320), (542, 333), (510, 360), (488, 378), (535, 388))),
    DemoFace("woman at the right of t1.jpg", (1128, 285, 1222, 400),
             ((1150, 326), (1195, 323), (1170, 348), (1157, 366), (1195, 364))),
)


@dataclass
class DemoResult:
    video: Path
    canvas: Path
    crops: list[Path]
    model_dir: Path
    frames: int
    size: tuple[int, int]  # (height, width)
    seconds: float = field(default=0.0)


def demo_photo() -> Path:
    """``t1.jpg`` from the installed insightface package (a FaceDependencyError when it cannot be imported)."""
    from ..faces.deps import require

    path = Path(require("insightface").__file__).parent / "data" / "images" / "t1.jpg"
    if not path.is_file():
        raise FileNotFoundError(f"demo photo not found: {path} (insightface installed without its data?)")
    return path


def _encode_demo_faces(model_dir: Path) -> list:
    import numpy as np
    import torch
    from PIL import Image

    from ..faces.encoder import FaceEncoder
    from ..faces.features import Detection
    from ..faces.paths import find_face_models

    encoder = FaceEncoder.load(find_face_models([model_dir / "face_encoder"]), "cpu", torch.float32)
    photo = np.asarray(Image.open(demo_photo()).convert("RGB"))
    faces = []
    for face in DEMO_FACES:
        given = Detection(box=face.box, score=1.0, landmarks=np.asarray(face.landmarks, np.float32))
        faces.append(encoder.encode(photo, source=face.name, detections=[given]))
    return faces


def run_demo(out_dir: str | Path, steps: int = 10, seed: int = 42,
             callback: Callable | None = None) -> DemoResult:
    """Make the tiny model in ``out_dir/tiny_model`` and generate the demo video on the CPU."""
    from PIL import Image

    from ..sampling.pipeline import GenerationSettings, generate, load_bundle
    from ..testing.make_tiny import make_tiny_model
    from .video import write_mp4

    started = time.perf_counter()
    out_dir = Path(out_dir)
    model_dir = make_tiny_model(out_dir / "tiny_model")
    bundle = load_bundle(model_dir, device="cpu", dtype="float32")
    faces = _encode_demo_faces(model_dir)
    settings = GenerationSettings(steps=steps, seed=seed, device="cpu", dtype="float32")
    settings = settings.sized_for(bundle.transformer.config)
    result = generate(bundle, faces, DEMO_PROMPT, "", settings, callback)

    video = write_mp4(result.frames, out_dir / "demo.mp4", settings.fps)
    canvas = out_dir / "canvas.png"
    Image.fromarray(result.canvas).save(canvas)
    crops = []
    for number, face in enumerate(faces, start=1):
        crops.append(out_dir / f"crop_{number}.png")
        Image.fromarray(face.crop).save(crops[-1])
    return DemoResult(video=video, canvas=canvas, crops=crops, model_dir=model_dir,
                      frames=result.frames.shape[0], size=tuple(result.frames.shape[1:3]),
                      seconds=time.perf_counter() - started)


def run_demo_command(args, started: float) -> int:
    """The ``demo`` subcommand: run, then say plainly what was (and was not) shown.

    ``started``: ``time.perf_counter()`` when the command began (the elapsed time printed).
    """
    from .common import progress_callback

    callback, close = progress_callback(args.steps, args.quiet)
    try:
        result = run_demo(args.out, steps=args.steps, seed=args.seed, callback=callback)
    finally:
        close()
    height, width = result.size
    sys.stdout.write(
        f"Demo finished in {time.perf_counter() - started:.1f} s.\n"
        f"  video:  {result.video} ({result.frames} frames, {width}x{height})\n"
        f"  canvas: {result.canvas}\n"
        f"  crops:  {', '.join(str(p) for p in result.crops)}\n"
        f"  model:  {result.model_dir} (tiny, random weights)\n"
        "The models are tiny and random, so the video is noise: this run only proves that loading, "
        "text and face encoding, sampling, decoding and video writing all work here. The tiny face "
        "detector finds nothing, so the two faces' positions in insightface's t1.jpg were given to "
        "it. For real videos, download feizhengcong/Ingredients and run the generate command.\n")
    return 0
