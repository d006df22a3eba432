"""Loss configuration and icefall's warm-up schedule for the simple/pruned loss scales."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Tuple

from synthasr.config import ConfigError, check_finite

from .backends import BACKEND_CHOICES


@dataclass
class LossConfig:
    """How the transducer loss is computed.

    ``kind="pruned"`` trains with ``simple_scale * simple + pruned_scale * pruned`` (icefall); ``"full"``
    uses the full RNN-T loss alone.  ``am_scale``/``lm_scale`` smooth the simple loss (k2's
    ``rnnt_loss_smoothed``: weights of the AM-only and LM-only lattices).
    """

    backend: str = "auto"
    kind: Literal["pruned", "full"] = "pruned"
    prune_range: int = 5
    simple_loss_scale: float = 0.5
    warmup_steps: int = 2000
    am_scale: float = 0.0
    lm_scale: float = 0.0

    def validate(self) -> None:
        """Raise :class:`ConfigError` naming the first bad key."""
        check_finite(self)
        if self.backend not in BACKEND_CHOICES:
            raise ConfigError(f"backend: expected one of {list(BACKEND_CHOICES)}, got {self.backend!r}")
        if self.kind not in ("pruned", "full"):
            raise ConfigError(f"kind: expected 'pruned' or 'full', got {self.kind!r}")
        if self.backend == "torchaudio" and self.kind != "full":
            raise ConfigError("backend: 'torchaudio' implements only the full loss; set kind: full "
                              "(or use auto, builtin, k2 or fast_rnnt for the pruned loss)")
        if self.prune_range < 2:
            raise ConfigError(f"prune_range: must be >= 2 (no path survives a narrower band), got {self.prune_range}")
        if not 0.0 <= self.simple_loss_scale <= 1.0:
            raise ConfigError(f"simple_loss_scale: must be in [0, 1], got {self.simple_loss_scale}")
        if self.warmup_steps < 0:
            raise ConfigError(f"warmup_steps: must be >= 0, got {self.warmup_steps}")
        for key in ("am_scale", "lm_scale"):
            if getattr(self, key) < 0.0:
                raise ConfigError(f"{key}: must be >= 0, got {getattr(self, key)}")
        if self.am_scale + self.lm_scale >= 1.0:
            raise ConfigError(f"am_scale: am_scale + lm_scale must be < 1, got {self.am_scale} + {self.lm_scale}")


def loss_scales(cfg: LossConfig, step: int) -> Tuple[float, float]:
    """``(simple_scale, main_scale)`` at training step ``step`` (icefall's warm-up).

    During warm-up the simple-loss scale falls linearly from 1.0 to ``simple_loss_scale`` and the pruned
    loss scale rises from 0.1 to 1.0; afterwards they stay at ``(simple_loss_scale, 1.0)``.  With
    ``kind="full"`` there is no simple loss: ``(0.0, 1.0)``.
    """
    if step < 0:
        raise ValueError(f"step must be >= 0, got {step}")
    if cfg.kind == "full":
        return 0.0, 1.0
    if step >= cfg.warmup_steps:
        return cfg.simple_loss_scale, 1.0
    progress = step / cfg.warmup_steps
    return 1.0 - progress * (1.0 - cfg.simple_loss_scale), 0.1 + 0.9 * progress
