"""TeaCache for the Ingredients transformer: skip the blocks when the step barely changes them.

TeaCache (Liu et al., 2024, "Timestep Embedding Tells: It's Time to Cache for Video Diffusion
Model") estimates how much a step's output would change from how much the timestep embedding
changed. Per forward it adds ``poly(rel_l1(emb, previous emb))`` to an accumulator; while the
accumulator stays under the threshold, the blocks are skipped and the residual they added at the
last computed step (for video and text tokens) is added instead; once it reaches the threshold,
the blocks run again and the accumulator restarts. The first and the last step are always computed.

``poly`` rescales the raw distance with coefficients fitted for the model; the CogVideoX-5B ones
are the published ``[-1.53880483e+03, 8.43202495e+02, -1.34363087e+02, 7.97131516e+00,
-5.23162339e-02]`` (highest power first). That polynomial is positive only between its two real
roots (rel-L1 0.0075 and 0.330 for these coefficients): a step whose distance lies beyond the upper
root is outside what the fit describes and is always computed, and the small negative values below
the lower root count as no change. A cache belongs to one sampling run; it is never stored on the
model.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Optional

import numpy as np
import torch

logger = logging.getLogger(__name__)

COGVIDEOX_5B_COEFFICIENTS = (-1.53880483e+03, 8.43202495e+02, -1.34363087e+02, 7.97131516e+00, -5.23162339e-02)


@dataclass
class TeaCache:
    """Per-run TeaCache state. ``steps``: forwards in the run (one per sampling step)."""

    threshold: float
    steps: int
    coefficients: tuple[float, ...] = COGVIDEOX_5B_COEFFICIENTS
    evaluations: int = 0                        # forwards whose blocks ran
    skipped: int = 0                            # forwards that reused the residual
    skipped_steps: list[int] = field(default_factory=list)
    _calls: int = 0
    _accumulated: float = 0.0
    _previous: Optional[torch.Tensor] = None
    _residual: Optional[tuple[torch.Tensor, torch.Tensor]] = None
    _fit_limit: float = 0.0

    def __post_init__(self) -> None:
        if self.threshold <= 0:
            raise ValueError(f"TeaCache threshold must be above 0 (0 = no cache); got {self.threshold}")
        if self.steps < 1:
            raise ValueError(f"TeaCache needs the number of steps; got {self.steps}")
        positive = [r.real for r in np.roots(self.coefficients) if abs(r.imag) < 1e-12 and r.real > 0]
        self._fit_limit = max(positive) if positive else float("inf")

    def estimate(self, distance: float) -> float:
        """The rescaled change of one step (``inf`` beyond the fitted range: compute that step)."""
        if distance > self._fit_limit:
            return float("inf")
        return max(float(np.polyval(self.coefficients, distance)), 0.0)

    def skip(self, emb: torch.Tensor) -> bool:
        """Whether this forward may reuse the cached residual (``emb``: the timestep embedding)."""
        step = self._calls
        self._calls += 1
        previous, self._previous = self._previous, emb.detach()
        if step == 0 or step >= self.steps - 1 or previous is None or self._residual is None:
            self._accumulated = 0.0
            return False
        distance = ((emb - previous).abs().mean() / previous.abs().mean()).item()
        self._accumulated += self.estimate(distance)
        if self._accumulated < self.threshold:
            self.skipped += 1
            self.skipped_steps.append(step)
            return True
        self._accumulated = 0.0
        return False

    def reuse(self, video: torch.Tensor, text: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The block stack's output estimated as input + the last computed residual."""
        video_residual, text_residual = self._residual
        return video + video_residual, text + text_residual

    def store(self, video_residual: torch.Tensor, text_residual: torch.Tensor) -> None:
        """Remember what the blocks added at a computed step."""
        self.evaluations += 1
        self._residual = (video_residual, text_residual)

    def summary(self) -> str:
        total = self.evaluations + self.skipped
        speedup = total / self.evaluations if self.evaluations else 1.0
        return (f"TeaCache (threshold {self.threshold:g}): {self.skipped} of {total} transformer evaluations "
                f"skipped ({self.evaluations} computed, about {speedup:.2f}x fewer block runs)")
