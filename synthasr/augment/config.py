"""Per-source augmentation settings (one :class:`AugmentConfig` per data source in a stage)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import List

from synthasr.config import ConfigError


@dataclass
class AugmentConfig:
    """What to do to each cut of one source; every probability is drawn afresh per cut and epoch.

    ``speed``: factors chosen uniformly per cut (``[0.9, 1.0, 1.1]`` = classic 3-way perturbation
    without tripling the epoch). ``noise_prob``/``snr_range``: additive noise from the noise CutSet.
    ``reverb_prob``: convolution with a simulated room impulse response. ``volume_prob``/
    ``volume_range``: a gain factor. ``bandlimit_prob``/``band_hz``: telephone-like band-pass and
    ``mulaw_prob``/``mulaw_bits``: codec-like quantisation, both to make clean TTS audio sound less
    synthetic. All off by default, so ``AugmentConfig()`` leaves cuts untouched.
    """

    speed: List[float] = field(default_factory=lambda: [1.0])
    volume_prob: float = 0.0
    volume_range: List[float] = field(default_factory=lambda: [0.5, 1.5])
    reverb_prob: float = 0.0
    noise_prob: float = 0.0
    snr_range: List[float] = field(default_factory=lambda: [10.0, 20.0])
    bandlimit_prob: float = 0.0
    band_hz: List[float] = field(default_factory=lambda: [300.0, 3400.0])
    mulaw_prob: float = 0.0
    mulaw_bits: int = 8

    def validate(self) -> None:
        if not self.speed or any(f <= 0 for f in self.speed):
            raise ConfigError(f"speed: factors must be a non-empty list of positive numbers, got {self.speed}")
        for name in ("volume_prob", "reverb_prob", "noise_prob", "bandlimit_prob", "mulaw_prob"):
            p = getattr(self, name)
            if not 0.0 <= p <= 1.0:
                raise ConfigError(f"{name}: must be a probability in [0, 1], got {p}")
        _check_range("volume_range", self.volume_range, low=0.0)
        _check_range("snr_range", self.snr_range)
        _check_range("band_hz", self.band_hz, low=0.0)
        if not 2 <= self.mulaw_bits <= 16:
            raise ConfigError(f"mulaw_bits: must be in [2, 16], got {self.mulaw_bits}")

    @property
    def is_identity(self) -> bool:
        """True when no cut can ever be changed (lets callers skip the per-cut map entirely)."""
        return (
            all(f == 1.0 for f in self.speed)
            and self.volume_prob == 0
            and self.reverb_prob == 0
            and self.noise_prob == 0
            and self.bandlimit_prob == 0
            and self.mulaw_prob == 0
        )


def _check_range(name: str, value: List[float], low: float = float("-inf")) -> None:
    if len(value) != 2 or value[0] > value[1] or value[0] < low:
        raise ConfigError(f"{name}: expected [min, max] with min <= max (min >= {low}), got {value}")
