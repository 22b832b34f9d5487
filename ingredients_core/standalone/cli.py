"""Command line: the same generation as the ComfyUI nodes, without ComfyUI.

    python -m ingredients_core generate --model DIR --face A.jpg --face B.jpg --prompt TEXT --out out.mp4
    python -m ingredients_core evaluate --video out.mp4 --face A.jpg --face B.jpg --model DIR
    python -m ingredients_core demo --out DIR
    python -m ingredients_core doctor [--model DIR] [--comfyui DIR]

Exit codes: 0 done; 1 a problem with the inputs or the model folder (the message says which);
2 bad command-line usage; 130 interrupted (Ctrl-C).

Defaults that differ from the official ``infer.py`` run (see ``generate --help``):

- VAE tiling is on (less memory); ``--no-vae-tiling`` gives the official untiled decode.
- Faces smaller than 64 px are refused; ``--min-face-size 0`` accepts any face, as officially.
- Seed 0 is an ordinary seed; the official ``infer.py`` treats seed 0 as "pick a random seed".
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from .common import load_photo, non_negative_float, positive_int, progress_callback
from ..doctor.checkup import add_doctor_parser
from .evaluate import add_evaluate_parser, add_generate_options, check_json_path, wants_evaluation
from ..sampling.offload import add_memory_options, check_memory_options
from ..sampling.pipeline import DTYPE_NAMES, GenerationSettings
from .. import InputError  # noqa: F401  (the CLI's input errors; raised here, caught by main)

if TYPE_CHECKING:
    import torch

logger = logging.getLogger(__name__)

EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130
DEFAULT_MIN_FACE_SIZE = 64  # faces.encoder.MIN_FACE_SIZE (imported lazily: it loads torch); a test ties them
DIFFERENCES_FROM_OFFICIAL = (
    "Defaults that differ from the official infer.py: VAE tiling is on (--no-vae-tiling for the "
    f"official decode); faces under {DEFAULT_MIN_FACE_SIZE} px are refused (--min-face-size 0 accepts any, "
    "as officially); "
    "seed 0 is an ordinary seed (official infer.py treats 0 as 'random seed').")


def _seed(text: str) -> int:
    value = int(text)
    if not 0 <= value < 2**64:
        raise argparse.ArgumentTypeError(f"must be in [0, 2**64), got {text}")
    return value


def _one_of(names_of: Callable[[], Sequence[str]]) -> Callable[[str], str]:
    """An argparse type accepting only the names ``names_of()`` returns (looked up when parsing,
    so the canonical lists can live in modules that import torch without slowing ``--help``)."""

    def parse(text: str) -> str:
        names = tuple(names_of())
        if text not in names:
            raise argparse.ArgumentTypeError(f"invalid choice: {text!r} (choose from {', '.join(names)})")
        return text

    return parse


def _scheduler_names() -> Sequence[str]:
    from ..sampling.official import SCHEDULERS

    return SCHEDULERS


def _face_choices() -> Sequence[str]:
    from ..faces.choice import FACE_CHOICES

    return FACE_CHOICES


def _add_generate(commands) -> None:
    defaults = GenerationSettings()
    gen = commands.add_parser(
        "generate", help="generate a video of 1 to 4 people from face photos and a prompt",
        description="Generate a video keeping the identity of each person in the face photos.",
        epilog=DIFFERENCES_FROM_OFFICIAL)
    gen.add_argument("--model", required=True, type=Path,
                     help="Ingredients model folder (transformer/, vae/, text_encoder/, tokenizer/, "
                          "scheduler/, face_encoder/)")
    gen.add_argument("--face", required=True, action="append", nargs="+", type=Path,
                     metavar="PHOTO", help="photo(s) of one person; repeat --face per person (1 to 4), "
                                           "in canvas order (left to right)")
    gen.add_argument("--prompt", required=True, help="what happens in the video")
    gen.add_argument("--out", required=True, type=Path, help="output .mp4 file")
    gen.add_argument("--negative", default="", help="negative prompt (default: empty, as officially)")
    gen.add_argument("--steps", type=positive_int, default=defaults.steps,
                     help=f"sampling steps (default {defaults.steps})")
    gen.add_argument("--cfg", type=non_negative_float, default=defaults.cfg,
                     help=f"classifier-free guidance scale (default {defaults.cfg}; 1 or less: none)")
    gen.add_argument("--dynamic-cfg", action="store_true", help="the official dynamic CFG schedule")
    gen.add_argument("--seed", type=_seed, default=defaults.seed,
                     help=f"random seed (default {defaults.seed}); same seed and settings, same video; "
                          "0 is an ordinary seed (the official infer.py treats 0 as unseeded)")
    gen.add_argument("--height", type=positive_int, help="default: the checkpoint's size (480)")
    gen.add_argument("--width", type=positive_int, help="default: the checkpoint's size (720)")
    gen.add_argument("--frames", type=positive_int, help="4k+1; default: the checkpoint's (49)")
    gen.add_argument("--scheduler", type=_one_of(_scheduler_names), default=defaults.scheduler,
                     help="dpm: CogVideoXDPMScheduler (official default); ddim: CogVideoXDDIMScheduler")
    gen.add_argument("--id-scale", type=non_negative_float, default=None, metavar="SCALE",
                     help="strength of the identity features (default: the checkpoint's, 1.0)")
    gen.add_argument("--dtype", choices=DTYPE_NAMES, default="auto",
                     help="auto: bfloat16 on CUDA, float32 on the CPU")
    gen.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ...")
    gen.add_argument("--fps", type=positive_int, default=defaults.fps,
                     help=f"frames per second of the MP4 (default {defaults.fps}, as officially)")
    gen.add_argument("--face-choice", type=_one_of(_face_choices), default="best",
                     help="which face of a photo: best (official), largest, or index")
    gen.add_argument("--face-index", type=int, default=None, metavar="N",
                     help="with --face-choice index: 0-based face number from the left")
    gen.add_argument("--face-models", type=Path, action="append", default=None, metavar="DIR",
                     help="extra folder(s) to search for the face models (default: MODEL/face_encoder)")
    gen.add_argument("--min-face-size", type=non_negative_float, default=DEFAULT_MIN_FACE_SIZE,
                     metavar="PX", help=f"refuse faces whose box is shorter than PX pixels (after the photo "
                                        f"is shrunk to 1024 px at most; default {DEFAULT_MIN_FACE_SIZE}; "
                                        "0 accepts any face, as the official code does)")
    gen.add_argument("--no-vae-tiling", action="store_true",
                     help="decode without tiling, as the official script does (more memory; "
                          "tiling is on by default here)")
    gen.add_argument("--vae-slicing", action="store_true", help="VAE slicing (less memory)")
    gen.add_argument("--save-canvas", type=Path, default=None, metavar="PNG",
                     help="also write the face canvas (the first-frame condition) as a PNG")
    gen.add_argument("--quiet", action="store_true", help="no progress bar")
    add_memory_options(gen)
    add_generate_options(gen)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m ingredients_core",
        description="Ingredients (arXiv 2501.01790): multi-ID identity-preserving video generation.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_generate(commands)
    add_evaluate_parser(commands)
    add_doctor_parser(commands)
    demo = commands.add_parser(
        "demo", help="offline end-to-end run on tiny random models (proves the setup, makes noise)",
        description="Make tiny random-weight models and run the whole generation on two face photos "
                    "shipped with insightface. The video is noise: this only proves the code path.")
    demo.add_argument("--out", required=True, type=Path, help="output folder")
    demo.add_argument("--steps", type=positive_int, default=10)
    demo.add_argument("--seed", type=_seed, default=42)
    demo.add_argument("--quiet", action="store_true", help="no progress bar")
    return parser


def _check_readable(photo: Path) -> None:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(photo) as image:
            image.verify()
    except (UnidentifiedImageError, OSError) as error:
        raise InputError(f"cannot read face photo {photo}: {error}") from error


def check_inputs(args: argparse.Namespace) -> None:
    """Domain checks before anything heavy loads: files exist, output is an .mp4, sizes are usable."""
    from ..sampling.pipeline import check_model_folder

    settings_from_args(args, None).validate()
    check_model_folder(args.model)
    for person, photos in enumerate(args.face, start=1):
        for photo in photos:
            if not photo.is_file():
                raise FileNotFoundError(f"face photo of person {person} not found: {photo}")
            _check_readable(photo)
    if len(args.face) > 4:
        raise InputError(f"Ingredients takes 1 to 4 people; got {len(args.face)} --face options")
    if args.out.suffix.lower() != ".mp4":
        raise InputError(f"--out must name an .mp4 file; got {args.out}")
    if args.face_choice == "index" and args.face_index is None:
        raise InputError("--face-choice index needs --face-index N (0-based, counted from the left)")
    check_outputs(args.out, args.save_canvas)
    check_json_path(args.evaluate_json, "--evaluate-json")


def check_outputs(out: Path, canvas: Path | None) -> None:
    """Fail before the run, not after it, when the outputs cannot be written where asked."""
    from PIL import Image

    _check_folder_usable(out, "--out", may_create=True)
    if canvas is None:
        return
    if not canvas.parent.is_dir():
        raise InputError(f"--save-canvas: folder {canvas.parent} does not exist; create it or choose "
                         f"another path for {canvas.name}")
    _check_folder_usable(canvas, "--save-canvas", may_create=False)
    if canvas.suffix.lower() not in Image.registered_extensions():
        raise InputError(f"--save-canvas must name an image file such as canvas.png; got {canvas}")


def _check_folder_usable(path: Path, option: str, may_create: bool) -> None:
    """The nearest existing folder of ``path`` must be a writable folder (``--out`` folders are
    created by the writer; ``--save-canvas`` folders must exist)."""
    import os

    folder = path.parent
    while may_create and not folder.exists() and folder != folder.parent:
        folder = folder.parent
    if not folder.is_dir():
        raise InputError(f"{option}: {folder} is not a folder, so {path} cannot be written")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise InputError(f"{option}: folder {folder} is not writable, so {path} cannot be written")
    if path.is_dir():
        raise InputError(f"{option}: {path} is a folder; give a file name")


def settings_from_args(args: argparse.Namespace, model_config) -> GenerationSettings:
    """Settings from the command line; sizes not given come from the checkpoint."""
    base = GenerationSettings(
        steps=args.steps, cfg=args.cfg, seed=args.seed, scheduler=args.scheduler,
        dynamic_cfg=args.dynamic_cfg, local_face_scale=args.id_scale, dtype=args.dtype,
        device=args.device, fps=args.fps, vae_tiling=not args.no_vae_tiling,
        vae_slicing=args.vae_slicing, teacache=args.teacache).sized_for(model_config)
    sizes = {k: getattr(args, k) for k in ("height", "width", "frames") if getattr(args, k)}
    return base.replace(**sizes)


def encode_faces(face_dirs: Sequence[Path], people: Sequence[Sequence[Path]], device: torch.device,
                 dtype: torch.dtype, choice: str = "best", index: int | None = None,
                 min_face_size: float = DEFAULT_MIN_FACE_SIZE) -> list:
    """FaceFeatures per person (several photos of one person are merged); faces whose box is
    shorter than ``min_face_size`` are refused (0 accepts any, as the official code)."""
    from ..faces.encoder import FaceEncoder
    from ..faces.paths import find_face_models

    encoder = FaceEncoder.load(find_face_models(face_dirs), device=device, dtype=dtype)
    return [encoder.encode_person([load_photo(p) for p in photos], choice, index,
                                  source=f"person {n} ({', '.join(p.name for p in photos)})",
                                  min_face_size=min_face_size)
            for n, photos in enumerate(people, start=1)]


def _quiet_third_party() -> None:
    """No per-file progress bars from transformers/diffusers while loading (CLI process only)."""
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()
    diffusers_logging.disable_progress_bar()


def run_generate(args: argparse.Namespace, started: float) -> int:
    """Text, then faces, then the transformer: one large model on the device at a time."""
    from PIL import Image

    from ..faces.eva_clip import require_face_packages
    from ..sampling.pipeline import (
        encode_texts_once,
        generate,
        load_bundle,
        read_transformer_config,
        resolve_device,
        resolve_dtype,
    )
    from .video import write_mp4

    check_inputs(args)
    require_face_packages()  # a broken face package is named before minutes of text encoding
    config = read_transformer_config(args.model)
    if config is not None:  # fail on a size the checkpoint cannot take before loading anything
        settings_from_args(args, config).check_model(config)
    device = resolve_device(args.device, require_available=True)
    dtype = resolve_dtype(args.dtype, device)
    memory = dict(weight_dtype=args.weight_dtype, offload=args.offload, attention=args.attention)
    check_memory_options(memory, device, dtype)
    prompt, negative = encode_texts_once(args.model, [args.prompt, args.negative], device, dtype, args.offload)
    face_dirs = [args.model / "face_encoder", *(args.face_models or [])]
    faces = encode_faces(face_dirs, args.face, device, dtype, args.face_choice, args.face_index,
                         args.min_face_size)
    bundle = load_bundle(args.model, device=args.device, dtype=args.dtype, load_text=False, **memory)
    settings = settings_from_args(args, bundle.transformer.config)
    callback, close = progress_callback(settings.steps, args.quiet)
    recorder = _recorder_if_evaluating(args)
    try:
        result = generate(bundle, faces, prompt, negative, settings, callback, recorder=recorder)
    finally:
        close()
    write_mp4(result.frames, args.out, settings.fps)
    if args.save_canvas:
        Image.fromarray(result.canvas).save(args.save_canvas)
    frames, height, width = result.frames.shape[:3]
    sys.stdout.write(f"Wrote {args.out} ({frames} frames, {width}x{height}, {settings.fps} fps, "
                     f"seed {settings.seed}) in {time.perf_counter() - started:.1f} s\n")
    if result.cache is not None:
        sys.stdout.write(result.cache.summary() + "\n")
    if wants_evaluation(args):
        from .evaluate import evaluate_generated

        evaluate_generated(args, faces, args.device, recorder)
    return EXIT_OK


def _recorder_if_evaluating(args: argparse.Namespace):
    """A routing recorder when ``--evaluate`` will check the video (swaps need the routing)."""
    from ..routing.plan import RoutingRecorder

    return RoutingRecorder() if wants_evaluation(args) else None


def _user_errors() -> tuple[type[BaseException], ...]:
    """Exceptions that mean bad input or a bad model folder (shown without a traceback)."""
    from ..weights.checkpoint_files import CheckpointError
    from ..faces.deps import FaceDependencyError
    from ..faces.errors import FaceError, FaceModelsError
    from ..identity.check import IdentityInputError
    from ..weights.integrity import DamagedFileError
    from ..sampling.offload import OptionError
    from ..sampling.pipeline import SettingsError
    from ..routing.plan import RoutingError

    return (FileNotFoundError, NotADirectoryError, CheckpointError, FaceError, FaceModelsError,
            FaceDependencyError, RoutingError, SettingsError, InputError, IdentityInputError, OptionError,
            DamagedFileError)


def main(argv: Sequence[str] | None = None) -> int:
    started = time.perf_counter()
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        if args.command == "doctor":  # before anything that imports diffusers/transformers: they may be broken
            from ..doctor.checkup import run_doctor_command

            return run_doctor_command(args)
        _quiet_third_party()
        if args.command == "demo":
            from .demo import run_demo_command

            return run_demo_command(args, started)
        if args.command == "evaluate":
            from .evaluate import run_evaluate

            return run_evaluate(args)
        return run_generate(args, started)
    except KeyboardInterrupt:
        sys.stderr.write("interrupted\n")
        return EXIT_INTERRUPTED
    except _user_errors() as error:
        if args.verbose:
            logger.exception("failed")
        sys.stderr.write(f"error: {error}\n")
        return EXIT_ERROR
