"""The identity check on the command line: ``evaluate``, and ``generate --evaluate``.

    python -m ingredients_core evaluate --video out.mp4 --face alice.jpg --face bob.jpg \\
        [--model DIR | --face-models DIR] [--frames 24] [--json out.json]

The table goes to stdout; ``--json`` writes the same numbers (and the per-frame values) as JSON.
Importing this module is cheap (argparse only); models load when a command runs.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from .common import positive_int

logger = logging.getLogger(__name__)

#: Animated image formats read with Pillow; everything else is opened with PyAV.
PIL_VIDEO_SUFFIXES = (".webp", ".gif", ".png", ".apng")
DEFAULT_FRAMES = 24
DEFAULT_THRESHOLD = 0.35  # faces.identity_scores.DEFAULT_THRESHOLD (imported lazily: numpy/scipy); a test ties them
DEFAULT_MARGIN = 0.05


def _similarity(text: str) -> float:
    value = float(text)
    if not -1.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be a cosine similarity between -1 and 1, got {text}")
    return value


def _face_choice(text: str) -> str:
    from ..faces.choice import FACE_CHOICES

    if text not in FACE_CHOICES:
        raise argparse.ArgumentTypeError(f"invalid choice: {text!r} (choose from {', '.join(FACE_CHOICES)})")
    return text


def add_evaluate_parser(commands) -> None:
    """The ``evaluate`` subcommand."""
    check = commands.add_parser(
        "evaluate", help="identity check: did every person keep their face? (per person, and the paper's score)",
        description=("Find the faces in frames sampled from a video, match them to the people one to one (ArcFace) "
                     "and report per person the mean and lowest similarity, how often they were found and merges, "
                     "beside the paper's Face Similarity. With glint360k_curricular_face_r101_backbone.bin in "
                     "face_encoder/, CurricularFace scores too."))
    check.add_argument("--video", required=True, type=Path, help="the video (.mp4 and what PyAV reads; animated "
                                                                  ".webp/.gif/.png with Pillow)")
    check.add_argument("--face", required=True, action="append", nargs="+", type=Path, metavar="PHOTO",
                       help="photo(s) of one person; repeat --face per person, in the order used to generate")
    check.add_argument("--model", type=Path, help="Ingredients model folder (its face_encoder/ is used)")
    check.add_argument("--face-models", type=Path, action="append", default=None, metavar="DIR",
                       help="folder(s) with the face models (and the optional CurricularFace file)")
    check.add_argument("--frames", type=positive_int, default=DEFAULT_FRAMES,
                       help=f"frames to sample evenly (default {DEFAULT_FRAMES}, as the paper's metric)")
    check.add_argument("--json", type=Path, default=None, metavar="FILE", help="also write the results as JSON")
    check.add_argument("--face-choice", type=_face_choice, default="best",
                       help="which face of a photo: best (official), largest, or index")
    check.add_argument("--face-index", type=int, default=None, metavar="N",
                       help="with --face-choice index: 0-based face number from the left")
    check.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ...")
    check.add_argument("--threshold", type=_similarity, default=DEFAULT_THRESHOLD,
                       help=f"similarity at which a person counts as found in a frame (default {DEFAULT_THRESHOLD})")
    check.add_argument("--merge-margin", type=float, default=DEFAULT_MARGIN, metavar="M",
                       help=f"a face within M of two people counts as a merge (default {DEFAULT_MARGIN})")


def add_generate_options(generate: argparse.ArgumentParser) -> None:
    """``generate --evaluate``: the identity check on the video just written."""
    generate.add_argument("--evaluate", action="store_true",
                          help="run the identity check on the written video and print its table")
    generate.add_argument("--evaluate-json", type=Path, default=None, metavar="FILE",
                          help="run the identity check and also write its results as JSON")
    generate.add_argument("--evaluate-frames", type=positive_int, default=DEFAULT_FRAMES, metavar="N",
                          help=f"identity check: frames to sample (default {DEFAULT_FRAMES})")
    generate.add_argument("--evaluate-threshold", type=_similarity, default=DEFAULT_THRESHOLD, metavar="SIM",
                          help=f"identity check: similarity at which a person counts as found "
                               f"(default {DEFAULT_THRESHOLD})")


def wants_evaluation(args: argparse.Namespace) -> bool:
    return bool(args.evaluate or args.evaluate_json is not None)


def _input_error(message: str) -> Exception:
    from ..identity.check import IdentityInputError

    return IdentityInputError(message)


def check_json_path(path: Path | None, option: str) -> None:
    """Fail before any model loads when the JSON file cannot be written where asked."""
    if path is None:
        return
    if path.is_dir():
        raise _input_error(f"{option}: {path} is a folder; give a file name such as report.json")
    if not path.parent.is_dir():
        raise _input_error(f"{option}: folder {path.parent} does not exist; create it or choose another path")


def read_video(path: Path, count: int) -> tuple[list, list[int], int]:
    """``(frames, indices, total)``: the ``count`` evenly sampled frames (``(H, W, 3)`` uint8 RGB) of a
    video, their indices and its frame count. Only the sampled frames are kept in memory."""
    from ..identity.check import sample_indices

    if not path.is_file():
        raise FileNotFoundError(f"--video: no such file: {path}")
    if path.suffix.lower() in PIL_VIDEO_SUFFIXES:
        reader, errors = _read_pil, (OSError, ValueError, EOFError)
    else:
        import av

        reader, errors = _read_av, (OSError, ValueError, av.FFmpegError)
    try:
        total = reader(path, None)[1]
        indices = sample_indices(total, count)
        frames = reader(path, set(indices))[0]
    except errors as error:
        raise _input_error(f"--video: cannot read {path}: {error}") from error
    return [frames[i] for i in indices], indices, total


def _read_av(path: Path, keep: set[int] | None) -> tuple[dict, int]:
    import av

    frames, total = {}, 0
    with av.open(str(path)) as container:
        for frame in container.decode(video=0):
            if keep is not None and total in keep:
                frames[total] = frame.to_ndarray(format="rgb24")
            total += 1
    return frames, total


def _read_pil(path: Path, keep: set[int] | None) -> tuple[dict, int]:
    """Frames of an animated image on its timeline: WebP encoders store a run of identical frames once
    with a longer duration, so each stored frame stands for ``duration / shortest duration`` frames."""
    import numpy as np
    from PIL import Image

    with Image.open(path) as image:
        durations = []
        for stored in range(int(getattr(image, "n_frames", 1))):
            image.seek(stored)
            image.load()  # WebP sets the frame's duration when it decodes it
            durations.append(float(image.info.get("duration") or 0))
        unit = min(durations) if min(durations) > 0 else 0
        repeats = [max(1, round(d / unit)) if unit else 1 for d in durations]
        timeline = [stored for stored, count in enumerate(repeats) for _ in range(count)]
        frames = {}
        for index in sorted(keep or ()):
            image.seek(timeline[index])
            frames[index] = np.asarray(image.convert("RGB"))
    return frames, len(timeline)


def _write_outputs(report, names: Sequence[str], video: Path, json_path: Path | None) -> None:
    sys.stdout.write(report.table())
    if json_path is not None:
        data = {"video": str(video), "people": list(names), **report.to_dict()}
        json_path.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
        sys.stdout.write(f"Wrote {json_path}\n")


def _load_models(face_dirs: Sequence[Path], device_name: str):
    from ..faces.encoder import FaceEncoder
    from ..identity.check import IdentityModels
    from ..faces.paths import find_face_models
    from ..sampling.pipeline import resolve_device, resolve_dtype

    device = resolve_device(device_name, require_available=True)
    encoder = FaceEncoder.load(find_face_models(face_dirs), device=device, dtype=resolve_dtype("auto", device))
    return IdentityModels.from_encoder(encoder, face_dirs, device)


def run_evaluate(args: argparse.Namespace) -> int:
    """``evaluate``: references from the photos (as ``generate`` makes them), then the check."""
    from ..identity.check import Reference, evaluate_sampled

    face_dirs = [*([args.model / "face_encoder"] if args.model else []), *(args.face_models or [])]
    if not face_dirs:
        raise _input_error("give --model DIR (an Ingredients folder) or --face-models DIR (the face models)")
    if args.face_choice == "index" and args.face_index is None:
        raise _input_error("--face-choice index needs --face-index N (0-based, counted from the left)")
    check_json_path(args.json, "--json")
    for person, photos in enumerate(args.face, start=1):
        for photo in photos:
            if not photo.is_file():
                raise FileNotFoundError(f"face photo of person {person} not found: {photo}")
    frames, indices, total = read_video(args.video, args.frames)
    models = _load_models(face_dirs, args.device)
    from .common import load_photo

    names = [", ".join(p.name for p in photos) for photos in args.face]
    people = [Reference.from_features(models.encoder.encode_person(
        [load_photo(p) for p in photos], args.face_choice, args.face_index, source=f"person {n}", min_face_size=0),
        name) for n, (photos, name) in enumerate(zip(args.face, names), start=1)]
    report = evaluate_sampled(frames, indices, total, people, models, threshold=args.threshold,
                              margin=args.merge_margin)
    _write_outputs(report, names, args.video, args.json)
    return 0


def evaluate_generated(args: argparse.Namespace, faces: Sequence, device_name: str, recorder=None) -> None:
    """``generate --evaluate``: the check on the video ``generate`` just wrote, with its own faces
    and, from ``recorder`` (the run's ``RoutingRecorder``), the router's regions for swaps."""
    from ..identity.check import Reference, evaluate_sampled
    from ..identity.scores import RoutingGrid

    face_dirs = [args.model / "face_encoder", *(args.face_models or [])]
    frames, indices, total = read_video(args.out, args.evaluate_frames)
    models = _load_models(face_dirs, device_name)
    names = [", ".join(p.name for p in photos) for photos in args.face]
    people = [Reference.from_features(face, name) for face, name in zip(faces, names)]
    routing = None
    if recorder is not None and recorder.last:
        routing = RoutingGrid(recorder.maps("mean").float().numpy(), total)
    report = evaluate_sampled(frames, indices, total, people, models, threshold=args.evaluate_threshold,
                              margin=DEFAULT_MARGIN, routing=routing)
    _write_outputs(report, names, args.out, args.evaluate_json)
