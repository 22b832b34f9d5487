"""What the command-line commands share (``cli``, ``demo``, ``evaluate``): argparse value types, the
progress bar over sampling steps, reading a face photo."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .. import InputError


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def non_negative_float(text: str) -> float:
    value = float(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {text}")
    return value


def progress_callback(total: int, quiet: bool):
    """(callback, close) for a tqdm bar over sampling steps on stderr, opened at the first step."""
    from tqdm import tqdm

    bars: list = []

    def callback(info) -> None:
        if not bars:
            bars.append(tqdm(total=total, desc="sampling", unit="step", disable=quiet,
                             file=sys.stderr))
        bars[0].update(info.step + 1 - bars[0].n)

    def close() -> None:
        for bar in bars:
            bar.close()

    return callback, close


def load_photo(path: Path):
    """RGB uint8 array of a photo, EXIF orientation applied (as diffusers' ``load_image``)."""
    import numpy as np
    from PIL import Image, ImageOps, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            return np.asarray(ImageOps.exif_transpose(image).convert("RGB"))
    except (UnidentifiedImageError, OSError) as error:
        raise InputError(f"cannot read face photo {path}: {error}") from error
