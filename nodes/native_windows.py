"""The native MODEL under ComfyUI's context windows (*Context Windows (Manual)*, *Ingredients Long
Video*): a long latent sampled in windows of the checkpoint's own length along the frames.

Plain Python on the objects ComfyUI hands over (no ComfyUI import; ``host/model.py`` calls it), so
it reads both handlers: 0.33.0's (``resize_cond_for_context_window`` hook, ``causal_window_fix``,
``IndexListContextWindow.total_frames``) and 0.3.64's (neither: its handler leaves the 5-D canvas
latent whole, and the model cuts it itself, :func:`canvas_for_call`).

- :func:`window_frames`: the video frames a window's call covers (the causal anchor first, if any);
- :func:`window_canvas`: the canvas latent for a window: the video's frame 0 (the face canvas) in
  the window's first frame, then the window's own frames of the concat latent (zeros);
- :func:`check_run`: before sampling, a run the checkpoint cannot sample in windows is refused
  (windows of another length, ``causal_window_fix`` on, windows along another axis), with the fix;
- :func:`plan` / :func:`describe`: the windows *Ingredients Long Video* sets up, in words.
"""

from __future__ import annotations

import dataclasses
from typing import Optional, Sequence

from ..ingredients_core import InputError
from . import native_checks

FRAME_DIM = 2  # CogVideoX latents in ComfyUI: (B, C, F, H, W)
LONG_VIDEO_NODE = "Ingredients Long Video"


def video_frames(latent_frames: int) -> int:
    return (latent_frames - 1) * 4 + 1


def latent_frames(frames: int) -> int:
    return (frames - 1) // 4 + 1


# -- per call ------------------------------------------------------------------------------------
def window_frames(window) -> list[int]:
    """The video's latent frames a window's model call holds, in order: 0.33's causal anchor (the
    frame before the window, when ``causal_window_fix`` put it there) then ``index_list``."""
    anchor = getattr(window, "causal_anchor_index", None)
    frames = [int(i) for i in window.index_list]
    return ([int(anchor)] if anchor is not None and anchor >= 0 else []) + frames


def window_canvas(concat, frames: Sequence[int]):
    """The concat latent (B, C, F, H, W) of the whole video -> the window's (B, C, len(frames), H, W):
    the window's frames, with the video's frame 0 (the canvas latent) in the window's first frame."""
    out = concat[:, :, list(frames)].clone()
    out[:, :, 0] = concat[:, :, 0]
    return out


def call_window(transformer_options: dict, call_frames: int, video_frames_hint: int = 0):
    """(the video's latent frames this call covers, the video's latent frame count) when ComfyUI
    runs a context window (``transformer_options["context_window"]``), else None. A window whose
    frames are not the call's is an error naming the handler (something cut the latent otherwise)."""
    window = transformer_options.get("context_window")
    if window is None:
        return None
    frames = window_frames(window)
    if len(frames) != call_frames:
        raise InputError(f"{native_checks.MODEL_NAME}: the context window holds {len(frames)} latent frames, the "
                         f"model was given {call_frames}: windows must run along the frames (dim {FRAME_DIM}); use "
                         f"{LONG_VIDEO_NODE}, or Context Windows (Manual) with dim {FRAME_DIM}.")
    total = int(getattr(window, "total_frames", 0) or video_frames_hint or (max(frames) + 1))
    return frames, total


def canvas_for_call(concat, transformer_options: dict, call_frames: int):
    """The concat latent as the call needs it: unchanged when it has the call's frames (no window,
    or 0.33 cut it through ``resize_cond_for_context_window``); the window's canvas when the handler
    left it whole (0.3.64); else an error naming the mismatch."""
    if concat.shape[FRAME_DIM] == call_frames:
        return concat
    window = call_window(transformer_options, call_frames, concat.shape[FRAME_DIM])
    if window is None or concat.shape[FRAME_DIM] != window[1]:
        raise InputError(f"{native_checks.MODEL_NAME}: the canvas latent has {concat.shape[FRAME_DIM]} latent frames, "
                         f"the model was given {call_frames}"
                         + ("" if window is None else f" of a {window[1]}-frame video") +
                         f": sample the LATENT of the same Ingredients Image to Video (windows: {LONG_VIDEO_NODE}).")
    return window_canvas(concat, window[0])


def window_length(model_options: dict) -> Optional[int]:
    """The latent frames of a window when the MODEL samples in windows along the frames, else None."""
    handler = model_options.get("context_handler")
    if handler is None or getattr(handler, "dim", None) != FRAME_DIM:
        return None
    return getattr(handler, "context_length", None)


