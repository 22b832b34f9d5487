"""How ID features are routed into the video during sampling.

:class:`RoutingOptions` is what a user sets (mode, strengths, step ranges, region masks).
:class:`RoutingPlan` is built once per run from the options and the latent grid; at each step it
yields a :class:`StepRouting`, which the transformer applies after every routed block
(:func:`inject`). :class:`RoutingRecorder` keeps the router's assignment for routing maps.

Token grid: the transformer sees ``F x (h/p) x (w/p)`` video tokens (latent frames x latent rows /
patch x latent columns / patch), frame-major, then rows, then columns.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Literal, Optional, Sequence

import torch
import torch.nn.functional as F

from .. import ERROR_NAMESPACE

logger = logging.getLogger(__name__)

MAX_IDS = 4
RoutingMode = Literal["official", "per_sample"]
MaskMode = Literal["soft", "hard"]


class RoutingError(ValueError):
    """Routing options that do not fit the IDs or the video."""

    __module__ = ERROR_NAMESPACE


@dataclass(frozen=True)
class RoutingOptions:
    """User-facing routing settings.

    mode: ``official`` routes every batch element with the features and router logits of batch
        element 0 (with classifier-free guidance, the negative half), as the official code does;
        ``per_sample`` routes each batch element on its own hidden states.
    scale: overall ID strength (the checkpoint's ``local_face_scale`` when None).
    strengths: per-ID strength multipliers (1.0 each when None). An ID with strength 0 is not injected.
    step_ranges: per-ID ``(start, end)`` fractions of the sampling steps during which the ID is injected.
    masks: per-ID region hints, each None or a float tensor (H, W) or (frames, H, W) in [0, 1].
    mask_mode: ``soft`` adds ``mask_strength * mask`` to that ID's router logits; ``hard`` assigns every
        token inside a mask to that ID and gives tokens outside all masks no ID features.
    """

    mode: RoutingMode = "official"
    scale: Optional[float] = None
    strengths: Optional[Sequence[float]] = None
    step_ranges: Optional[Sequence[tuple[float, float]]] = None
    masks: Optional[Sequence[Optional[torch.Tensor]]] = None
    mask_mode: MaskMode = "soft"
    mask_strength: float = 5.0

    def check(self, num_ids: int) -> None:
        """Raise :class:`RoutingError` naming the setting that does not fit ``num_ids`` IDs."""
        if not 1 <= num_ids <= MAX_IDS:
            raise RoutingError(f"Ingredients takes 1 to {MAX_IDS} people; got {num_ids} IDs")
        if self.mode not in ("official", "per_sample"):
            raise RoutingError(f"routing mode must be 'official' or 'per_sample', got {self.mode!r}")
        if self.mask_mode not in ("soft", "hard"):
            raise RoutingError(f"mask mode must be 'soft' or 'hard', got {self.mask_mode!r}")
        for name in ("strengths", "step_ranges", "masks"):
            values = getattr(self, name)
            if values is not None and len(values) != num_ids:
                raise RoutingError(f"{name}: got {len(values)} entries for {num_ids} IDs; give one per ID, "
                                   "in ID order")
        for i, (start, end) in enumerate(self.step_ranges or []):
            if not 0.0 <= start <= end <= 1.0:
                raise RoutingError(f"step range of ID {i + 1} is ({start}, {end}); "
                                   "expected 0 <= start <= end <= 1")
        for i, strength in enumerate(self.strengths or []):
            if strength < 0:
                raise RoutingError(f"strength of ID {i + 1} is {strength}; expected 0 or more")


@dataclass
class RoutingRecorder:
    """Router assignment per routed layer, for routing maps.

    Records the assignment of the last batch element the router saw (``official`` mode: element 0,
    the only one routed; ``per_sample`` with guidance: the positive-prompt half), IDs switched off at
    that step shown as unassigned. Keeps, per layer, the last step's weights and the sum over steps:
    (N, P) each, on the model's device (no host sync during sampling); :meth:`maps` returns CPU tensors.
    """

    grid: tuple[int, int, int] = (0, 0, 0)  # latent frames, token rows, token columns (set by the plan)
    last: dict[int, torch.Tensor] = field(default_factory=dict)
    total: dict[int, torch.Tensor] = field(default_factory=dict)
    steps: dict[int, int] = field(default_factory=dict)

    def add(self, layer: int, weights: torch.Tensor) -> None:
        w = weights[-1].detach().float()  # (N, P), stays on the device
        self.last[layer] = w
        self.total[layer] = self.total.get(layer, 0) + w
        self.steps[layer] = self.steps.get(layer, 0) + 1

    def maps(self, steps: Literal["last", "mean"] = "last", layer: Optional[int] = None) -> torch.Tensor:
        """Assignment weights (F, rows, cols, P): one layer, or the mean over all routed layers."""
        if not self.last:
            raise RoutingError("no routing was recorded: run the sampler with routing recording on")
        layers = sorted(self.last) if layer is None else [layer]
        if layer is not None and layer not in self.last:
            raise RoutingError(f"routed layer {layer} was not recorded; recorded: {sorted(self.last)}")
        per_layer = [self.last[k] if steps == "last" else self.total[k] / self.steps[k] for k in layers]
        return torch.stack(per_layer).mean(0).view(*self.grid, -1).cpu()


@dataclass
class StepRouting:
    """Routing of one sampling step, as the transformer applies it."""

    mode: RoutingMode
    scale: float
    active: torch.Tensor                 # (P,) strength this step; 0 = not injected
    logit_bias: Optional[torch.Tensor]   # (N, P) soft-mask bias
    hard: Optional[torch.Tensor]         # (N, P) one-hot hard assignment (rows all 0 = nobody)
    recorder: Optional[RoutingRecorder]
    on: tuple[bool, ...] = ()            # which IDs are injected this step (known on the host, no sync)

    @property
    def enabled(self) -> bool:
        return any(self.on)

    @classmethod
    def default(cls, num_ids: int, scale: float, device: torch.device,
                mode: RoutingMode = "official") -> "StepRouting":
        """Plain routing: every ID at full strength, no masks, nothing recorded."""
        return cls(mode, scale, torch.ones(num_ids, device=device), None, None, None, (True,) * num_ids)

    def assign(self, logits: torch.Tensor) -> torch.Tensor:
        """Router logits (b, N, P) -> assignment (b, N, P): softmax over active IDs, or the hard masks."""
        if self.hard is not None:
            w = self.hard.to(logits.dtype).expand_as(logits)
        else:
            if self.logit_bias is not None:
                logits = logits + self.logit_bias.to(logits.dtype)
            if not all(self.on):
                logits = logits.masked_fill(~(self.active > 0), float("-inf"))
            w = torch.softmax(logits.float(), dim=-1).to(logits.dtype)
        return w

    def strengths(self, like: torch.Tensor) -> torch.Tensor:
        """Per-ID strength of this step, (P,) in ``like``'s dtype."""
        return self.active.to(dtype=like.dtype)


class RoutingPlan:
    """Routing options bound to one run: number of IDs, steps and the token grid."""

    def __init__(self, options: RoutingOptions, num_ids: int, grid: tuple[int, int, int],
                 default_scale: float, device: torch.device, recorder: Optional[RoutingRecorder] = None):
        options.check(num_ids)
        self.options = options
        self.num_ids = num_ids
        self.grid = grid
        self.scale = default_scale if options.scale is None else float(options.scale)
        self.device = device
        self.strengths = torch.tensor(list(options.strengths or [1.0] * num_ids), dtype=torch.float32)
        self.token_masks = self._token_masks(device)
        self._windows: dict[tuple[int, ...], torch.Tensor] = {}  # token masks per host context window
        self.recorder = recorder
        if recorder is not None:
            recorder.grid = grid

    def _token_masks(self, device: torch.device) -> Optional[torch.Tensor]:
        masks = self.options.masks
        if masks is None or all(m is None for m in masks):
            return None
        columns = [torch.zeros(self.grid) if m is None else resize_mask(m, self.grid, f"mask of ID {i + 1}")
                   for i, m in enumerate(masks)]
        return torch.stack(columns, dim=-1).flatten(0, 2).to(device)  # (N, P)

    def step(self, index: int, total: int, frames: Optional[Sequence[int]] = None) -> StepRouting:
        """The routing of step ``index`` (0-based) of ``total``; ``frames``: the latent frames of the
        plan's grid a call holds (a host's context window), in the call's order (all when None)."""
        active = self.strengths.clone()
        if self.options.step_ranges is not None:
            frac = index / max(total, 1)
            for i, (start, end) in enumerate(self.options.step_ranges):
                if not start <= frac < end and not (end >= 1.0 and frac >= start):
                    active[i] = 0.0
        bias = hard = None
        masks = self.token_masks if frames is None else self._window_masks(tuple(frames))
        if masks is not None:
            if self.options.mask_mode == "soft":
                bias = self.options.mask_strength * masks
            else:
                hard = _hard_assignment(masks)
        on = tuple(bool(a > 0) for a in active)
        return StepRouting(self.options.mode, self.scale, active.to(self.device), bias, hard, self.recorder, on)


    def _window_masks(self, frames: tuple[int, ...]) -> Optional[torch.Tensor]:
        """The token masks (N, P) of ``frames`` of the grid (cached per window)."""
        if self.token_masks is None:
            return None
        cache = self._windows
        if frames not in cache:
            if not all(0 <= f < self.grid[0] for f in frames):
                raise RoutingError(f"a window's latent frames {list(frames)} lie outside the video's "
                                   f"{self.grid[0]} latent frames")
            per_frame = self.token_masks.view(self.grid[0], -1, self.token_masks.shape[-1])
            index = torch.tensor(frames, device=per_frame.device)
            cache[frames] = per_frame.index_select(0, index).flatten(0, 1)
        return cache[frames]


def _hard_assignment(token_masks: torch.Tensor) -> torch.Tensor:
    """(N, P) mask coverage -> one-hot of the most-covering ID where coverage >= 0.5, else all zero."""
    best = token_masks.argmax(dim=-1)
    inside = token_masks.max(dim=-1).values >= 0.5
    return F.one_hot(best, token_masks.shape[-1]).float() * inside.unsqueeze(-1)


def resize_mask(mask: torch.Tensor, grid: tuple[int, int, int], name: str) -> torch.Tensor:
    """A mask (H, W) or (frames, H, W) -> coverage per token (F, rows, cols) in [0, 1].

    Space: area average over each token's pixels (adaptive average pooling), so any mask size works.
    Time: a static mask is used for every latent frame; a per-frame mask with ``frames`` entries is
    split into ``F`` consecutive groups (latent frame 0 <- pixel frame 0, latent frame k <- pixel frames
    4k-3 .. 4k for the usual 4k+1 frames) and averaged per group.
    """
    frames, rows, cols = grid
    m = mask.detach().float().cpu()
    if m.dim() == 2:
        m = m.unsqueeze(0)
    if m.dim() != 3 or min(m.shape) == 0:
        raise RoutingError(f"{name}: expected a mask of shape (H, W) or (frames, H, W), got {tuple(mask.shape)}")
    m = F.adaptive_avg_pool2d(m.unsqueeze(1), (rows, cols)).squeeze(1)  # (T, rows, cols)
    if m.shape[0] == 1:
        return m.expand(frames, rows, cols).clamp(0, 1)
    groups = _frame_groups(m.shape[0], frames, name)
    return torch.stack([m[a:b].mean(0) for a, b in groups]).clamp(0, 1)


def _frame_groups(count: int, frames: int, name: str) -> list[tuple[int, int]]:
    if count == frames:
        return [(k, k + 1) for k in range(frames)]
    if count == (frames - 1) * 4 + 1:
        return [(0, 1)] + [(4 * k - 3, 4 * k + 1) for k in range(1, frames)]
    raise RoutingError(f"{name}: {count} mask frames fit neither the {frames} latent frames nor the "
                       f"{(frames - 1) * 4 + 1} video frames; give one mask, or one per video frame")
