"""The identity check as a picture: one row per person, the reference crop beside the per-frame
similarity curve, in the routing maps' colours (drawn with PIL; no plotting library)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from ..routing.maps import ID_COLORS
from .report import IdentityReport

WIDTH = 960
ROW = 150
TITLE = 34
LEGEND = 30
CROP = 112
LEFT = CROP + 40          # the chart starts here
RIGHT = 24
BACKGROUND = (250, 250, 250)
GRID = (222, 222, 222)
TEXT = (30, 30, 30)
OFFICIAL = (150, 150, 150)


def _font(size: int) -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: the fixed bitmap font only
        return ImageFont.load_default()


def _text(draw: ImageDraw.ImageDraw, xy: tuple[float, float], text: str, font, anchor: str = "la") -> None:
    """Text placed by a two-letter anchor (l/m/r, then a/m for top/middle), measured with ``textbbox``
    so bitmap fonts (old Pillow) place it the same way."""
    left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
    x = xy[0] - {"l": 0.0, "m": (right - left) / 2, "r": right - left}[anchor[0]] - left
    y = xy[1] - {"a": 0.0, "m": (bottom - top) / 2}[anchor[1]] - top
    draw.text((x, y), text, fill=TEXT, font=font)


def _colour(person: int) -> tuple[int, int, int]:
    return tuple(int(round(255 * c)) for c in ID_COLORS[(person - 1) % len(ID_COLORS)])


class _Chart:
    """Maps (video frame, similarity) to pixels inside one row's chart box."""

    def __init__(self, top: int, total: int):
        self.x0, self.x1 = LEFT, WIDTH - RIGHT
        self.y0, self.y1 = top + 36, top + ROW - 22
        self.total = max(total - 1, 1)

    def x(self, frame: int) -> float:
        return self.x0 + (self.x1 - self.x0) * frame / self.total

    def y(self, similarity: float) -> float:
        return self.y1 - (self.y1 - self.y0) * min(max(similarity, 0.0), 1.0)


def _axes(draw: ImageDraw.ImageDraw, chart: _Chart, threshold: float, font) -> None:
    for value in (0.0, 0.25, 0.5, 0.75, 1.0):
        y = chart.y(value)
        draw.line([(chart.x0, y), (chart.x1, y)], fill=GRID, width=1)
        if value in (0.0, 0.5, 1.0):
            _text(draw, (chart.x0 - 6, y), f"{value:g}", font, "rm")
    y = chart.y(threshold)
    for start in range(chart.x0, chart.x1, 12):  # dashed threshold line
        draw.line([(start, y), (min(start + 6, chart.x1), y)], fill=(90, 90, 90), width=1)


def _curve(draw: ImageDraw.ImageDraw, chart: _Chart, frames, values, found, colour, width: int = 2) -> None:
    points = [(chart.x(f), chart.y(v)) for f, v in zip(frames, values)]
    if len(points) > 1:
        draw.line(points, fill=colour, width=width)
    if found is None:
        return
    for (x, y), hit in zip(points, found):
        box = [x - 3.5, y - 3.5, x + 3.5, y + 3.5]
        draw.ellipse(box, fill=colour if hit else BACKGROUND, outline=colour, width=2)


def _events(draw: ImageDraw.ImageDraw, chart: _Chart, report: IdentityReport, person: int) -> None:
    """Swaps: a triangle in the colour of the person whose region the face was in; merges: a diamond
    in the colour of the other person; both above the chart, at the frame."""
    top = chart.y0 - 9
    for swap in (s for s in report.arcface.swaps if s.person == person):
        x = chart.x(swap.frame)
        draw.polygon([(x - 5, top - 4), (x + 5, top - 4), (x, top + 5)], fill=_colour(swap.region_of))
    for merge in (m for m in report.arcface.merges if person in m.people):
        other = merge.people[1] if merge.people[0] == person else merge.people[0]
        x = chart.x(merge.frame)
        draw.polygon([(x, top - 5), (x + 5, top), (x, top + 5), (x - 5, top)], outline=_colour(other), width=2)


def _crop_tile(crop: np.ndarray | None, colour) -> Image.Image:
    tile = Image.new("RGB", (CROP + 8, CROP + 8), colour)
    if crop is not None:
        face = Image.fromarray(np.ascontiguousarray(crop[..., :3]).astype(np.uint8), "RGB")
        tile.paste(face.resize((CROP, CROP), Image.Resampling.BICUBIC), (4, 4))
    return tile


def render_identity_plot(report: IdentityReport, crops: Sequence[np.ndarray | None]) -> np.ndarray:
    """``(H, W, 3)`` uint8 RGB picture of ``report``; ``crops``: the reference crop of each person.

    Per person: the crop in a frame of their colour; the ArcFace similarity in each sampled frame
    (filled dot = found, hollow = not found), the official per-frame score in grey, the threshold
    dashed; swap and merge markers above the curve.
    """
    people = report.arcface.people
    image = Image.new("RGB", (WIDTH, TITLE + ROW * max(len(people), 1) + LEGEND), BACKGROUND)
    draw = ImageDraw.Draw(image)
    font, small = _font(14), _font(11)
    _text(draw, (12, TITLE // 2), _title(report), font, "lm")
    for row, person in enumerate(people):
        top = TITLE + row * ROW
        colour = _colour(person.person)
        image.paste(_crop_tile(crops[row] if row < len(crops) else None, colour), (12, top + 12))
        chart = _Chart(top, report.total_frames)
        _axes(draw, chart, report.threshold, small)
        _curve(draw, chart, report.frames, report.arcface.official_per_frame, None, OFFICIAL, width=1)
        _curve(draw, chart, report.frames, person.per_frame, person.found_frames, colour)
        _events(draw, chart, report, person.person)
        name = f": {person.name}" if person.name else ""
        label = (f"person {person.person}{name}    mean {person.mean:.2f}   min {person.minimum:.2f}   "
                 f"found {person.found:.0%}")
        _text(draw, (LEFT, top + 4), label, font)
        _text(draw, (chart.x0, chart.y1 + 4), "frame 0", small)
        _text(draw, (chart.x1, chart.y1 + 4), f"frame {max(report.total_frames - 1, 0)}", small, "ra")
    legend = ("filled dot: found   hollow: not found   grey: official per frame   dashed: threshold   "
              "triangle: swap (colour = whose region)   diamond: merge (colour = the other person)")
    _text(draw, (12, image.height - LEGEND // 2), legend, small, "lm")
    return np.asarray(image).copy()


def _title(report: IdentityReport) -> str:
    if not report.frames:
        return "Identity check: the video has no frames"
    return (f"Identity check, {report.arcface.model}: official {report.arcface.official:.3f} over "
            f"{len(report.frames)} of {report.total_frames} frames; found = similarity >= {report.threshold:g}")