# -- before sampling -----------------------------------------------------------------------------
def check_run(config, noise_shape, model_options: dict) -> None:
    """Refuse what the checkpoint cannot sample: a latent of another size without windows, or
    windows that do not fill its learned positions."""
    handler = model_options.get("context_handler")
    length = getattr(handler, "context_length", None)
    dim = getattr(handler, "dim", None)
    if handler is None or length is None or noise_shape[dim if dim is not None else FRAME_DIM] <= length:
        native_checks.check_size(config, noise_shape)  # no windows: the whole latent must fit
        return
    if dim != FRAME_DIM:
        raise InputError(f"{native_checks.MODEL_NAME}: Context Windows run along dim {dim} of the latent (batch, "
                         f"channels, frames, height, width); this video model's frames are dim {FRAME_DIM}: set dim "
                         f"{FRAME_DIM} on Context Windows (Manual), or use {LONG_VIDEO_NODE}.")
    if getattr(handler, "causal_window_fix", False):
        raise InputError(
            f"{native_checks.MODEL_NAME}: causal_window_fix is on (Context Windows (Manual)): it puts one more frame "
            "in front of every window but the first, so the windows would hold two lengths, and this checkpoint's "
            f"learned positions take exactly {_latent_length(config)} latent frames. Turn causal_window_fix off "
            f"(every window gets the canvas latent in its first frame anyway), or use {LONG_VIDEO_NODE}.")
    windows = handler.context_schedule.func(noise_shape[FRAME_DIM], handler, model_options)
    lengths = sorted({len(w) for w in windows})
    for size in lengths:
        native_checks.check_size(config, noise_shape, size, schedule=getattr(handler.context_schedule, "name", None))


def _latent_length(config) -> int:
    return latent_frames(config.sample_frames)


# -- Ingredients Long Video ----------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Plan:
    window: int            # latent frames per window (the checkpoint's)
    overlap: int           # latent frames shared by neighbouring windows
    frames: int            # the video's frames (4k + 1)
    windows: list          # latent frame indices of each window (standard_static)

    @property
    def latent(self) -> int:
        return latent_frames(self.frames)


def static_windows(latent: int, window: int, overlap: int) -> list[list[int]]:
    """ComfyUI's ``standard_static`` schedule: windows from frame 0 every ``window - overlap``
    frames, the last one moved back to end on the last frame."""
    if latent <= window:
        return [list(range(latent))]
    out, delta = [], window - overlap
    for start in range(0, latent, delta):
        if start + window >= latent:
            out.append(list(range(latent - window, latent)))
            break
        out.append(list(range(start, start + window)))
    return out


def plan(config, frames: int, overlap_frames: int) -> Plan:
    """The windows for a ``frames``-frame video with ``overlap_frames`` video frames of overlap (4 per
    latent frame), or a ValueError naming the input and the values it takes."""
    window = _latent_length(config)
    if frames < 1 or (frames - 1) % 4:
        raise InputError(f"frames: {frames} is not 4k+1 (the VAE makes 1 + 4 frames per latent frame); take "
                         f"{frames - (frames - 1) % 4 if frames > 1 else 1} or {frames + 4 - (frames - 1) % 4}.")
    overlap = overlap_frames // 4
    if overlap_frames % 4 or not 0 <= overlap < window:
        raise InputError(f"overlap: {overlap_frames} frames; take a multiple of 4 from 0 to {(window - 1) * 4} "
                         f"(windows of {video_frames(window)} frames, {window} latent frames, move by "
                         "window - overlap).")
    latent = latent_frames(frames)
    return Plan(window, overlap, frames, static_windows(latent, window, overlap))


def describe(p: Plan) -> str:
    if len(p.windows) == 1 and p.latent <= p.window:
        return (f"{p.frames} frames ({p.latent} latent): one window, sampled as without windows (the checkpoint "
                f"takes {video_frames(p.window)} frames).")
    spans = ", ".join(f"{w[0]}-{w[-1]}" for w in p.windows)
    return (f"{p.frames} frames ({p.latent} latent frames) in {len(p.windows)} windows of "
            f"{video_frames(p.window)} frames ({p.window} latent), overlap {p.overlap * 4} frames ({p.overlap} "
            f"latent); latent frames {spans}; the canvas latent is in every window's first frame. "
            f"Each step runs the model {len(p.windows)} times. Set frames {p.frames} on Ingredients Image to Video "
            "or the Ingredients Sampler.")
